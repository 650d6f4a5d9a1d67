"""`phases[].end_early` on real parts: the health URL is the Docker lane's real vLLM behind
a real Toxiproxy proxy of this module's own, and the outage is the proxy disabled (as a
restart takes an engine away), then enabled again by the test while the phase runs.

Shown here: the phase ends once the target has been back for `after` (not at its planned
end), the phases after it start sooner, and the report says why; a target that never
failed, or never came back, keeps the whole phase.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llmdrill.faults.toxiproxy_client import ToxiproxyClient
from llmdrill.load.runner import free_port
from tests.integration.conftest import DOCKER_VLLM_PORT, Stack, start_run

# The Docker lane's engine, so the shared engine's drills never see this load or outage.
pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.own_engine]

PROXY = "end-early"


@dataclass
class Watched:
    stack: Stack
    engine: str  # the engine the load goes to
    health: str  # its /health through the proxy the test disables


@pytest.fixture
def watched(stack: Stack, docker_vllm: Any) -> Iterator[Watched]:
    port = free_port()
    with ToxiproxyClient(stack.toxiproxy_url) as toxiproxy:
        if toxiproxy.get_proxy(PROXY) is not None:
            toxiproxy.delete_proxy(PROXY)
        toxiproxy.create_proxy(PROXY, f"127.0.0.1:{port}", f"127.0.0.1:{DOCKER_VLLM_PORT}")
        try:
            yield Watched(stack, f"http://127.0.0.1:{DOCKER_VLLM_PORT}",
                          f"http://127.0.0.1:{port}/health")
        finally:
            toxiproxy.delete_proxy(PROXY)

SCENARIO = """\
apiVersion: llmdrill/v1
kind: Scenario
metadata: {{name: end-early}}
target: {{base_url: "{engine}", model: tiny}}
load:
  users: 1
  wait: 200ms
  requests: [{{api: completions, stream: true, prompt_tokens: 8, max_tokens: 8}}]
phases:
  - name: recover
    duration: {duration}
    end_early: {{back: ["{health}"], after: 3s}}
  - {{name: after, duration: 3s}}
checks:
  - {{name: serving, phase: after, slo: {{error_rate: {{max: 0.0}}, min_requests: 1}}}}
"""


def _phase_started(out: Path, name: str) -> bool:
    for db in out.glob("*/evidence.db"):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
                rows = conn.execute("SELECT detail FROM events WHERE kind = 'phase_start'")
                if any(json.loads(d).get("phase") == name for (d,) in rows):
                    return True
        except sqlite3.Error:
            pass  # not created yet
    return False


def _run(watched: Watched, tmp_path: Path, duration: str, *, down_for: float | None,
         stay_down: bool = False) -> dict[str, Any]:
    """One run whose `recover` phase watches the proxied engine's /health; the proxy is
    disabled before the run, and enabled `down_for` seconds into the phase (None: never
    disabled; `stay_down`: never enabled again during the phase)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "end-early.yaml"
    path.write_text(SCENARIO.format(engine=watched.engine, health=watched.health,
                                    duration=duration))
    out = tmp_path / "reports"
    with ToxiproxyClient(watched.stack.toxiproxy_url) as toxiproxy:
        if down_for is not None:
            toxiproxy.set_enabled(PROXY, False)
        try:
            run = start_run(path, out, watched.stack.env())
            if down_for is not None and not stay_down:
                deadline = time.time() + 120
                while not _phase_started(out, "recover"):
                    assert run.poll() is None and time.time() < deadline, run.stdout
                    time.sleep(0.2)
                time.sleep(down_for)
                toxiproxy.set_enabled(PROXY, True)
            output, _ = run.communicate(timeout=180)
        finally:
            toxiproxy.set_enabled(PROXY, True)
    results = list(out.glob("*/result.json"))
    assert results, output
    result: dict[str, Any] = json.loads(results[0].read_text())
    result["_exit"], result["_dir"] = run.returncode, results[0].parent
    return result


def _phases(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in result["phases"]}


def test_a_phase_ends_once_the_target_is_back(watched: Watched, tmp_path: Path) -> None:
    result = _run(watched, tmp_path, "90s", down_for=3)
    assert result["status"] == "passed" and result["_exit"] == 0, result["checks"]
    recover, after = _phases(result)["recover"], _phases(result)["after"]
    lasted = recover["end"] - recover["start"]
    # Down about 3s (the poll sees it back within a second), then 3s healthy: far from 90s.
    assert 6 <= lasted < 30, recover
    assert recover["completed"] and "answered for" in recover["ended_early"]
    assert recover["planned_end"] - recover["start"] == pytest.approx(90, abs=1)
    # The next phase started when this one ended, with its own planned length.
    assert after["start"] - recover["end"] < 2 and after["ended_early"] is None
    assert after["planned_start"] < recover["planned_end"] - 50
    assert after["end"] - after["start"] == pytest.approx(3, abs=1)
    html = (result["_dir"] / "report.html").read_text()
    assert "early" in html and "answered for" in html


def test_a_target_that_never_failed_or_never_came_back_keeps_the_whole_phase(
        watched: Watched, tmp_path: Path) -> None:
    never_failed = _run(watched, tmp_path / "up", "6s", down_for=None)
    never_back = _run(watched, tmp_path / "down", "6s", down_for=0, stay_down=True)
    for result in (never_failed, never_back):
        recover = _phases(result)["recover"]
        assert recover["ended_early"] is None, recover
        assert recover["end"] - recover["start"] == pytest.approx(6, abs=1.5)
