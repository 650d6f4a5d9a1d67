"""The fault watchdog: a separate process that reverts what the harness cannot.

The runner starts it (in a session of its own) next to every run. Every 0.5 s it reads the
run's journal and reverts, with the journal's own revert actions:
- a fault whose lifetime has run out (its intent carries a `deadline`), even if the
  harness is alive but frozen (SIGSTOP, a hung call, a paused VM): threads of a frozen
  process freeze with it, a second process does not;
- everything outstanding once the harness process is gone (killed with -9, OOM-killed).
It exits when the journal says the run finished, or when the harness is gone and nothing
is outstanding. `llmdrill cleanup` remains for when the watchdog itself was killed too.

Usage: python -m llmdrill.harness.watchdog JOURNAL HARNESS_PID
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from llmdrill.faults.base import revert
from llmdrill.harness.journal import Journal, pid_alive

POLL_S = 0.5


def _state(path: Path) -> tuple[dict[str, dict[str, object]], bool]:
    """Outstanding intents by id, and whether the run has finished."""
    outstanding: dict[str, dict[str, object]] = {}
    finished = False
    if not path.exists():
        return outstanding, finished
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.get("event")
            if kind == "intent":
                outstanding[str(event["id"])] = event
            elif kind == "reverting" and str(event.get("id")) in outstanding:
                # A long revert in progress moves the deadline: two restarts of one
                # replica at once would fight over its port.
                outstanding[str(event["id"])] = {**outstanding[str(event["id"])],
                                                 "deadline": event.get("deadline")}
            elif kind == "reverted":
                outstanding.pop(str(event.get("id")), None)
            elif kind == "run_finished":
                finished = True
    return outstanding, finished


def watch(journal_path: Path, harness_pid: int, poll: float = POLL_S) -> int:
    journal = Journal(journal_path, journal_path.parent.name)
    failed: set[str] = set()
    while True:
        outstanding, finished = _state(journal_path)
        if finished:
            return 0
        harness_alive = pid_alive(harness_pid)
        now = time.time()
        for entry_id, intent in outstanding.items():
            deadline = intent.get("deadline")
            expired = isinstance(deadline, (int, float)) and now > deadline
            if harness_alive and not expired:
                continue
            reason = "lifetime exceeded" if harness_alive else "harness is gone"
            try:
                revert(intent["action"])  # type: ignore[arg-type]
            except Exception as exc:
                if entry_id not in failed:  # keep trying, but journal a failure once
                    journal.revert_failed(entry_id, f"watchdog ({reason}): {exc}")
                    failed.add(entry_id)
                continue
            journal.reverted(entry_id, by="watchdog", reason=reason)
        if not harness_alive and not _state(journal_path)[0]:
            journal.finish()
            return 0
        time.sleep(poll)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m llmdrill.harness.watchdog JOURNAL HARNESS_PID", file=sys.stderr)
        return 2
    return watch(Path(args[0]), int(args[1]))


if __name__ == "__main__":
    sys.exit(main())
