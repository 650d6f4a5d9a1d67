"""kv_cache_cleanup: when clients drop their streams, the engine stops generating for them
and frees their KV cache soon.

Evidence: the `storm_wave` events a cancel_storm fault records (when each wave started and
when its last stream was dropped) and the engine's gauges, running requests and KV-cache
usage. For each wave the baseline is the HIGHEST value of each gauge over the
`baseline_window` before the wave: with background load the gauges move, and the check
asks "back to where it was", not "back to zero". The cleanup time is from the drop to the
first scrape at or after it where both gauges are within tolerance of their baselines,
dated by when that scrape had certainly been answered: the start of the next one (see
Point; a busy API server can take seconds to answer, and dating the reading by its request
would make a slow cleanup look instant).

Resolution is the scrape interval: a 1s interval cannot tell 0.2s from 0.9s, so cleanup
scenarios scrape every 200ms (telemetry.scrape_interval); the times reported are up to
one interval above the truth, never below.

A graceful wave whose clients saw the server keep streaming after their FIN until they
gave up (the storm records it) fails too: that is the same fault seen from the client.

No evidence never passes: a missing gauge, no wave in the window, no scrape after a drop,
a wave whose streams never reached the engine, or gauges that never rose above their
baseline during any wave (nothing was shown to be cleaned up) all fail the check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llmdrill.checks.base import fmt, make_result, register
from llmdrill.checks.metric import similar_names
from llmdrill.harness.records import Evidence
from llmdrill.harness.result import CheckResult, CheckStatus, Window
from llmdrill.scenario.models import KvCacheCleanupCheck

KIND = "kv_cache_cleanup"
RUNNING_SERIES = ("vllm:num_requests_running",)
KV_SERIES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
GENERATED_SERIES = ("vllm:generation_tokens_total",)
# The engine's token counter must account for at least this share of the tokens the
# storm's clients received, for the wave to count as seen by the scraped engine.
SEEN_SHARE = 0.5
# A wave dropped this much later than planned (at least; 3 x within if more) did not test a
# drop while the engine was busy: the machine starved the harness (measured: 17s once,
# when the storm phase itself overran by 11s). Healthy runs were seen up to 7s late.
LATE_LIMIT_S = 10.0
WAVE_EVENT = "storm_wave"

Series = list[tuple[float, float]]


@dataclass(frozen=True, slots=True)
class Point:
    """Both gauges as one scrape saw them.

    `ts` is when the scrape started; the engine answered some time before the next scrape
    started (`read_by`, None for the last one), since the scraper works one scrape at a
    time. That matters: vLLM serves /metrics from the API server that streams the tokens,
    and while it streams to many clients a scrape can take seconds (measured: 3.5s).
    """

    ts: float
    running: float
    kv: float
    read_by: float | None = None


@dataclass(frozen=True, slots=True)
class Drop:
    """A moment from which the engine should clean up (a wave's drop, a phase start)."""

    label: str  # "wave 2", "phase start"
    wave: int | None
    started_at: float  # the load began here: the baseline is taken before it
    dropped_at: float  # the clients were gone here: cleanup is timed from it
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Verdict:
    drop: Drop
    baseline_running: float | None = None
    baseline_kv: float | None = None
    baseline_note: str | None = None
    peak_running: float | None = None
    peak_kv: float | None = None
    cleanup_s: float | None = None
    samples: int = 0
    problem: str | None = None
    engine_tokens: float | None = None  # generation counter increase over the wave
    merged_into: str | None = None  # judged together with the next wave (overlapping)

    @property
    def client_tokens(self) -> int:
        return int(self.drop.detail.get("tokens") or 0)

    @property
    def loaded(self) -> bool:
        """The scraped engine is the one that served the wave: its gauges rose above the
        baseline, or its token counter grew by (at least part of) what the wave's clients
        received. The gauges alone miss short waves: vLLM answers /metrics from the API
        server that is busy streaming, so a scrape during a wave is often answered after
        it (measured)."""
        if (self.peak_running is not None and self.baseline_running is not None
                and self.peak_running > self.baseline_running):
            return True
        if (self.peak_kv is not None and self.baseline_kv is not None
                and self.peak_kv > self.baseline_kv):
            return True
        return (self.engine_tokens is not None and self.client_tokens > 0
                and self.engine_tokens >= SEEN_SHARE * self.client_tokens)

    def observed(self, window: Window) -> dict[str, Any]:
        d = self.drop
        return {
            "wave": d.wave if d.wave is not None else d.label,
            "fault": d.detail.get("fault"),
            "fault_wave": _shown(d.detail.get("wave")),
            "close": d.detail.get("close"),
            "started_offset_s": round(d.started_at - window.start, 3),
            "dropped_offset_s": round(d.dropped_at - window.start, 3),
            "streams": d.detail.get("streams"),
            "aborted": d.detail.get("aborted"),
            "late_s": d.detail.get("late_s"),
            "drain": d.detail.get("drain"),
            "baseline_running": self.baseline_running,
            "baseline_kv": _round(self.baseline_kv),
            "baseline_note": self.baseline_note,
            "peak_running": self.peak_running,
            "peak_kv": _round(self.peak_kv),
            "cleanup_s": _round(self.cleanup_s),
            "merged_into": self.merged_into,
            "client_tokens": self.client_tokens,
            "engine_tokens": self.engine_tokens,
            "samples": self.samples,
            "problem": self.problem,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def join(running: Series, kv: Series, start: float, end: float) -> list[Point]:
    """Scrapes in [start, end] with both gauges; each gauge holds its last value, so a
    scrape that lacks one of them (a partial scrape) still counts."""
    times = sorted({ts for ts, _ in running} | {ts for ts, _ in kv})
    points: list[Point] = []
    i = j = 0
    last_run: float | None = None
    last_kv: float | None = None
    for k, ts in enumerate(times):
        while i < len(running) and running[i][0] <= ts:
            last_run = running[i][1]
            i += 1
        while j < len(kv) and kv[j][0] <= ts:
            last_kv = kv[j][1]
            j += 1
        if start <= ts <= end and last_run is not None and last_kv is not None:
            read_by = times[k + 1] if k + 1 < len(times) else None
            points.append(Point(ts, last_run, last_kv, read_by))
    return points


def first_clean(points: Sequence[Point], dropped_at: float, base_running: float,
                base_kv: float, spec: KvCacheCleanupCheck) -> Point | None:
    """The first scrape started at or after the drop with both gauges back within
    tolerance. A scrape whose answer time cannot be bounded (the last one) is not used:
    a clean reading must not be dated earlier than it may have been taken."""
    for p in points:
        if p.ts < dropped_at or p.read_by is None:
            continue
        if (p.running <= base_running + spec.running_tolerance + 1e-9
                and p.kv <= base_kv + spec.kv_tolerance + 1e-9):
            return p
    return None


def judge(drops: Sequence[Drop], running: Series, kv: Series, spec: KvCacheCleanupCheck,
          window: Window, fixed_baseline: list[Point] | None = None,
          generated: Series | None = None) -> list[Verdict]:
    """Cleanup of each drop. `fixed_baseline` (phase_start) replaces the per-wave baseline.

    A wave's baseline leaves out scrapes while an earlier wave had not cleaned up yet (it
    would raise the bar), and falls back to the previous wave's baseline when nothing is
    left. The search for a wave's cleanup stops where the next wave starts: after that the
    engine is busy with new streams and a late cleanup cannot be told apart. A wave that
    the next one starts within `within` of its drop (a starved harness drops late), and
    that is not back before it, is judged together with the next one: its leftovers would
    show in the next wave's cleanup.
    """
    verdicts: list[Verdict] = []
    busy: list[tuple[float, float]] = []  # [started, cleaned) of earlier waves
    for k, drop in enumerate(drops):
        v = Verdict(drop)
        verdicts.append(v)
        if generated:
            v.engine_tokens = counter_increase(generated, drop.started_at, drop.dropped_at)
        if fixed_baseline is not None:
            base = fixed_baseline
        else:
            base = [p for p in join(running, kv, drop.started_at - spec.baseline_window,
                                    drop.started_at)
                    if p.ts < drop.started_at and not any(a <= p.ts < b for a, b in busy)]
        if base:
            v.baseline_running = max(p.running for p in base)
            v.baseline_kv = max(p.kv for p in base)
        else:
            prev = next((p for p in reversed(verdicts[:-1]) if p.baseline_running is not None),
                        None)
            if prev is None:
                v.problem = (f"{drop.label}: no scrape in the {fmt(spec.baseline_window)}s "
                             "before it (no baseline)")
                busy.append((drop.started_at, math.inf))
                continue
            v.baseline_running, v.baseline_kv = prev.baseline_running, prev.baseline_kv
            v.baseline_note = prev.baseline_note or f"from {prev.drop.label}"
        assert v.baseline_running is not None and v.baseline_kv is not None
        nxt = drops[k + 1] if k + 1 < len(drops) else None
        overlapped = nxt is not None and nxt.started_at < drop.dropped_at + spec.within
        later = [d.started_at for d in drops[k + 1:] if d.started_at > drop.dropped_at]
        horizon = min([*later, max(window.end, drop.dropped_at + spec.within)])
        if nxt is not None and nxt.started_at <= drop.dropped_at:
            horizon = drop.dropped_at  # the next wave was already on: nothing to watch
        points = join(running, kv, drop.started_at, horizon)
        after = [p for p in points if p.ts >= drop.dropped_at]
        v.samples = len(after)
        clean = first_clean(after, drop.dropped_at, v.baseline_running, v.baseline_kv, spec)
        shown = [p for p in points if clean is None or p.ts <= clean.ts]
        if shown:
            v.peak_running = max(p.running for p in shown)
            v.peak_kv = max(p.kv for p in shown)
        # Dated by when the clean answer had certainly been read (see Point).
        clean_at = clean.read_by if clean is not None and clean.read_by is not None else None
        busy.append((drop.started_at, clean_at if clean_at is not None else math.inf))
        if clean_at is not None:
            v.cleanup_s = clean_at - drop.dropped_at
        if overlapped and clean_at is None and nxt is not None:
            v.merged_into = nxt.label
            v.problem = _storm_missing(drop)
        else:
            v.problem = _problem(v, after, clean, horizon, spec, bool(later))
        kept = _kept_streaming(drop, spec.within)
        if kept and drop.detail.get("aborted"):
            v.problem = f"{v.problem}; {kept}" if v.problem else f"{drop.label}: {kept}"
    return verdicts


def _storm_missing(drop: Drop) -> str | None:
    if drop.detail.get("aborted") != 0:
        return None
    errors = ", ".join(f"{k} {n}" for k, n in sorted(drop.detail.get("errors", {}).items()))
    return (f"{drop.label}: no stream reached its abort point, the storm did not happen"
            + (f" ({errors})" if errors else ""))


def _problem(v: Verdict, after: Sequence[Point], clean: Point | None, horizon: float,
             spec: KvCacheCleanupCheck, cut_by_next: bool) -> str | None:
    drop = v.drop
    missing = _storm_missing(drop)
    if missing:
        return missing
    late = drop.detail.get("late_s")
    if isinstance(late, (int, float)) and late > max(LATE_LIMIT_S, 3 * spec.within):
        return (f"{drop.label}: the harness dropped the streams {fmt(late, 1)}s later than "
                "planned (the machine starved it), so the wave did not test a drop while "
                "the engine was busy (no evidence)")
    if not after:
        until = "the next wave started" if cut_by_next else "the window ended"
        return (f"{drop.label}: no scrape of the engine was answered between the drop and "
                f"when {until} ({fmt(max(0.0, horizon - drop.dropped_at), 2)}s later; a "
                "busy API server answers /metrics late), so nothing shows it cleaned up "
                "(no evidence)")
    if clean is not None:
        if v.cleanup_s is not None and v.cleanup_s > spec.within:
            return (f"{drop.label}: cleaned up only after {fmt(v.cleanup_s, 2)}s "
                    f"(limit {fmt(spec.within)}s)")
        return None
    # Not clean: show the state at the deadline (or the last scrape there is).
    at = next((p for p in after if p.ts >= drop.dropped_at + spec.within), after[-1])
    assert v.baseline_running is not None and v.baseline_kv is not None
    still = []
    if at.running > v.baseline_running + spec.running_tolerance:
        still.append(f"running requests still {fmt(at.running)} "
                     f"(baseline {fmt(v.baseline_running)})")
    if at.kv > v.baseline_kv + spec.kv_tolerance:
        still.append(f"KV cache still {_pct(at.kv)} (baseline {_pct(v.baseline_kv)})")
    if not still:
        return (f"{drop.label}: no scrape after the drop whose answer can be dated "
                "(no evidence)")
    waited = at.ts - drop.dropped_at
    tail = ""
    if at.ts < drop.dropped_at + spec.within:  # the last scrape there is, before the limit
        until = "the next wave started" if cut_by_next else "the window ended"
        tail = f", and no later scrape was answered before {until}"
    return (f"{drop.label}: {' and '.join(still)} {fmt(waited, 2)}s after the drop{tail} "
            f"(limit {fmt(spec.within)}s)")


def counter_increase(series: Series, start: float, end: float) -> float | None:
    """How much a counter grew from before `start` to after `end`: from the last scrape
    answered before `start` (its successor started before it) to the first scrape
    started after `end`. None without both, or across a counter reset."""
    before = next((v for (_, v), (nxt, _) in zip(reversed(series[:-1]), reversed(series[1:]),
                                                  strict=True) if nxt <= start), None)
    after = next((v for ts, v in series if ts >= end), None)
    if before is None or after is None or after < before:
        return None
    return after - before


def _shown(index: Any) -> int | None:
    """A wave's index within its fault (from 0 in the event) as people count it."""
    return index + 1 if isinstance(index, int) else None


def _kept_streaming(drop: Drop, within: float) -> str | None:
    """Client-side evidence of the same fault: after a graceful close (FIN) the server
    kept the stream open for longer than `within`, until the client gave up waiting for
    it to close (or the fault was reverted). A server that takes the FIN as "client gone"
    closes at once; one that streamed on was still generating for nobody when the client
    left, however late the drop and whatever the scrapes saw."""
    drains = drop.detail.get("drain") or {}
    if "streamed_on_s" in drop.detail:
        kept = sum(1 for s in drop.detail["streamed_on_s"] if float(s) >= within)
    else:
        kept = int(drains.get("hold_expired", 0))
    if not kept:
        return None
    return (f"after their FIN the server kept streaming to {kept} of "
            f"{sum(int(n) for n in drains.values())} clients for over {fmt(within)}s, until "
            "they gave up waiting: it does not take a closed client as gone")


def _pct(value: float) -> str:
    return f"{fmt(value * 100, 1)}%"


def wave_drops(evidence: Evidence, window: Window) -> list[Drop]:
    """The phase's storm waves in time order, numbered across faults (wave 1, 2, 3...);
    each keeps its fault's name and own number in `detail`."""
    found = sorted(
        ((float(d.get("started_at", ts)), d)
         for ts, d in evidence.events_of(WAVE_EVENT, window.start, window.end)),
        key=lambda x: x[0])
    return [Drop(f"wave {i}", i, started, float(d.get("dropped_at", started)), dict(d))
            for i, (started, d) in enumerate(found, start=1)]


def _find(present: set[str], names: Sequence[str]) -> str | None:
    return next((n for n in names if n in present), None)


@register(KIND)
def evaluate_kv_cleanup(
    name: str, phase: str, spec: KvCacheCleanupCheck, evidence: Evidence, window: Window
) -> CheckResult:
    expected: dict[str, Any] = {
        "within_s": spec.within,
        "running_tolerance": spec.running_tolerance,
        "kv_tolerance": spec.kv_tolerance,
        "after": spec.after,
        "baseline": (f"max over the {fmt(spec.baseline_window)}s before each wave"
                     if spec.after == "waves" else f"max over phase '{spec.baseline_phase}'"),
    }

    def result(status: CheckStatus, summary: str, observed: dict[str, Any]) -> CheckResult:
        return make_result(name, KIND, phase, status, summary, window=window,
                           observed=observed, expected=expected)

    present = evidence.metric_names()
    running_name, kv_name = _find(present, RUNNING_SERIES), _find(present, KV_SERIES)
    if running_name is None or kv_name is None:
        tried = [*RUNNING_SERIES, *KV_SERIES]
        similar = similar_names(tried, present)
        hint = f"; similar exposed names: {', '.join(similar)}" if similar else ""
        missing = [*(RUNNING_SERIES if running_name is None else ()),
                   *(KV_SERIES if kv_name is None else ())]
        return result("failed", f"metric not found: tried {', '.join(missing)}{hint}",
                      {"series": None, "tried": tried, "missing": missing, "similar": similar})
    observed: dict[str, Any] = {"series": {"running": running_name, "kv": kv_name}}
    running, kv = evidence.series(running_name), evidence.series(kv_name)

    fixed: list[Point] | None = None
    if spec.after == "waves":
        drops = wave_drops(evidence, window)
        if not drops:
            return result("failed", "no storm wave in the window (no evidence): is a "
                          f"cancel_storm fault applied in phase '{phase}'?", observed)
    else:
        base_phase = evidence.phase(spec.baseline_phase or "")
        if base_phase is None:
            return result("failed", f"baseline phase '{spec.baseline_phase}' did not run "
                          "(no baseline)", observed)
        fixed = [p for p in join(running, kv, base_phase.start, base_phase.end)
                 if p.ts < base_phase.end]
        if not fixed:
            return result("failed", f"no scrape in baseline phase '{spec.baseline_phase}' "
                          "(no baseline)", observed)
        drops = [Drop("phase start", None, window.start - spec.baseline_window, window.start)]

    generated_name = _find(present, GENERATED_SERIES)
    generated = evidence.series(generated_name) if generated_name else None
    verdicts = judge(drops, running, kv, spec, window, fixed, generated)
    observed["waves"] = [v.observed(window) for v in verdicts]
    judged = [v for v in verdicts if v.merged_into is None]
    cleanups = [v.cleanup_s for v in judged]
    observed["worst_cleanup_s"] = (None if not cleanups or any(c is None for c in cleanups)
                                   else _round(max(c for c in cleanups if c is not None)))
    problems = [v.problem for v in verdicts if v.problem]
    if not problems and not any(v.loaded for v in verdicts):
        problems.append(
            "the scraped engine never showed the storm: running requests and KV cache "
            "stayed at their baseline and its generated-token counter did not account for "
            "the tokens the storm's clients received, so nothing was shown to be cleaned up "
            "(no evidence: is metrics_url the engine behind base_url?)")
    if problems:
        return result("failed", "; ".join(problems), observed)
    times = ", ".join(f"{fmt(c or 0.0, 2)}s" for c in cleanups)
    what = (f"{len(verdicts)} wave{'s' if len(verdicts) != 1 else ''}" if spec.after == "waves"
            else "the engine after the phase start")
    merged = "".join(f"; {v.drop.label} overlapped {v.merged_into} and was judged with it"
                     for v in verdicts if v.merged_into)
    return result("passed", f"{what} cleaned up in {times}{merged} (limit {fmt(spec.within)}s)",
                  observed)
