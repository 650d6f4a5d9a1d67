"""The cancel-storm drill end to end on the real vLLM: directly, through a healthy nginx
gateway, and through a relay that keeps reading the engine's answer after its client left
(it must fail)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import REPO, Stack, llmdrill
from tests.integration.gateway import HEALTHY, nginx_gateway
from tests.integration.lingering_proxy import lingering_gateway

pytestmark = pytest.mark.integration

SCENARIO = str(REPO / "scenarios" / "cancel-storm.yaml")
GATEWAY_PORT = 18081
RELAY_PORT = 18085
CHECK = "storm-kv-cache-cleanup"
IDLE_WAIT = 120.0


@pytest.fixture(autouse=True)
def _engine_idle_afterwards(stack: Stack) -> Iterator[None]:
    """The engine is shared: a storm through a broken gateway leaves it generating for
    nobody for a while, so each test waits until it is idle before the next one runs."""
    yield
    deadline = time.time() + IDLE_WAIT
    while time.time() < deadline:
        try:
            text = httpx.get(stack.metrics_url, timeout=5).text
        except httpx.HTTPError:
            time.sleep(1)
            continue
        busy = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith(("vllm:num_requests_running{", "vllm:num_requests_waiting{"))]
        if busy and not any(busy):
            return
        time.sleep(0.5)


def _run(stack: Stack, tmp_path: Path, target: str) -> tuple[int, str, dict[str, Any], Path]:
    proc = llmdrill("run", SCENARIO, "--out", str(tmp_path / "reports"),
                    env=stack.env(LLMDRILL_TARGET_URL=target))
    runs = [p for p in (tmp_path / "reports").iterdir() if p.is_dir()]
    assert len(runs) == 1, proc.stdout + proc.stderr
    result = json.loads((runs[0] / "result.json").read_text())
    return proc.returncode, proc.stdout + proc.stderr, result, runs[0]


def _check(result: dict[str, Any], name: str = CHECK) -> dict[str, Any]:
    return next(c for c in result["checks"] if c["name"] == name)


def _assert_healthy_run(code: int, output: str, result: dict[str, Any]) -> dict[str, Any]:
    statuses = {c["name"]: (c["status"], c["summary"]) for c in result["checks"]}
    assert code == 0 and result["status"] == "passed", (statuses, output[-3000:])
    cleanup = _check(result)
    waves = cleanup["observed"]["waves"]
    within = cleanup["expected"]["within_s"]
    # Three waves, each cleaned up within the limit.
    assert [w["wave"] for w in waves] == [1, 2, 3]
    assert [w["fault"] for w in waves] == ["drop-midstream", "drop-midstream",
                                           "drop-while-queued"]
    for w in waves:
        # A wave the next one overlapped (a late drop) is judged with it.
        judged = w["merged_into"] is None
        assert not judged or (w["cleanup_s"] is not None and 0 <= w["cleanup_s"] <= within), w
        assert w["aborted"] > 0, w
    assert waves[2]["merged_into"] is None
    # The scraped engine is the one that served the waves: its token counter grew by at
    # least what their clients received (a busy engine may not stream any token within a
    # mid-stream wave's 1s, so not every wave has some).
    assert any(w["client_tokens"] > 0 for w in waves), waves
    for w in waves:
        if w["client_tokens"] > 0:
            assert w["engine_tokens"] >= w["client_tokens"], w
    assert "waves cleaned up in " in cleanup["summary"], cleanup["summary"]
    assert cleanup["observed"]["series"]["running"] == "vllm:num_requests_running"
    return cleanup


def test_cancel_storm_passes_on_the_engine_directly(stack: Stack, tmp_path: Path) -> None:
    code, output, result, run = _run(stack, tmp_path, stack.vllm_url)
    _assert_healthy_run(code, output, result)
    # The storm's requests are in the evidence as their own shape, apart from the load.
    assert result["stats"]["storm"]["requests"] > 100
    assert (run / "report.html").exists()
    fault = {f["name"]: f for f in result["faults"]}
    assert fault["drop-while-queued"]["params"]["close"] == "graceful"
    assert all(f["reverted_at"] and not f["revert_error"] for f in result["faults"])


def test_cancel_storm_passes_through_a_healthy_gateway(stack: Stack, tmp_path: Path) -> None:
    with nginx_gateway(tmp_path / "nginx", GATEWAY_PORT, HEALTHY) as url:
        code, output, result, _ = _run(stack, tmp_path, url)
    _assert_healthy_run(code, output, result)


def test_cancel_storm_fails_through_a_gateway_that_ignores_client_aborts(
    stack: Stack, tmp_path: Path
) -> None:
    with lingering_gateway(RELAY_PORT, upstream=stack.vllm_url.removeprefix("http://")) as url:
        code, output, result, _ = _run(stack, tmp_path, url)
    statuses = {c["name"]: (c["status"], c["summary"]) for c in result["checks"]}
    assert code == 1 and result["status"] == "failed", (statuses, output[-3000:])
    cleanup = _check(result)
    assert cleanup["status"] == "failed", statuses
    assert CHECK in output
    # The relay keeps every upstream stream going: the engine stays busy for nobody after
    # each wave (the gauges show it), and after the queued wave's FIN the clients saw the
    # stream go on until they gave up.
    waves = cleanup["observed"]["waves"]
    assert [w["fault"] for w in waves] == ["drop-midstream", "drop-midstream",
                                           "drop-while-queued"]
    # Caught on the clients' side (streams going on after their FIN) or the engine's
    # (tokens generated, requests run to their end for clients that left), whichever
    # wave shows it first on a busy machine.
    problems = " ".join(str(w["problem"]) for w in waves if w["problem"])
    assert any(what in problems for what in ("kept streaming to", "after its clients left",
                                             "ran to their end")), waves
