"""kv_cache_cleanup: when clients drop their streams, the engine stops generating for them
and frees their KV cache soon.

Evidence: the `storm_wave` events a cancel_storm fault records (when each wave started and
when its last stream was dropped), the storm's own request samples (which streams got an
answer), the other traffic's request samples, and the engine's metrics: running and
waiting requests, KV-cache usage, and the counters of generated tokens, prompt tokens and
finished requests.

Gauges: for each wave the baseline is the HIGHEST value of each gauge over the
`baseline_window` before the wave: with background load the gauges move, and the check
asks "back to where it was", not "back to zero". The cleanup time is from the drop to the
first scrape at or after it where both gauges are within tolerance of their baselines,
dated by when that scrape had certainly been answered: the start of the next one (see
Point; a busy API server can take seconds to answer, and dating the reading by its request
would make a slow cleanup look instant).

Work: gauges alone can lie. An engine that keeps generating for clients that left may
finish that work within a second (short answers, a fast engine) and look cleaned up, and a
busy API server may answer only two scrapes in a wave's window. So each wave is also
judged on what the engine DID after the drop (and `drop_grace`): the increase of
`vllm:generation_tokens_total` beyond what the other traffic in flight then can explain
(their clients' output tokens), and requests that finished normally
(`vllm:request_success_total` with finished_reason length or stop; a client disconnect
is not counted as "abort" by vLLM, a stream that ran to its end is) beyond the other
traffic's. Either above its bound fails the wave.

Resolution is the scrape interval: a 1s interval cannot tell 0.2s from 0.9s, so cleanup
scenarios scrape every 200ms (telemetry.scrape_interval); the times reported are one to
two intervals above the truth (the first clean scrape starts up to one interval after the
cleanup, and is dated by the next one's start), never below: 290 ms at p50 and 360 ms at
most at 200 ms (benchmarks/kv_cleanup_latency.py).

A graceful wave whose clients saw the server keep streaming after their FIN until they
gave up (the storm records it) fails too: that is the same fault seen from the client.

Each wave is passed, failed or inconclusive; the check fails if any wave failed, is
inconclusive if any wave is (and none failed), and passes only when every wave passed.
No evidence never passes: fewer than `min_scrapes` scrapes after a drop, no baseline, a
storm that did not happen, a drop far later than planned, or a wave the engine never
showed although its streams were answered are inconclusive. A wave the engine never saw
and none of whose streams got an answer (a gateway queued or refused it, and the clients
left before it was forwarded) passes as "nothing to clean", but a check where no wave
ever showed on the engine is inconclusive. A missing gauge or no wave in the window fails
(the check is set up wrong).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from llmdrill.checks.base import fmt, make_result
from llmdrill.checks.metric import similar_names
from llmdrill.model.events import EventKind
from llmdrill.model.records import Evidence, RequestRecord
from llmdrill.model.result import CheckResult, CheckStatus, Window
from llmdrill.plugin import CheckKind, Location, Problem
from llmdrill.scenario import refs
from llmdrill.scenario.fields import (
    Strict,
)
from llmdrill.scenario.units import Duration, Fraction

# --- the spec: the YAML under this key ----------------------------------------


class KvCacheCleanupCheck(Strict):
    """After each cancel-storm wave (or the phase start), the engine's running requests
    and KV-cache usage return to their pre-storm baseline within `within`, and the engine
    does not go on generating (or finish requests) for the clients that left."""

    within: Duration = Field(default=2.0, description="Deadline for each wave's cleanup.")
    running_tolerance: float = Field(
        default=0.0, ge=0, description="Running requests allowed above the baseline."
    )
    kv_tolerance: Fraction = Field(
        default=0.02, description="KV-cache usage (0-1) allowed above the baseline."
    )
    baseline_window: Duration = Field(
        default=2.0,
        description="Samples before each wave that make its baseline (the highest of them).",
    )
    after: Literal["waves", "phase_start"] = Field(
        default="waves",
        description="waves: every cancel-storm wave in the window; phase_start: once, from "
        "the start of the phase (e.g. after a flood phase), baseline = `baseline_phase`.",
    )
    baseline_phase: str | None = Field(
        default=None, description="With after: phase_start, the phase whose level is normal."
    )
    min_scrapes: int = Field(
        default=3, ge=1,
        description="Scrapes of the engine after each drop (until the next wave or the end "
        "of the window) needed to judge it; a wave with fewer is inconclusive.",
    )
    drop_grace: Duration = Field(
        default=0.2,
        description="Time after a drop the engine may take to notice it: tokens generated "
        "and requests finished later count as work for clients that left.",
    )
    tokens_after_drop: float = Field(
        default=32, ge=0,
        description="Tokens per dropped stream the engine may generate after the drop (and "
        "`drop_grace`) beyond what the other traffic explains; more fails the wave.",
    )


KIND = "kv_cache_cleanup"
RUNNING_SERIES = ("vllm:num_requests_running",)
KV_SERIES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
WAITING_SERIES = ("vllm:num_requests_waiting",)
GENERATED_SERIES = ("vllm:generation_tokens_total",)
PROMPT_SERIES = ("vllm:prompt_tokens_total",)
FINISHED_SERIES = "vllm:request_success_total"
FINISHED_NORMALLY = ("length", "stop")  # a client disconnect is not counted at all
STORM_SHAPE = "cancel_storm"  # the shape of the storm's own request samples
# Dropped streams that finished normally after the drop, beyond the other traffic's
# completions, fail the wave above this share of its streams (at least 2: a stream can
# end in the instant its client leaves, and the other traffic's count is not exact).
FINISHED_SHARE = 0.1
# The engine's token counter must account for at least this share of the tokens the
# storm's clients received, for the wave to count as seen by the scraped engine.
SEEN_SHARE = 0.5
# A wave dropped this much later than planned (at least; 3 x within if more) did not test a
# drop while the engine was busy: the machine starved the harness (measured: 17s once,
# when the storm phase itself overran by 11s). Healthy runs were seen up to 7s late.
LATE_LIMIT_S = 10.0
WAVE_EVENT = EventKind.STORM_WAVE

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


@dataclass(frozen=True, slots=True)
class Traffic:
    """What else the engine was asked to do, and the counters that show what it did."""

    generated: Series | None = None  # vllm:generation_tokens_total
    prompt: Series | None = None  # vllm:prompt_tokens_total
    finished: Series | None = None  # vllm:request_success_total, length + stop
    waiting: Series | None = None  # vllm:num_requests_waiting
    requests: Sequence[RequestRecord] = ()


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
    engine_tokens: float | None = None  # generation counter increase over the wave
    merged_into: str | None = None  # judged together with the next wave (overlapping)
    status: CheckStatus = "passed"
    failures: list[str] = field(default_factory=list)
    doubts: list[str] = field(default_factory=list)  # why the wave is inconclusive
    baseline_waiting: float | None = None
    peak_waiting: float | None = None
    seen: bool | None = None  # the engine showed the wave (gauges or counters)
    extra_prompt_tokens: float | None = None  # over the wave, beyond the other traffic
    extra_generated_tokens: float | None = None
    answered: int | None = None  # streams answered 200 (None: no sample of the wave)
    nothing_to_clean: bool = False
    tokens_after_drop: float | None = None  # generated after the drop + grace
    tokens_explained: float | None = None  # ... of which the other traffic can explain
    tokens_bound: float | None = None
    unknown_rate: float = 0.0  # tokens/s before the wave that no known request explains
    finished_after_drop: float | None = None  # finished normally after the drop + grace
    finishes_explained: int | None = None
    work_span_s: tuple[float, float] | None = None  # the scrapes the work is measured by
    notes: list[str] = field(default_factory=list)  # what was not judged, and why

    @property
    def problem(self) -> str | None:
        return "; ".join([*self.failures, *self.doubts]) or None

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
            "status": self.status,
            "problem": self.problem,
            "seen": self.seen,
            "answered": self.answered,
            "nothing_to_clean": self.nothing_to_clean,
            "baseline_waiting": self.baseline_waiting,
            "peak_waiting": self.peak_waiting,
            "extra_prompt_tokens": self.extra_prompt_tokens,
            "extra_generated_tokens": self.extra_generated_tokens,
            "tokens_after_drop": self.tokens_after_drop,
            "tokens_explained": self.tokens_explained,
            "tokens_bound": self.tokens_bound,
            "unknown_tokens_per_s": round(self.unknown_rate, 1),
            "finished_after_drop": self.finished_after_drop,
            "finishes_explained": self.finishes_explained,
            "notes": self.notes,
            "work_span_s": (None if self.work_span_s is None else
                            [round(t - window.start, 3) for t in self.work_span_s]),
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
          traffic: Traffic | None = None) -> list[Verdict]:
    """Cleanup of each drop. `fixed_baseline` (phase_start) replaces the per-wave baseline.

    A wave's baseline leaves out scrapes while an earlier wave had not cleaned up yet (it
    would raise the bar), and falls back to the previous wave's baseline when nothing is
    left. The search for a wave's cleanup stops where the next wave starts: after that the
    engine is busy with new streams and a late cleanup cannot be told apart. A wave that
    the next one starts within `within` of its drop (a starved harness drops late), and
    that is not back before it, is judged together with the next one: its leftovers would
    show in the next wave's cleanup.
    """
    traffic = traffic or Traffic()
    verdicts: list[Verdict] = []
    busy: list[tuple[float, float]] = []  # [started, cleaned) of earlier waves
    for k, drop in enumerate(drops):
        v = Verdict(drop)
        verdicts.append(v)
        if traffic.generated:
            v.engine_tokens = counter_increase(traffic.generated, drop.started_at,
                                               drop.dropped_at)
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
                v.doubts.append(f"{drop.label}: no scrape in the "
                                f"{fmt(spec.baseline_window)}s before it (no baseline)")
                v.status = "inconclusive"
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
            missing = _storm_missing(drop)
            if missing:
                v.doubts.append(missing)
        else:
            found = _problem(v, after, clean, horizon, spec, bool(later))
            if found is not None:
                (v.failures if found[0] == "failed" else v.doubts).append(found[1])
            if drop.wave is not None:
                _judge_work(v, traffic, spec, base, horizon, bool(later))
        kept = _kept_streaming(drop, spec.within)
        if kept and drop.detail.get("aborted"):
            v.failures.append(f"{drop.label}: {kept}")
        _settle(v, spec)
    return verdicts


def _settle(v: Verdict, spec: KvCacheCleanupCheck) -> None:
    """The wave's status from what was found, in this order: a failure is a failure
    whatever else is missing; then too little evidence; then a wave the engine never
    showed (nothing to clean only when no stream of it got an answer)."""
    if v.failures:
        v.status = "failed"
        return
    if v.merged_into is None and 0 < v.samples < spec.min_scrapes:
        v.doubts.append(
            f"{v.drop.label}: only {v.samples} scrape{'s' if v.samples != 1 else ''} of the "
            f"engine answered after the drop (at least {spec.min_scrapes} needed): too few "
            "to show it cleaned up (no evidence)")
    if v.doubts:
        v.status = "inconclusive"
        return
    if v.merged_into is not None or v.drop.wave is None or v.seen is not False:
        v.status = "passed"
        return
    streams = int(v.drop.detail.get("streams") or 0)
    if v.answered == 0:
        v.nothing_to_clean = True
        v.status = "passed"
        return
    answered = ("no sample of its streams says whether they were answered"
                if v.answered is None else
                f"{v.answered} of its {streams} streams were answered (200)")
    v.doubts.append(
        f"{v.drop.label}: the storm never reached the scraped engine (running and waiting "
        "requests and KV cache stayed at their baseline, no prompt or generated tokens "
        f"beyond the other traffic's), but {answered}: nothing shows it was cleaned up "
        "(no evidence: is metrics_url the engine behind base_url?)")
    v.status = "inconclusive"


def _judge_work(v: Verdict, traffic: Traffic, spec: KvCacheCleanupCheck,
                base: Sequence[Point], horizon: float, cut_by_next: bool) -> None:
    """What the engine showed of the wave (was it there at all?) and what it did after
    the drop (did it go on working for clients that left?)."""
    drop = v.drop
    streams = int(drop.detail.get("streams") or 0)
    own = [r for r in traffic.requests
           if r.shape == STORM_SHAPE and drop.started_at <= r.start <= drop.dropped_at]
    v.answered = sum(1 for r in own if r.status == 200) if own else None
    others = [r for r in traffic.requests if r.shape != STORM_SHAPE]
    # Was the wave on the engine: a gauge rose above its baseline, or its counters grew
    # beyond what the other traffic explains.
    if traffic.waiting:
        before = [w for ts, w in traffic.waiting
                  if drop.started_at - spec.baseline_window <= ts < drop.started_at]
        during = [w for ts, w in traffic.waiting if drop.started_at <= ts <= horizon]
        if before:
            v.baseline_waiting = max(before)
        if during:
            v.peak_waiting = max(during)
    for series, attr, what in ((traffic.prompt, "extra_prompt_tokens", "prompt"),
                               (traffic.generated, "extra_generated_tokens", "output")):
        span = counter_outer(series, drop.started_at, horizon) if series else None
        if span is not None:
            grew, lo, hi = span
            setattr(v, attr, grew - _explained(others, lo, hi, what))
    rose = v.loaded or (v.peak_waiting is not None and v.baseline_waiting is not None
                        and v.peak_waiting > v.baseline_waiting)
    extra = [x for x in (v.extra_prompt_tokens, v.extra_generated_tokens) if x is not None]
    v.seen = rose or any(x > max(1, streams) for x in extra)
    if not v.seen:
        return
    # Work after the drop, measured between scrapes inside [drop + grace, horizon]: a
    # lower bound of what the engine did, so a healthy engine is not blamed for a scrape
    # that straddles the drop. Traffic the harness does not know about (another client of
    # the engine) is estimated from the scrapes the baseline was taken from, as a rate.
    # When that traffic alone could make up the bound, the counters cannot say whose work
    # it was: the wave is then not judged on them (a note says so), only on its gauges.
    start = drop.dropped_at + spec.drop_grace
    quiet = (min(p.ts for p in base), max(p.ts for p in base)) if len(base) > 1 else None
    if traffic.generated:
        work = counter_inner(traffic.generated, start, horizon, cut_by_next)
        if work is not None:
            grew, lo, hi = work
            v.work_span_s = (lo, hi)
            v.tokens_after_drop = grew
            v.unknown_rate = _unknown_rate(traffic.generated, quiet, others, "output")
            unknown = v.unknown_rate * (hi - lo)
            v.tokens_explained = _explained(others, lo, hi, "output") + unknown
            v.tokens_bound = spec.tokens_after_drop * max(1, streams)
            extra_tokens = grew - v.tokens_explained
            if unknown > v.tokens_bound:
                v.notes.append(
                    f"{drop.label}: tokens after the drop not judged: before the wave the "
                    f"engine generated {fmt(v.unknown_rate, 0)} tokens/s for clients the "
                    "harness does not know")
            elif extra_tokens > v.tokens_bound:
                v.failures.append(
                    f"{drop.label}: the engine generated {fmt(extra_tokens, 0)} tokens after "
                    f"its clients left ({fmt(grew, 0)} from {fmt(lo - drop.dropped_at, 2)}s "
                    f"to {fmt(hi - drop.dropped_at, 2)}s after the drop, the other traffic "
                    f"explains {fmt(v.tokens_explained, 0)}; limit {fmt(v.tokens_bound, 0)}, "
                    f"{fmt(spec.tokens_after_drop)} per stream): it did not stop for them")
    if traffic.finished:
        done = counter_inner(traffic.finished, start, horizon, cut_by_next)
        if done is not None:
            grew, lo, hi = done
            v.finished_after_drop = grew
            unknown = _unknown_rate(traffic.finished, quiet, others, "requests") * (hi - lo)
            v.finishes_explained = (sum(1 for r in others if r.start < hi and r.end > lo)
                                    + math.ceil(unknown))
            extra_done = grew - v.finishes_explained
            allowed = max(2.0, FINISHED_SHARE * streams)
            if unknown > allowed:
                v.notes.append(
                    f"{drop.label}: finished requests after the drop not judged: before the "
                    f"wave {fmt(unknown / max(hi - lo, 1e-9), 1)} requests/s finished for "
                    "clients the harness does not know")
            elif extra_done > allowed:
                v.failures.append(
                    f"{drop.label}: {fmt(extra_done, 0)} requests ran to their end "
                    f"(finished_reason length or stop) after the clients left, beyond the "
                    f"{v.finishes_explained} of the other traffic: dropped streams were "
                    "never aborted")


def _unknown_rate(series: Series, quiet: tuple[float, float] | None,
                  others: Sequence[RequestRecord], what: str) -> float:
    """Per second, how much a counter grew before the wave beyond what the known traffic
    explains: another client of the same engine. 0 without two quiet scrapes."""
    if quiet is None:
        return 0.0
    found = counter_inner(series, quiet[0], quiet[1], answered_by_end=False)
    if found is None:
        return 0.0
    grew, lo, hi = found
    # The increase is between the two scrapes' readings: time it from start to start.
    last = max(ts for ts, _ in series if ts <= quiet[1])
    if last <= lo:
        return 0.0
    return max(0.0, grew - _explained(others, lo, hi, what)) / (last - lo)


def _explained(requests: Sequence[RequestRecord], lo: float, hi: float, what: str) -> float:
    """What the other traffic can account for between lo and hi: all tokens (or one
    finish) of every request that overlaps the span (an upper bound, so the storm is never
    blamed for them)."""
    overlapping = [r for r in requests if r.start < hi and r.end > lo]
    if what == "requests":
        return float(len(overlapping))
    if what == "prompt":
        return float(sum(r.prompt_tokens for r in overlapping))
    return float(sum(r.output_tokens for r in overlapping))


def _storm_missing(drop: Drop) -> str | None:
    if drop.detail.get("aborted") != 0:
        return None
    errors = ", ".join(f"{k} {n}" for k, n in sorted(drop.detail.get("errors", {}).items()))
    return (f"{drop.label}: no stream reached its abort point, the storm did not happen"
            + (f" ({errors})" if errors else ""))


def _problem(v: Verdict, after: Sequence[Point], clean: Point | None, horizon: float,
             spec: KvCacheCleanupCheck, cut_by_next: bool) -> tuple[str, str] | None:
    """What the gauges say is wrong with a wave: ("failed", why) or ("inconclusive", why
    there is no evidence), or None."""
    drop = v.drop
    missing = _storm_missing(drop)
    if missing:
        return "inconclusive", missing
    late = drop.detail.get("late_s")
    if isinstance(late, (int, float)) and late > max(LATE_LIMIT_S, 3 * spec.within):
        return ("inconclusive",
                f"{drop.label}: the harness dropped the streams {fmt(late, 1)}s later than "
                "planned (the machine starved it), so the wave did not test a drop while "
                "the engine was busy (no evidence)")
    if not after:
        until = "the next wave started" if cut_by_next else "the window ended"
        return ("inconclusive",
                f"{drop.label}: no scrape of the engine was answered between the drop and "
                f"when {until} ({fmt(max(0.0, horizon - drop.dropped_at), 2)}s later; a "
                "busy API server answers /metrics late), so nothing shows it cleaned up "
                "(no evidence)")
    if clean is not None:
        if v.cleanup_s is not None and v.cleanup_s > spec.within:
            # Late for certain only if a scrape STARTED after the deadline still saw the
            # wave held; otherwise the clean reading may have been taken in time and only
            # answered late (a starved scraper, a busy API server).
            held = [p for p in after if p.ts < clean.ts]
            if held and held[-1].ts > drop.dropped_at + spec.within:
                return ("failed", f"{drop.label}: cleaned up only after "
                        f"{fmt(v.cleanup_s, 2)}s (limit {fmt(spec.within)}s)")
            since = held[-1].ts - drop.dropped_at if held else 0.0
            return ("inconclusive",
                    f"{drop.label}: back to baseline somewhere between {fmt(since, 2)}s and "
                    f"{fmt(v.cleanup_s, 2)}s after the drop (limit {fmt(spec.within)}s): "
                    "the scrapes were answered too late to tell (no evidence)")
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
        return ("inconclusive", f"{drop.label}: no scrape after the drop whose answer can "
                "be dated (no evidence)")
    waited = at.ts - drop.dropped_at
    tail = ""
    if at.ts < drop.dropped_at + spec.within:  # the last scrape there is, before the limit
        until = "the next wave started" if cut_by_next else "the window ended"
        tail = f", and no later scrape was answered before {until}"
    return ("failed", f"{drop.label}: {' and '.join(still)} {fmt(waited, 2)}s after the drop"
            f"{tail} (limit {fmt(spec.within)}s)")


def counter_inner(series: Series, start: float, end: float, answered_by_end: bool
                  ) -> tuple[float, float, float] | None:
    """How much a counter certainly grew within [start, end]: from the first scrape
    started at or after `start` (its value was read after `start`) to the last one started
    at or before `end`, which must also have been answered by `end` (its successor started
    by then) when `answered_by_end` (something else starts at `end`). Returns the increase
    and the span it may cover (the first scrape's start to the last one's answer); None
    without two such scrapes or across a counter reset."""
    first = next((i for i, (ts, _) in enumerate(series) if ts >= start), None)
    if first is None:
        return None
    last = None
    for i in range(len(series) - 1, first, -1):
        ts = series[i][0]
        read_by = series[i + 1][0] if i + 1 < len(series) else None
        if ts > end:
            continue
        if answered_by_end and (read_by is None or read_by > end):
            continue
        last = i
        break
    if last is None:
        return None
    v0, v1 = series[first][1], series[last][1]
    if v1 < v0:
        return None
    hi = series[last + 1][0] if last + 1 < len(series) else series[last][0]
    return v1 - v0, series[first][0], hi


def counter_outer(series: Series, start: float, end: float
                  ) -> tuple[float, float, float] | None:
    """How much a counter grew around [start, end] (counter_increase), with the span the
    increase may cover: from the start of the scrape before to the answer of the one
    after."""
    grew = counter_increase(series, start, end)
    if grew is None:
        return None
    lo = max((ts for (ts, _), (nxt, _) in itertools.pairwise(series) if nxt <= start),
             default=start)
    idx = next(i for i, (ts, _) in enumerate(series) if ts >= end)
    hi = series[idx + 1][0] if idx + 1 < len(series) else series[idx][0]
    return grew, lo, hi


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


KEPT_STREAMING_TOLERANCE = 0.1  # of a wave's gracefully closed clients


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
    total = sum(int(n) for n in drains.values())
    # A busy healthy engine notices a few FINs late (seen: 4 of 100 after 3s on a loaded
    # 2-core machine); a server that ignores FINs streams on to nearly all of them.
    if not kept or kept <= KEPT_STREAMING_TOLERANCE * total:
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

    verdicts = judge(drops, running, kv, spec, window, fixed, _traffic(evidence, present))
    observed["waves"] = [v.observed(window) for v in verdicts]
    judged = [v for v in verdicts if v.merged_into is None]
    cleaned = [v for v in judged if not v.nothing_to_clean]
    cleanups = [v.cleanup_s for v in cleaned]
    observed["worst_cleanup_s"] = (None if not cleanups or any(c is None for c in cleanups)
                                   else _round(max(c for c in cleanups if c is not None)))
    observed["wave_status"] = {str(v.drop.wave if v.drop.wave is not None else v.drop.label):
                               v.status for v in verdicts}
    failed = [v for v in verdicts if v.status == "failed"]
    if failed:
        return result("failed", "; ".join(p for v in verdicts if v.failures
                                          for p in v.failures), observed)
    unsure = [d for v in verdicts for d in v.doubts]
    if unsure:
        return result("inconclusive", "; ".join(unsure), observed)
    if not any(v.seen or v.loaded for v in verdicts):
        return result(
            "inconclusive",
            "the scraped engine never showed the storm: running requests and KV cache "
            "stayed at their baseline and its generated-token counter did not account for "
            "the tokens the storm's clients received, so nothing was shown to be cleaned up "
            "(no evidence: is metrics_url the engine behind base_url?)", observed)
    times = ", ".join(f"{fmt(c or 0.0, 2)}s" for c in cleanups)
    if spec.after == "waves":
        what = f"{len(cleaned)} wave{'s' if len(cleaned) != 1 else ''}"
    else:
        what = "the engine after the phase start"
    merged = "".join(f"; {v.drop.label} overlapped {v.merged_into} and was judged with it"
                     for v in verdicts if v.merged_into)
    untouched = "".join(
        f"; {v.drop.label} never reached the engine (none of its "
        f"{v.drop.detail.get('streams')} streams got an answer: queued or refused upstream), "
        "nothing to clean" for v in judged if v.nothing_to_clean)
    unjudged = sorted({v.drop.label for v in verdicts if v.notes})
    caveat = (f"; work after the drop not judged for {', '.join(unjudged)}: the engine "
              "served clients the harness does not know" if unjudged else "")
    return result("passed", f"{what} cleaned up in {times}{merged}{untouched}{caveat} "
                  f"(limit {fmt(spec.within)}s)", observed)


def _traffic(evidence: Evidence, present: set[str]) -> Traffic:
    def found(names: Sequence[str]) -> Series | None:
        name = _find(present, names)
        return evidence.series(name) if name else None

    finished: Series | None = None
    if FINISHED_SERIES in present:
        per_ts: dict[float, float] = {}
        for reason in FINISHED_NORMALLY:
            for ts, value in evidence.series(FINISHED_SERIES, {"finished_reason": reason}):
                per_ts[ts] = per_ts.get(ts, 0.0) + value
        finished = sorted(per_ts.items()) or None
    return Traffic(generated=found(GENERATED_SERIES), prompt=found(PROMPT_SERIES),
                   finished=finished, waiting=found(WAITING_SERIES),
                   requests=evidence.requests)


def references(spec: KvCacheCleanupCheck, scenario: Any, location: Location) -> list[Problem]:
    problems = refs.unknown_phase(scenario, spec.baseline_phase, (*location, "baseline_phase"))
    if spec.after == "phase_start" and not spec.baseline_phase:
        problems.append(((*location, "baseline_phase"),
                         "after: phase_start needs a baseline_phase"))
    return problems + refs.needs_metrics_url(scenario, KIND, location)


KV_CACHE_CLEANUP = CheckKind(
    references=references,
    spec=KvCacheCleanupCheck,
    evaluate=evaluate_kv_cleanup,
    description="Running requests and KV cache back to baseline in time.",
    runbook=(
        "After clients dropped their streams the engine kept running requests or holding KV "
        "cache, or kept generating tokens for clients that were gone. Look at "
        "vllm:num_requests_running, vllm:kv_cache_usage_perc and vllm:generation_tokens_total "
        "around each wave (the 'Around' charts): an engine or gateway that does not propagate "
        "client disconnects (proxy_ignore_client_abort, buffering) keeps generating for "
        "nobody."
    ),
    probe=None,
)
