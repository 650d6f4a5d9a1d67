"""The gateway stack: two real vLLM replicas behind two real gateways, all on 127.0.0.1.

    client -> HAProxy (18040) or vllm-router (18030, metrics on 18031)
           -> Toxiproxy proxy `replica-{i}` (18011, 18021): the drills' network faults
           -> vLLM replica i (18010, 18020), pinned to core i

What a gateway drill needs that the single engine of `llmdrill.stack.local` cannot give:
a second replica to fail over to, and gateways that decide for themselves which replica
is healthy. Each replica is the local stack's engine (same model, flags and env) with:
- its own core (taskset and VLLM_CPU_OMP_THREADS_BIND), so one replica's load does not
  stall the other's, and its own compile cache (two engines must not share one);
- VLLM_KEEP_ALIVE_ON_ENGINE_DEATH=1: when its EngineCore dies, the API server stays up
  answering /health 503 and completions 500, the "unhealthy but accepting" replica a
  gateway must route around (without it the whole server exits: a plain dead replica).
The gateways reach the replicas through Toxiproxy only, so a fault sits between the
gateway and the engine, where a real network is.

Both gateways come in two variants from the same code: the resilient one (health checks
every second, two failures remove a replica, retries on another one) and a broken one
(no health checks, no retries: traffic keeps going to a dead or hung replica), which a
drill must catch. `running_gateway` starts a variant on a port of its own for a test.

`up` is idempotent and cheap when all runs (under a second): run after a drill, it
restarts only a replica that is gone, left orphans, or whose engine died (503), removes
toxics a crashed drill left on the replicas' proxies, and returns once every running
gateway has both replicas in rotation again.

Layout under the stack folder (LLMDRILL_STACK_DIR): router-venv/ (vllm-router from PyPI,
apart from llmdrill's venv), run/replica-{i}.{log,pid}, run/replica-{i}/cache/,
run/haproxy.{cfg,sock,log,pid}, run/vllm-router.{args,log,pid}; a gateway on another port
than its default has the port in those names (run/haproxy-18042.pid). Ports: see
GatewayConfig.from_env (LLMDRILL_REPLICA_PORT, LLMDRILL_HAPROXY_PORT, ...).

`python -m llmdrill.stack.gateway install|up [GATEWAY...]|down`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from llmdrill.errors import LlmdrillError
from llmdrill.faults.toxiproxy_client import ToxiproxyClient
from llmdrill.stack import StackError, processes
from llmdrill.stack.apt import apt_install
from llmdrill.stack.local import LocalStack, StackConfig
from llmdrill.stack.warmup import warm_up

HAPROXY = "haproxy"
ROUTER = "vllm-router"
GATEWAYS = (HAPROXY, ROUTER)
ROUTER_VERSION = "0.1.17"
HAPROXY_BINARY = Path("/usr/sbin/haproxy")
BACKEND = "replicas"
# A gateway's start: HAProxy is ready in milliseconds, vllm-router in about a second.
GATEWAY_START_TIMEOUT = 60.0
# After a replica restart the gateways need `rise` (2) good checks a second apart.
GATEWAY_SETTLE_TIMEOUT = 30.0
HAPROXY_METRICS_OFFSET = 1000  # a HAProxy gateway on port P has its metrics on P + 1000
# vLLM's --shutdown-timeout: how long a replica lets its in-flight requests finish after a
# SIGTERM. vLLM's own default, 0, aborts them (every open stream is cut); the stack drains
# for up to 30 s, as a production server should. A comma list sets it per replica (the
# last value for the rest): the drain drill's tests run replica 1 with vLLM's default.
SHUTDOWN_TIMEOUT_ENV = "LLMDRILL_REPLICA_SHUTDOWN_TIMEOUT"
DEFAULT_SHUTDOWN_TIMEOUT = "30"


def parse_shutdown_timeouts(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 0:
        raise StackError(f"{SHUTDOWN_TIMEOUT_ENV}={text!r}: expected whole seconds >= 0, "
                         "one per replica, comma-separated (e.g. 30 or 30,0)")
    return values


# How many requests a resilient HAProxy gives one replica at once (see HAPROXY_SHEDDING).
SERVER_MAXCONN_ENV = "LLMDRILL_GATEWAY_SERVER_MAXCONN"
DEFAULT_SERVER_MAXCONN = 8


@dataclass
class GatewayConfig:
    stack: StackConfig
    replicas: int = 2
    # Replica i: vLLM on replica_port + 10 * i, its Toxiproxy proxy one port above.
    replica_port: int = 18010
    router_port: int = 18030
    router_metrics_port: int = 18031
    haproxy_port: int = 18040
    # `up --front`: a second HAProxy instance, and a front balancer over both instances
    # (what a cloud load balancer or a VIP does), for the gateway instance failover drill.
    second_haproxy_port: int = 18041
    front_port: int = 18050
    shutdown_timeouts: tuple[int, ...] = (int(DEFAULT_SHUTDOWN_TIMEOUT),)
    server_maxconn: int = DEFAULT_SERVER_MAXCONN  # requests a resilient HAProxy gives a replica

    @classmethod
    def from_env(cls) -> GatewayConfig:
        env = os.environ
        return cls(
            stack=StackConfig.from_env(),
            replica_port=int(env.get("LLMDRILL_REPLICA_PORT", "18010")),
            router_port=int(env.get("LLMDRILL_ROUTER_PORT", "18030")),
            router_metrics_port=int(env.get("LLMDRILL_ROUTER_METRICS_PORT", "18031")),
            haproxy_port=int(env.get("LLMDRILL_HAPROXY_PORT", "18040")),
            second_haproxy_port=int(env.get("LLMDRILL_SECOND_HAPROXY_PORT", "18041")),
            front_port=int(env.get("LLMDRILL_FRONT_PORT", "18050")),
            shutdown_timeouts=parse_shutdown_timeouts(
                env.get(SHUTDOWN_TIMEOUT_ENV, DEFAULT_SHUTDOWN_TIMEOUT)),
            server_maxconn=int(env.get(SERVER_MAXCONN_ENV, str(DEFAULT_SERVER_MAXCONN))),
        )

    @property
    def run_dir(self) -> Path:
        return self.stack.run_dir

    @property
    def names(self) -> list[str]:
        return [replica_name(i) for i in range(self.replicas)]

    def engine_port(self, i: int) -> int:
        return self.replica_port + 10 * i

    def proxy_port(self, i: int) -> int:
        return self.replica_port + 10 * i + 1

    def shutdown_timeout(self, i: int) -> int:
        return self.shutdown_timeouts[min(i, len(self.shutdown_timeouts) - 1)]

    def engine_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.engine_port(i)}"

    def proxy_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.proxy_port(i)}"

    def servers(self) -> dict[str, str]:
        """What a gateway balances over: the replicas' Toxiproxy proxies, by name."""
        return {replica_name(i): f"127.0.0.1:{self.proxy_port(i)}"
                for i in range(self.replicas)}

    def default_port(self, kind: str) -> int:
        return self.haproxy_port if kind == HAPROXY else self.router_port

    @property
    def router_binary(self) -> Path:
        return self.stack.root / "router-venv" / "bin" / "vllm-router"


