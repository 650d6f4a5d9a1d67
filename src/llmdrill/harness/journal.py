"""The run journal: every change is written (and fsynced) before it is made.

One JSON line per event in <run dir>/journal.jsonl:
  {"seq", "ts", "event": "intent", "id", "fault", "description", "action"}   before apply
  {"seq", "ts", "event": "applied" | "apply_failed", "id"}
  {"seq", "ts", "event": "reverted" | "revert_failed", "id", "error"?}
An intent without a matching "reverted" is outstanding: `llmdrill cleanup` reverts it
(even if "applied" never got written: the harness may have died between the two, and
every revert is idempotent). A pointer file in the state folder lists runs that have
outstanding changes, so cleanup finds them without being told where reports went.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmdrill.faults.base import RevertAction, revert


def state_dir() -> Path:
    base = os.environ.get("LLMDRILL_STATE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_STATE_HOME")
    return Path(xdg) / "llmdrill" if xdg else Path.home() / ".local" / "state" / "llmdrill"


@dataclass
class Outstanding:
    id: str
    fault: str
    description: str
    action: RevertAction


class Journal:
    def __init__(self, path: Path, run_id: str) -> None:
        self.path = path
        self.run_id = run_id
        self._seq = 0
        self._next_id = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            events = list(_events(path))
            self._seq = len(events)
            ids = [int(e["id"]) for e in events if str(e.get("id", "")).isdigit()]
            self._next_id = max(ids, default=0)
        self._pointer = state_dir() / "active" / f"{run_id}.json"

    def _write(self, event: dict[str, Any]) -> None:
        self._seq += 1
        event = {"seq": self._seq, "ts": time.time(), **event}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(event) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _register(self) -> None:
        if not self._pointer.exists():
            self._pointer.parent.mkdir(parents=True, exist_ok=True)
            self._pointer.write_text(
                json.dumps({"run_id": self.run_id, "journal": str(self.path.resolve()),
                            "pid": os.getpid()})
            )

    def intent(self, fault: str, description: str, action: RevertAction,
               deadline: float | None = None) -> str:
        """Record a change before making it. `deadline` (epoch) is when the watchdog
        reverts it even if the harness is frozen."""
        self._register()
        self._next_id += 1
        entry_id = f"{self._next_id}"
        event: dict[str, Any] = {"event": "intent", "id": entry_id, "fault": fault,
                                 "description": description, "action": action}
        if deadline is not None:
            event["deadline"] = deadline
        self._write(event)
        return entry_id

    def applied(self, entry_id: str) -> None:
        self._write({"event": "applied", "id": entry_id})

    def apply_failed(self, entry_id: str, error: str) -> None:
        self._write({"event": "apply_failed", "id": entry_id, "error": error})

    def reverting(self, entry_id: str, deadline: float) -> None:
        """A revert began and may take until `deadline` (a replica restarting loads its
        model): the watchdog leaves it to the harness until then."""
        self._write({"event": "reverting", "id": entry_id, "deadline": deadline})

    def reverted(self, entry_id: str, by: str = "harness", reason: str = "") -> None:
        event: dict[str, Any] = {"event": "reverted", "id": entry_id, "by": by}
        if reason:
            event["reason"] = reason
        self._write(event)

    def run_finished(self) -> None:
        """Tells the watchdog it can go: the harness has reverted what it could."""
        self._write({"event": "run_finished"})

    def reverted_by(self, entry_id: str) -> dict[str, Any] | None:
        """The "reverted" event of an entry, if any (the watchdog may have written it)."""
        found = None
        for event in _events(self.path):
            if event.get("event") == "reverted" and event.get("id") == entry_id:
                found = event
        return found

    def revert_failed(self, entry_id: str, error: str) -> None:
        self._write({"event": "revert_failed", "id": entry_id, "error": error})

    def outstanding(self) -> list[Outstanding]:
        return outstanding_in(self.path)

    def finish(self) -> None:
        """Drop the pointer once nothing is outstanding."""
        if not self.outstanding():
            self._pointer.unlink(missing_ok=True)


def _events(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except ValueError:
                continue  # a torn last line after a crash


def outstanding_in(path: Path) -> list[Outstanding]:
    intents: dict[str, Outstanding] = {}
    for event in _events(path):
        kind = event.get("event")
        if kind == "intent":
            intents[event["id"]] = Outstanding(event["id"], event.get("fault", ""),
                                               event.get("description", ""), event["action"])
        elif kind == "reverted":
            intents.pop(event.get("id", ""), None)
    # Undo in reverse order: a toxic before the proxy it sits on.
    return list(reversed(intents.values()))


def revert_outstanding(journal: Journal) -> list[tuple[Outstanding, str | None]]:
    """Revert everything outstanding; returns each entry with its error (None if fine)."""
    results: list[tuple[Outstanding, str | None]] = []
    for entry in journal.outstanding():
        try:
            revert(entry.action)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            journal.revert_failed(entry.id, message)
            results.append((entry, message))
        else:
            journal.reverted(entry.id)
            results.append((entry, None))
    return results


def active_runs() -> list[dict[str, Any]]:
    folder = state_dir() / "active"
    runs = []
    for pointer in sorted(folder.glob("*.json")) if folder.exists() else []:
        try:
            info = json.loads(pointer.read_text())
        except (ValueError, OSError):
            continue
        info["pointer"] = str(pointer)
        runs.append(info)
    return runs


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
