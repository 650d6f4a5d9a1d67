"""report.html and the suite index.html: self-contained, offline, no JavaScript.

Jinja2 autoescapes every value; the only markup inserted unescaped is SVG built by
`charts`, which escapes its own text. Numbers are formatted here, not in the template, so
the template stays about layout and mypy sees all the logic.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import jinja2
from markupsafe import Markup

import llmdrill
from llmdrill.checks.base import runbook_for
from llmdrill.model.result import CheckResult, FaultResult, RequestStats, RunResult
from llmdrill.model.verdict import RUN_SEVERITY, worst_status
from llmdrill.report import figures
from llmdrill.report.fmt import (
    DASH,
    checks_text,
    compact_json,
    errors_text,
    fmt_duration,
    fmt_ms,
    fmt_num,
    fmt_offset,
    fmt_pct,
    fmt_scalar,
    fmt_ts,
    offset,
    ordered_stats,
    status_label,
    time_origin,
    truncate,
    window_text,
)
from llmdrill.report.narrative import drill_story

# Evidence can be big (every request of a phase); the report shows a readable sample.
MAX_ITEMS = 50
MAX_DEPTH = 6
MAX_STR = 2000
_INLINE_ITEMS = 12  # a list of scalars or short tuples prints on one line

# What the template renders recursively: text, a list, or a key/value mapping.
Pruned: TypeAlias = "str | list[Pruned] | dict[str, Pruned]"

# The suite verdict is the worst run status, in the one order the exit codes use too.
_SEVERITY = RUN_SEVERITY


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _inline(value: Any) -> str | None:
    """One-line text for a scalar or a short list of scalars (like a [t, v] pair)."""
    if _is_scalar(value):
        return fmt_scalar(value)
    short = isinstance(value, list | tuple) and len(value) <= _INLINE_ITEMS
    if short and all(_is_scalar(v) for v in value):
        return "[" + ", ".join(fmt_scalar(v) for v in value) + "]"
    return None


def prune(value: Any, depth: int = 0) -> Pruned:
    """Shrink arbitrary JSON-like data for display: long lists cut, deep nesting flattened."""
    if isinstance(value, Mapping):
        if not value:
            return DASH
        if depth >= MAX_DEPTH:
            return compact_json(value, 200)
        pairs = list(value.items())
        out: dict[str, Pruned] = {str(k): prune(v, depth + 1) for k, v in pairs[:MAX_ITEMS]}
        if len(pairs) > MAX_ITEMS:
            out["…"] = f"{len(pairs) - MAX_ITEMS} more keys not shown"
        return out
    if isinstance(value, list | tuple | set | frozenset):
        seq = list(value)
        if not seq:
            return "[]"
        more = len(seq) - MAX_ITEMS
        inline = [_inline(v) for v in seq[:MAX_ITEMS]]
        if all(i is not None for i in inline):
            text = ", ".join(i for i in inline if i is not None)
            suffix = f", … {more} more ({len(seq)} in all)" if more > 0 else ""
            return truncate(text + suffix, MAX_STR)
        if depth >= MAX_DEPTH:
            return compact_json(seq, 200)
        items: list[Pruned] = [prune(v, depth + 1) for v in seq[:MAX_ITEMS]]
        if more > 0:
            items.append(f"… {more} more items ({len(seq)} in all)")
        return items
    return truncate(fmt_scalar(value), MAX_STR)


@dataclass(frozen=True)
class CheckView:
    status: str
    label: str
    name: str
    kind: str
    phase: str
    summary: str
    window: str
    observed: Pruned
    expected: Pruned
    evidence: Pruned
    open: bool
    runbook: str = ""  # where to look, for a check that did not pass


@dataclass(frozen=True)
class FaultView:
    name: str
    backend: str
    kind: str
    params: str
    phases: str
    applied: str
    reverted: str
    active: str
    revert_error: str | None
    never_reverted: bool
    effect: str = ""  # seen / missed / unknown, or "" when never applied
    effect_detail: str = ""
    busy: str = ""  # how its `when_busy` wait went, "" without one


def busy_text(busy: dict[str, Any] | None) -> str:
    """A fault's `when_busy` wait, for the fault table."""
    if not busy:
        return ""
    running = busy.get("running")
    seen = "no answer" if running is None else f"{running:g} running"
    waited = f"{float(busy.get('waited_s') or 0):.1f}s"
    if busy.get("met"):
        return f"applied once its engine served requests: {seen} after {waited}"
    return (f"its engine never served {busy.get('min_running')} requests ({seen} after "
            f"{waited}): applied anyway")


@dataclass(frozen=True)
class PhaseView:
    name: str
    planned: str
    actual: str
    completed: bool
    faults: str
    ended_early: str = ""  # why it ended before its planned end (`end_early`)


# The checks whose reader needs to know where to look next.
NOT_PASSED = ("failed", "error", "inconclusive")


def _check_view(check: CheckResult, t0: float) -> CheckView:
    return CheckView(
        status=check.status,
        label=status_label(check.status),
        name=check.name,
        kind=check.kind,
        phase=check.phase,
        summary=check.summary,
        window=window_text(check.window, t0),
        observed=prune(check.observed),
        expected=prune(check.expected),
        evidence=prune(check.evidence),
        # Failures open by default: they are what a reader (or a printout) needs.
        open=check.status in NOT_PASSED,
        runbook=runbook_for(check.kind) if check.status in NOT_PASSED else "",
    )


