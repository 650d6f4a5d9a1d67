"""Docker faults against a real Docker Engine (Debian's docker.io, started here if it is not
running), and the node-restart drill against a real vLLM in a container of its own.

The drill's engine is a second vLLM (127.0.0.1:18100, pinned to the other core, a small KV
cache), started by a fixture and removed at the end: killing the shared engine would
break everybody else's tests. The injector tests use busybox containers (2 MB, start in
a blink). Shown here:
- each Docker fault applied and reverted on a real engine, from the journal's JSON alone;
- a SIGTERM to the harness mid-drill leaves no paused, stopped or squeezed container;
- SIGKILL of harness and watchdog at random moments, then `llmdrill cleanup`: nothing left;
- the drill passes with a restart policy and retrying clients; fails without a restart
  policy (the recovery checks), and fails stream recovery for clients that do not retry;
- a `docker restart` of a server whose SIGTERM holds its streams open, silent, until the
  SIGKILL (holding_server.py, 127.0.0.1:18150, a container of its own) fails stream
  recovery on every run; the same server killed at once passes it;
- its opt-in alert checks pass against a real Prometheus (127.0.0.1:18281) scraping the
  engine in its container and a real Alertmanager (127.0.0.1:18282) notifying the
  harness's webhook receiver (127.0.0.1:18280): LlmTargetDown and LlmEngineRestarted fire
  and notify, LlmEngineRestarted resolves; an alert the kill cannot fire fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmdrill.faults.base import EnvironmentProblem, revert
from llmdrill.faults.registry import make_injector
from llmdrill.harness.progress import Progress
from llmdrill.model.context import RunContext
from llmdrill.model.evidence import EvidenceStore
from llmdrill.monitoring.rules import render
from llmdrill.scenario.models import Scenario
from llmdrill.stack.docker_stack import BASE_IMAGE, DockerStack
from tests.conftest import count
from tests.integration.conftest import (
    DOCKER_VLLM_NAME,
    DOCKER_VLLM_POLICY,
    DOCKER_VLLM_PORT,
    REPO,
    Stack,
    llmdrill,
)
from tests.integration.dockerbox import BOX_MEMORY, residue
from tests.integration.monitoring import monitoring

# Needs a Docker engine: `make docker-stack` starts one (`make docker-test` runs only these).
pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.own_engine]

TRIALS = int(os.environ.get("LLMDRILL_DOCKER_KILL_TRIALS", "6"))
VLLM_NAME = DOCKER_VLLM_NAME
SCENARIO = REPO / "scenarios" / "node-restart.yaml"


@pytest.fixture
def engine(docker_client: Any) -> Any:
    return docker_client


@pytest.fixture
def boxes(engine: Any) -> Iterator[tuple[str, list[Any]]]:
    """Two busybox containers with a label of their own and a 64 MiB memory limit."""
    label = f"t{uuid.uuid4().hex[:8]}"
    made = [engine.containers.run(BASE_IMAGE, ["sleep", "100000"], detach=True,
                                  name=f"llmdrill-box-{label}-{i}", network_mode="host",
                                  labels={"llmdrill.test": label}, mem_limit=BOX_MEMORY,
                                  memswap_limit=2 * BOX_MEMORY, stop_signal="SIGKILL")
            for i in range(2)]
    yield label, made
    for c in made:
        c.remove(force=True)


def scenario(faults: dict[str, Any], base_url: str = "http://127.0.0.1:18000",
             safety: dict[str, Any] | None = None) -> Scenario:
    return Scenario.model_validate({
        "apiVersion": "llmdrill/v1", "kind": "Scenario", "metadata": {"name": "docker-test"},
        "target": {"base_url": base_url, "model": "tiny"},
        "faults": {name: {"docker": spec} for name, spec in faults.items()},
        "phases": [{"name": "p", "duration": "1s", "faults": list(faults)}],
        "safety": safety or {},
    })


# --- the injector on a real engine ---------------------------------------------------------


@pytest.mark.parametrize(("spec", "expect"), [
    ({"action": "pause"}, lambda a: a["State"]["Paused"]),
    ({"action": "stop", "grace": "1s"}, lambda a: a["State"]["Status"] == "exited"),
    ({"action": "kill", "via": "process"}, lambda a: a["State"]["ExitCode"] == 137),
    ({"action": "kill", "via": "engine", "signal": "KILL"},
     lambda a: a["State"]["Status"] == "exited"),
    ({"action": "restart", "grace": "1s"},
     lambda a: a["State"]["Status"] == "running" and a["RestartCount"] == 0),
    ({"action": "memory", "memory": "32MiB"},
     lambda a: a["HostConfig"]["Memory"] == 32 << 20),
    ({"action": "cpu", "cpus": 0.25}, lambda a: a["HostConfig"]["CpuQuota"] == 25_000),
    ({"action": "hog", "memory": "8MiB",
      "hog_command": ["sh", "-c", "x=$(head -c {size} /dev/zero | tr '\\0' a); sleep 999"]},
     lambda a: a["State"]["Status"] == "running"),
])
def test_each_fault_is_applied_then_reverted_from_its_journal_json(
        boxes: tuple[str, list[Any]], tmp_path: Path, spec: dict[str, Any],
        expect: Any) -> None:
    _, made = boxes
    box = made[0]
    sc = scenario({"f": {"target": {"name": box.name}, **spec}})
    store = EvidenceStore(tmp_path / "e.db")
    ctx = RunContext("r1", sc, store, {}, Progress(quiet=True), tmp_path)
    injector = make_injector(ctx, "f", sc.faults["f"])
    assert box.name in "\n".join(injector.preflight())
    action = json.loads(json.dumps(injector.prepare()))  # only what the journal keeps
    injector.apply()

    def took() -> bool:
        box.reload()
        return bool(expect(box.attrs))

    # Docker learns of a death (kill via the process) from containerd a moment later.
    assert _wait_for(took, 5), f"{spec['action']} did not take: {box.attrs['State']}"
    if spec["action"] == "hog":
        assert any("sleep 999" in p[-1] for p in box.top()["Processes"])
    time.sleep(0.5)
    injector.stop()
    revert(action)
    revert(action)  # idempotent: the second finds nothing to do
    assert residue([box]) == []
    assert all("sleep 999" not in p[-1] for p in box.top()["Processes"])
    events = [d for _, _, d in store.events("docker_event")]
    if spec["action"] in ("pause", "stop", "kill", "restart"):
        assert events, "the engine's events were not recorded"
    if spec["action"] == "kill" and spec["via"] == "process":
        assert {"action": "die", "exit_code": 137} .items() <= next(
            e for e in events if e["action"] == "die").items()
    store.close()


def test_blast_radius_and_bad_targets_are_refused_before_any_change(
        boxes: tuple[str, list[Any]], tmp_path: Path) -> None:
    label, made = boxes

    def ctx_for(sc: Scenario) -> RunContext:
        return RunContext("r", sc, None, {}, Progress(quiet=True), tmp_path)

    both = {"action": "pause", "target": {"labels": {"llmdrill.test": label}}}
    sc = scenario({"f": both})
    with pytest.raises(EnvironmentProblem, match=r"would touch 2 containers.*blast radius of 1"):
        make_injector(ctx_for(sc), "f", sc.faults["f"]).preflight()
    sc = scenario({"f": {**both, "max_containers": 5}}, safety={"max_blast_radius": 1})
    with pytest.raises(EnvironmentProblem, match="blast radius of 1"):
        make_injector(ctx_for(sc), "f", sc.faults["f"]).prepare()
    sc = scenario({"f": {**both, "max_containers": 2}})
    assert len(make_injector(ctx_for(sc), "f", sc.faults["f"]).preflight()) == 3
    sc = scenario({"f": {"action": "pause", "target": {"name": "llmdrill-no-such-box"}}})
    with pytest.raises(EnvironmentProblem, match="no container named 'llmdrill-no-such-box'"):
        make_injector(ctx_for(sc), "f", sc.faults["f"]).preflight()
    made[1].pause()
    try:
        sc = scenario({"f": {"action": "stop", "target": {"name": made[1].name}}})
        with pytest.raises(EnvironmentProblem, match="it is paused, not running"):
            make_injector(ctx_for(sc), "f", sc.faults["f"]).prepare()
    finally:
        made[1].unpause()


# --- the harness stopped or killed mid-drill -------------------------------------------------

DRILL = """
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: docker-trial}
target: {base_url: "${TARGET}", model: tiny}
faults:
  freeze: {docker: {action: pause, target: {name: "${BOX0}"}}}
  squeeze: {docker: {action: memory, memory: 32MiB, target: {name: "${BOX1}"}}}
  throttle: {docker: {action: cpu, cpus: 0.2, target: {name: "${BOX0}"}}}
  halt: {docker: {action: stop, grace: 1s, target: {name: "${BOX1}"}}}