def replica_name(i: int) -> str:
    return f"replica-{i}"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- pure logic (unit-tested) -------------------------------------------------------------


def replica_core(i: int, cpus: int | None) -> int:
    return i % (cpus or 1)


def replica_command(vllm: Path, model_dir: Path, port: int, model_name: str, kv_blocks: int,
                    core: int | None, shutdown_timeout: int = 0) -> list[str]:
    """`LocalStack.start_vllm`'s command on another port, under `taskset -c core` when a
    core is given (the whole process tree: API server, EngineCore, Worker)."""
    cmd = [
        str(vllm), "serve", str(model_dir), "--load-format", "dummy",
        "--max-model-len", "512", "--dtype", "bfloat16", "--host", "127.0.0.1",
        "--port", str(port), "--served-model-name", model_name,
        "--num-gpu-blocks-override", str(kv_blocks),
        # No torch.compile: a replica the drills kill is back in about 26 s instead of
        # 35-47 s (81 s on a cold compile cache), and the tiny model does not need it.
        "--enforce-eager",
        # At SIGTERM: 0 aborts in-flight requests, N lets them finish for up to N s.
        "--shutdown-timeout", str(shutdown_timeout),
    ]
    return cmd if core is None else ["taskset", "-c", str(core), *cmd]


def replica_env(base: Mapping[str, str], cache: Path, core: int) -> dict[str, str]:
    """`LocalStack.start_vllm`'s environment, with this replica's cache and core."""
    return {
        **base,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
        "TMPDIR": str(cache / "tmp"),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        # The Worker binds its OpenMP threads to CPU 0 by default: both replicas would.
        "VLLM_CPU_OMP_THREADS_BIND": str(core),
        # A dead EngineCore leaves the API server up (/health 503, completions 500).
        "VLLM_KEEP_ALIVE_ON_ENGINE_DEATH": "1",
    }


