"""The test cluster's Service, for clients: HAProxy following the Service's EndpointSlices.

The test cluster has no kube-proxy (its pods use the host network and nothing routes a
Service's virtual IP), yet the Kubernetes drills need what a Service gives its clients:
traffic goes to exactly the pods the EndpointSlices call ready, and a pod the API calls
ready gets traffic whether or not it serves yet (that is what a missing readiness probe
does to a real Service). This gateway is that, and nothing more:

- Debian's HAProxy on 127.0.0.1 (LLMDRILL_KUBE_GATEWAY_PORT, default 18230), one server
  per engine port (127.0.0.1:18200, :18201: the engine's pods bind 127.0.0.1 on the host
  network, and drill traffic goes to 127.0.0.1 only; the EndpointSlices' addresses are the
  node's, the ports tell the replicas apart). Every server starts in maintenance.
- NO health checks of its own: HAProxy never decides a server is up or down. A thread
  watches the Service's EndpointSlices and sets each server `ready` when an endpoint on
  its port is ready, `maint` otherwise, through HAProxy's runtime API socket: kube-proxy's
  semantics (it programs the endpoints the API calls ready, nothing else).
- No retry on another server (`retries 0`, no redispatch): a connection a pod refuses is
  the client's failure (503 here; kube-proxy's clients get a refused connection), as with
  iptables rules that picked that pod. Servers are picked at random per request, as
  kube-proxy's rules pick per connection (`option http-server-close`: every request gets
  its own server connection, so a client's keep-alive does not pin it to one pod).
- Requests in flight to a server put in maintenance continue, as established connections
  through kube-proxy do.

Why HAProxy rather than a Python proxy: it is a real, widely deployed load balancer whose
runtime API gives exactly the enable/disable a kube-proxy sync does, and it streams SSE
without buffering. Why not vllm-router or HAProxy's own checks: they would judge the pods
themselves, hiding what the drills must see (a pod Kubernetes calls ready that is not).

`python -m llmdrill.stack.kube_gateway up|down|status` (up starts `serve` in the
background; `serve` runs HAProxy and the watcher in the foreground). Every transition is
logged with its time in <stack>/kube/gateway/gateway.log.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from llmdrill.stack import StackError, processes
from llmdrill.stack.apt import apt_install
from llmdrill.stack.kube_cluster import ENGINE_NAME, KubeClusterConfig

BACKEND = "engine"
WATCH_SECONDS = 60


@dataclass
class GatewayConfig:
    folder: Path
    kubeconfig: Path
    namespace: str
    service: str
    port: int
    engine_ports: list[int] = field(default_factory=list)

    @classmethod
    def from_env(cls) -> GatewayConfig:
        cluster = KubeClusterConfig.from_env()
        return cls(folder=cluster.kube_dir / "gateway", kubeconfig=cluster.kubeconfig,
                   namespace=cluster.namespace, service=ENGINE_NAME,
                   port=int(os.environ.get("LLMDRILL_KUBE_GATEWAY_PORT", "18230")),
                   engine_ports=cluster.engine_ports())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def socket(self) -> Path:
        return self.folder / "haproxy.sock"

    @property
    def state_file(self) -> Path:
        return self.folder / "state.json"

    @property
    def pidfile(self) -> Path:
        return self.folder / "gateway.pid"

    @property
    def log(self) -> Path:
        return self.folder / "gateway.log"


# --- pure logic (unit-tested) -----------------------------------------------------------------


def server_name(port: int) -> str:
    return f"p{port}"


def haproxy_config(cfg: GatewayConfig) -> str:
    servers = "\n".join(f"    server {server_name(p)} 127.0.0.1:{p} disabled"
                        for p in cfg.engine_ports)
    return f"""# Written by llmdrill.stack.kube_gateway: the test cluster's Service.
global
    stats socket {cfg.socket} mode 600 level admin
    maxconn 2000

defaults
    mode http
    timeout connect 2s
    # Streams: a slow token is not a dead server.
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 5s
    # kube-proxy does not retry another endpoint when the one it picked refuses.
    retries 0