load: {users: 0}
phases:
  - {name: a, duration: "${A:-1500ms}", faults: [freeze, squeeze]}
  - {name: b, duration: 1500ms, faults: [throttle, halt]}
  - {name: c, duration: 1s}
"""


def _start(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    path = tmp_path / "drill.yaml"
    path.write_text(DRILL)
    return subprocess.Popen(
        [sys.executable, "-m", "llmdrill.cli", "run", str(path), "--quiet",
         "--out", str(tmp_path / "reports")],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)


def _env(stack: Stack, made: list[Any], **extra: str) -> dict[str, str]:
    return stack.env(TARGET=stack.vllm_url, BOX0=made[0].name, BOX1=made[1].name, **extra)


def _wait_for(what: Any, timeout: float = 30) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if what():
            return True
        time.sleep(0.1)
    return False


def test_sigterm_mid_drill_leaves_no_paused_stopped_or_squeezed_container(
        stack: Stack, boxes: tuple[str, list[Any]], tmp_path: Path) -> None:
    _, made = boxes
    proc = _start(tmp_path, _env(stack, made, A="60s"))
    assert _wait_for(lambda: {"paused", "memory"} <= {w for r in residue(made)
                                                      for w in r.split()}), \
        f"the faults were never applied: {residue(made)}"
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    assert residue(made) == []
    run = next(p for p in (tmp_path / "reports").iterdir() if p.is_dir())
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "aborted"
    assert "SIGTERM" in result["abort_reason"]
    assert {f["name"] for f in result["faults"] if f["reverted_at"]} == {"freeze", "squeeze"}


def test_sigkill_at_random_moments_then_cleanup_leaves_nothing(
        stack: Stack, boxes: tuple[str, list[Any]], tmp_path: Path) -> None:
    _, made = boxes
    rng = random.Random(int(os.environ.get("LLMDRILL_KILL_SEED", "0")) or None)
    with_faults = 0
    for trial in range(TRIALS):
        trial_dir = tmp_path / f"trial-{trial}"
        trial_dir.mkdir()
        proc = _start(trial_dir, _env(stack, made))
        time.sleep(rng.uniform(0.5, 4.5))
        # The harness and its watchdog together: only the journal on disk remains.
        out = subprocess.run(["pgrep", "-f", f"llmdrill.harness.watchdog {trial_dir}"],
                             capture_output=True, text=True).stdout
        for pid in out.split():
            os.kill(int(pid), signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        if residue(made):
            with_faults += 1
        done = llmdrill("cleanup", env=stack.env())
        assert done.returncode == 0, done.stdout + done.stderr
        assert residue(made) == [], f"trial {trial}: left behind after cleanup"
        count("docker kill -9 trials")
    print(f"\ndocker kill -9 trials: {TRIALS}, with faults in place at the kill: "
          f"{with_faults}, left after cleanup: 0")
    assert with_faults >= TRIALS // 4


# --- the node-restart drill on a real vLLM in a container -------------------------------------


@pytest.fixture
def vllm(docker_vllm: DockerStack) -> DockerStack:
    """The session's engine container (restart policy DOCKER_VLLM_POLICY)."""
    return docker_vllm