def _fault_view(fault: FaultResult, result: RunResult, t0: float) -> FaultView:
    applied = offset(fault.applied_at, t0) if fault.applied_at is not None else None
    reverted = offset(fault.reverted_at, t0) if fault.reverted_at is not None else None
    active = None
    if applied is not None:
        end = reverted if reverted is not None else offset(result.ended_at, t0)
        active = end - applied
    never = fault.applied_at is not None and fault.reverted_at is None
    return FaultView(
        name=fault.name,
        backend=fault.backend,
        kind=fault.kind,
        params=", ".join(f"{k}={compact_json(v, 200)}" for k, v in sorted(fault.params.items()))
        or DASH,
        phases=", ".join(p.name for p in result.phases if fault.name in p.faults) or DASH,
        applied=fmt_offset(applied) if applied is not None else "never applied",
        reverted=fmt_offset(reverted) if reverted is not None else ("never" if never else DASH),
        active=fmt_duration(active) + (" (to the end of the run)" if never else "")
        if active is not None
        else DASH,
        revert_error=fault.revert_error,
        never_reverted=never,
        effect=fault.effect or "",
        effect_detail=fault.effect_detail,
        busy=busy_text(fault.busy),
    )


def _span(start: float | None, end: float | None, t0: float) -> str:
    if start is None and end is None:
        return DASH
    a = fmt_offset(offset(start, t0)) if start is not None else "?"
    b = fmt_offset(offset(end, t0)) if end is not None else "?"
    return f"{a} → {b}"


def _errors_cell(stats: RequestStats) -> str:
    text = errors_text(stats.errors_by_class)
    if stats.unfinished_at_stop:
        cut = f"{stats.unfinished_at_stop} in flight at the stop (not counted)"
        text = cut if text == DASH else f"{text}; {cut}"
    return text


def _stats_rows(result: RunResult) -> list[dict[str, str]]:
    return [
        {
            "name": name,
            "requests": str(s.requests),
            "succeeded": str(s.succeeded),
            "failed": str(s.failed),
            "error_rate": fmt_pct(s.error_rate),
            "errors": _errors_cell(s),
            "ttft_p50": fmt_ms(s.ttft_p50_s),
            "ttft_p95": fmt_ms(s.ttft_p95_s),
            "ttft_p99": fmt_ms(s.ttft_p99_s),
            "tokens_per_s": fmt_num(s.tokens_per_s),
            "retried": str(s.retried),
        }
        for name, s in ordered_stats(result)
    ]


@functools.cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("llmdrill.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(result: RunResult) -> str:
    t0 = time_origin(result)
    context: dict[str, Any] = {
        "r": result,
        "status": result.status,
        "status_label": status_label(result.status),
        "checks_text": checks_text(result),
        "failing": [c.name for c in result.checks if c.status in NOT_PASSED],
        "story": drill_story(result),
        "started": fmt_ts(result.started_at),
        "ended": fmt_ts(result.ended_at),
        "duration": fmt_duration(result.duration_s),
        "origin": "series.t0" if result.series is not None else "the run start",
        "origin_ts": fmt_ts(t0),
        "checks": [_check_view(c, t0) for c in result.checks],
        "phases": [
            PhaseView(
                name=p.name,
                planned=_span(p.planned_start, p.planned_end, t0),
                actual=_span(p.start, p.end, t0),
                completed=p.completed,
                faults=", ".join(p.faults) or DASH,
                ended_early=p.ended_early or "",
            )
            for p in result.phases
        ],
        "faults": [_fault_view(f, result, t0) for f in result.faults],
        "timeline": Markup(figures.timeline(result).svg)
        if result.phases or result.faults
        else None,
        "charts": [(f.title, Markup(f.svg)) for f in figures.charts(result)],
        "stats": _stats_rows(result),
        "versions": sorted(result.versions.items()),
        "version": llmdrill.__version__,
    }
    return _env().get_template("report.html.j2").render(context)


def render_index(entries: Sequence[tuple[RunResult, str]],
                 history: Sequence[Mapping[str, Any]] | None = None) -> str:
    """Suite overview; each entry is a run and the relative link to its report.html.
    `history` (llmdrill.history.view.scenario_trends) adds the runs of earlier invocations:
    verdicts and key figures over time, regressions flagged."""
    rows = [
        {
            "status": r.status,
            "label": status_label(r.status),
            "scenario": r.scenario.name,
            "run_id": r.run_id,
            "started": fmt_ts(r.started_at),
            "duration": fmt_duration(r.duration_s),
            "checks": checks_text(r),
            "reason": r.abort_reason or "",
            "href": href,
        }
        for r, href in entries
    ]
    worst = worst_status(r.status for r, _ in entries)
    tally = {s: sum(1 for r, _ in entries if r.status == s) for s in _SEVERITY}
    context = {
        "rows": rows,
        "status": worst or "passed",
        "status_label": status_label(worst) if worst else "NO RUNS",
        "tally": tally,
        "version": llmdrill.__version__,
        "history": list(history or []),
    }
    return _env().get_template("index.html.j2").render(context)