HAPROXY_CHECKS = """\
    # A replica is out after 2 failed checks 1 s apart (1 s each), back after 2 good ones.
    # /health is 503 when vLLM's engine is dead, though its API server still accepts.
    option httpchk GET /health
    http-check expect status 200
    default-server inter 1s fall 2 rise 2 maxconn {maxconn}
    # A request that found no live replica is sent again, each time to another server:
    # refused connection, a connection closed without an answer (a dead replica behind
    # Toxiproxy looks like that), no response headers within `timeout server`, or a
    # 5xx before any byte reached the client (a replica whose engine died answers 500
    # until the checks take it out: without this its clients get those 500s).
    option redispatch 1
    retries 2
    retry-on conn-failure empty-response response-timeout 500 502 503 504
    # A request can only be sent again if HAProxy holds all of it: without this, one
    # whose body came in a second packet (httpx writes headers and body apart) was
    # already on its way, and a dead replica's empty answer reached the client."""

# Backpressure: what one replica is given at once, how long a request may wait at the
# gateway for a free slot, and the answer it gets then. Sized for the local stack (a CPU
# replica with 32 KV blocks of 128 tokens): 8 streams of up to 384 tokens fit its cache,
# so requests wait here, where they can be refused, not in the engine, where they only
# grow its queue.
QUEUE_TIMEOUT_S = 3
RETRY_AFTER_S = 1
OVERLOADED_BODY = ('{"error": {"message": "The service is overloaded: retry after '
                   f'{RETRY_AFTER_S} s.", "type": "server_overloaded", "code": 503}}}}')

HAPROXY_SHEDDING = f"""\
    # Load shedding: at most `maxconn` requests per replica (default-server above); the
    # rest wait here, and after {QUEUE_TIMEOUT_S} s without a free slot get a 503 that says when to
    # come back (OpenAI's error schema, Retry-After) instead of queueing in the engine.
    timeout queue {QUEUE_TIMEOUT_S}s
    http-error status 503 content-type application/json hdr Retry-After {RETRY_AFTER_S} \
string '{OVERLOADED_BODY}'"""

HAPROXY_NO_CHECKS = """\
    # Broken on purpose: no health checks, no retry. Every other request goes to a
    # replica whatever its state.
    retries 0"""


def haproxy_config(port: int, servers: dict[str, str], run_dir: Path, *,
                   health_checks: bool = True, socket_path: Path | None = None,
                   metrics_port: int | None = None,
                   server_maxconn: int = DEFAULT_SERVER_MAXCONN) -> str:
    """HAProxy in front of `servers` (name -> host:port) on 127.0.0.1:port, its runtime
    API on socket_path (default <run_dir>/haproxy.sock), its own Prometheus metrics on
    127.0.0.1:metrics_port/metrics when given (a gateway instance's counters, for the
    gateway instance failover drill). With health_checks it also sheds load: at most
    server_maxconn requests per replica, a 503 with Retry-After after QUEUE_TIMEOUT_S s
    in its queue. Without health_checks: no checks, no retries, no redispatch, no limit:
    the broken gateway a drill must catch (it keeps sending every other request to a dead
    or hung server, and lets the engine's queue grow)."""
    sock = socket_path or run_dir / "haproxy.sock"
    check = " check" if health_checks else ""
    policy = (HAPROXY_CHECKS.format(maxconn=server_maxconn) + "\n    option "
              "http-buffer-request\n" + HAPROXY_SHEDDING if health_checks
              else HAPROXY_NO_CHECKS)
    server_lines = "\n".join(f"    server {name} {address}{check}"
                             for name, address in servers.items())
    return f"""# Written by llmdrill.stack.gateway.
global
    stats socket {sock} mode 600 level admin
    maxconn 2000

defaults
    mode http
    timeout connect 1s
    timeout client 60s
    # A stream with no byte for 30 s is a hung replica, not a slow token.
    timeout server 30s
    timeout check 1s
    timeout http-request 10s
    timeout http-keep-alive 4s
    # A fresh connection to the replica for every request: vLLM closes idle ones after 5 s,
    # and a request sent into one it is closing fails for no fault of the replica. Every
    # request also meets its proxy's current toxics.
    option http-server-close

frontend llm
    bind 127.0.0.1:{port}
    default_backend {BACKEND}
{_metrics_frontend(metrics_port)}
backend {BACKEND}
    balance roundrobin
{policy}
{server_lines}
"""


