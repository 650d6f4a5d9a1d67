"""`make integration`: every integration test but the Kubernetes ones, in two pytest
processes side by side, with the shared services started once for both.

- beside: the tests marked `own_engine` drill the Docker engine container of their own
  (127.0.0.1:18100, pinned to the second core): node restarts, OOM kills, the compose
  topology. Most of their time is an engine restarting.
- main: everything else, on the shared local engine (niced, its worker on the first
  core) and its Toxiproxy proxy, which the `own_engine` tests never touch.

Run one after the other they took about 39 minutes here; side by side about 22. The local
stack and the Docker engine are started here when they were not running, so neither
pytest stops them under the other, and stopped at the end (only what was started here).
The beside half's output is printed when it ends; the exit code is the first non-zero
one (pytest's 5, no test collected, included).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from llmdrill.stack.docker_stack import DockerStack
from llmdrill.stack.local import LocalStack

REPO = Path(__file__).resolve().parent.parent
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=15"]
MAIN = "integration and not kubernetes and not gateway and not own_engine"
BESIDE = "integration and own_engine and not kubernetes and not gateway"


def _say(message: str) -> None:
    print(f"run_integration: {message}", flush=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # pytest and the drills it runs
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> int:
    local, docker = LocalStack(), DockerStack()
    started_local = not (local.vllm_healthy() and local.toxiproxy_healthy())
    started_docker = not docker.engine_ok()
    log = Path(os.environ.get("LLMDRILL_TEST_ARTIFACTS", REPO / "test-artifacts")) / (
        "integration-own-engine.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    beside: subprocess.Popen[bytes] | None = None
    began = time.time()
    try:
        local.up(install=False)
        local.ensure_proxy()
        docker.start_engine()
        docker.build_image()
        with log.open("wb") as out:
            beside = subprocess.Popen([*PYTEST, "-m", BESIDE], cwd=REPO, stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        _say(f"the `own_engine` tests run beside these (log: {log})")
        main_code = subprocess.run([*PYTEST, "-m", MAIN], cwd=REPO).returncode
        _say(f"main half done ({main_code}) after {time.time() - began:.0f}s; waiting for "
             "the `own_engine` half")
        beside_code = beside.wait()
        print(log.read_text(errors="replace"), flush=True)
        _say(f"`own_engine` half done ({beside_code}); both took {time.time() - began:.0f}s")
        return main_code or beside_code
    except KeyboardInterrupt:
        return 130
    finally:
        if beside is not None:
            _stop(beside)
        if started_local:
            local.down()
        if started_docker:
            docker.stop_engine()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
