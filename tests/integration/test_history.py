"""Run history on the real stack: three runs of one scenario, the third against a target
slowed by a Toxiproxy latency toxic (not a fault of the scenario: the deployment itself got
slower), give an index whose trend flags the TTFT regression, and `llmdrill compare` names
TTFT among the figures that moved."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmdrill.faults.toxiproxy_client import ToxiproxyClient
from tests.integration.conftest import Stack, llmdrill

pytestmark = pytest.mark.integration

SCENARIO = """\
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: history-ttft}
target:
  base_url: ${LLMDRILL_TARGET_URL}
  model: tiny
load:
  users: 2
  spawn_rate: 2
  requests: [{api: completions, stream: true, prompt_tokens: 16, max_tokens: 16}]
  timeouts: {read: 10s, total: 15s}
phases: [{name: steady, duration: 6s}]
checks:
  - {name: serves, phase: steady, slo: {error_rate: {max: 0.1}, min_requests: 3}}
"""
SLOW_TOXIC = "history-test-slow-target"


def test_a_slowed_target_is_flagged_in_the_index_and_by_compare(
        clean_proxy: Stack, tmp_path: Path) -> None:
    scenario = tmp_path / "history.yaml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "reports"
    env = clean_proxy.env(LLMDRILL_HISTORY=str(out / "history.sqlite"))
    for _ in range(2):
        done = llmdrill("run", str(scenario), "--quiet", "--out", str(out), env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        # Throughput on a busy machine may wander; TTFT must not be a false alarm.
        assert "regression: history-ttft: TTFT" not in done.stderr, done.stderr
    with ToxiproxyClient(clean_proxy.toxiproxy_url) as toxiproxy:
        toxiproxy.add_toxic("vllm", SLOW_TOXIC, "latency", "upstream", 1.0, {"latency": 1500})
        try:
            slow = llmdrill("run", str(scenario), "--quiet", "--out", str(out), env=env)
        finally:
            toxiproxy.remove_toxic("vllm", SLOW_TOXIC)
    assert slow.returncode == 0, slow.stdout + slow.stderr  # still serving, only slower
    assert "regression: history-ttft: TTFT p95" in slow.stderr, slow.stderr
    index = (out / "index.html").read_text()
    assert "(3 runs)" in index
    assert "REGRESSION" in index and "TTFT p95" in index
    runs = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(runs) == 3
    compared = llmdrill("compare", str(runs[1]), str(runs[2]), env=env)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    moved_line = next(line for line in compared.stdout.splitlines() if line.startswith("moved:"))
    assert "TTFT p95" in moved_line, compared.stdout
