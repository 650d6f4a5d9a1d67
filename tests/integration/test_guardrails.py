"""Guardrails abort a run on the real stack: faults reverted, exit 3, the report says why.
A target marked production is refused before anything changes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Stack, llmdrill

pytestmark = pytest.mark.integration

SCENARIO = """
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: guarded}
target:
  base_url: ${LLMDRILL_TARGET_URL}
  model: tiny
  metrics_url: ${LLMDRILL_METRICS_URL}
  production: "${PRODUCTION:-false}"
toxiproxy: {default: {url: "${LLMDRILL_TOXIPROXY_URL}"}}
faults:
  outage: {toxiproxy: {proxy: vllm, toxic: down}}
load:
  users: 3
  requests: [{api: completions, prompt_tokens: 16, max_tokens: 8}]
  timeouts: {connect: 1s, read: 3s, total: 5s}
  retries: {max_attempts: 1}
phases:
  - {name: warm, duration: 4s}
  - {name: outage, duration: 60s, faults: [outage]}
guardrails:
  - abort_if: {error_rate: {above: 0.5, for: 3s}}
safety: {allow_production: "${ALLOW_IN_SCENARIO:-false}"}
"""


def test_error_rate_guardrail_aborts_and_reverts(clean_proxy: Stack, tmp_path: Path) -> None:
    path = tmp_path / "guarded.yaml"
    path.write_text(SCENARIO)
    started = time.time()
    proc = llmdrill("run", str(path), "--out", str(tmp_path / "reports"), env=clean_proxy.env())
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert time.time() - started < 45  # far less than the 64 s the phases would take
    assert clean_proxy.proxy_enabled() and clean_proxy.toxics() == []
    result = json.loads(next((tmp_path / "reports").glob("*/result.json")).read_text())
    assert result["status"] == "aborted"
    assert result["abort_reason"].startswith("guardrail: error rate")
    assert "guardrail: error rate" in proc.stderr


@pytest.mark.parametrize(("in_scenario", "on_command_line"),
                         [("false", False), ("true", False), ("false", True)])
def test_production_target_is_refused_unless_both_allow_it(
    clean_proxy: Stack, tmp_path: Path, in_scenario: str, on_command_line: bool
) -> None:
    path = tmp_path / "prod.yaml"
    path.write_text(SCENARIO)
    args = ["run", str(path), "--out", str(tmp_path / "reports")]
    if on_command_line:
        args.append("--allow-production")
    proc = llmdrill(*args, env=clean_proxy.env(PRODUCTION="true",
                                                ALLOW_IN_SCENARIO=in_scenario))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "is marked production; refusing to drill it" in proc.stderr
    assert clean_proxy.proxy_enabled() and clean_proxy.toxics() == []
    journal = next((tmp_path / "reports").glob("*/journal.jsonl"), None)
    assert journal is None or "intent" not in journal.read_text()