frontend service
    bind 127.0.0.1:{cfg.port}
    default_backend {BACKEND}

backend {BACKEND}
    balance random(1)
    option http-server-close
    http-reuse never
    # No `check`: whether a server is up is the EndpointSlices' word, set at run time.
{servers}
"""


def ready_ports(slices: list[dict[str, Any]]) -> set[int]:
    """The ports with at least one ready endpoint, over a Service's EndpointSlices. An
    endpoint whose `ready` condition is unset counts as ready (the API's rule)."""
    ready: set[int] = set()
    for item in slices:
        ports = {int(p["port"]) for p in item.get("ports") or [] if p.get("port")}
        if any((e.get("conditions") or {}).get("ready", True) is not False
               for e in item.get("endpoints") or []):
            ready |= ports
    return ready


def wanted_states(ports: list[int], ready: set[int]) -> dict[int, str]:
    return {p: "ready" if p in ready else "maint" for p in ports}


# --- HAProxy's runtime API ----------------------------------------------------------------------


def runtime(sock: Path, command: str, timeout: float = 5.0) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        s.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


# --- the serving process ------------------------------------------------------------------------


class Gateway:
    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        self.states: dict[int, str] = dict.fromkeys(cfg.engine_ports, "maint")
        self.synced_at: float | None = None
        self._stop = threading.Event()
        self._slices: dict[str, dict[str, Any]] = {}
        self._raw: Any = None

    def _log(self, message: str) -> None:
        now = time.time()
        stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
        with self.cfg.log.open("a") as fh:
            fh.write(f"{stamp} {message}\n")

    def _apply(self) -> None:
        wanted = wanted_states(self.cfg.engine_ports, ready_ports(list(self._slices.values())))
        for port, state in wanted.items():
            if self.states.get(port) != state or self.synced_at is None:
                answer = runtime(self.cfg.socket,
                                 f"set server {BACKEND}/{server_name(port)} state {state}")
                if answer.strip():
                    raise RuntimeError(f"HAProxy refused `{state}` for {port}: {answer.strip()}")
                if self.states.get(port) != state:
                    self._log(f"127.0.0.1:{port} -> {state}")
                self.states[port] = state
        self.synced_at = time.time()
        tmp = self.cfg.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "synced_at": self.synced_at,
                                   "servers": {str(p): s for p, s in self.states.items()}}))
        tmp.replace(self.cfg.state_file)

    def watch(self) -> None:
        """List the Service's EndpointSlices, then watch them; on any failure list again."""
        from llmdrill.faults.kube_api import KubeApi

        path = f"/apis/discovery.k8s.io/v1/namespaces/{self.cfg.namespace}/endpointslices"
        selector = f"kubernetes.io/service-name={self.cfg.service}"
        while not self._stop.is_set():
            try:
                with KubeApi(str(self.cfg.kubeconfig), timeout=10) as api:
                    listed = api.get(path, labelSelector=selector)
                    self._slices = {str(s["metadata"]["name"]): s
                                    for s in listed.get("items") or []}
                    self._apply()
                    version = str(listed["metadata"].get("resourceVersion") or "")
                    while not self._stop.is_set():
                        with api.watch(path, labelSelector=selector, resourceVersion=version,
                                       allowWatchBookmarks=True,
                                       timeoutSeconds=WATCH_SECONDS) as (raw, events):
                            self._raw = raw
                            for event in events:
                                kind, obj = event.get("type"), event.get("object") or {}
                                if kind == "ERROR":
                                    raise RuntimeError(f"watch: {obj.get('message')}")
                                version = str(obj["metadata"].get("resourceVersion") or version)
                                name = str(obj["metadata"].get("name"))
                                if kind in ("ADDED", "MODIFIED"):
                                    self._slices[name] = obj
                                elif kind == "DELETED":
                                    self._slices.pop(name, None)
                                else:
                                    continue
                                self._apply()
            except Exception as exc:  # the API restarting: list again, keep the states
                if not self._stop.is_set():
                    self._log(f"watch failed ({type(exc).__name__}: {exc}); listing again")
                    self._stop.wait(1.0)

    def serve(self) -> int:
        cfg = self.cfg
        cfg.folder.mkdir(parents=True, exist_ok=True)
        (cfg.folder / "haproxy.cfg").write_text(haproxy_config(cfg))
        cfg.state_file.unlink(missing_ok=True)
        cfg.socket.unlink(missing_ok=True)
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        with (cfg.folder / "haproxy.log").open("ab") as log:
            proc = subprocess.Popen([haproxy, "-db", "-f", str(cfg.folder / "haproxy.cfg")],
                                    stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)

        def _term(signum: int, frame: Any) -> None:
            self._stop.set()

        signal.signal(signal.SIGTERM, _term)
        signal.signal(signal.SIGINT, _term)
        deadline = time.time() + 10
        while not cfg.socket.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        self._log(f"serving {cfg.url} -> {', '.join(str(p) for p in cfg.engine_ports)} "
                  f"(service {cfg.namespace}/{cfg.service})")
        watcher = threading.Thread(target=self.watch, name="endpointslices", daemon=True)
        watcher.start()
        while not self._stop.is_set() and proc.poll() is None:
            self._stop.wait(0.5)
        self._stop.set()
        if self._raw is not None:
            with contextlib.suppress(Exception):
                self._raw.shutdown()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        code = proc.wait()
        cfg.state_file.unlink(missing_ok=True)
        self._log(f"stopped (haproxy exit {code})")
        return 0