def _metrics_frontend(port: int | None) -> str:
    if port is None:
        return ""
    return f"""
# HAProxy's own counters (built-in exporter), apart from the traffic: `proxy="llm"` is the
# gateway's; the scrapes count under `proxy="metrics"`.
frontend metrics
    bind 127.0.0.1:{port}
    http-request use-service prometheus-exporter if {{ path /metrics }}
"""


def router_command(binary: Path | str, port: int, metrics_port: int, workers: list[str], *,
                   resilient: bool = True) -> list[str]:
    """vllm-router round-robin over `workers` (URLs). resilient: a worker failing two
    health checks a second apart (1 s timeout) leaves rotation and comes back after two
    good ones; failed requests are retried on another worker; five failed requests open
    the worker's circuit breaker for 5 s. Not resilient: no retries, no circuit breaker, and a
    health check that never removes a worker (the first one at start-up only)."""
    cmd = [
        str(binary), "--host", "127.0.0.1", "--port", str(port),
        "--worker-urls", *workers, "--policy", "round_robin",
        # It waits for every worker's /health before serving; check every second, not 30.
        "--worker-startup-timeout-secs", "120", "--worker-startup-check-interval", "1",
        "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port),
        # The whole request, streams included; a CPU replica writes 512 tokens in ~1 s.
        "--request-timeout-secs", "120",
    ]
    if not resilient:
        return [*cmd, "--disable-retries", "--disable-circuit-breaker",
                "--health-check-interval-secs", "86400",
                "--health-failure-threshold", "1000000"]
    return [
        *cmd,
        "--health-check-interval-secs", "1", "--health-check-timeout-secs", "1",
        "--health-failure-threshold", "2", "--health-success-threshold", "2",
        "--retry-max-retries", "3", "--retry-initial-backoff-ms", "50",
        "--retry-max-backoff-ms", "500",
        "--cb-failure-threshold", "5", "--cb-success-threshold", "2",
        "--cb-timeout-duration-secs", "5", "--cb-window-duration-secs", "30",
    ]


def parse_server_status(show_stat: str, backend: str = BACKEND) -> dict[str, str]:
    """Server name -> status ('UP', 'DOWN', 'MAINT', 'no check', 'UP 1/2'...) from the
    CSV of HAProxy's `show stat`."""
    text = show_stat.lstrip("# ")
    statuses: dict[str, str] = {}
    for row in csv.DictReader(text.splitlines()):
        if row.get("pxname") == backend and row.get("svname") not in ("BACKEND", "FRONTEND"):
            statuses[str(row["svname"])] = str(row.get("status", ""))
    return statuses


# --- HAProxy's runtime API ----------------------------------------------------------------


def haproxy_command(sock: Path, command: str, timeout: float = 2.0) -> str:
    """One command on HAProxy's runtime API socket (e.g. `show stat`,
    `set server replicas/replica-0 state drain`); the answer as text."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(sock))
        conn.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def haproxy_servers(sock: Path) -> dict[str, str]:
    """Each server's status; {} when HAProxy does not answer on its socket."""
    try:
        return parse_server_status(haproxy_command(sock, "show stat"))
    except OSError:
        return {}


# --- one gateway, on any port -------------------------------------------------------------


def gateway_name(kind: str, port: int, config: GatewayConfig) -> str:
    """`haproxy` on its default port, `haproxy-18042` on another one (pid, log, config)."""
    if kind not in GATEWAYS:
        raise StackError(f"unknown gateway {kind!r} (choose from {', '.join(GATEWAYS)})")
    return kind if port == config.default_port(kind) else f"{kind}-{port}"


def _status(url: str, timeout: float = 2.0) -> int | None:
    try:
        return httpx.get(url, timeout=timeout).status_code
    except httpx.HTTPError:
        return None


def router_workers(url: str) -> dict[str, bool]:
    """vllm-router's workers (URL -> healthy in its eyes, from its /workers list); {} when
    it does not answer."""
    try:
        data = httpx.get(f"{url}/workers", timeout=2.0).json()
    except (httpx.HTTPError, ValueError):
        return {}
    workers = data.get("workers", []) if isinstance(data, dict) else []
    return {str(w.get("url")): w.get("is_healthy") is True for w in workers
            if isinstance(w, dict)}


