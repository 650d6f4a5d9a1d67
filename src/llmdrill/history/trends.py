"""Regressions: a figure that moved the wrong way, against the previous run and against a
rolling baseline (the median of up to BASELINE_RUNS earlier runs).

A move counts when it is both more than RELATIVE of the reference and more than the
figure's floor (so 2 ms on a 5 ms TTFT is not a regression). A figure missing on either
side is "no data": neither a regression nor a reassurance."""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median

from llmdrill.history.figures import BY_NAME, FIGURES
from llmdrill.history.store import RunRow

RELATIVE = 0.20
BASELINE_RUNS = 5
MIN_BASELINE_RUNS = 3


@dataclass(frozen=True)
class Move:
    figure: str
    reference: str  # "previous run" or "rolling baseline"
    before: float
    after: float

    @property
    def change(self) -> float | None:
        return None if self.before == 0 else (self.after - self.before) / abs(self.before)

    def sentence(self) -> str:
        fig = BY_NAME[self.figure]
        share = "" if self.change is None else f", {self.change * 100:+.0f}%"
        return (f"{fig.label} {_fmt(self.after)}{fig.unit} against {_fmt(self.before)}"
                f"{fig.unit}{share} ({self.reference})")


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def moved(name: str, before: float | None, after: float | None) -> bool:
    """The figure got worse beyond noise (False when either side is missing)."""
    if before is None or after is None:
        return False
    fig = BY_NAME[name]
    delta = after - before if fig.worse == "higher" else before - after
    return delta > fig.floor and delta > RELATIVE * abs(before)


def changed(name: str, before: float | None, after: float | None) -> bool:
    """The figure moved beyond noise, either way (for `llmdrill compare`)."""
    if before is None or after is None:
        return before is not after
    fig = BY_NAME[name]
    delta = abs(after - before)
    return delta > fig.floor and delta > RELATIVE * abs(before)


def regressions(history: list[RunRow]) -> list[Move]:
    """The moves of the last run of one scenario's history (oldest first)."""
    if len(history) < 2:
        return []
    *earlier, last = history
    found: list[Move] = []
    previous = earlier[-1]
    for fig in FIGURES:
        after = last.figures.get(fig.name)
        before = previous.figures.get(fig.name)
        if after is not None and before is not None and moved(fig.name, before, after):
            found.append(Move(fig.name, "previous run", before, after))
        window = [r.figures[fig.name] for r in earlier[-BASELINE_RUNS:] if fig.name in r.figures]
        if after is not None and len(window) >= MIN_BASELINE_RUNS:
            base = median(window)
            if moved(fig.name, base, after):
                found.append(Move(fig.name, "rolling baseline", base, after))
    return found
