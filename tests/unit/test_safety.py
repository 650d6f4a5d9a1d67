from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from llmdrill.faults.base import EnvironmentProblem
from llmdrill.harness.journal import Journal
from llmdrill.harness.live import LiveStats
from llmdrill.harness.runner import check_safety
from llmdrill.harness.watchdog import watch
from llmdrill.scenario.models import Guardrail, Scenario
from tests.unit.fake_backends import register_reverter

pytestmark = pytest.mark.unit

REVERTED: list[str] = []


@register_reverter("watchdog-test")
def _revert(action: dict[str, object]) -> None:
    REVERTED.append(str(action["what"]))


def _scenario(**extra: object) -> Scenario:
    raw: dict[str, object] = {
        "apiVersion": "llmdrill/v1", "kind": "Scenario", "metadata": {"name": "s"},
        "target": {"base_url": "http://127.0.0.1:1", "model": "m"},
        "faults": {"storm": {"cancel_storm": {"streams": 50}}},
        "phases": [{"name": "p", "duration": "1s", "faults": ["storm"]}],
    }
    raw.update(extra)
    return Scenario.model_validate(raw)


def test_production_target_needs_both_the_scenario_and_the_command_line() -> None:
    prod = {"base_url": "http://127.0.0.1:1", "model": "m", "production": True}
    with pytest.raises(EnvironmentProblem, match=r"scenario .* and the command line"):
        check_safety(_scenario(target=prod), allow_production=False)
    with pytest.raises(EnvironmentProblem, match="the command line"):
        check_safety(_scenario(target=prod, safety={"allow_production": True}), False)
    with pytest.raises(EnvironmentProblem, match="the scenario"):
        check_safety(_scenario(target=prod), allow_production=True)
    check_safety(_scenario(target=prod, safety={"allow_production": True}), True)
    check_safety(_scenario(), allow_production=False)


def test_blast_radius_limit_refuses_a_fault_that_touches_too_much() -> None:
    with pytest.raises(EnvironmentProblem, match="'storm' would touch 50"):
        check_safety(_scenario(safety={"max_blast_radius": 10}), False)
    check_safety(_scenario(safety={"max_blast_radius": 50}), False)


def test_max_run_duration_is_checked_when_loading() -> None:
    with pytest.raises(ValueError, match=r"over safety\.max_run_duration"):
        _scenario(safety={"max_run_duration": "500ms"})


def _guard(raw: dict[str, object]) -> list[Guardrail]:
    return [Guardrail.model_validate({"abort_if": raw})]


def test_latency_guardrail_trips_only_after_holding_for_its_duration() -> None:
    live = LiveStats()
    guard = _guard({"ttft_p95": {"above": "500ms", "for": "5s"}})
    live.add([{"end": 100.0 + i * 0.1, "ttft": 2.0} for i in range(20)])
    assert live.guardrail_breach(guard, 102.0) is None  # starts holding
    assert live.guardrail_breach(guard, 106.0) is None  # 4s
    reason = live.guardrail_breach(guard, 107.5)
    assert reason is not None and "TTFT p95 2000ms above 500ms" in reason


def test_engine_down_guardrail_uses_the_last_good_scrape() -> None:
    live = LiveStats()
    guard = _guard({"engine_down": {"for": "10s"}})
    assert live.guardrail_breach(guard, 100.0, last_scrape_ok=95.0) is None
    reason = live.guardrail_breach(guard, 100.0, last_scrape_ok=85.0)
    assert reason is not None and "not answered for 15s" in reason


def test_watchdog_reverts_an_expired_fault_while_the_harness_lives(tmp_path: Path) -> None:
    REVERTED.clear()
    journal = Journal(tmp_path / "journal.jsonl", "run-w")
    journal.intent("late", "expired", {"backend": "watchdog-test", "what": "late"},
                   deadline=time.time() - 1)
    journal.intent("fine", "not yet", {"backend": "watchdog-test", "what": "fine"},
                   deadline=time.time() + 3600)

    def finish_soon() -> None:
        time.sleep(0.5)
        journal.run_finished()

    threading.Thread(target=finish_soon).start()
    assert watch(journal.path, os.getpid(), poll=0.05) == 0
    assert REVERTED == ["late"]
    events = [json.loads(x) for x in journal.path.read_text().splitlines()]
    done = [e for e in events if e["event"] == "reverted"]
    assert done == [{**done[0], "id": "1", "by": "watchdog", "reason": "lifetime exceeded"}]


def test_watchdog_reverts_everything_once_the_harness_is_gone(tmp_path: Path) -> None:
    REVERTED.clear()
    journal = Journal(tmp_path / "journal.jsonl", "run-x")
    journal.intent("a", "a", {"backend": "watchdog-test", "what": "a"}, deadline=None)
    journal.intent("b", "b", {"backend": "watchdog-test", "what": "b"},
                   deadline=time.time() + 3600)
    dead_pid = 2**22 + 12345  # above pid_max on Linux: never a live process
    assert watch(journal.path, dead_pid, poll=0.01) == 0
    assert sorted(REVERTED) == ["a", "b"]


def test_live_stats_keep_only_their_window_when_nothing_reads_them() -> None:
    live = LiveStats()
    for second in range(600):  # ten minutes of 100 requests a second, never displayed
        live.add([{"end": 1000.0 + second + i / 100, "ttft": 0.1} for i in range(100)])
    assert live.total == 60_000
    assert len(live.recent) <= 11 * 100  # the last ten seconds, not every request
    assert live.rate(1600.0) == pytest.approx(100.0, rel=0.05)
