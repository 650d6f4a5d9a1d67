from __future__ import annotations

from pathlib import Path

import pytest

from llmdrill.harness.plan import compile_plan
from llmdrill.scenario.loader import load_scenario

pytestmark = pytest.mark.unit

SCENARIO = """
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: plan-test}
target: {base_url: "http://127.0.0.1:1", model: m}
faults:
  slow: {toxiproxy: {proxy: p, toxic: latency, latency: 1s}}
  down: {toxiproxy: {proxy: p, toxic: down}}
phases:
  - {name: a, duration: 10s}
  - {name: b, duration: 5s, faults: [slow]}
  - {name: c, duration: 5s, faults: [slow, down]}
  - {name: d, duration: 500ms}
checks:
  - {phase: b, no_hung_requests: {deadline: 3s}}
  - {name: last, phase: d, slo: {error_rate: {max: 0.1}}}
"""


def test_timeline_keeps_a_fault_applied_across_consecutive_phases(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO)
    plan = compile_plan(load_scenario(path, env={}))
    assert [(p.name, p.start, p.end) for p in plan.phases] == [
        ("a", 0, 10), ("b", 10, 15), ("c", 15, 20), ("d", 20, 20.5)]
    assert [(a.at, a.op, a.fault) for a in plan.actions] == [
        (10, "apply", "slow"), (15, "apply", "down"), (20, "revert", "slow"),
        (20, "revert", "down")]
    assert plan.total == 20.5
    assert [(c.name, c.window) for c in plan.checks] == [
        ("b-no_hung_requests-1", (10, 15)), ("last", (20, 20.5))]
    assert plan.faults_entering(2) == ["down"]
    assert plan.faults_leaving(1) == []
