"""The run's evidence store: an append-only SQLite file per run (evidence.db).

Embedded, queryable after the fact, and it survives a crash of the harness: whatever was
written before is still there for a partial report.
"""

from __future__ import annotations

import json
import operator
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import MISSING
from pathlib import Path
from typing import Any, overload
from urllib.parse import quote

from llmdrill.model.records import (
    Evidence,
    FaultEvent,
    MetricSample,
    PhaseWindow,
    RequestRecord,
)

# One typed column per RequestRecord field, in the dataclass's order: a row becomes a record
# without parsing, and costs about a third of the JSON text it was read from.
REQUEST_COLUMNS = tuple(RequestRecord.__dataclass_fields__)
_DEFAULTS = tuple(None if f.default is MISSING else f.default
                  for f in RequestRecord.__dataclass_fields__.values())
_TEXT_FIELDS = tuple(i for i, name in enumerate(REQUEST_COLUMNS)
                     if name in ("api", "error_class", "error_type", "request_id", "shape"))

_COLUMNS = ", ".join(f'"{c}"' for c in REQUEST_COLUMNS)  # "end" is an SQL keyword
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS requests ({_COLUMNS});
CREATE TABLE IF NOT EXISTS metrics (ts REAL, name TEXT, labels TEXT, value REAL);
CREATE TABLE IF NOT EXISTS events (ts REAL, kind TEXT, detail TEXT);
CREATE INDEX IF NOT EXISTS metrics_name ON metrics(name, ts);
"""
_INSERT = f"INSERT INTO requests VALUES ({', '.join('?' * len(REQUEST_COLUMNS))})"
_SELECT = f"SELECT {_COLUMNS} FROM requests"
# Built when the run is judged, not kept up while requests pour in: an index maintained
# on every insert would cost the ingest a share of the load's rate.
_WINDOW_INDEXES = """
CREATE INDEX IF NOT EXISTS requests_start ON requests("start");
CREATE INDEX IF NOT EXISTS requests_end ON requests("end");
"""
CHUNK = 2048  # rows fetched at a time while a log is read


_ALL_FIELDS = operator.itemgetter(*REQUEST_COLUMNS)


def _row(raw: dict[str, Any]) -> tuple[Any, ...]:
    try:  # the load writes every field: one C call instead of a lookup per field
        return _ALL_FIELDS(raw)  # type: ignore[no-any-return]
    except KeyError:
        return tuple(raw.get(name, default)
                     for name, default in zip(REQUEST_COLUMNS, _DEFAULTS, strict=True))


def _storable(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row SQLite can hold: a value of another type (a list where a number belongs, in a
    line no load of ours wrote) is left out (NULL) rather than failing the batch."""
    return tuple(v if isinstance(v, int | float | str) else None for v in row)


def _record(row: tuple[Any, ...]) -> RequestRecord:
    (start, end, api, stream, ttft, status, error_class, error_type, attempts, output_tokens,
     prompt_tokens, itl_max, itl_mean, request_id, finished, shape, retry_after) = row
    return RequestRecord(start, end, api, bool(stream), ttft, status, error_class, error_type,
                         attempts, output_tokens, prompt_tokens, itl_max, itl_mean,
                         request_id, bool(finished), shape, bool(retry_after))