# Shorter than the scenario's defaults (15s, 110s), with room for a restart here (25-50s
# to healthy): the Docker tests must fit the CI budget.
TEST_PHASES = {"BASELINE_PHASE": "10s", "CRASH_PHASE": "75s"}


def drill(stack: Stack, vllm: DockerStack, tmp_path: Path, scenario_path: Path = SCENARIO,
          **env: str) -> dict[str, Any]:
    run = llmdrill("run", str(scenario_path), "--quiet", "--out", str(tmp_path / "reports"),
                   env=stack.env(LLMDRILL_DOCKER_TARGET_URL=vllm.config.url,
                                 LLMDRILL_DOCKER_METRICS_URL=f"{vllm.config.url}/metrics",
                                 LLMDRILL_DOCKER_CONTAINER=VLLM_NAME,
                                 **{**TEST_PHASES, **env}),
                   timeout=600)
    results = list((tmp_path / "reports").glob("*/result.json"))
    assert results, run.stdout + run.stderr
    result: dict[str, Any] = json.loads(results[0].read_text())
    result["_exit"] = run.returncode
    return result


def checks_of(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in result["checks"]}


def wait_healthy(vllm: DockerStack, timeout: float = 300) -> None:
    assert _wait_for(vllm.vllm_healthy, timeout), "the vLLM container did not come back"


