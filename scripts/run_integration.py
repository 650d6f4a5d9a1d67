"""`make integration`: every integration test but the Kubernetes ones, in two pytest
processes side by side, with the shared services started once for both.

- beside: the tests marked `own_engine` drill the Docker engine container of their own
  (127.0.0.1:18100, pinned to the second core): node restarts, OOM kills, the compose
  topology. Most of their time is an engine restarting. When they are done, the gateway
  stack (two vLLM replicas of their own, one per core, behind HAProxy and vllm-router)
  starts in their place, while the tests that need no engine at all (marker `no_engine`:
  hostile stub servers, config validation) run, and the gateway tests (marker `gateway`)
  run once the main half is done: drills beside it, three engines on two cores, overran
  their phases.
- main: everything else, on the shared local engine (niced, its worker on the first
  core) and its Toxiproxy proxy, which neither beside lane touches.

The local stack, the Docker engine and the gateway stack are started here when they were
not running, so no pytest stops them under another, and stopped at the end (only what was
started here). The beside lanes' output is printed when they end; the exit code is the
first non-zero one (pytest's 5, no test collected, included).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from llmdrill.stack.docker_stack import DockerStack
from llmdrill.stack.gateway import HAPROXY, ROUTER, SHUTDOWN_TIMEOUT_ENV, GatewayStack
from llmdrill.stack.local import LocalStack

REPO = Path(__file__).resolve().parent.parent
# The gateway_stack fixture (tests/integration/conftest.py) leaves the stack up with this.
KEEP_GATEWAY_STACK_ENV = "LLMDRILL_KEEP_GATEWAY_STACK"
GATEWAY_SHUTDOWN_TIMEOUTS = "30,0"  # as the fixture sets them (else it restarts replicas)
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=15"]
MAIN = "integration and not kubernetes and not gateway and not own_engine and not no_engine"
BESIDE = "integration and own_engine and not kubernetes and not gateway"
NO_ENGINE = "integration and no_engine and not own_engine and not kubernetes and not gateway"
GATEWAY = "gateway and not kubernetes"


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


def _pytest(marker: str, log: Path) -> subprocess.Popen[bytes]:
    """A lane's pytest, its output in `log`, every test's duration in a JUnit file beside
    it (where the next trim of the suite's time starts)."""
    with log.open("ab") as out:
        return subprocess.Popen([*PYTEST, "-m", marker, f"--junitxml={log.with_suffix('.xml')}"],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def main() -> int:
    local, docker = LocalStack(), DockerStack()
    started_local = not (local.vllm_healthy() and local.toxiproxy_healthy())
    started_docker = not docker.engine_ok()
    artifacts = Path(os.environ.get("LLMDRILL_TEST_ARTIFACTS", REPO / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    log = artifacts / "integration-own-engine.log"
    no_engine_log = artifacts / "integration-no-engine.log"
    gateway_log = artifacts / "integration-gateway.log"
    for path in (log, no_engine_log, gateway_log):
        path.unlink(missing_ok=True)
    no_engine: subprocess.Popen[bytes] | None = None
    beside: subprocess.Popen[bytes] | None = None
    gateway_started = False
    main_proc: subprocess.Popen[bytes] | None = None
    began = time.time()
    try:
        local.up(install=False)
        local.ensure_proxy()
        docker.start_engine()
        docker.build_image()
        beside = _pytest(BESIDE, log)
        _say(f"the `own_engine` tests run beside these (log: {log}), then the gateway "
             f"tests (log: {gateway_log})")
        main_proc = subprocess.Popen(
            [*PYTEST, "-m", MAIN, f"--junitxml={artifacts / 'integration-main.xml'}"],
            cwd=REPO, start_new_session=True)
        beside_code = beside.wait()
        _say(f"`own_engine` half done ({beside_code}) after {time.time() - began:.0f}s; "
             "the gateway stack starts beside the main half, and the `no_engine` tests "
             f"run meanwhile (log: {no_engine_log})")
        # Hostile stubs and config checks: the shared engine's drills do not see them, and
        # they fill the time the gateway replicas take to start instead of the main half's.
        no_engine = _pytest(NO_ENGINE, no_engine_log)
        # One gateway stack for the gateway tests, started here while the main half
        # finishes and stopped at the end (below). Its tests wait for the main half: with
        # three engines on the two cores, drills beside it overran their phases (a replica
        # restart took over 70 s) and a baseline with 18 % timeouts failed.
        os.environ[KEEP_GATEWAY_STACK_ENV] = "1"
        os.environ[SHUTDOWN_TIMEOUT_ENV] = GATEWAY_SHUTDOWN_TIMEOUTS
        gateway = GatewayStack()
        gateway_started = not gateway.replica_healthy(0)
        gateway.up([HAPROXY, ROUTER], install=False)
        no_engine_code = no_engine.wait()
        _say(f"`no_engine` tests done ({no_engine_code}) after {time.time() - began:.0f}s")
        main_code = main_proc.wait()
        _say(f"main half done ({main_code}) after {time.time() - began:.0f}s; the gateway "
             "tests start")
        beside = _pytest(GATEWAY, gateway_log)
        gateway_code = beside.wait()
        for path in (log, no_engine_log, gateway_log):
            print(path.read_text(errors="replace"), flush=True)
        _say(f"gateway tests done ({gateway_code}); all took {time.time() - began:.0f}s")
        return main_code or beside_code or no_engine_code or gateway_code
    except KeyboardInterrupt:
        return 130
    finally:
        for proc in (main_proc, beside, no_engine):
            if proc is not None:
                _stop(proc)
        if gateway_started:
            GatewayStack().down()
        if started_local:
            local.down()
        if started_docker:
            docker.stop_engine()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