# --- control -------------------------------------------------------------------------------------


def install_haproxy() -> None:
    if shutil.which("haproxy") or Path("/usr/sbin/haproxy").exists():
        return
    apt_install(["haproxy"])


def pid(cfg: GatewayConfig) -> int | None:
    return processes.read_pid(cfg.pidfile)


def state(cfg: GatewayConfig) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = json.loads(cfg.state_file.read_text())
    except (OSError, ValueError):
        return None
    return found


def healthy(cfg: GatewayConfig) -> bool:
    """Running, synced with the EndpointSlices, and its frontend answering."""
    if pid(cfg) is None or state(cfg) is None:
        return False
    try:
        httpx.get(f"{cfg.url}/health", timeout=5)
    except httpx.HTTPError:
        return False
    return True


def up(cfg: GatewayConfig, timeout: float = 60.0) -> float:
    """Starts the gateway unless it runs; waits for its first sync. Seconds it took."""
    started = time.time()
    if healthy(cfg):
        return 0.0
    install_haproxy()
    if pid(cfg) is not None:
        down(cfg)
    cfg.folder.mkdir(parents=True, exist_ok=True)
    with cfg.log.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "llmdrill.stack.kube_gateway", "serve"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    cfg.pidfile.write_text(str(proc.pid))
    while time.time() - started < timeout:
        if healthy(cfg):
            return time.time() - started
        if proc.poll() is not None:
            raise StackError(f"the gateway exited ({proc.returncode}); see {cfg.log}")
        time.sleep(0.2)
    raise StackError(f"the gateway did not sync within {timeout:.0f}s; see {cfg.log}")


def down(cfg: GatewayConfig) -> bool:
    return processes.stop_pidfile(cfg.pidfile, grace=15)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    cfg = GatewayConfig.from_env()
    try:
        if args == ["serve"]:
            return Gateway(cfg).serve()
        if args == ["up"]:
            took = up(cfg)
            print(f"kube gateway: {cfg.url} ({took:.1f}s); state: {state(cfg)}",
                  file=sys.stderr)
        elif args == ["down"]:
            print("kube gateway stopped" if down(cfg) else "kube gateway was not running",
                  file=sys.stderr)
        elif args == ["status"]:
            print(json.dumps({"url": cfg.url, "pid": pid(cfg), "healthy": healthy(cfg),
                              "state": state(cfg)}, indent=2))
        else:
            print("usage: python -m llmdrill.stack.kube_gateway up|down|status|serve",
                  file=sys.stderr)
            return 2
    except StackError as exc:
        print(f"kube gateway: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