def test_node_restart_passes_with_a_restart_policy_and_retrying_clients(
        stack: Stack, vllm: DockerStack, tmp_path: Path) -> None:
    result = drill(stack, vllm, tmp_path)
    checks = checks_of(result)
    summary = json.dumps({k: v["summary"] for k, v in checks.items()}, indent=1)
    assert result["status"] == "passed", summary
    recovery, warm = checks["stream-recovery"]["observed"], checks["warm-up"]["observed"]
    assert recovery["in_flight"] >= 1 and recovery["retryable"] >= 1
    assert recovery["retryable_succeeded"] == recovery["retryable"]
    actions = [e["action"] for e in recovery["docker_events"]]
    assert "die" in actions and "start" in actions  # the restart policy brought it back
    die = next(e for e in recovery["docker_events"] if e["action"] == "die")
    assert die["exit_code"] == 137
    # Health polls (every 0.5s, each up to its timeout) and token probes run apart: the
    # first token may come a poll or so before the next poll sees /health answer.
    assert 0 < warm["healthy_after_s"] <= warm["first_token_after_s"] + 3.0, warm
    assert warm["ttft_back_after_s"] is not None
    print(f"\nnode restart: healthy after {warm['healthy_after_s']}s, first token after "
          f"{warm['first_token_after_s']}s, TTFT back after {warm['ttft_back_after_s']}s")
    wait_healthy(vllm)


def test_a_client_without_retries_fails_stream_recovery(
        stack: Stack, vllm: DockerStack, tmp_path: Path) -> None:
    wait_healthy(vllm)
    result = drill(stack, vllm, tmp_path, CLIENT_MAX_ATTEMPTS="1")
    checks = checks_of(result)
    recovery = checks["stream-recovery"]
    assert result["status"] == "failed"
    assert recovery["status"] == "failed", recovery["summary"]
    assert "clients do not retry through the restart" in recovery["summary"]
    assert recovery["observed"]["retryable_failed_by_class"].get("connect", 0) >= 1
    wait_healthy(vllm)


