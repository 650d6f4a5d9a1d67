"""The `haproxy` fault (a server's state set through HAProxy's runtime API) is never left
behind, against the real HAProxy of the gateway stack: a run stopped with SIGTERM sets the
server back to `ready` before it exits, and after the harness and its watchdog are killed
with -9, `llmdrill cleanup` does it from the journal."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from llmdrill.stack.gateway import HAPROXY, GatewayStack, haproxy_servers
from tests.integration.conftest import llmdrill
from tests.integration.gateway_helpers import (
    drill_env,
    kill_all,
    left_clean,
    start_drill,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.gateway]

INTERRUPTED = """
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: drain-interrupted}
target:
  base_url: ${LLMDRILL_GATEWAY_URL}
  model: tiny
  engines:
    replica-0: {metrics_url: "http://127.0.0.1:18010/metrics"}
    replica-1: {metrics_url: "http://127.0.0.1:18020/metrics"}
faults:
  drain: {haproxy: {socket: "${LLMDRILL_HAPROXY_SOCKET}", server: replica-0, state: drain}}
load: {users: 0}
phases:
  - {name: drained, duration: 60s, faults: [drain]}
checks:
  - {phase: drained, no_hung_requests: {deadline: 10s}}
"""


def _start(stack: GatewayStack, tmp_path: Path) -> subprocess.Popen[bytes]:
    gateway = stack.gateway(HAPROXY)
    env = drill_env(stack, gateway.url, LLMDRILL_HAPROXY_SOCKET=str(gateway.socket))
    return start_drill(INTERRUPTED, env, tmp_path)


def _state(stack: GatewayStack) -> str:
    return haproxy_servers(stack.gateway(HAPROXY).socket).get("replica-0", "")


def test_sigterm_mid_drain_sets_the_server_back_and_writes_the_report(
        gateway_stack: GatewayStack, tmp_path: Path) -> None:
    assert _state(gateway_stack).startswith("UP"), _state(gateway_stack)
    proc = _start(gateway_stack, tmp_path)
    wait_until(lambda: _state(gateway_stack) == "DRAIN", 60, "replica-0 was never drained")
    os.kill(proc.pid, 15)
    assert proc.wait(timeout=60) != 0
    assert _state(gateway_stack).startswith("UP"), _state(gateway_stack)
    result = json.loads(next((tmp_path / "reports").glob("*/result.json")).read_text())
    assert result["status"] == "aborted"
    assert result["faults"][0]["reverted_at"] and not result["faults"][0]["revert_error"]
    left_clean(gateway_stack)


def test_kill_9_mid_drain_then_cleanup_sets_the_server_back(
        gateway_stack: GatewayStack, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k.startswith("LLMDRILL_STATE")}
    proc = _start(gateway_stack, tmp_path)
    wait_until(lambda: _state(gateway_stack) == "DRAIN", 60, "replica-0 was never drained")
    kill_all(proc, tmp_path / "reports")
    assert _state(gateway_stack) == "DRAIN", "set back before cleanup (nothing else did it)"
    done = llmdrill("cleanup", env={**os.environ, **env})
    assert done.returncode == 0, done.stdout + done.stderr
    assert _state(gateway_stack).startswith("UP"), _state(gateway_stack)
    left_clean(gateway_stack)
