"""The history store: one SQLite file (stdlib sqlite3: one file beside the reports, no
server, readable with any SQLite tool). Counts, verdicts and timings only."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from llmdrill.errors import LlmdrillError
from llmdrill.history.figures import key_figures
from llmdrill.model.result import RunResult

SCHEMA_VERSION = 1
DEFAULT_NAME = "history.sqlite"


class HistoryError(LlmdrillError):
    """The store cannot be read or written (the message names the file)."""


@dataclass
class RunRow:
    run_id: str
    scenario: str
    started_at: float
    status: str
    report: str
    figures: dict[str, float] = field(default_factory=dict)


def history_path(out_dir: Path, configured: Path | None = None) -> Path:
    """--history, else $LLMDRILL_HISTORY, else history.sqlite in the reports folder."""
    if configured is not None:
        return configured.expanduser().resolve()
    env = os.environ.get("LLMDRILL_HISTORY")
    return Path(env).expanduser().resolve() if env else out_dir / DEFAULT_NAME


class HistoryStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=30)
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise HistoryError(f"{path}: history schema {version}, this llmdrill reads "
                                   f"{SCHEMA_VERSION}")
            with self.db:
                self.db.execute("CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, "
                                "scenario TEXT NOT NULL, started_at REAL NOT NULL, "
                                "status TEXT NOT NULL, report TEXT NOT NULL)")
                self.db.execute("CREATE TABLE IF NOT EXISTS figures (run_id TEXT NOT NULL "
                                "REFERENCES runs(run_id), name TEXT NOT NULL, value REAL "
                                "NOT NULL, PRIMARY KEY (run_id, name))")
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except (sqlite3.Error, OSError) as exc:
            raise HistoryError(f"cannot use the history store {path}: {exc}") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record(self, result: RunResult, report_dir: Path) -> RunRow:
        row = RunRow(result.run_id, result.scenario.name, result.started_at, result.status,
                     str(report_dir), key_figures(result))
        try:
            with self.db:
                self.db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?)",
                                (row.run_id, row.scenario, row.started_at, row.status,
                                 row.report))
                self.db.execute("DELETE FROM figures WHERE run_id = ?", (row.run_id,))
                self.db.executemany("INSERT INTO figures VALUES (?, ?, ?)",
                                    [(row.run_id, k, v) for k, v in row.figures.items()])
        except sqlite3.Error as exc:
            raise HistoryError(f"cannot write the history store {self.path}: {exc}") from None
        return row

    def runs(self, scenario: str | None = None) -> list[RunRow]:
        """Every recorded run (of one scenario), oldest first, with its figures."""
        try:
            query = "SELECT run_id, scenario, started_at, status, report FROM runs"
            args: tuple[str, ...] = ()
            if scenario is not None:
                query += " WHERE scenario = ?"
                args = (scenario,)
            rows = [RunRow(*r) for r in self.db.execute(query + " ORDER BY started_at", args)]
            for row in rows:
                row.figures = dict(self.db.execute(
                    "SELECT name, value FROM figures WHERE run_id = ?", (row.run_id,)))
        except sqlite3.Error as exc:
            raise HistoryError(f"cannot read the history store {self.path}: {exc}") from None
        return rows

    def run(self, run_id: str) -> RunRow | None:
        return next((r for r in self.runs() if r.run_id == run_id), None)