def test_a_container_without_a_restart_policy_fails_the_recovery_checks(
        stack: Stack, vllm: DockerStack, engine: Any, tmp_path: Path) -> None:
    wait_healthy(vllm)
    container = engine.containers.get(VLLM_NAME)
    container.update(restart_policy={"Name": "no"})
    try:
        result = drill(stack, vllm, tmp_path, CRASH_PHASE="40s")
        checks = checks_of(result)
        for name in ("stream-recovery", "warm-up"):
            assert checks[name]["status"] == "failed", checks[name]["summary"]
            assert "did not come back" in checks[name]["summary"]
        # The revert started what the kill left stopped.
        container.reload()
        assert container.status in ("running", "restarting")
        fault = next(f for f in result["faults"] if f["name"] == "crash")
        assert fault["reverted_at"] and not fault.get("revert_error")
    finally:
        container.update(restart_policy={"Name": DOCKER_VLLM_POLICY})
    wait_healthy(vllm)
    assert httpx.get(f"{vllm.config.url}/health", timeout=5).status_code == 200


# --- the negative control: a server whose graceful shutdown hangs, every time ---------------

HOLDING_PORT = 18150
HOLDING_NAME = "llmdrill-test-holding"
HOLDING_SERVER = Path(__file__).resolve().with_name("holding_server.py")
HOLDING_GRACE = 10  # seconds between SIGTERM and SIGKILL: twice the check's 5s deadline
# The load takes 5-8s to start here: a baseline of 12s still sees some 20 requests.
HOLDING_PHASES = {"BASELINE_PHASE": "12s", "CRASH_PHASE": "30s", "AFTER_PHASE": "5s"}


def holding_healthy() -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{HOLDING_PORT}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def holding(docker_client: Any) -> Iterator[str]:
    """tests/integration/holding_server.py in a busybox container (host network,
    127.0.0.1:18150), run by the host's Python mounted read-only like the vLLM container's:
    at SIGTERM it holds its streams open, silent, until Docker's SIGKILL. Its URL."""
    import docker

    with contextlib.suppress(docker.errors.NotFound):  # left by a crashed run
        docker_client.containers.get(HOLDING_NAME).remove(force=True)
    if holding_healthy():
        pytest.fail(f"something already serves 127.0.0.1:{HOLDING_PORT}")
    home = Path(sys.base_prefix).resolve()
    python = home / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    mounts = {"/usr", "/lib", "/lib64", "/etc", str(HOLDING_SERVER.parent)}
    if not any(home.is_relative_to(m) for m in mounts):
        mounts.add(str(home))
    container = docker_client.containers.run(
        BASE_IMAGE, [str(python), str(HOLDING_SERVER), "--port", str(HOLDING_PORT),
                     "--model", "tiny", "--chunk-interval", "0.02", "--tokens-per-chunk", "8"],
        name=HOLDING_NAME, detach=True, network_mode="host",
        volumes={m: {"bind": m, "mode": "ro"} for m in mounts},
        environment={"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"},
        # Brought back after a crash (the kill control below); `docker restart` needs none.
        restart_policy={"Name": "unless-stopped"},
        labels={"llmdrill.test": "holding"})
    try:
        if not _wait_for(holding_healthy, 60):
            container.reload()
            logs = container.logs(tail=20).decode(errors="replace")
            pytest.fail(f"the holding server did not start ({container.status}):\n{logs}")
        yield f"http://127.0.0.1:{HOLDING_PORT}"
    finally:
        container.remove(force=True)


def holding_drill(url: str, tmp_path: Path, **env: str) -> dict[str, Any]:
    run = llmdrill("run", str(SCENARIO), "--quiet", "--out", str(tmp_path / "reports"),
                   env={**os.environ, "LLMDRILL_DOCKER_TARGET_URL": url,
                        "LLMDRILL_DOCKER_METRICS_URL": f"{url}/metrics",
                        "LLMDRILL_DOCKER_CONTAINER": HOLDING_NAME, **HOLDING_PHASES, **env},
                   timeout=600)
    results = list((tmp_path / "reports").glob("*/result.json"))
    assert results, run.stdout + run.stderr
    result: dict[str, Any] = json.loads(results[0].read_text())
    result["_exit"] = run.returncode
    return result


