"""Plain records the evidence store holds and checks read. Times are epoch seconds."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

# The label the harness adds to the samples of each replica in target.engines.
ENGINE_LABEL = "llmdrill_engine"


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One logical request as the client saw it (after all its retry attempts).

    `error_class` is None for a success. Classes: timeout, connect, reset,
    incomplete_stream, protocol, empty (a 200 that generated nothing: a stream with no
    token before [DONE], a whole answer with no choices, no text or 0 completion tokens),
    http_4xx, http_429, http_5xx, interrupted (still in flight when the load stopped;
    `end` is then the stop time and `finished` is False).
    """

    start: float
    end: float
    api: str = "chat"
    stream: bool = True
    ttft: float | None = None  # seconds from start of the successful attempt to first token
    status: int | None = None  # last HTTP status, None when no response came
    error_class: str | None = None
    error_type: str | None = None  # e.g. the 4xx error body's "type", or an exception name
    attempts: int = 1
    output_tokens: int = 0
    prompt_tokens: int = 0
    itl_max: float | None = None  # largest gap between two tokens
    itl_mean: float | None = None
    request_id: str | None = None
    finished: bool = True
    shape: str | None = None  # the request shape's name (load.requests[].name, a flood's)
    retry_after: bool = False  # a refusal (429/503) carried a Retry-After header

    @property
    def ok(self) -> bool:
        return self.error_class is None

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class MetricSample:
    """One sample of a scraped series (histogram buckets included, by their full name)."""

    ts: float
    name: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PhaseWindow:
    name: str
    start: float
    end: float
    faults: tuple[str, ...] = ()
    completed: bool = True


@dataclass(frozen=True, slots=True)
class FaultEvent:
    fault: str
    applied_at: float
    reverted_at: float | None
    # When its revert began (the revert itself takes time: a Toxiproxy toxic removed, a
    # container restarted). From then on, what the traffic shows is no longer the fault.
    reverting_at: float | None = None

    @property
    def revert_began(self) -> float | None:
        return self.reverting_at if self.reverting_at is not None else self.reverted_at


@runtime_checkable
class WindowedRequests(Protocol):
    """Requests that answer a window's query themselves (evidence.db's RequestLog)."""

    def by_end(self) -> Iterator[RequestRecord]: ...

    def started_in(self, start: float, end: float) -> Sequence[RequestRecord]: ...

    def overlapping(self, start: float, end: float) -> Sequence[RequestRecord]: ...


@dataclass
class Evidence:
    """Everything a run observed, for checks and statistics to read: the requests as a
    sequence (a list, or a run's log read from evidence.db as it is iterated), metrics and
    events in memory."""

    requests: Sequence[RequestRecord] = field(default_factory=list)
    metrics: list[MetricSample] = field(default_factory=list)
    phases: list[PhaseWindow] = field(default_factory=list)
    faults: list[FaultEvent] = field(default_factory=list)
    run_end: float | None = None  # when the load stopped
    events: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)

    def events_of(self, kind: str, start: float | None = None, end: float | None = None
                  ) -> list[tuple[float, dict[str, Any]]]:
        """Events of one kind, optionally those whose time is within [start, end]."""
        return [(ts, d) for ts, k, d in self.events if k == kind
                and (start is None or ts >= start) and (end is None or ts <= end)]

    def phase(self, name: str) -> PhaseWindow | None:
        return next((p for p in self.phases if p.name == name), None)

    def requests_started_in(self, start: float, end: float) -> Sequence[RequestRecord]:
        """Requests that started within [start, end)."""
        if isinstance(self.requests, WindowedRequests):
            return self.requests.started_in(start, end)
        return [r for r in self.requests if start <= r.start < end]

    def requests_overlapping(self, start: float, end: float) -> Sequence[RequestRecord]:
        """Requests in flight at some moment of [start, end)."""
        if isinstance(self.requests, WindowedRequests):
            return self.requests.overlapping(start, end)
        return [r for r in self.requests if start <= r.end and r.start < end]

    def metric_names(self) -> set[str]:
        return {m.name for m in self.metrics}

    def series(
        self, name: str, labels: dict[str, str] | None = None
    ) -> list[tuple[float, float]]:
        """Samples of one metric name whose labels include `labels`, summed per scrape.

        Summing per timestamp folds several engines or label sets into one series, which is
        what a drill wants for gauges like running requests.
        """
        wanted = labels or {}
        per_ts: dict[float, float] = {}
        for m in self.metrics:
            if m.name != name:
                continue
            if any(m.labels.get(k) != v for k, v in wanted.items()):
                continue
            # A replica of target.engines is scraped on its own clock: folded into the
            # target's series it would make every other point another engine's.
            if ENGINE_LABEL in m.labels and ENGINE_LABEL not in wanted:
                continue
            per_ts[m.ts] = per_ts.get(m.ts, 0.0) + m.value
        return sorted(per_ts.items())

    def engine_series(self, engine: str, names: tuple[str, ...],
                      labels: dict[str, str] | None = None) -> list[tuple[float, float]]:
        """One replica's series (of target.engines) under the first of `names` it has,
        its samples with `labels` only (e.g. one HAProxy frontend of several)."""
        have = {m.name for m in self.metrics if m.labels.get(ENGINE_LABEL) == engine}
        name = next((n for n in names if n in have), None)
        return [] if name is None else self.series(name, {**(labels or {}),
                                                          ENGINE_LABEL: engine})

    def engine_scrape_failures(self, engine: str) -> list[float]:
        """When scrapes of one replica's /metrics failed (it was down or not answering)."""
        return [ts for ts, d in self.events_of("scrape_failed") if d.get("engine") == engine]
