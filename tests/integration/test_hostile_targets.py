"""A hostile or broken target never hangs or crashes the harness: every request gets a
class, every wait ends, and the run finishes with its reports."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from llmdrill.model.evidence import RequestLog
from tests.conftest import count
from tests.integration.conftest import llmdrill
from tests.integration.hostile import MODES, hostile_server

pytestmark = [pytest.mark.integration, pytest.mark.no_engine]

SCENARIO = """
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: hostile-target}
target: {base_url: "http://127.0.0.1:PORT", model: tiny}
load:
  users: 2
  requests:
    - {api: completions, stream: true, max_tokens: 8}
    - {api: chat, stream: false, max_tokens: 8}
  timeouts: {connect: 2s, read: 2s, total: 4s}
  retries: {max_attempts: 1}
phases: [{name: p, duration: 9s}]  # room for a 4s deadline to expire on a busy machine
checks:
  - {name: nothing-hangs, phase: p, no_hung_requests: {deadline: 10s}}
  - {name: all-fine, phase: p, slo: {error_rate: {max: 0}}}
"""

# Which classes each behaviour may produce: never "interrupted" (a hang cut by the stop),
# never a crash.
EXPECTED = {
    "malformed_sse": {"incomplete_stream", "protocol"},
    "endless_stream": {"timeout", "protocol"},
    "huge_headers": {"protocol", "incomplete_stream", "connect", "reset"},
    "huge_body": {"protocol", "timeout", "incomplete_stream"},
    "silent": {"timeout"},
    "trickle": {"timeout", "incomplete_stream", "protocol"},
    "garbage_status": {"protocol", "connect", "reset", "incomplete_stream"},
}


@pytest.mark.parametrize("mode", MODES)
def test_hostile_target_is_classified_without_hanging(mode: str, tmp_path: Path) -> None:
    with hostile_server(mode) as port:
        path = tmp_path / "hostile.yaml"
        path.write_text(SCENARIO.replace("PORT", str(port)))
        started = time.time()
        proc = llmdrill("run", str(path), "--out", str(tmp_path / "reports"),
                        env=dict(os.environ), timeout=120)
        took = time.time() - started
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output
    assert proc.returncode == 1, output
    assert took < 60
    result = json.loads(next((tmp_path / "reports").glob("*/result.json")).read_text())
    checks = {c["name"]: c["status"] for c in result["checks"]}
    assert checks == {"nothing-hangs": "passed", "all-fine": "failed"}, output
    # Requests still in flight when the load stopped are "interrupted"; that they did not
    # hang is what nothing-hangs proved.
    classes = set(result["stats"]["p"]["errors_by_class"]) - {"interrupted"}
    assert classes and classes <= EXPECTED[mode], classes
    print(f"\n{mode}: {result['stats']['p']['requests']} requests, classes {sorted(classes)}")
    count("hostile target behaviours survived")
    count("hostile target requests classified", result["stats"]["p"]["requests"])


def test_a_refusal_with_retry_after_is_recorded_as_such(tmp_path: Path) -> None:
    """A 503 with Retry-After and an error body reaches the load's record as what it is:
    its status, its error type and the Retry-After. (Locust's user agent raises on any
    status outside 2xx/3xx and drops the body: every refusal was once a bare `connect`.)"""
    with hostile_server("overloaded") as port:
        path = tmp_path / "overloaded.yaml"
        path.write_text(SCENARIO.replace("PORT", str(port)).replace("duration: 9s",
                                                                    "duration: 3s"))
        proc = llmdrill("run", str(path), "--out", str(tmp_path / "reports"),
                        env=dict(os.environ), timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in output, output
    run = next((tmp_path / "reports").glob("*/evidence.db")).parent
    # Once every request is in evidence.db the samples file is gone (no --keep-samples).
    assert not (run / "samples.jsonl").exists()
    records = list(RequestLog(run / "evidence.db"))
    refused = [r for r in records if r.error_class != "interrupted"]
    assert refused, records[:3]
    assert {(r.status, r.error_class, r.error_type, r.retry_after)
            for r in refused} == {(503, "http_5xx", "server_overloaded", True)}, refused[:3]
