"""Client-side faults: activity the harness itself runs while the fault is applied
(cancel storms, request floods). Nothing outside the harness changes, so reverting means
stopping that activity; after a crash there is nothing left to revert (the threads died
with the harness), which is what the reverter records."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Literal, TypedDict

from llmdrill.faults.base import RevertAction

if TYPE_CHECKING:
    from llmdrill.model.records import Evidence



class ClientRevert(TypedDict):
    """The journal's record of a client-side fault: nothing to undo outside the harness."""

    backend: str  # the fault's YAML key (cancel_storm, request_flood)
    op: Literal["stop"]
    fault: str

# The engine's queue: requests running plus waiting. A client-side fault that reaches the
# engine makes it rise.
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"


class ClientActivity:
    """Base for client-side faults: `run(stop)` in a thread from apply() until stop()."""

    backend: str  # the fault's YAML key, set by each subclass

    def __init__(self, fault_name: str) -> None:
        self.fault_name = fault_name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def describe(self) -> str:
        raise NotImplementedError

    def preflight(self) -> list[str]:
        return [self.describe()]

    def prepare(self) -> RevertAction:
        return ClientRevert(backend=self.backend, op="stop", fault=self.fault_name)

    def apply(self) -> None:
        # A fault listed again in a later phase is applied again: start from a clear stop.
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._guarded, name=f"fault-{self.fault_name}",
                                        daemon=True)
        self._thread.start()

    def _guarded(self) -> None:
        try:
            self.run(self._stop)
        except Exception as exc:  # recorded; a broken storm must not kill the run
            self.error = f"{type(exc).__name__}: {exc}"

    def run(self, stop: threading.Event) -> None:
        raise NotImplementedError

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


def engine_queue(evidence: Evidence) -> list[tuple[float, float]]:
    """running + waiting per scrape, from the engine's metrics ([] when not scraped)."""
    per_ts: dict[float, float] = {}
    for name in (RUNNING, WAITING):
        for ts, value in evidence.series(name):
            per_ts[ts] = per_ts.get(ts, 0.0) + value
    return sorted(per_ts.items())


def queue_rise(queue: list[tuple[float, float]], start: float, end: float
               ) -> tuple[float, float] | None:
    """(level before `start`, highest level in [start, end]) of the engine's queue, or None
    when no scrape fell in the window (nothing to tell from)."""
    inside = [v for ts, v in queue if start <= ts <= end]
    if not inside:
        return None
    before = [v for ts, v in queue if ts < start]
    return (before[-1] if before else 0.0), max(inside)


def revert_client(action: RevertAction) -> None:
    """A client-side fault lives in the harness process: if the journal still lists it,
    that process is gone and so is the fault."""
    del action

