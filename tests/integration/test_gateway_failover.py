"""The replica failover drill (scenarios/gateway-failover.yaml) end to end: two real vLLM
replicas, a real Toxiproxy in front of each, real HAProxy and vllm-router gateways.

It passes behind each gateway with its health checks, retries and circuit breaker on, and
fails behind the same gateways with them off (traffic keeps going to the hung replica):
the check that fails is named.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from llmdrill.procfs import group_members
from llmdrill.stack import processes
from llmdrill.stack.gateway import HAPROXY, ROUTER, GatewayStack, running_gateway
from tests.integration.conftest import REPO, llmdrill
from tests.integration.gateway_helpers import (
    BROKEN_PORTS,
    checks_by_name,
    drill_env,
    kill_all,
    left_clean,
    only_phases,
    run_drill,
    start_drill,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.gateway]

SCENARIO = REPO / "scenarios" / "gateway-failover.yaml"


def _only(phases: list[str], tmp_path: Path) -> Path:
    return only_phases(SCENARIO, phases, tmp_path)


# Each way out costs a replica restart (about 45 s) but the hung one, so each gateway
# runs two of the three and every way runs behind one of them (the suite stays within
# its time): HAProxy the unhealthy one (its HTTP health check sees /health fail while the
# port still answers), vllm-router the killed one (it retries a dead engine's 500s itself,
# so the unhealthy way shows nothing new behind it). The shipped scenario runs all three.
WAYS = {HAPROXY: ("hung", "unhealthy"), ROUTER: ("hung", "killed")}


@pytest.mark.parametrize("gateway", [HAPROXY, ROUTER])
def test_failover_passes_behind_a_gateway_with_health_checks(
        gateway_stack: GatewayStack, gateway: str, tmp_path: Path) -> None:
    url = gateway_stack.gateway(gateway).url
    ways = WAYS[gateway]
    scenario = SCENARIO if len(ways) == 3 else _only(
        ["baseline", "settle", *[p for w in ways for p in (w, f"after-{w}")]], tmp_path)
    code, result, output = run_drill(scenario, drill_env(gateway_stack, url), tmp_path / "reports")
    checks = checks_by_name(result)
    assert code == 0, output + json.dumps(
        {n: c["summary"] for n, c in checks.items() if c["status"] != "passed"}, indent=1)
    assert {c["name"] for c in checks.values() if c["kind"] == "failover"} == {
        f"{way}-failover" for way in ways}
    for way in ways:
        observed = checks[f"{way}-failover"]["observed"]
        # The fault reached the traffic, and the healthy replica took it over.
        assert observed["served_by_others_after_switch"] > 0, way
        assert observed["back_after_revert_s"] is not None, way
    assert {f["effect"] for f in result["faults"]} == {"seen"}, result["faults"]
    engine = result["series"]["engine"]
    assert engine["served_per_s@replica-0"] and engine["served_per_s@replica-1"]
    left_clean(gateway_stack)


@pytest.mark.parametrize("gateway", [HAPROXY, ROUTER])
def test_failover_fails_behind_a_gateway_without_health_checks(
        gateway_stack: GatewayStack, gateway: str, tmp_path: Path) -> None:
    """Health checks, retries and the circuit breaker off: the gateway keeps sending to
    the hung replica, and the drill says so."""
    # No after-hung phase: the failure is judged within the hung one.
    scenario = _only(["baseline", "settle", "hung"], tmp_path)
    with running_gateway(gateway, BROKEN_PORTS[gateway], resilient=False) as broken:
        code, result, output = run_drill(scenario, drill_env(gateway_stack, broken.url),
                                    tmp_path / "reports")
    checks = checks_by_name(result)
    assert code == 1, output
    assert checks["baseline-healthy"]["status"] == "passed", checks["baseline-healthy"]
    failover = checks["hung-failover"]
    assert failover["status"] == "failed", failover
    assert "the gateway still sent to replica-0" in failover["summary"]
    assert "hung-failover" in output
    left_clean(gateway_stack)


# --- interrupted mid-fault: nothing is left behind ----------------------------------------

INTERRUPTED = """
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: process-interrupted}
target:
  base_url: ${LLMDRILL_GATEWAY_URL}
  model: tiny
faults:
  freeze: {process: {pidfile: "${LLMDRILL_STACK_DIR}/run/replica-0.pid", signal: SIGSTOP}}
  kill:
    process:
      pidfile: ${LLMDRILL_STACK_DIR}/run/replica-0.pid
      signal: SIGKILL
      restart: [llmdrill, up, --replicas, "2", --no-install]
load: {users: 0}
phases:
  - {name: frozen, duration: "${FROZEN_PHASE:-60s}", faults: [freeze]}
  - {name: killed, duration: 60s, faults: [kill]}
checks:
  - {phase: frozen, no_hung_requests: {deadline: 10s}}
"""


def _start_interrupted(stack: GatewayStack, tmp_path: Path,
                       **env: str) -> subprocess.Popen[bytes]:
    return start_drill(INTERRUPTED, {**drill_env(stack, stack.gateway(HAPROXY).url), **env},
                       tmp_path)


def _replica0_states(stack: GatewayStack) -> list[str]:
    """The states (/proc/PID/stat) of replica 0's processes; [] when it is gone."""
    pid = processes.read_pid(stack.config.run_dir / "replica-0.pid")
    return [] if pid is None else [p.state for p in group_members(pid)]


def _frozen(stack: GatewayStack) -> bool:
    return "T" in _replica0_states(stack)



def test_sigterm_mid_process_fault_thaws_the_replica_and_writes_the_report(
        gateway_stack: GatewayStack, tmp_path: Path) -> None:
    proc = _start_interrupted(gateway_stack, tmp_path)
    wait_until(lambda: _frozen(gateway_stack), 60, "replica 0 was never frozen")
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    assert not _frozen(gateway_stack)
    wait_until(lambda: gateway_stack.replica_healthy(0), 30, "replica 0 did not answer again")
    result = json.loads(next((tmp_path / "reports").glob("*/result.json")).read_text())
    assert result["status"] == "aborted"
    assert result["faults"][0]["reverted_at"] and not result["faults"][0]["revert_error"]
    left_clean(gateway_stack)


def test_kill_9_mid_process_faults_then_cleanup_thaws_and_restarts_the_replica(
        gateway_stack: GatewayStack, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k.startswith("LLMDRILL_STATE")}
    # Frozen when the harness and its watchdog die: cleanup sends SIGCONT.
    frozen = tmp_path / "frozen"
    proc = _start_interrupted(gateway_stack, frozen)
    wait_until(lambda: _frozen(gateway_stack), 60, "replica 0 was never frozen")
    kill_all(proc, frozen / "reports")
    assert _frozen(gateway_stack), "still frozen before cleanup (nothing else reverted it)"
    done = llmdrill("cleanup", env={**os.environ, **env})
    assert done.returncode == 0, done.stdout + done.stderr
    assert not _frozen(gateway_stack)
    # Killed when they die: cleanup runs the fault's restart command.
    killed = tmp_path / "killed"
    before = processes.read_pid(gateway_stack.config.run_dir / "replica-0.pid")
    proc = _start_interrupted(gateway_stack, killed, FROZEN_PHASE="1s")
    wait_until(lambda: not _replica0_states(gateway_stack), 60, "replica 0 was never killed")
    kill_all(proc, killed / "reports")
    assert not gateway_stack.replica_healthy(0)
    done = llmdrill("cleanup", env={**os.environ, **env}, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert processes.read_pid(gateway_stack.config.run_dir / "replica-0.pid") != before
    left_clean(gateway_stack)
