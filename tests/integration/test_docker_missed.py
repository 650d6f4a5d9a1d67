"""Verdicts that cannot lie, Docker drills: node-restart and oom with their fault aimed at a
bystander (a busybox container running `sleep`, serving nothing, on no network) while the
load goes to the session's vLLM container. Nothing the clients use dies or runs out of
memory, and the run must not pass (the healthy passes are in test_node_restart.py and
test_oom.py). The bystander is removed at the end, and nothing is left on it meanwhile."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmdrill.stack.docker_stack import BASE_IMAGE, DockerStack
from tests.integration.conftest import DOCKER_VLLM_NAME, REPO, Stack, llmdrill
from tests.integration.dockerbox import BOX_MEMORY, residue

pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.own_engine]

# Short phases, and the way-back limits well under them (the engine never goes down here,
# so no limit is ever approached): each run takes about 35 s.
SHORT = {"BASELINE_PHASE": "8s", "AFTER_PHASE": "3s", "BACK_WITHIN": "10s",
         "HEALTHY_WITHIN": "10s", "FIRST_TOKEN_WITHIN": "11s", "TTFT_WITHIN": "12s"}


@pytest.fixture
def bystander(docker_client: Any) -> Iterator[Any]:
    """A busybox container running `sleep` on no network, with the host's /usr and /lib
    mounted read-only so that the oom drill's hog (python3) can run in it. No restart
    policy: what the fault does to it stays until the fault's revert."""
    ro = {p: {"bind": p, "mode": "ro"} for p in ("/usr", "/lib", "/lib64")}
    box = docker_client.containers.run(
        BASE_IMAGE, ["sleep", "100000"], detach=True,
        name=f"llmdrill-bystander-{uuid.uuid4().hex[:8]}", network_mode="none",
        volumes=ro, environment={"PATH": "/usr/bin:/bin"},
        labels={"llmdrill.test": "bystander"}, mem_limit=BOX_MEMORY,
        memswap_limit=2 * BOX_MEMORY, stop_signal="SIGKILL")
    try:
        yield box
    finally:
        box.remove(force=True)


def drill(stack: Stack, vllm: DockerStack, box: Any, scenario: str, tmp_path: Path,
          **env: str) -> tuple[int, dict[str, Any], str]:
    proc = llmdrill("run", str(REPO / "scenarios" / scenario), "--out",
                    str(tmp_path / "reports"),
                    env=stack.env(LLMDRILL_DOCKER_TARGET_URL=vllm.config.url,
                                  LLMDRILL_DOCKER_METRICS_URL=f"{vllm.config.url}/metrics",
                                  LLMDRILL_DOCKER_CONTAINER=box.name, **SHORT, **env),
                    timeout=300)
    results = list((tmp_path / "reports").glob("*/result.json"))
    assert len(results) == 1, proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads(results[0].read_text())
    return proc.returncode, result, proc.stdout[-3000:] + proc.stderr[-3000:]


def told(result: dict[str, Any], output: str) -> str:
    return json.dumps({c["name"]: [c["status"], c["summary"]] for c in result["checks"]}
                      | {f"fault {f['name']}": [f["effect"], f["effect_detail"]]
                         for f in result["faults"]}
                      | {"_status": [result["status"], result.get("abort_reason")]},
                      indent=1) + output


def engine_untouched(docker_client: Any, vllm: DockerStack) -> None:
    container = docker_client.containers.get(DOCKER_VLLM_NAME)
    assert container.status == "running" and vllm.vllm_healthy()


def test_node_restart_killing_a_bystander_is_not_a_pass(
        stack: Stack, docker_vllm: DockerStack, docker_client: Any, bystander: Any,
        tmp_path: Path) -> None:
    assert docker_vllm.vllm_healthy()
    restarts = docker_client.containers.get(DOCKER_VLLM_NAME).attrs["RestartCount"]
    code, result, output = drill(stack, docker_vllm, bystander, "node-restart.yaml", tmp_path,
                                 CRASH_PHASE="20s")
    why = told(result, output)
    (fault,) = result["faults"]
    assert fault["applied_at"] and fault["reverted_at"] and not fault["revert_error"], why
    checks = {c["name"]: c for c in result["checks"]}
    # The kill reached its target: the bystander died (exit 137). judge_docker judges a kill
    # by the targeted container alone, so the effect reads "seen" today, although its own
    # detail says no request in flight was cut ("0 of N ... failed or were retried"); a
    # judge that also weighs the traffic would say "missed". Either way it is no pass:
    # no stream in flight at the kill was cut, so stream-recovery has nothing to judge,
    # and no token probe followed a way back (warm-up): both inconclusive, exit 4.
    assert fault["effect"] in ("seen", "missed"), why
    assert bystander.name in fault["effect_detail"], why
    assert "0 of " in fault["effect_detail"], why  # no request in flight was cut
    recovery, warm = checks["stream-recovery"], checks["warm-up"]
    assert recovery["status"] == "inconclusive", why
    assert "were cut" in recovery["summary"], why
    assert warm["status"] == "inconclusive", why
    assert checks["baseline-healthy"]["status"] == "passed", why
    assert code == 4 and result["status"] == "inconclusive", why
    assert "stream-recovery" in (result["abort_reason"] or ""), why
    # The engine the clients used was never touched; the bystander was started again.
    engine_untouched(docker_client, docker_vllm)
    assert docker_client.containers.get(DOCKER_VLLM_NAME).attrs["RestartCount"] == restarts
    assert residue([bystander]) == []


def test_oom_in_a_bystander_is_not_a_pass(
        stack: Stack, docker_vllm: DockerStack, docker_client: Any, bystander: Any,
        tmp_path: Path) -> None:
    assert docker_vllm.vllm_healthy()
    restarts = docker_client.containers.get(DOCKER_VLLM_NAME).attrs["RestartCount"]
    # Squeezed to 48 MiB with a 128 MiB hog: the kernel OOM-kills in the bystander.
    code, result, output = drill(stack, docker_vllm, bystander, "oom.yaml", tmp_path,
                                 OOM_PHASE="20s", OOM_LIMIT="48MiB", HOG_MEMORY="128MiB",
                                 OOM_WITHIN="10s")
    why = told(result, output)
    faults = {f["name"]: f for f in result["faults"]}
    assert set(faults) == {"squeeze", "hog"}, why
    for fault in faults.values():
        assert fault["applied_at"] and fault["reverted_at"] and not fault["revert_error"], why
    checks = {c["name"]: c for c in result["checks"]}
    # The OOM happened, in the bystander (the kernel killed a process in it), so
    # judge_docker reads both faults as "seen" today, and oom-observed passes: both look at
    # the targeted container only. What keeps the run from passing is that the engine
    # never went down: stream-recovery and warm-up have no evidence of a way back to judge,
    # both inconclusive, exit 4.
    assert {f["effect"] for f in faults.values()} <= {"seen", "missed"}, why
    assert all(bystander.name in f["effect_detail"] for f in faults.values()), why
    for name in ("stream-recovery", "warm-up"):
        assert checks[name]["status"] == "inconclusive", why
        assert "no evidence the engine went down" in checks[name]["summary"], why
    assert code == 4 and result["status"] == "inconclusive", why
    engine_untouched(docker_client, docker_vllm)
    assert docker_client.containers.get(DOCKER_VLLM_NAME).attrs["RestartCount"] == restarts
    assert residue([bystander]) == []