def test_a_restart_whose_sigterm_leaves_streams_hanging_fails_stream_recovery(
        holding: str, tmp_path: Path) -> None:
    """`docker restart` (SIGTERM, SIGKILL 10s later) of a server that holds its streams
    open, silent, from SIGTERM to SIGKILL: the clients of the streams in flight hang for
    the whole grace period, and stream-recovery (5s deadline) must fail. Every run: no
    retry, no skip (vLLM itself ends its streams at SIGTERM in some runs)."""
    assert _wait_for(holding_healthy, 60)
    result = holding_drill(holding, tmp_path, NODE_ACTION="restart",
                           RESTART_GRACE=f"{HOLDING_GRACE}s")
    checks = checks_of(result)
    summary = json.dumps({k: v["summary"] for k, v in checks.items()}, indent=1)
    assert checks["baseline-healthy"]["status"] == "passed", summary  # a fair comparison
    recovery = checks["stream-recovery"]
    assert result["status"] == "failed" and result["_exit"] == 1, summary
    assert recovery["status"] == "failed", summary
    assert "hung past 5s after the kill" in recovery["summary"], summary
    observed = recovery["observed"]
    assert observed["in_flight_hung"] >= 1, summary
    # Held until the SIGKILL, not ended by a timeout of the client's own (read: 30s).
    assert HOLDING_GRACE - 1 <= observed["in_flight_last_end_s"] <= HOLDING_GRACE + 10, summary
    events = observed["docker_events"]
    actions = [(e["action"], e.get("signal")) for e in events]
    assert ("kill", 15) in actions and ("kill", 9) in actions, actions
    die = next(e for e in events if e["action"] == "die")
    assert die["exit_code"] == 137 and die["at_s"] >= HOLDING_GRACE - 1, events
    assert observed.get("healthy_after_s") is not None, summary  # it came back: only the hang
    print(f"\nholding server restart: {observed['in_flight_hung']}/{observed['in_flight']} "
          f"streams in flight hung, the last ended {observed['in_flight_last_end_s']}s after "
          f"the SIGTERM; stream-recovery: {recovery['summary']}")
    assert _wait_for(holding_healthy, 60)


def test_the_holding_server_killed_at_once_passes_stream_recovery(
        holding: str, tmp_path: Path) -> None:
    """The control of the control: the same server, killed (SIGKILL, its restart policy
    brings it back), cuts its streams at once and passes: the failure above is the hang."""
    assert _wait_for(holding_healthy, 60)
    result = holding_drill(holding, tmp_path, NODE_ACTION="kill", CRASH_PHASE="20s")
    recovery = checks_of(result)["stream-recovery"]
    assert recovery["status"] == "passed", recovery["summary"]
    observed = recovery["observed"]
    assert observed["in_flight"] >= 1 and observed["in_flight_hung"] == 0
    assert observed["in_flight_last_end_s"] < 5
    assert _wait_for(holding_healthy, 60)


# --- the drill's opt-in alert checks, with a real Prometheus and Alertmanager -------------------

WEBHOOK = "127.0.0.1:18280"
PROMETHEUS_PORT, ALERTMANAGER_PORT = 18281, 18282
# The crash phase must outlast the restart (25-50s here) and restart_window the crash
# phase: LlmEngineRestarted fires once the new process start time is scraped, is still
# firing at the crash's revert (65s after the kill), and resolves when the old start time
# leaves the window (75s after the kill), in the after phase.
ALERT_PHASES = {"CRASH_PHASE": "65s", "AFTER_PHASE": "18s", "ALERT_RESOLVE_WITHIN": "15s"}
ALERT_RULES = render({"for": "1s", "for_down": "1s", "window": "10s",
                      "tokens_baseline_window": "30s", "restart_window": "75s"})
