"""recovers: a measure comes back within a band around its baseline soon enough.

The baseline is the measure over a healthy phase. A window of `window` seconds slides
over the checked phase in 0.5 s steps; the first window whose value is inside the band
marks recovery, at (window start - phase start). Recovery must come within `within`.

A window counts only on enough evidence: at least `min_requests` requests started in it
and ended, and at most `max_error_rate` of them failed (a window where most requests are
reset fast is not a recovery, however good the few survivors' TTFT). No window with
enough requests (or no baseline) is inconclusive, never a pass.

A fault applied during the checked phase (late: a busy harness, or a fault that starts
after the phase does) moves the first window to when it was applied: requests sent before
the fault was in place show the healthy system, not a recovery from it.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from itertools import accumulate
from typing import Any, Literal

from pydantic import Field

from llmdrill.checks.base import fmt, make_result
from llmdrill.checks.stats import percentile
from llmdrill.model.records import Evidence, RequestRecord
from llmdrill.model.result import CheckResult, CheckStatus, Window
from llmdrill.plugin import CheckKind, Location, Problem
from llmdrill.scenario import refs
from llmdrill.scenario.fields import (
    Strict,
)
from llmdrill.scenario.units import Duration, Fraction

RecoverMeasure = Literal["ttft_p50", "ttft_p95", "error_rate", "tokens_per_s"]

# --- the spec: the YAML under this key ----------------------------------------


class RecoversCheck(Strict):
    """A measure comes back within tolerance of its baseline soon after the phase starts."""

    measure: RecoverMeasure = Field(description="What has to come back.")
    baseline_phase: str = Field(description="Healthy phase whose value is the baseline.")
    within: Duration = Field(description="Recovery must come this soon after the phase starts.")
    tolerance: Fraction = Field(
        default=0.2, description="Allowed distance from the baseline, as a share of it."
    )
    slack: float = Field(
        default=0.0,
        ge=0,
        description="Absolute allowance added to the tolerance band, in the measure's unit "
        "(seconds for TTFT).",
    )
    window: Duration = Field(default=5.0, description="Sliding window the measure is taken over.")
    max_error_rate: Fraction = Field(
        default=0.05,
        description="A window counts as recovered only if at most this share of the "
        "requests started in it failed (fast errors are not a recovery).",
    )
    min_requests: int = Field(
        default=3, ge=1,
        description="Requests that must have started (and ended) in a window for it to "
        "count; no window with this many is inconclusive.",
    )


KIND = "recovers"
STEP_S = 0.5
MAX_POINTS = 200
_EPS = 1e-9

HIGHER_IS_BETTER = frozenset({"tokens_per_s"})
_UNITS = {"ttft_p50": "s", "ttft_p95": "s", "error_rate": "", "tokens_per_s": " tok/s"}


def measure_started(measure: str, started: Sequence[RequestRecord]) -> float | None:
    """A latency or error measure over requests; None when they give no evidence."""
    if measure in ("ttft_p50", "ttft_p95"):
        ttfts = [r.ttft for r in started if r.ok and r.ttft is not None]
        return percentile(ttfts, 50 if measure == "ttft_p50" else 95)
    if measure == "error_rate":
        judged = [r for r in started if r.finished]  # cut by the load stop: no outcome
        if not judged:
            return None
        return sum(1 for r in judged if not r.ok) / len(judged)
    raise ValueError(f"unknown recover measure '{measure}'")


def _baseline(spec: RecoversCheck, evidence: Evidence) -> float | str:
    """The baseline value, or why there is none."""
    phase = evidence.phase(spec.baseline_phase)
    if phase is None:
        return f"baseline phase '{spec.baseline_phase}' did not run, so there is no baseline"
    started = evidence.requests_started_in(phase.start, phase.end)
    if not started:
        return f"no requests started in baseline phase '{spec.baseline_phase}'"
    if spec.measure in HIGHER_IS_BETTER:
        span = phase.end - phase.start
        tokens = sum(r.output_tokens for r in started)
        if span <= 0 or tokens <= 0:
            # A zero throughput baseline would make any value "recovered".
            return f"no output tokens in baseline phase '{spec.baseline_phase}'"
        return tokens / span
    value = measure_started(spec.measure, started)
    if value is None:
        return f"no successful request with a TTFT in baseline phase '{spec.baseline_phase}'"
    return value


class _Slider:
    """Measures over sliding windows, with sorted indexes so each step is cheap."""

    def __init__(self, measure: str, records: Sequence[RequestRecord]) -> None:
        self.measure = measure
        self.by_start = sorted(records, key=lambda r: r.start)
        self.starts = [r.start for r in self.by_start]
        by_end = sorted(records, key=lambda r: r.end)
        self.ends = [r.end for r in by_end]
        self.tokens_upto = [0, *accumulate(r.output_tokens for r in by_end)]

    def judged(self, t: float, length: float) -> tuple[int, int]:
        """(requests started in [t, t+length) that ended, how many of them failed)."""
        lo, hi = bisect_left(self.starts, t), bisect_left(self.starts, t + length)
        done = [r for r in self.by_start[lo:hi] if r.finished]
        return len(done), sum(1 for r in done if not r.ok)

    def value(self, t: float, length: float) -> float | None:
        if self.measure in HIGHER_IS_BETTER:
            # Throughput counts what completed in the window, wherever it started.
            # Half-open like the start windows, so no request is counted in two
            # adjacent windows of the same length.
            lo, hi = bisect_left(self.ends, t), bisect_left(self.ends, t + length)
            if lo == hi:
                return None
            return (self.tokens_upto[hi] - self.tokens_upto[lo]) / length
        lo, hi = bisect_left(self.starts, t), bisect_left(self.starts, t + length)
        return measure_started(self.measure, self.by_start[lo:hi])


def _outcome_at(record: RequestRecord) -> float:
    """When a request showed how it went: its first token, else its end."""
    if record.ok and record.ttft is not None:
        return record.start + record.ttft
    return record.end


def _in_band(measure: str, value: float | None, limit: float) -> bool:
    if value is None:
        return False  # an empty window shows nothing, least of all recovery
    return value >= limit if measure in HIGHER_IS_BETTER else value <= limit


def _thin(points: list[list[float | None]]) -> list[list[float | None]]:
    if len(points) <= MAX_POINTS:
        return points
    return points[:: math.ceil(len(points) / MAX_POINTS)]


def evaluate_recovers(
    name: str, phase: str, spec: RecoversCheck, evidence: Evidence, window: Window
) -> CheckResult:
    unit = _UNITS.get(spec.measure, "")
    expected: dict[str, object] = {
        "measure": spec.measure,
        "baseline_phase": spec.baseline_phase,
        "within_s": spec.within,
        "tolerance": spec.tolerance,
        "slack": spec.slack,
        "window_s": spec.window,
        "max_error_rate": spec.max_error_rate,
        "min_requests": spec.min_requests,
    }
    baseline = _baseline(spec, evidence)
    if isinstance(baseline, str):
        return make_result(
            name,
            KIND,
            phase,
            "inconclusive",
            f"inconclusive: cannot judge recovery: {baseline}",
            window=window,
            observed={"baseline": None, "recovery_time_s": None},
            expected=expected,
        )
    higher = spec.measure in HIGHER_IS_BETTER
    if higher:
        limit = baseline * (1 - spec.tolerance) - spec.slack
        expected["band"] = {"min": limit}
    else:
        limit = baseline * (1 + spec.tolerance) + spec.slack
        expected["band"] = {"max": limit}

    applied = [f.applied_at for f in evidence.faults
               if window.start < f.applied_at < window.end]
    first = max([window.start, *applied])
    # A revert that begins inside the window ends what can be judged: requests sent while
    # the fault was being removed, or whose first token its removal let through, show the
    # fault's end, not a recovery while it held (a phase ends after its own reverts).
    reverting = [began for f in evidence.faults
                 if (began := f.revert_began) is not None and first < began < window.end]
    last = min([window.end, *reverting])
    duration = max(0.0, last - first)
    length = min(spec.window, duration)  # a phase shorter than the window is one step
    steps = max(0, math.floor((duration - length) / STEP_S + _EPS)) + 1
    # The whole run's requests: for throughput, a request started in the fault phase
    # that completes in the window counts towards it. Past a revert, only what happened
    # before it counts: a first token (or an error) that came before the revert began.
    records = evidence.requests if last >= window.end else [
        r for r in evidence.requests if _outcome_at(r) <= last]
    slider = _Slider(spec.measure, records)
    points: list[list[float | None]] = []
    recovered_at: float | None = None
    value_at: float | None = None
    offset = first - window.start
    judged_windows = 0  # windows with enough requests to say anything
    most = 0
    for i in range(steps):
        t = first + i * STEP_S
        value = slider.value(t, length)
        count, failed = slider.judged(t, length)
        most = max(most, count)
        points.append([round(offset + i * STEP_S, 3), value])
        if count < spec.min_requests:
            continue
        judged_windows += 1
        if (recovered_at is None and _in_band(spec.measure, value, limit)
                and failed / count <= spec.max_error_rate + _EPS):
            recovered_at, value_at = round(offset + i * STEP_S, 3), value

    observed = {
        "baseline": baseline,
        "judged_from_s": round(offset, 3),
        "judged_until_s": round(last - window.start, 3),
        "recovery_time_s": recovered_at,
        "value_at_recovery": value_at,
        "steps": _thin(points),
        "judged_windows": judged_windows,
        "most_requests_in_a_window": most,
    }
    comparison = ">=" if higher else "<="
    band = f"{spec.measure} {comparison} {fmt(limit)}{unit} (baseline {fmt(baseline)}{unit})"
    status: CheckStatus
    errors = f" and at most {fmt(spec.max_error_rate * 100, 1)}% errors"
    if recovered_at is None and not judged_windows:
        status = "inconclusive"
        summary = (f"inconclusive: no {fmt(length)}s window in the phase had the "
                   f"{spec.min_requests} requests needed to judge it (most: {most})")
    elif recovered_at is None:
        status = "failed"
        summary = f"never recovered: no {fmt(length)}s window in the phase had {band}{errors}"
    elif recovered_at <= spec.within + _EPS:
        status = "passed"
        summary = f"recovered after {fmt(recovered_at)}s (limit {fmt(spec.within)}s): {band}"
    else:
        status = "failed"
        summary = (
            f"recovered too late: after {fmt(recovered_at)}s, limit {fmt(spec.within)}s: {band}"
        )
    return make_result(
        name, KIND, phase, status, summary, window=window, observed=observed, expected=expected
    )


def references(spec: RecoversCheck, scenario: Any, location: Location) -> list[Problem]:
    return refs.unknown_phase(scenario, spec.baseline_phase, (*location, "baseline_phase"))


RECOVERS = CheckKind(
    references=references,
    spec=RecoversCheck,
    evaluate=evaluate_recovers,
    description="A measure comes back to its baseline in time.",
    runbook=(
        "The measure did not come back to its baseline band in time after the fault. Check "
        "the engine charts after the revert: a queue still draining "
        "(vllm:num_requests_waiting), KV cache still full, an engine still restarting or "
        "warming up, or a gateway that keeps an upstream marked down "
        "(max_fails/fail_timeout). A baseline phase that was itself unhealthy also makes the "
        "band unreachable."
    ),
    probe=None,
)
