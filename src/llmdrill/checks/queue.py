"""queue_bounded: under pressure the engine's waiting queue stays within a bound, and
requests refused instead (429/503) say when to come back (Retry-After) where required.

A queue that grows without bound turns overload into unbounded latency for everybody; a
system that sheds load with 429/503 keeps its queue short. The waiting series is scraped
from the engine; a series the target does not expose makes the check inconclusive, naming
what was tried, and so do fewer than `min_samples` scrapes in the window: an unwatched
queue is not a bounded one. A peak over the bound fails on any number of samples.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import Field

from llmdrill.checks.base import fmt, make_result
from llmdrill.checks.metric import similar_names
from llmdrill.model.records import Evidence
from llmdrill.model.result import CheckResult, CheckStatus, Window
from llmdrill.plugin import CheckKind, Location, Problem
from llmdrill.scenario import refs
from llmdrill.scenario.fields import (
    Strict,
)

# --- the spec: the YAML under this key ----------------------------------------


class QueueBoundedCheck(Strict):
    """The engine's waiting queue stays within a bound, or excess requests are refused
    with 429/503 (and Retry-After where declared) instead of waiting without bound."""

    max_waiting: float = Field(ge=0, description="Bound on the engine's waiting requests.")
    series: list[str] = Field(
        default_factory=lambda: ["vllm:num_requests_waiting"], min_length=1,
        description="Waiting-queue metric names, first one the target exposes is used; "
        "none exposed fails the check.",
    )
    refusal_statuses: list[int] = Field(
        default_factory=lambda: [429, 503],
        description="Statuses that count as a request refused under load.",
    )
    require_retry_after: bool = Field(
        default=False, description="Refusals must carry a Retry-After header."
    )
    min_samples: int = Field(
        default=3, ge=1,
        description="Fewer scrapes of the waiting series in the window is inconclusive.",
    )


KIND = "queue_bounded"


def evaluate_queue_bounded(
    name: str, phase: str, spec: QueueBoundedCheck, evidence: Evidence, window: Window
) -> CheckResult:
    expected: dict[str, Any] = {
        "max_waiting": spec.max_waiting,
        "series": list(spec.series),
        "refusal_statuses": list(spec.refusal_statuses),
        "require_retry_after": spec.require_retry_after,
        "min_samples": spec.min_samples,
    }
    present = evidence.metric_names()
    series = next((s for s in spec.series if s in present), None)
    if series is None:
        similar = similar_names(spec.series, present)
        hint = f"; similar exposed names: {', '.join(similar)}" if similar else ""
        return make_result(
            name, KIND, phase, "inconclusive",
            f"inconclusive: waiting-queue metric not found: tried {', '.join(spec.series)}{hint}",
            window=window, expected=expected,
            observed={"series": None, "tried": list(spec.series), "similar": similar},
        )

    samples = [(ts, v) for ts, v in evidence.series(series)
               if window.start <= ts <= window.end]
    statuses = set(spec.refusal_statuses)
    refused = [r for r in evidence.requests_started_in(window.start, window.end)
               if r.status in statuses]
    without_ra = [r for r in refused if not r.retry_after]
    observed: dict[str, Any] = {
        "series": series,
        "samples": len(samples),
        "max_waiting": None,
        "peak_at_s": None,
        "refused": len(refused),
        "refused_by_status": {str(k): n for k, n in
                              sorted(Counter(r.status for r in refused).items())},
        "refused_without_retry_after": len(without_ra),
    }
    over_seen = any(v > spec.max_waiting for _, v in samples)
    if len(samples) < spec.min_samples and not over_seen:
        return make_result(
            name, KIND, phase, "inconclusive",
            f"inconclusive: {len(samples)} samples of {series} in the window, need "
            f"{spec.min_samples} (too little evidence the queue was bounded)",
            window=window, observed=observed, expected=expected,
        )

    peak_ts, peak = max(samples, key=lambda s: (s[1], -s[0]))  # the first time it peaked
    offset = peak_ts - window.start
    observed["max_waiting"] = peak
    observed["peak_at_s"] = round(offset, 3)

    over = peak > spec.max_waiting
    missing_ra = spec.require_retry_after and bool(without_ra)
    relation = ">" if over else "within"
    text = f"waiting peaked at {fmt(peak)} ({relation} bound {fmt(spec.max_waiting)}) " \
           f"at +{offset:.1f}s; {len(refused)} requests refused"
    if refused and (spec.require_retry_after or without_ra):
        required = " (required)" if spec.require_retry_after else ""
        text += f", {len(without_ra)} without Retry-After{required}"
    status: CheckStatus = "failed" if over or missing_ra else "passed"
    return make_result(name, KIND, phase, status, text, window=window, observed=observed,
                       expected=expected)


def references(spec: QueueBoundedCheck, scenario: Any, location: Location) -> list[Problem]:
    return refs.needs_metrics_url(scenario, KIND, location)


QUEUE_BOUNDED = CheckKind(
    references=references,
    spec=QueueBoundedCheck,
    evaluate=evaluate_queue_bounded,
    description="The waiting queue stays bounded or excess is refused.",
    runbook=(
        "Under pressure the waiting queue grew past its bound, or refusals came without "
        "Retry-After. Look at vllm:num_requests_waiting on the engine chart; bound admission "
        "with max_num_seqs or a gateway limit (limit_conn, limit_req) that answers 429/503 "
        "with Retry-After instead of queueing without end."
    ),
    probe=None,
)
