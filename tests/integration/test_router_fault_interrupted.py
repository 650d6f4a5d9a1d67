"""The `router` fault (a worker removed from vllm-router) is never left behind, against the
real router of the gateway stack: a run stopped with SIGTERM adds the worker back before it
exits, and after the harness and its watchdog are killed with -9, `llmdrill cleanup` does
it from the journal."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from llmdrill.stack.gateway import ROUTER, GatewayStack
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
metadata: {name: router-drain-interrupted}
target:
  base_url: ${LLMDRILL_GATEWAY_URL}
  model: tiny
  engines:
    replica-0: {metrics_url: "http://127.0.0.1:18010/metrics"}
    replica-1: {metrics_url: "http://127.0.0.1:18020/metrics"}
faults:
  drain: {router: {url: "${LLMDRILL_GATEWAY_URL}", worker: "http://127.0.0.1:18011",
                   engine: replica-0}}
load: {users: 0}
phases:
  - {name: drained, duration: 60s, faults: [drain]}
checks:
  - {phase: drained, no_hung_requests: {deadline: 10s}}
"""


def _start(stack: GatewayStack, tmp_path: Path) -> subprocess.Popen[bytes]:
    return start_drill(INTERRUPTED, drill_env(stack, stack.gateway(ROUTER).url), tmp_path)


WORKER = "http://127.0.0.1:18011"


def _listed(stack: GatewayStack) -> bool:
    urls = httpx.get(f"{stack.gateway(ROUTER).url}/list_workers", timeout=5).json()["urls"]
    return WORKER in urls


def test_sigterm_mid_removal_adds_the_worker_back_and_writes_the_report(
        gateway_stack: GatewayStack, tmp_path: Path) -> None:
    assert _listed(gateway_stack)
    proc = _start(gateway_stack, tmp_path)
    wait_until(lambda: not _listed(gateway_stack), 60, "the worker was never removed")
    os.kill(proc.pid, 15)
    assert proc.wait(timeout=60) != 0
    assert _listed(gateway_stack)
    result = json.loads(next((tmp_path / "reports").glob("*/result.json")).read_text())
    assert result["status"] == "aborted"
    assert result["faults"][0]["reverted_at"] and not result["faults"][0]["revert_error"]
    left_clean(gateway_stack)


def test_kill_9_mid_removal_then_cleanup_adds_the_worker_back(
        gateway_stack: GatewayStack, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k.startswith("LLMDRILL_STATE")}
    proc = _start(gateway_stack, tmp_path)
    wait_until(lambda: not _listed(gateway_stack), 60, "the worker was never removed")
    kill_all(proc, tmp_path / "reports")
    assert not _listed(gateway_stack), "added back before cleanup (nothing else did it)"
    done = llmdrill("cleanup", env={**os.environ, **env})
    assert done.returncode == 0, done.stdout + done.stderr
    assert _listed(gateway_stack)
    left_clean(gateway_stack)
