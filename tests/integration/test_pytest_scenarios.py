"""`pytest scenarios/ --llmdrill-scenarios` runs the shipped drills against the real stack as
test items, one per enabled check, with the verdicts `llmdrill run` writes: a passing
shipped drill passes, a drill whose check fails fails, and the items match the checks of
the run's own result.json."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, Stack

pytestmark = pytest.mark.integration

# A check no healthy engine on this machine meets: the first token within 1 ms.
IMPOSSIBLE = """\
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: impossible-ttft, tags: [quickstart]}
target:
  base_url: ${LLMDRILL_TARGET_URL}
  model: tiny
  metrics_url: ${LLMDRILL_METRICS_URL}
load:
  users: 2
  spawn_rate: 2
  requests: [{api: completions, stream: true, prompt_tokens: 16, max_tokens: 8}]
phases: [{name: steady, duration: 6s}]
checks:
  - {name: ttft-1ms, phase: steady, slo: {ttft_p50: {max: 1ms}, min_requests: 3}}
  - {name: alerting, phase: steady, enabled: false, slo: {error_rate: {max: 0.5}}}
"""


def _outcomes(junit: Path) -> dict[str, str]:
    """check name (the item's name) -> passed or failed, from pytest's JUnit file."""
    outcomes = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        outcomes[str(case.get("name"))] = "failed" if failed else "passed"
    return outcomes


def _results(out: Path) -> dict[str, dict[str, str]]:
    """scenario name -> check name -> status, from every result.json the runs wrote."""
    found: dict[str, dict[str, str]] = {}
    for path in out.rglob("result.json"):
        result = json.loads(path.read_text())
        found[result["scenario"]["name"]] = {c["name"]: c["status"] for c in result["checks"]}
        found[result["scenario"]["name"]]["<run>"] = result["status"]
    return found


def test_shipped_drills_run_as_pytest_items_with_the_runs_verdicts(
        clean_proxy: Stack, tmp_path: Path) -> None:
    drills = tmp_path / "drills"
    drills.mkdir()
    (drills / "impossible.yaml").write_text(IMPOSSIBLE)
    out, junit = tmp_path / "reports", tmp_path / "junit.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
         str(REPO / "scenarios" / "caps.yaml"), str(drills), "--llmdrill-scenarios",
         "--llmdrill-tag", "quickstart", f"--llmdrill-out={out}", f"--junitxml={junit}"],
        cwd=tmp_path, env=clean_proxy.env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    outcomes = _outcomes(junit)
    results = _results(out)
    assert set(results) == {"caps", "impossible-ttft"}, results
    # One item per enabled check, none for the check left off.
    assert sorted(outcomes) == ["after-still-serving", "caps-enforced", "ttft-1ms"], outcomes
    # The same verdicts as the runs themselves.
    assert results["caps"]["<run>"] == "passed", results["caps"]
    assert results["impossible-ttft"]["<run>"] == "failed"
    for check, outcome in outcomes.items():
        scenario = "impossible-ttft" if check == "ttft-1ms" else "caps"
        assert outcome == ("passed" if results[scenario][check] == "passed" else "failed"), (
            check, results[scenario])
    assert outcomes["ttft-1ms"] == "failed"
