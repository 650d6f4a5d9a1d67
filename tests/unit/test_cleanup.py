"""`llmdrill cleanup` (harness/cleanup.py): which runs it picks, what it reverts, what it
reports and its exit code. Reverts go to a recording backend (pure logic: the real backends
have their own kill -9 trials against real Toxiproxy and Docker)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from llmdrill.faults.base import RevertAction
from llmdrill.harness.cleanup import cleanup_runs
from llmdrill.harness.journal import Journal, active_runs, outstanding_in
from tests.unit.fake_backends import register_reverter

pytestmark = pytest.mark.unit

REVERTED: list[str] = []


@register_reverter("unit-recorder")
def _record(action: RevertAction) -> None:
    if action.get("fail"):
        raise RuntimeError("backend refused")
    REVERTED.append(str(action["what"]))


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("LLMDRILL_STATE_DIR", str(tmp_path / "state"))
    REVERTED.clear()
    yield tmp_path


def _crashed_run(root: Path, run_id: str, *whats: str, fail: bool = False,
                 pid: int | None = None) -> Path:
    """A run folder whose journal holds intents never reverted, as after a kill -9."""
    journal = Journal(root / run_id / "journal.jsonl", run_id)
    for what in whats:
        entry = journal.intent(what, f"change {what}",
                               {"backend": "unit-recorder", "what": what, "fail": fail})
        journal.applied(entry)
    pointer = next(Path(i["pointer"]) for i in active_runs() if i["run_id"] == run_id)
    info = json.loads(pointer.read_text())
    info["pid"] = pid if pid is not None else _dead_pid()
    pointer.write_text(json.dumps(info))
    return root / run_id


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _cleanup(ref: str | None = None, force: bool = False) -> tuple[int, str]:
    buf = io.StringIO()
    code = cleanup_runs(ref, force, Console(file=buf, width=200))
    return code, buf.getvalue()


def test_reverts_every_crashed_run_newest_change_first(state: Path) -> None:
    _crashed_run(state, "run-a", "proxy", "toxic")
    _crashed_run(state, "run-b", "pause")
    code, text = _cleanup()
    assert code == 0
    assert REVERTED == ["toxic", "proxy", "pause"]  # a toxic before the proxy it sits on
    assert "3 change(s) reverted, 0 failed" in text
    assert active_runs() == []  # pointers dropped once nothing is outstanding


def test_idempotent_a_second_cleanup_finds_nothing(state: Path) -> None:
    _crashed_run(state, "run-a", "toxic")
    assert _cleanup()[0] == 0
    code, text = _cleanup()
    assert code == 0 and REVERTED == ["toxic"]
    assert "0 change(s) reverted" in text


@pytest.mark.parametrize("how", ["folder", "journal", "run_id"])
def test_one_run_by_folder_journal_or_id(state: Path, how: str) -> None:
    folder = _crashed_run(state, "run-a", "toxic")
    _crashed_run(state, "run-b", "other")
    ref = {"folder": str(folder), "journal": str(folder / "journal.jsonl"),
           "run_id": "run-a"}[how]
    assert _cleanup(ref)[0] == 0
    assert REVERTED == ["toxic"]  # run-b is left alone


def test_unknown_reference_is_exit_2_naming_it(state: Path) -> None:
    code, text = _cleanup(str(state / "nowhere"))
    assert code == 2 and "nowhere" in text


def test_a_live_harness_is_skipped_unless_forced(state: Path) -> None:
    _crashed_run(state, "run-live", "toxic", pid=os.getpid())
    code, text = _cleanup()
    assert code == 0 and REVERTED == [] and "still running" in text and "--force" in text
    assert _cleanup(force=True)[0] == 0
    assert REVERTED == ["toxic"]


def test_a_failed_revert_is_exit_1_and_stays_outstanding(state: Path) -> None:
    folder = _crashed_run(state, "run-a", "stuck", fail=True)
    code, text = _cleanup()
    assert code == 1
    assert "FAILED to revert change stuck: RuntimeError: backend refused" in text
    assert [o.fault for o in outstanding_in(folder / "journal.jsonl")] == ["stuck"]
    assert [i["run_id"] for i in active_runs()] == ["run-a"]  # found again next time
