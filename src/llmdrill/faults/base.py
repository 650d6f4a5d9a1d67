"""The injector interface and the registry of revert actions.

A fault is applied in two steps so the journal can hold the way back *before* anything
changes: `prepare()` returns a JSON-serialisable revert action, the runner journals it,
then `apply()` makes the change. Reverting needs only that action (no live object), which
is what lets `llmdrill cleanup` undo a fault after the harness was killed with -9.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from llmdrill.errors import LlmdrillError
from llmdrill.model.quantiles import Quantiles

if TYPE_CHECKING:
    from llmdrill.model.records import Evidence, RequestRecord
    from llmdrill.model.verdict import FaultEffect

RevertAction = Mapping[str, Any]
"""What undoes one change, as JSON for the journal. It carries "backend": the YAML key of
the backend whose `revert` takes it. Each built-in backend types its own (a TypedDict)."""


class EnvironmentProblem(LlmdrillError):
    """A backend is unreachable or refuses us; the run cannot start (exit code 2)."""


class Injector(Protocol):
    backend: str

    def preflight(self) -> list[str]:
        """Check reachability and permissions; return what would be done. Changes nothing."""
        ...

    def prepare(self) -> RevertAction:
        """The action that undoes apply(); computed before anything changes."""
        ...

    def apply(self) -> None: ...

    def describe(self) -> str: ...

    def stop(self, timeout: float = 30.0) -> None:
        """Stop live activity the fault runs in this process (client-side faults)."""
        ...

    def effect(self, evidence: Evidence) -> FaultEffect:
        """Whether the run's evidence shows this fault reached the traffic or the target.

        Called after the run with everything it observed; a fault that left no trace makes
        the run inconclusive, never a pass."""
        ...



def revert(action: RevertAction) -> None:
    """Undo one action through its backend. Idempotent: reverting what is already gone is
    not an error."""
    from llmdrill.faults.registry import backend_of

    backend_of(str(action.get("backend"))).revert(dict(action))


def parse_signal(name: str) -> signal.Signals:
    """A signal by name (`SIGKILL`, `kill`) or number (`9`), for the faults that send one."""
    text = name.strip().upper()
    if text.isdigit():
        return signal.Signals(int(text))
    if not text.startswith("SIG"):
        text = "SIG" + text
    try:
        return signal.Signals[text]
    except KeyError:
        raise ValueError(f"unknown signal '{name}'") from None


# --- evidence that a fault landed (shared by the backends' `effect`) ------------------------

# Error classes a broken, cut or stalled connection gives a client.
NETWORK_ERRORS = frozenset({"timeout", "connect", "reset", "incomplete_stream", "protocol",
                            "empty", "http_5xx"})


@dataclass(frozen=True, slots=True)
class FaultWindow:
    """When one fault was in place: from its apply to its revert (or the end of the run)."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


def fault_window(evidence: Evidence, fault: str) -> FaultWindow | None:
    """The fault's own window, from the run's fault events; None if it was never applied.
    A fault applied in several phases spans from its first apply to its last revert."""
    events = [f for f in evidence.faults if f.fault == fault]
    if not events:
        return None
    start = min(f.applied_at for f in events)
    ends = [f.reverted_at for f in events]
    end: float | None
    if any(e is None for e in ends):
        end = evidence.run_end
        if end is None:
            end = max((r.end for r in evidence.requests), default=start)
    else:
        end = max(e for e in ends if e is not None)
    return FaultWindow(start, max(start, end))


@dataclass(frozen=True, slots=True)
class Baseline:
    """Typical timings of requests that ended before a fault, per request shape."""

    ttft: dict[str | None, float]
    duration: dict[str | None, float]
    count: int

    def of(self, table: dict[str | None, float], shape: str | None) -> float | None:
        if shape in table:
            return table[shape]
        return table.get("*")


def baseline_before(requests: Iterable[RequestRecord], start: float) -> Baseline:
    """Median TTFT and duration of the successful requests that ended before `start`,
    per shape and over all ("*"): the yardstick for "slower during the fault". Read in
    one pass, in memory that does not grow with the run (`Quantiles`)."""
    ttfts: dict[str | None, Quantiles] = {}
    durations: dict[str | None, Quantiles] = {}
    count = 0
    for r in requests:
        if not (r.ok and r.end <= start):
            continue
        count += 1
        for shape in ("*", r.shape):
            durations.setdefault(shape, Quantiles()).add(r.end - r.start)
            if r.ttft is not None:
                ttfts.setdefault(shape, Quantiles()).add(r.ttft)
    ttft = {shape: v for shape, q in ttfts.items() if (v := q.percentile(50)) is not None}
    duration = {shape: v for shape, q in durations.items()
                if (v := q.percentile(50)) is not None}
    return Baseline(ttft, duration, count)


def cut_or_retried(r: RequestRecord) -> bool:
    """A request a fault on its path shows in: it failed on the network or was retried."""
    return r.error_class in NETWORK_ERRORS or r.attempts > 1


def share_text(hit: int, total: int) -> str:
    return f"{hit} of {total} request{'s' if total != 1 else ''}"


# --- a replica behind a gateway (target.engines) -------------------------------------------

ARRIVALS = ("vllm:prompt_tokens_total",)


def engine_behind(engines: Mapping[str, str], upstream: str | None) -> str | None:
    """The label of the replica (target.engines: label -> metrics URL) listening at
    `upstream` (host:port), if one does."""
    if not upstream:
        return None
    for label, url in engines.items():
        if url.split("://", 1)[-1].split("/", 1)[0] == upstream:
            return label
    return None


# What a gateway fault's effect says when the replica's own counter cannot judge it.
def replica_cannot_tell(engine: str | None) -> str:
    if engine is None:
        return ("no replica of target.engines is at its address or has its name, so the "
                "traffic leaving it is not measured")
    return (f"{engine}'s own counter cannot tell (not scraped, or it received nothing "
            "before the fault)")


def arrivals_in_second_half(evidence: Evidence, engine: str, window: FaultWindow) -> float:
    """How much the replica's own prompt-token counter grew in the fault's second half."""
    from llmdrill.checks.counters import increase

    half = window.start + window.seconds / 2
    return increase(evidence.engine_series(engine, ARRIVALS), half, window.end)


def replica_cut_off(evidence: Evidence, engine: str, window: FaultWindow
                    ) -> FaultEffect | None:
    """Seen when the replica received requests before the fault and none in the second
    half of it (its own prompt-token counter stood still): the fault cut it off and the
    traffic went elsewhere. None when its counter cannot tell (no scrapes, idle before)."""
    from llmdrill.checks.counters import increase
    from llmdrill.model.verdict import FaultEffect

    arrivals = evidence.engine_series(engine, ARRIVALS)
    if not arrivals or arrivals[0][0] >= window.start:
        return None
    before = increase(arrivals, arrivals[0][0], window.start)
    half = window.start + window.seconds / 2
    if before <= 0 or not any(half <= ts <= window.end for ts, _ in arrivals):
        return None
    if arrivals_in_second_half(evidence, engine, window) > 0:
        return None
    return FaultEffect(True, f"{engine} behind it received no new request in the last "
                             f"{window.seconds / 2:.1f}s of the fault (its "
                             f"{ARRIVALS[0]} stood still, after growing by {before:g} "
                             "before): the fault cut it off and the traffic went elsewhere")
