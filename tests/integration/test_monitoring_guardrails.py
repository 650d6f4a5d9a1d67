"""PromQL and alert guardrails against a real Prometheus and Alertmanager watching the
real vLLM: a condition that holds aborts the run (exit 3, faults reverted); one that
cannot hold lets it finish."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Stack, llmdrill
from tests.integration.monitoring import Monitoring, monitoring

pytestmark = pytest.mark.integration

RULES = """
groups:
  - name: llmdrill-test
    rules:
      - alert: LlmdrillTestEngineScraped
        expr: up{job="vllm"} == 1
        for: 0s
      - alert: LlmdrillTestNeverFires
        expr: up{job="vllm"} == 42
"""

SCENARIO = """
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: watched}
target: {base_url: "${LLMDRILL_TARGET_URL}", model: tiny}
prometheus: {url: "${PROM}"}
alertmanager: {url: "${AM}"}
toxiproxy: {default: {url: "${LLMDRILL_TOXIPROXY_URL}"}}
faults:
  slow: {toxiproxy: {proxy: vllm, toxic: latency, stream: upstream, latency: 50ms}}
load:
  users: 1
  requests: [{api: completions, prompt_tokens: 16, max_tokens: 4}]
phases:
  - {name: p, duration: "${DURATION:-40s}", faults: [slow]}
checks:  # a run needs something judged to pass
  - {phase: p, slo: {error_rate: {max: 0.5}}}
guardrails:
  - abort_if: GUARD
"""


@pytest.fixture(scope="module")
def mon(tmp_path_factory: pytest.TempPathFactory, stack: Stack) -> Iterator[Monitoring]:
    with monitoring(tmp_path_factory.mktemp("monitoring"), RULES) as m:
        deadline = time.time() + 60  # until Prometheus has scraped and alerted once
        import httpx
        while time.time() < deadline:
            alerts = httpx.get(f"{m.alertmanager_url}/api/v2/alerts", timeout=5).json()
            if any(a["labels"].get("alertname") == "LlmdrillTestEngineScraped"
                   for a in alerts):
                break
            time.sleep(1)
        yield m


def _run(stack: Stack, mon: Monitoring, tmp_path: Path, guard: str, duration: str = "40s"
         ) -> tuple[int, dict[str, object], str]:
    path = tmp_path / "watched.yaml"
    path.write_text(SCENARIO.replace("GUARD", guard))
    proc = llmdrill("run", str(path), "--out", str(tmp_path / "reports"),
                    env=stack.env(PROM=mon.prometheus_url, AM=mon.alertmanager_url,
                                  DURATION=duration))
    result = json.loads(next((tmp_path / "reports").glob("*/result.json")).read_text())
    return proc.returncode, result, proc.stdout + proc.stderr


def test_promql_guardrail_aborts(clean_proxy: Stack, mon: Monitoring, tmp_path: Path) -> None:
    code, result, output = _run(
        clean_proxy, mon, tmp_path,
        '{promql: {query: "sum(vllm:num_requests_running)", above: -1, for: 2s}}')
    assert code == 3, output
    assert str(result["abort_reason"]).startswith("guardrail: sum(vllm:num_requests_running)")
    assert clean_proxy.toxics() == []


def test_alertmanager_alert_guardrail_aborts(
    clean_proxy: Stack, mon: Monitoring, tmp_path: Path
) -> None:
    code, result, output = _run(clean_proxy, mon, tmp_path,
                                "{alert: {name: LlmdrillTestEngineScraped}}")
    assert code == 3, output
    assert "alert LlmdrillTestEngineScraped firing" in str(result["abort_reason"])
    assert clean_proxy.toxics() == []


def test_guardrails_that_cannot_trip_let_the_run_finish(
    clean_proxy: Stack, mon: Monitoring, tmp_path: Path
) -> None:
    code, result, output = _run(
        clean_proxy, mon, tmp_path,
        '{alert: {name: LlmdrillTestNeverFires, source: prometheus}, '
        'promql: {query: "sum(vllm:num_requests_running)", above: 1000000}}', duration="6s")
    assert code == 0, output
    assert result["status"] == "passed"
