"""The OOM drill against a real vLLM in a container (127.0.0.1:18100, one core of its own),
on a real Docker Engine: its memory limit squeezed, a hog inside, the engine's processes
made the OOM killer's choice. Shown here:
- passes with a restart policy that restarts after an OOM (`unless-stopped`): the OOM
  is observed and timed, caps hold before and after, the engine is back in time, no
  request lost silently; the squeeze, the hog and the scores are undone;
- a squeeze that never OOMs (a small hog) fails `oom_observed` with a clear message, and
  still leaves the container as it was (limits, scores, no hog);
- no restart policy: the recovery checks fail; the revert starts the container again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from llmdrill.stack.docker_stack import DockerStack
from tests.integration.conftest import (
    DOCKER_VLLM_NAME,
    DOCKER_VLLM_POLICY,
    REPO,
    Stack,
    llmdrill,
)

pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.own_engine]

VLLM_NAME = DOCKER_VLLM_NAME
SCENARIO = REPO / "scenarios" / "oom.yaml"
LIMIT = 6 * 1024**3  # DockerStackConfig.memory
POLICY = DOCKER_VLLM_POLICY


@pytest.fixture
def engine(docker_client: Any) -> Any:
    return docker_client


@pytest.fixture
def vllm(docker_vllm: DockerStack) -> DockerStack:
    """The session's engine container, restart policy `unless-stopped` (POLICY)."""
    return docker_vllm


# Shorter than the scenario's defaults (15s, 100s), with room for the OOM (5-9s after the
# hog starts) and the restart (25-50s to healthy): the Docker tests must fit the CI budget.
TEST_PHASES = {"BASELINE_PHASE": "10s", "OOM_PHASE": "75s", "AFTER_PHASE": "8s"}


def drill(stack: Stack, vllm: DockerStack, tmp_path: Path, **env: str) -> dict[str, Any]:
    run = llmdrill("run", str(SCENARIO), "--quiet", "--out", str(tmp_path / "reports"),
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


def summaries(result: dict[str, Any]) -> str:
    return json.dumps({c["name"]: [c["status"], c["summary"]] for c in result["checks"]},
                      indent=1)


def wait_healthy(vllm: DockerStack, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if vllm.vllm_healthy():
            return
        time.sleep(1)
    pytest.fail("the vLLM container did not come back")


def left_behind(engine: Any) -> list[str]:
    """What the drill could have left on the engine's container: a squeezed limit, a hog,
    raised OOM scores."""
    container = engine.containers.get(VLLM_NAME)
    hc = container.attrs["HostConfig"]
    left = []
    if hc["Memory"] != LIMIT or hc["MemorySwap"] != LIMIT:
        left.append(f"memory {hc['Memory']}/{hc['MemorySwap']}")
    if container.status == "running":
        if any("bytearray" in " ".join(p) for p in container.top()["Processes"]):
            left.append("the hog runs")
        _, out = container.exec_run(["sh", "-c", "cat /proc/[0-9]*/oom_score_adj"])
        raised = [s for s in out.decode().split() if s.lstrip("-").isdigit() and int(s) > 0]
        if raised:
            left.append(f"oom_score_adj raised: {raised}")
    return left


def test_a_squeeze_that_never_ooms_fails_oom_observed_and_is_undone(
        stack: Stack, vllm: DockerStack, engine: Any, tmp_path: Path) -> None:
    wait_healthy(vllm)
    result = drill(stack, vllm, tmp_path, HOG_MEMORY="256MiB", BASELINE_PHASE="8s",
                   OOM_PHASE="12s", AFTER_PHASE="3s")
    checks = checks_of(result)
    oom = checks["oom-observed"]
    assert oom["status"] == "failed", summaries(result)
    assert oom["summary"].startswith("no OOM: the kernel killed nothing"), oom["summary"]
    assert "squeeze the limit lower or give the hog more memory" in oom["summary"]
    assert oom["observed"]["oom_events"] == 0
    # No OOM, so nothing went down: stream recovery has nothing to judge (not a pass).
    assert checks["stream-recovery"]["status"] == "inconclusive"
    assert "no evidence the engine went down" in checks["stream-recovery"]["summary"]
    assert result["status"] == "failed"  # the failed oom_observed decides the run
    assert checks["caps-before"]["status"] == "passed", summaries(result)
    assert checks["caps-after"]["status"] == "passed", summaries(result)
    faults = {f["name"]: f for f in result["faults"]}
    assert all(f["reverted_at"] and not f.get("revert_error") for f in faults.values())
    assert left_behind(engine) == []


def test_oom_drill_passes_with_a_restart_policy(
        stack: Stack, vllm: DockerStack, engine: Any, tmp_path: Path) -> None:
    wait_healthy(vllm)
    result = drill(stack, vllm, tmp_path)
    checks = checks_of(result)
    assert result["status"] == "passed", summaries(result)
    oom = checks["oom-observed"]["observed"]
    assert oom["oom_events"] >= 1 and oom["first_oom_after_s"] > 0
    assert oom["restarted_after_s"] > oom["died_after_s"] > oom["first_oom_after_s"]
    warm = checks["warm-up"]["observed"]
    print(f"\noom: first OOM {oom['first_oom_after_s']}s after the hog, died after "
          f"{oom['died_after_s']}s (exit {oom['exit_code']}), healthy after "
          f"{warm['healthy_after_s']}s, first token after {warm['first_token_after_s']}s")
    wait_healthy(vllm)
    assert left_behind(engine) == []


def test_without_a_restart_policy_the_recovery_checks_fail(
        stack: Stack, vllm: DockerStack, engine: Any, tmp_path: Path) -> None:
    wait_healthy(vllm)
    container = engine.containers.get(VLLM_NAME)
    container.update(restart_policy={"Name": "no"})
    try:
        result = drill(stack, vllm, tmp_path, OOM_PHASE="30s", AFTER_PHASE="3s")
        checks = checks_of(result)
        assert checks["oom-observed"]["status"] == "passed", summaries(result)
        for name in ("stream-recovery", "warm-up"):
            assert checks[name]["status"] == "failed", checks[name]["summary"]
            assert "did not come back" in checks[name]["summary"]
        # The hog's revert started the container the OOM had left exited.
        container.reload()
        assert container.status in ("running", "restarting")
        assert all(f["reverted_at"] and not f.get("revert_error") for f in result["faults"])
    finally:
        container.update(restart_policy={"Name": POLICY})
    wait_healthy(vllm)
    assert left_behind(engine) == []
