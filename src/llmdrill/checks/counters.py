"""Reading Prometheus counters from scrapes: increases and rates that survive a restart.

A replica that is killed and started again begins its counters at 0; a drop between two
scrapes is a reset, and what was counted after it is the new value (Prometheus' own
`increase()` reads counters the same way).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

Point = tuple[float, float]


def step(before: float | None, after: float) -> float:
    """What a counter counted between two scrapes; `before` None: the series began (or came
    back after a gap of failed scrapes, its process new) at `after`."""
    if before is None:
        return 0.0
    return after if after < before else after - before


def increase(points: Sequence[Point], start: float, end: float) -> float:
    """How much the counter grew between the last scrape at or before `start` and the
    last at or before `end` (0 with fewer than two scrapes in reach)."""
    total, prev = 0.0, None
    for ts, value in points:
        if ts > end:
            break
        if ts > start:
            total += step(prev, value)
        prev = value
    return total


def first_growth(points: Sequence[Point], after: float) -> float | None:
    """The time of the first scrape after `after` that shows the counter grew since the
    scrape before it; a process restarted after `after` counts from 0, so its first
    scrape with a value above 0 is growth."""
    prev: float | None = None
    restarted = True  # no scrape yet after `after`: a new process counts from 0
    for ts, value in points:
        if ts <= after:
            prev, restarted = value, False
            continue
        if prev is None and restarted:
            prev = 0.0
        if step(prev, value) > 0:
            return ts
        prev = value
    return None


def counter_rate(points: Sequence[Point]) -> list[Point]:
    """Per-second rate between consecutive scrapes, at the later scrape's time."""
    out: list[Point] = []
    for (t0, v0), (t1, v1) in itertools.pairwise(points):
        if t1 > t0:
            out.append((t1, step(v0, v1) / (t1 - t0)))
    return out