class RequestLog(Sequence[RequestRecord]):
    """The requests of a run (or of a window of it) as evidence.db holds them, read when
    they are iterated, a chunk at a time, in order of start.

    Checks read `evidence.requests` as a sequence; a soak of a million requests would make
    that list a gigabyte. A log holds nothing but its query: each pass streams the rows,
    each window (`started_in`, `overlapping`) is an indexed query of its own, and what a
    check keeps is what it filtered. The file is opened read-only for each pass, so a log
    outlives the store that wrote it.
    """

    def __init__(self, path: Path, where: str = "", args: tuple[Any, ...] = ()) -> None:
        self.path = path
        self._where = where
        self._args = args

    def _query(self, head: str, tail: str = "", extra: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        # A URI, for read-only: the path quoted, since a folder may hold "?", "#" or "%".
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        where = f" WHERE {self._where}" if self._where else ""
        return db.execute(f"{head}{where}{tail}", self._args + extra)

    def __iter__(self) -> Iterator[RequestRecord]:
        return self._rows(' ORDER BY "start"')

    def by_end(self) -> Iterator[RequestRecord]:
        """The same records in order of end: when each outcome became known."""
        return self._rows(' ORDER BY "end"')

    def _rows(self, order: str) -> Iterator[RequestRecord]:
        cursor = self._query(_SELECT, order)
        try:
            while rows := cursor.fetchmany(CHUNK):
                yield from map(_record, rows)
        finally:
            cursor.connection.close()

    def __len__(self) -> int:
        cursor = self._query("SELECT count(*) FROM requests")
        try:
            return int(cursor.fetchone()[0])
        finally:
            cursor.connection.close()

    @overload
    def __getitem__(self, index: int) -> RequestRecord: ...

    @overload
    def __getitem__(self, index: slice) -> list[RequestRecord]: ...

    def __getitem__(self, index: int | slice) -> RequestRecord | list[RequestRecord]:
        if isinstance(index, slice):
            return list(self)[index]
        position = index if index >= 0 else len(self) + index
        if position < 0:
            raise IndexError(index)
        cursor = self._query(_SELECT, ' ORDER BY "start" LIMIT 1 OFFSET ?', (position,))
        try:
            row = cursor.fetchone()
        finally:
            cursor.connection.close()
        if row is None:
            raise IndexError(index)
        return _record(row)

    def _narrowed(self, where: str, args: tuple[Any, ...]) -> RequestLog:
        both = f"({self._where}) AND ({where})" if self._where else where
        return RequestLog(self.path, both, self._args + args)

    def started_in(self, start: float, end: float) -> RequestLog:
        """Those that started within [start, end)."""
        return self._narrowed('"start" >= ? AND "start" < ?', (start, end))

    def overlapping(self, start: float, end: float) -> RequestLog:
        """Those in flight at some moment of [start, end): started before its end, ended
        at or after its start."""
        return self._narrowed('"end" >= ? AND "start" < ?', (start, end))

    def of_shapes(self, shapes: Iterable[str]) -> RequestLog:
        names = sorted(set(shapes))
        if not names:
            return self._narrowed("0", ())
        return self._narrowed(f'"shape" IN ({", ".join("?" * len(names))})', tuple(names))


class EvidenceStore:
    def __init__(self, path: Path, secrets: list[str] | None = None) -> None:
        self.path = path
        # Evidence holds what targets answered; a hostile one may echo our API key.
        self.secrets = [s for s in (secrets or []) if s]
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL syncs at checkpoints, not at every batch's commit: a crash of
        # the harness still loses nothing committed (only the machine losing power could),
        # and the load's core is spared a flush to disk several times a second.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add_requests(self, raws: list[dict[str, Any]]) -> None:
        """Request records as the load wrote them (keys of RequestRecord; others ignored)."""
        rows = [_row(r) for r in raws]
        if self.secrets:  # a target may have echoed our key into an error's text
            rows = [self._clean_row(row) for row in rows]
        with self._lock:  # one transaction per batch: autocommit per row is slow
            self._db.execute("BEGIN")
            try:
                self._db.executemany(_INSERT, rows)
            except (sqlite3.InterfaceError, sqlite3.ProgrammingError, OverflowError):
                self._db.execute("ROLLBACK")
                self._db.execute("BEGIN")
                self._db.executemany(_INSERT, [_storable(row) for row in rows])
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

    def _clean_row(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        cleaned = list(row)
        for i in _TEXT_FIELDS:
            if isinstance(cleaned[i], str):
                cleaned[i] = self._clean(cleaned[i])
        return tuple(cleaned)

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
        """The evidence for checks: the requests as a log read from the file when needed
        (memory stays flat however many there were), the metrics and events in memory."""
        with self._lock:
            self._db.executescript(_WINDOW_INDEXES)
            metric_rows = self._db.execute(
                "SELECT ts, name, labels, value FROM metrics ORDER BY ts"
            ).fetchall()
        events = self.events()
        metrics = [MetricSample(ts, name, value, json.loads(labels))
                   for ts, name, labels, value in metric_rows]
        return Evidence(RequestLog(self.path), metrics, phases, faults, run_end, events)
