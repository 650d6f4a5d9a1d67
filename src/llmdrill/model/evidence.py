"""The run's evidence store: an append-only SQLite file per run (evidence.db).

Embedded, queryable after the fact, and it survives a crash of the harness: whatever was
written before is still there for a partial report.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from llmdrill.model.records import (
    Evidence,
    FaultEvent,
    MetricSample,
    PhaseWindow,
    RequestRecord,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (start REAL, end REAL, record TEXT);
CREATE TABLE IF NOT EXISTS metrics (ts REAL, name TEXT, labels TEXT, value REAL);
CREATE TABLE IF NOT EXISTS events (ts REAL, kind TEXT, detail TEXT);
CREATE INDEX IF NOT EXISTS metrics_name ON metrics(name, ts);
"""

REQUEST_FIELDS = set(RequestRecord.__dataclass_fields__)


def record_from_dict(raw: dict[str, Any]) -> RequestRecord:
    return RequestRecord(**{k: v for k, v in raw.items() if k in REQUEST_FIELDS})


class EvidenceStore:
    def __init__(self, path: Path, secrets: list[str] | None = None) -> None:
        self.path = path
        # Evidence holds what targets answered; a hostile one may echo our API key.
        self.secrets = [s for s in (secrets or []) if s]
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add_requests(self, raws: list[dict[str, Any]], lines: list[str] | None = None) -> None:
        """Request records, with the JSON text each was read from when there is one."""
        texts = lines if lines is not None else [json.dumps(r) for r in raws]
        if self.secrets:
            texts = [self._clean(text) for text in texts]
        rows = [(r.get("start"), r.get("end"), text)
                for r, text in zip(raws, texts, strict=True)]
        with self._lock:  # one transaction per batch: autocommit per row is slow
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO requests VALUES (?, ?, ?)", rows)
            self._db.execute("COMMIT")

    def add_metrics(self, samples: list[MetricSample]) -> None:
        rows = [(s.ts, s.name, json.dumps(s.labels, sort_keys=True), s.value) for s in samples]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")

    def add_event(self, ts: float, kind: str, detail: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT INTO events VALUES (?, ?, ?)",
                             (ts, kind, self._clean(json.dumps(detail))))

    def _clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def events(self, kind: str | None = None) -> list[tuple[float, str, dict[str, Any]]]:
        query = "SELECT ts, kind, detail FROM events"
        args: tuple[str, ...] = ()
        if kind:
            query += " WHERE kind = ?"
            args = (kind,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY ts", args).fetchall()
        return [(ts, k, json.loads(d)) for ts, k, d in rows]

    def load(
        self, phases: list[PhaseWindow], faults: list[FaultEvent], run_end: float | None
    ) -> Evidence:
        with self._lock:
            req_rows = self._db.execute("SELECT record FROM requests ORDER BY start").fetchall()
            metric_rows = self._db.execute(
                "SELECT ts, name, labels, value FROM metrics ORDER BY ts"
            ).fetchall()
        events = self.events()
        requests = [record_from_dict(json.loads(r[0])) for r in req_rows]
        metrics = [MetricSample(ts, name, value, json.loads(labels))
                   for ts, name, labels, value in metric_rows]
        return Evidence(requests, metrics, phases, faults, run_end, events)