@dataclass
class Gateway:
    """One gateway process: its kind, port, variant and files under the run folder."""

    kind: str
    port: int
    config: GatewayConfig
    resilient: bool = True
    # What it balances over: the replicas' proxies unless given (a front balancer over
    # gateway instances).
    upstreams: dict[str, str] | None = None

    @property
    def name(self) -> str:
        return gateway_name(self.kind, self.port, self.config)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def servers(self) -> dict[str, str]:
        return self.upstreams if self.upstreams is not None else self.config.servers()

    @property
    def metrics_port(self) -> int:
        """vllm-router's Prometheus port: 18031 for the default one, port + 1 otherwise;
        HAProxy's, port + 1000."""
        if self.kind == HAPROXY:
            return self.port + HAPROXY_METRICS_OFFSET
        if self.port == self.config.router_port:
            return self.config.router_metrics_port
        return self.port + 1

    @property
    def pidfile(self) -> Path:
        return self.config.run_dir / f"{self.name}.pid"

    @property
    def log(self) -> Path:
        return self.config.run_dir / f"{self.name}.log"

    @property
    def socket(self) -> Path:
        return self.config.run_dir / f"{self.name}.sock"

    def running(self) -> bool:
        return processes.read_pid(self.pidfile) is not None

    def answers(self) -> bool:
        """It serves: HAProxy passes a GET on to a replica's /health; vllm-router has a
        healthy worker (its own /health is 503 as soon as one worker is not)."""
        if self.kind == HAPROXY:
            return _status(f"{self.url}/health") == 200
        return any(router_workers(self.url).values())

    def all_servers_up(self) -> bool:
        """Every replica in rotation, as the gateway itself sees it."""
        if self.kind == HAPROXY:
            statuses = haproxy_servers(self.socket)
            return (set(statuses) == set(self.servers)
                    and all(s.startswith("UP") or s == "no check"
                            for s in statuses.values())
                    and self.answers())
        healthy = router_workers(self.url)
        workers = [f"http://{address}" for address in self.config.servers().values()]
        return all(healthy.get(w) for w in workers) and _status(f"{self.url}/health") == 200

    def command(self) -> list[str]:
        if self.kind == HAPROXY:
            return [str(_haproxy_binary()), "-db", "-f", str(self.spec_file)]
        workers = [f"http://{address}" for address in self.config.servers().values()]
        return router_command(self.config.router_binary, self.port, self.metrics_port,
                              workers, resilient=self.resilient)

    @property
    def spec_file(self) -> Path:
        """What it runs: HAProxy's config, vllm-router's command line."""
        suffix = ".cfg" if self.kind == HAPROXY else ".args"
        return self.config.run_dir / f"{self.name}{suffix}"

    def _spec(self) -> str:
        if self.kind == HAPROXY:
            return haproxy_config(self.port, self.servers, self.config.run_dir,
                                  health_checks=self.resilient, socket_path=self.socket,
                                  metrics_port=self.metrics_port,
                                  server_maxconn=self.config.server_maxconn)
        return "\n".join(self.command()) + "\n"

    def _write_spec(self) -> bool:
        """Writes what it must run; True when that differs from what was written before
        (another variant on the same port, or a newer llmdrill)."""
        text = self._spec()
        old = self.spec_file.read_text() if self.spec_file.exists() else None
        self.spec_file.write_text(text)
        return old != text

    def start(self, *, all_up: bool = False) -> bool:
        """Starts it unless it runs as it should (a gateway whose config or command changed
        is restarted); waits until it serves, and with all_up until every replica is in
        its rotation. True when it was (re)started."""
        if self.kind == ROUTER and not self.config.router_binary.exists():
            raise StackError(f"{self.config.router_binary} is missing; run "
                             "`python -m llmdrill.stack.gateway install`")
        self.config.run_dir.mkdir(parents=True, exist_ok=True)
        started = False
        if self._write_spec() or not self.running():
            self.stop()
            processes.spawn(self.command(), self.log, self.pidfile, cwd=self.config.run_dir)
            started = True
        processes.wait_healthy(self.name, self.answers, self.running, GATEWAY_START_TIMEOUT,
                               self.log, poll=0.2)
        if all_up:
            processes.wait_healthy(f"{self.name} (every replica in rotation)",
                                   self.all_servers_up, self.running,
                                   GATEWAY_SETTLE_TIMEOUT, self.log, poll=0.2)
        return started

    def stop(self) -> bool:
        stopped = processes.stop_pidfile(self.pidfile, grace=5)
        if self.kind == HAPROXY:
            self.socket.unlink(missing_ok=True)
        return stopped


def _haproxy_binary() -> Path:
    found = shutil.which(HAPROXY)
    return Path(found) if found else HAPROXY_BINARY


