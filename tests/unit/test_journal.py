from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmdrill.harness.journal import Journal, active_runs, outstanding_in, revert_outstanding
from tests.unit.fake_backends import register_reverter

pytestmark = pytest.mark.unit

REVERTED: list[str] = []


@register_reverter("test-backend")
def _revert(action: dict[str, object]) -> None:
    if action.get("fail"):
        raise RuntimeError("cannot")
    REVERTED.append(str(action["what"]))


def test_intent_is_outstanding_until_reverted_even_if_never_marked_applied(
    tmp_path: Path,
) -> None:
    REVERTED.clear()
    journal = Journal(tmp_path / "journal.jsonl", "run-1")
    first = journal.intent("a", "first", {"backend": "test-backend", "what": "a"})
    journal.applied(first)
    journal.intent("b", "second", {"backend": "test-backend", "what": "b"})  # died here
    assert [o.fault for o in journal.outstanding()] == ["b", "a"]  # newest first
    assert [r["run_id"] for r in active_runs()] == ["run-1"]
    results = revert_outstanding(journal)
    assert [(o.fault, err) for o, err in results] == [("b", None), ("a", None)]
    assert REVERTED == ["b", "a"]
    assert outstanding_in(journal.path) == []
    journal.finish()
    assert active_runs() == []


def test_failed_revert_stays_outstanding_and_torn_lines_are_ignored(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.jsonl", "run-2")
    journal.intent("x", "broken", {"backend": "test-backend", "fail": True, "what": "x"})
    results = revert_outstanding(journal)
    assert results[0][1] == "RuntimeError: cannot"
    with journal.path.open("a") as fh:
        fh.write('{"seq": 99, "event": "rever')  # a crash mid-write
    assert [o.fault for o in outstanding_in(journal.path)] == ["x"]
    journal.finish()
    assert [r["run_id"] for r in active_runs()] == ["run-2"]  # kept: still outstanding
    events = [json.loads(x)["event"] for x in journal.path.read_text().splitlines()[:-1]]
    assert events == ["intent", "revert_failed"]


def test_a_long_revert_moves_the_watchdogs_deadline(tmp_path: Path) -> None:
    from llmdrill.harness.watchdog import _state

    journal = Journal(tmp_path / "journal.jsonl", "run-2")
    entry = journal.intent("kill", "restart", {"backend": "test-backend", "what": "k"},
                           deadline=100.0)
    assert _state(journal.path)[0][entry]["deadline"] == 100.0
    journal.reverting(entry, 400.0)  # a replica reloading its model
    assert _state(journal.path)[0][entry]["deadline"] == 400.0
    journal.reverted(entry)
    assert _state(journal.path)[0] == {}
    journal.finish()
