"""Apply a fault only once its target is serving (`faults.<name>.when_busy`).

A kill drill judges how the requests in flight on the killed engine end. Behind a
gateway that picks a replica per request, a kill can land while the replica it hits has
none (or while its last streams finish), and the drill can then only say it saw nothing.
The gate polls that replica's own Prometheus metrics and lets the fault go as soon as the
engine reports enough requests running, so the drill catches streams every time.

What the gate saw is evidence: the poll's start time and the value are recorded, and
stream_recovery uses them to tell a replica that drained its streams (they completed after
the kill) from a kill that caught no stream at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from llmdrill.probes.engine_metrics import scrape_once
from llmdrill.scenario.models import WhenBusy

POLL_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class BusyWait:
    """How the wait ended: `met` with `running` requests seen by the poll that began at
    `polled_at`; or not met once `within` passed (`running` is the last value read, None
    if no poll answered; `error` the last failure)."""

    met: bool
    running: float | None
    polled_at: float | None
    waited_s: float
    polls: int
    error: str | None = None

    def detail(self, fault: str, spec: WhenBusy) -> dict[str, object]:
        return {"fault": fault, "met": self.met, "running": self.running,
                "min_running": spec.min_running, "polled_at": self.polled_at,
                "waited_s": round(self.waited_s, 3), "polls": self.polls,
                "metric": spec.metric, "url": spec.metrics_url, "error": self.error}


def running(client: httpx.Client, spec: WhenBusy) -> float:
    """The engine's `metric`, summed over its label sets (one per model or engine). A
    metrics page without it is an error, not zero: the gate must not pass on a page that
    cannot show load (a wrong URL, another exporter)."""
    samples = [s for s in scrape_once(client, spec.metrics_url, POLL_TIMEOUT_S)
               if s.name == spec.metric]
    if not samples:
        raise ValueError(f"no {spec.metric} on the page")
    return sum(s.value for s in samples)


def wait_until_busy(spec: WhenBusy, *, clock: Callable[[], float] = time.time,
                    sleep: Callable[[float], None] = time.sleep) -> BusyWait:
    """Polls until the engine serves `min_running` requests or `within` passes. Runs on
    the harness's main thread: a Ctrl-C or SIGTERM interrupts the sleep like any other."""
    began = clock()
    polls = 0
    last: float | None = None
    error: str | None = None
    with httpx.Client(trust_env=False, follow_redirects=False) as client:
        while True:
            polled_at = clock()
            polls += 1
            try:
                last = running(client, spec)
                error = None
            except (httpx.HTTPError, OSError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:200]
            if last is not None and error is None and last >= spec.min_running:
                return BusyWait(True, last, polled_at, clock() - began, polls)
            if clock() - began >= spec.within:
                return BusyWait(False, last, None, clock() - began, polls, error)
            sleep(max(0.0, min(spec.poll_interval, began + spec.within - clock())))