def start_gateway(kind: str, port: int, *, resilient: bool = True,
                  config: GatewayConfig | None = None) -> Gateway:
    """Starts a gateway (a broken variant when not resilient) on 127.0.0.1:port in front
    of the replicas' proxies; they must be up (`GatewayStack.up`)."""
    gateway = Gateway(kind, port, config or GatewayConfig.from_env(), resilient)
    gateway.start()
    return gateway


@contextlib.contextmanager
def running_gateway(kind: str, port: int, *, resilient: bool = True,
                    config: GatewayConfig | None = None) -> Iterator[Gateway]:
    """A gateway of a test's own for the length of a `with` block, stopped afterwards."""
    gateway = start_gateway(kind, port, resilient=resilient, config=config)
    try:
        yield gateway
    finally:
        gateway.stop()


# --- the stack ----------------------------------------------------------------------------


class GatewayStack:
    def __init__(self, config: GatewayConfig | None = None) -> None:
        self.config = config or GatewayConfig.from_env()
        self.local = LocalStack(self.config.stack)

    def gateway(self, kind: str) -> Gateway:
        return Gateway(kind, self.config.default_port(kind), self.config)

    def instances(self) -> list[Gateway]:
        """The two HAProxy instances a front balances over."""
        return [self.gateway(HAPROXY),
                Gateway(HAPROXY, self.config.second_haproxy_port, self.config)]

    def front(self, port: int | None = None, *, resilient: bool = True) -> Gateway:
        """A HAProxy over the gateway instances (gateway-0, gateway-1), not the replicas:
        health-checked and retrying, or not (the broken front a drill must catch)."""
        upstreams = {f"gateway-{i}": f"127.0.0.1:{g.port}"
                     for i, g in enumerate(self.instances())}
        return Gateway(HAPROXY, port or self.config.front_port, self.config, resilient,
                       upstreams)

    # -- install ---------------------------------------------------------------------------

    def install(self, gateways: Sequence[str] = GATEWAYS) -> None:
        self.local.install()
        if HAPROXY in gateways and not _haproxy_binary().exists():
            apt_install(["haproxy"])
        if ROUTER in gateways:
            self.install_router()

    def install_router(self) -> None:
        """vllm-router (a Rust binary in a wheel) in a venv of its own: its pins never
        meet llmdrill's or the engine's."""
        venv = self.config.stack.root / "router-venv"
        stamp = venv / f".llmdrill-installed-{ROUTER_VERSION}"
        with processes.file_lock(self.config.stack.root / "router-venv.lock"):
            if stamp.exists() and self.config.router_binary.exists():
                return
            _say(f"installing vllm-router {ROUTER_VERSION} into {venv}")
            if not (venv / "bin" / "python").exists():
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install",
                                     "-q", "--disable-pip-version-check",
                                     f"vllm-router=={ROUTER_VERSION}"])
            if result.returncode != 0 or not self.config.router_binary.exists():
                raise StackError(f"pip install vllm-router=={ROUTER_VERSION} failed")
            stamp.touch()

    # -- replicas --------------------------------------------------------------------------

    def _pidfile(self, name: str) -> Path:
        return self.config.run_dir / f"{name}.pid"

    def _log(self, name: str) -> Path:
        return self.config.run_dir / f"{name}.log"

    def replica_status(self, i: int) -> int | None:
        """/health's status code (200 healthy, 503 engine dead), None when no answer."""
        return _status(f"{self.config.engine_url(i)}/health")

    def replica_healthy(self, i: int) -> bool:
        return self.replica_status(i) == 200

    def _replica_running(self, i: int) -> bool:
        return processes.read_pid(self._pidfile(replica_name(i))) is not None

    def _command(self, i: int) -> list[str]:
        vllm = self.config.stack.root / "vllm-venv" / "bin" / "vllm"
        core = replica_core(i, os.cpu_count())
        return replica_command(vllm, self.local.model_dir, self.config.engine_port(i),
                               self.config.stack.model_name, self.config.stack.kv_blocks,
                               core if shutil.which("taskset") else None,
                               self.config.shutdown_timeout(i))

    def _command_file(self, i: int) -> Path:
        return self.config.run_dir / f"{replica_name(i)}.command.json"

    def _started_with_other_command(self, i: int) -> bool:
        """A healthy replica started with other settings (a shutdown timeout asked for now
        that it was not started with): it is restarted, so `up` gives what was asked."""
        try:
            started = json.loads(self._command_file(i).read_text())
        except (OSError, ValueError):
            return False  # started by an older llmdrill: leave it
        return bool(started != self._command(i))

    def _needs_start(self, i: int) -> bool:
        """False when replica i is healthy or still loading. An API server whose engine is
        dead (503) is stopped, and so are a dead leader's orphans (EngineCore, Worker), and
        a healthy one started with other settings."""
        pidfile = self._pidfile(replica_name(i))
        if self.replica_healthy(i):
            if not self._started_with_other_command(i):
                return False
            _say(f"{replica_name(i)}: restarting it with the settings asked for")
            processes.stop_pidfile(pidfile, grace=40)
            return True
        pid = processes.read_pid(pidfile)
        if pid is not None:
            # A drill that froze the replica (SIGSTOP) and died before thawing it.
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGCONT)
            if self.replica_status(i) not in (503, 500):
                return False  # loading: wait for it
        if processes.stop_pidfile(pidfile, grace=10):
            _say(f"{replica_name(i)}: stopped what was left of it")
        return True

    def _start_replica(self, i: int) -> None:
        vllm = self.config.stack.root / "vllm-venv" / "bin" / "vllm"
        if not vllm.exists():
            raise StackError(f"{vllm} is missing; run `llmdrill up` (it installs it)")
        name = replica_name(i)
        cache = self.config.run_dir / name / "cache"
        (cache / "tmp").mkdir(parents=True, exist_ok=True)
        core = replica_core(i, os.cpu_count())
        cmd = self._command(i)
        self._command_file(i).write_text(json.dumps(cmd))
        processes.spawn(cmd, self._log(name), self._pidfile(name),
                        env=replica_env(os.environ, cache, core),
                        cwd=self.config.run_dir, nice=self.config.stack.vllm_nice)

    def start_replicas(self) -> list[str]:
        """Starts every replica that is not healthy or loading, all at once (they load in
        parallel), then waits for all; the names of those started."""
        started = [i for i in range(self.config.replicas) if self._needs_start(i)]
        for i in started:
            self._start_replica(i)
        begin = time.time()
        for i in range(self.config.replicas):
            self._wait_replica(i)
        for i in started:
            warm_up(self.config.engine_url(i), self.config.stack.model_name)
        if started:
            _say(f"{', '.join(replica_name(i) for i in started)}: healthy "
                 f"({time.time() - begin:.0f}s)")
        return [replica_name(i) for i in started]

    def _wait_replica(self, i: int) -> None:
        name = replica_name(i)
        processes.wait_healthy(name, lambda: self.replica_healthy(i),
                               lambda: self._replica_running(i),
                               self.config.stack.start_timeout, self._log(name), poll=1.0)

    # -- proxies ---------------------------------------------------------------------------

    def ensure_proxies(self) -> None:
        """One Toxiproxy proxy per replica, enabled, with no toxic left by a drill that
        crashed: `up` gives a clean stack."""
        try:
            with ToxiproxyClient(self.config.stack.toxiproxy_url) as client:
                for i in range(self.config.replicas):
                    self._ensure_proxy(client, i)
        except LlmdrillError as exc:
            raise StackError(str(exc)) from exc

    def _ensure_proxy(self, client: ToxiproxyClient, i: int) -> None:
        name = replica_name(i)
        listen = f"127.0.0.1:{self.config.proxy_port(i)}"
        upstream = f"127.0.0.1:{self.config.engine_port(i)}"
        proxy = client.get_proxy(name)
        if proxy is not None and (proxy.get("upstream"), proxy.get("listen")) != (upstream,
                                                                                  listen):
            client.delete_proxy(name)
            proxy = None
        if proxy is None:
            client.create_proxy(name, listen, upstream)
            return
        if not proxy.get("enabled", True):
            client.set_enabled(name, True)
        for toxic in client.toxics(name):
            client.remove_toxic(name, str(toxic["name"]))
            _say(f"{name}: removed leftover toxic {toxic['name']}")

    def _remove_proxies(self) -> None:
        with contextlib.suppress(LlmdrillError), \
                ToxiproxyClient(self.config.stack.toxiproxy_url, timeout=2.0) as client:
            for i in range(self.config.replicas):
                client.delete_proxy(replica_name(i))

    # -- the whole stack -------------------------------------------------------------------

    def up(self, gateways: Sequence[str], install: bool = True, front: bool = False) -> None:
        """Starts what is not running: Toxiproxy, the replicas' proxies (cleaned), the
        replicas, then the named gateways, and waits until every gateway that runs (named
        or not) has every replica in rotation. What already runs healthy is left alone:
        after a drill killed one replica, only that one is started again, and when this
        returns the gateways send to it again (a drill's revert can rely on that). With
        front: a second HAProxy instance and the front balancer over both too (HAProxy
        among the gateways)."""
        if front and HAPROXY not in gateways:
            raise StackError("a front balancer goes over two HAProxy instances: name "
                             "haproxy among the gateways")
        if unknown := [kind for kind in gateways if kind not in GATEWAYS]:
            raise StackError(f"unknown gateway {unknown[0]!r} (choose from "
                             f"{', '.join(GATEWAYS)})")
        with processes.file_lock(self.config.run_dir / "gateway-stack.lock"):
            if install:
                self.install(gateways)
            self.local.start_toxiproxy()
            self.ensure_proxies()
            self.start_replicas()
            for kind in GATEWAYS:
                self._settle(self.gateway(kind), start=kind in gateways)
            if front:
                self._settle(self.instances()[1], start=True)
                self._settle(self.front(), start=True)

    def _settle(self, gateway: Gateway, start: bool) -> None:
        begin = time.time()
        if start and gateway.start(all_up=True):
            _say(f"{gateway.name}: started ({time.time() - begin:.1f}s)")
        elif not start and gateway.running():
            processes.wait_healthy(f"{gateway.name} (every replica in rotation)",
                                   gateway.all_servers_up, gateway.running,
                                   GATEWAY_SETTLE_TIMEOUT, gateway.log, poll=0.2)

    def down(self) -> list[str]:
        """Stops every gateway (variants on other ports too), then the replicas; removes
        the replicas' proxies. Toxiproxy itself is the local stack's (`llmdrill down`)."""
        stopped = [pid.stem for pid in sorted(self._gateway_pidfiles())
                   if processes.stop_pidfile(pid, grace=5)]
        for sock in self.config.run_dir.glob(f"{HAPROXY}*.sock"):
            sock.unlink(missing_ok=True)
        stopped += [name for name in self.config.names
                    if processes.stop_pidfile(self._pidfile(name), grace=20)]
        self._remove_proxies()
        return stopped

    def _gateway_pidfiles(self) -> list[Path]:
        run = self.config.run_dir
        return [p for kind in GATEWAYS for p in run.glob(f"{kind}*.pid")
                if p.stem == kind or p.stem.removeprefix(f"{kind}-").isdigit()]

    def urls(self, gateways: Sequence[str] = GATEWAYS) -> dict[str, str]:
        urls: dict[str, str] = {}
        for i, name in enumerate(self.config.names):
            urls[f"{name} (direct)"] = self.config.engine_url(i)
            urls[f"{name} through toxiproxy"] = self.config.proxy_url(i)
            urls[f"{name} metrics"] = f"{self.config.engine_url(i)}/metrics"
        if HAPROXY in gateways:
            haproxy = self.gateway(HAPROXY)
            urls["haproxy"] = haproxy.url
            urls["haproxy runtime API"] = str(haproxy.socket)
        if ROUTER in gateways:
            router = self.gateway(ROUTER)
            urls["vllm-router"] = router.url
            urls["vllm-router metrics"] = f"http://127.0.0.1:{router.metrics_port}/metrics"
        front = self.front()
        if front.running():
            for gateway in self.instances():
                urls[f"{gateway.name} metrics"] = (
                    f"http://127.0.0.1:{gateway.metrics_port}/metrics")
            urls["front (over the haproxy instances)"] = front.url
        urls["toxiproxy API"] = self.config.stack.toxiproxy_url
        return urls


USAGE = "usage: python -m llmdrill.stack.gateway install|up [haproxy] [vllm-router]|down"


def main(argv: list[str] | None = None) -> int:
    """`python -m llmdrill.stack.gateway install|up [GATEWAY...]|down`: `up` starts the
    replicas and the gateways named (none: the replicas and their proxies only)."""
    args = sys.argv[1:] if argv is None else argv
    stack = GatewayStack()
    try:
        if args == ["install"]:
            stack.install()
        elif args[:1] == ["up"] and set(args[1:]) <= set(GATEWAYS):
            gateways = list(dict.fromkeys(args[1:]))
            stack.up(gateways)
            for name, url in stack.urls(gateways).items():
                print(f"{name:28} {url}")
        elif args == ["down"]:
            print(f"stopped: {', '.join(stack.down()) or 'nothing was running'}")
        else:
            print(USAGE, file=sys.stderr)
            return 2
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