ALERTMANAGER = f"""
route: {{receiver: harness, group_by: [alertname], group_wait: 0s, group_interval: 1s,
        repeat_interval: 1h}}
receivers:
  - name: harness
    webhook_configs: [{{url: "http://{WEBHOOK}/", send_resolved: true}}]
"""
ALERT_CHECKS = ["baseline-no-false-alarms", "crash-target-down-alert-fires",
                "crash-restart-alert-fires", "after-target-down-resolved",
                "after-restart-alert-resolves"]


def test_node_restart_alerts_fire_notify_and_resolve(
        stack: Stack, vllm: DockerStack, tmp_path: Path) -> None:
    wait_healthy(vllm)
    # The shipped drill plus one check a plain Docker host cannot pass: there is no
    # cAdvisor, so the OOM alert has no metric and the kill cannot make it fire.
    text = SCENARIO.read_text()
    assert text.count("\nchecks:\n") == 1
    path = tmp_path / "node-restart.yaml"
    path.write_text(text.replace("\nchecks:\n", "\nchecks:\n  - {name: crash-oom-alert-fires, "
                                 "phase: crash, alert_fires: {alert: LlmEngineOomKilled, "
                                 "fault: crash, within: 15s}}\n"))
    engine = f"127.0.0.1:{DOCKER_VLLM_PORT}"
    with monitoring(tmp_path / "monitoring", ALERT_RULES, engine=engine,
                    alertmanager_config=ALERTMANAGER, prometheus_port=PROMETHEUS_PORT,
                    alertmanager_port=ALERTMANAGER_PORT) as mon:

        def scraped() -> bool:  # the old process start time must be in Prometheus
            data = httpx.get(f"{mon.prometheus_url}/api/v1/query",
                             params={"query": 'up{job="vllm"} == 1'}, timeout=5).json()
            return bool(data["data"]["result"])

        assert _wait_for(scraped, 30), "Prometheus did not scrape the engine"
        result = drill(stack, vllm, tmp_path, scenario_path=path, LLMDRILL_ALERTS="true",
                       LLMDRILL_PROMETHEUS_URL=mon.prometheus_url,
                       LLMDRILL_ALERTMANAGER_URL=mon.alertmanager_url,
                       LLMDRILL_WEBHOOK_LISTEN=WEBHOOK, **ALERT_PHASES)
    checks = checks_of(result)
    summary = json.dumps({k: v["summary"] for k, v in checks.items()}, indent=1)
    assert {n: checks[n]["status"] for n in ALERT_CHECKS} == dict.fromkeys(
        ALERT_CHECKS, "passed"), summary
    down, restarted = (checks["crash-target-down-alert-fires"]["observed"],
                       checks["crash-restart-alert-fires"]["observed"])
    resolved = checks["after-restart-alert-resolves"]["observed"]
    assert down["notified_after_s"] is not None and down["alertmanager_after_s"] is not None
    assert restarted["notified_after_s"] is not None
    assert resolved["state_at_revert"] == "firing" and resolved["notified_after_s"] is not None
    assert restarted["firing_after_s"] > down["firing_after_s"]  # down first, then back
    oom = checks["crash-oom-alert-fires"]
    assert oom["status"] == "failed"
    assert oom["summary"].startswith("rule never reached firing: LlmEngineOomKilled was "
                                     "inactive"), oom["summary"]
    print(f"\nnode restart alerts: target down firing +{down['firing_after_s']}s, notified "
          f"+{down['notified_after_s']}s; restarted firing +{restarted['firing_after_s']}s, "
          f"notified +{restarted['notified_after_s']}s; resolved "
          f"+{resolved['resolved_after_s']}s after the revert, notified "
          f"+{resolved['notified_after_s']}s")
    wait_healthy(vllm)
