"""The drill in plain words: one paragraph of what was done and what happened.

Built from the result alone, from fixed sentence templates, so the same result always reads
the same. It holds counts and timings (and the scenario's own description), never a prompt,
an answer or a header: the reader is someone who did not write the scenario.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmdrill.model.result import FaultResult, PhaseResult, RequestStats, RunResult
from llmdrill.report.fmt import (
    checks_text,
    errors_text,
    fmt_duration,
    fmt_ms,
    fmt_pct,
    offset,
    status_label,
    time_origin,
)

# A long list of alert notifications reads as noise; the charts show all of them.
MAX_ALERTS_NAMED = 4

_VERDICT = {
    "passed": "The drill passed",
    "failed": "The drill failed",
    "error": "The drill ended in an error",
    "aborted": "The drill was aborted",
    "inconclusive": "The drill was inconclusive",
}


def _at(seconds: float) -> str:
    return f"{seconds:.1f} s"


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _join(items: Sequence[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _phase_part(phase: PhaseResult) -> str:
    if phase.start is None:
        return f"{phase.name} (never started)"
    end = phase.end if phase.end is not None else phase.start
    length = fmt_duration(max(end - phase.start, 0.0))
    if not phase.completed:
        return f"{phase.name} (stopped after {length})"
    return f"{phase.name} ({length})"


def _phases(result: RunResult) -> str:
    if not result.phases:
        return ""
    parts = [_phase_part(p) for p in result.phases]
    count = len(result.phases)
    return (f"It ran {count} phase{'s' if count != 1 else ''} over "
            f"{fmt_duration(result.duration_s)}: {_join(parts)}.")


def _fault(fault: FaultResult, t0: float) -> str:
    what = f"Fault {fault.name} ({fault.backend} {fault.kind})"
    if fault.applied_at is None:
        return f"{what} was never applied."
    applied = offset(fault.applied_at, t0)
    text = f"{what} was applied at {_at(applied)}"
    if fault.reverted_at is not None:
        active = offset(fault.reverted_at, t0) - applied
        text += f" and reverted {fmt_duration(max(active, 0.0))} later"
    elif fault.revert_error:
        text += ", and its revert failed"
    else:
        text += " and was still in place when the run ended"
    landed = {"seen": "; its effect showed in the evidence",
              "missed": "; it had no observable effect",
              "unknown": "; nothing showed whether it took effect"}
    return text + landed.get(fault.effect or "", "") + "."


def _load(result: RunResult) -> str:
    overall = result.stats.get("overall")
    if overall is None or overall.requests + overall.unfinished_at_stop == 0:
        return "No requests were recorded."
    text = (f"Clients sent {overall.requests} requests: {overall.succeeded} succeeded and "
            f"{overall.failed} failed")
    if overall.errors_by_class:
        text += f" ({errors_text(overall.errors_by_class)})"
    series = result.series
    if series is not None and series.client and series.bucket_s > 0:
        rates = [p.requests / series.bucket_s for p in series.client]
        text += (f", at {sum(rates) / len(rates):.1f} requests/s on average "
                 f"(peak {max(rates):.1f}/s)")
    text += "."
    if overall.unfinished_at_stop:
        text += (f" {overall.unfinished_at_stop} more were still in flight when the load "
                 "stopped (not counted).")
    return text


def _phase_numbers(name: str, stats: RequestStats) -> str:
    return (f"{name}: error rate {fmt_pct(stats.error_rate)}, "
            f"TTFT p95 {fmt_ms(stats.ttft_p95_s)} ms")


def _numbers(result: RunResult) -> str:
    parts = [_phase_numbers(p.name, result.stats[p.name]) for p in result.phases
             if p.name in result.stats and result.stats[p.name].requests]
    return f"Per phase, {'; '.join(parts)}." if parts else ""


def _alerts(result: RunResult) -> str:
    alerts = list(result.series.alerts) if result.series is not None else []
    if not alerts:
        return ""
    named = [f"{label} at {_at(at)}" for at, label in sorted(alerts)[:MAX_ALERTS_NAMED]]
    more = len(alerts) - len(named)
    count = len(alerts)
    return (f"{count} alert notification{'s' if count != 1 else ''} arrived: "
            f"{_join(named + ([f'{more} more'] if more > 0 else []))}.")


def _verdict(result: RunResult) -> str:
    head = _VERDICT.get(result.status, f"The drill ended {status_label(result.status)}")
    text = f"{head}: {checks_text(result)}"
    bad = [c.name for c in result.checks if c.status in ("failed", "error")]
    if bad:
        text += f"; not met: {_join(bad)}"
    unsure = [c.name for c in result.checks if c.status == "inconclusive"]
    if unsure:
        text += f"; too little evidence for {_join(unsure)}"
    if result.abort_reason:
        text += f". Reason: {result.abort_reason}"
    return _sentence(text)


def drill_story(result: RunResult) -> str:
    """One paragraph: the scenario, its phases, faults, load, alerts and verdict."""
    t0 = time_origin(result)
    sentences = [
        _sentence(result.scenario.description),
        _phases(result),
        *(_fault(f, t0) for f in result.faults),
        _load(result),
        _numbers(result),
        _alerts(result),
        _verdict(result),
    ]
    return " ".join(s for s in sentences if s)
