"""slo: client-side service levels over the requests that started in the window."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from llmdrill.checks.base import fmt, make_result
from llmdrill.checks.stats import request_stats
from llmdrill.model.records import Evidence, RequestRecord
from llmdrill.model.result import CheckResult, CheckStatus, RequestStats, Window
from llmdrill.plugin import CheckKind
from llmdrill.scenario.fields import (
    Bound,
    DurationBound,
    ErrorClass,
    FractionBound,
    Strict,
)

# --- the spec: the YAML under this key ----------------------------------------


class SloCheck(Strict):
    """Client-side service levels over the requests that started in the window."""

    shapes: list[str] | None = Field(
        default=None,
        description="Only requests of these shape names (load.requests[].name, or a "
        "request_flood's name); default all.",
    )
    ttft_p50: DurationBound | None = Field(
        default=None, description="Median time to first token of successful requests."
    )
    ttft_p95: DurationBound | None = Field(
        default=None, description="95th percentile time to first token of successful requests."
    )
    ttft_p99: DurationBound | None = Field(
        default=None, description="99th percentile time to first token of successful requests."
    )
    tokens_per_s: Bound | None = Field(default=None, description="Output tokens/s, all requests.")
    request_tokens_per_s_p50: Bound | None = Field(
        default=None,
        description="Median decode speed of one request: output tokens/s after its first token.",
    )
    error_rate: FractionBound | None = Field(
        default=None, description="Share of requests that failed."
    )
    error_rate_by_class: dict[ErrorClass, FractionBound] = Field(
        default_factory=dict, description="Share of requests that failed with a given class."
    )
    allowed_error_classes: list[ErrorClass] | None = Field(
        default=None, description="Any failed request of another class fails the check."
    )
    min_requests: int = Field(
        default=1, ge=0,
        description="Fewer requests started in the window is inconclusive (too little "
        "evidence); 0 still needs one request.",
    )


KIND = "slo"


@dataclass(frozen=True, slots=True)
class _Measured:
    """One bound of the spec with its measured value, both in display units."""

    label: str  # how the summary names it, e.g. "ttft_p95"
    key: str  # observed/expected key, e.g. "ttft_p95_ms"
    value: float | None
    low: float | None
    high: float | None
    unit: str = ""
    decimals: int = 3
    no_data: str = "no data"

    def violation(self) -> str | None:
        if self.value is None:
            # No evidence is a failure: a bound nobody measured has not held.
            return f"{self.label}: {self.no_data}"
        shown = f"{self.label} {fmt(self.value, self.decimals)}{self.unit}"
        if self.high is not None and self.value > self.high:
            return f"{shown} > max {fmt(self.high, self.decimals)}{self.unit}"
        if self.low is not None and self.value < self.low:
            return f"{shown} < min {fmt(self.low, self.decimals)}{self.unit}"
        return None

    def expected(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.low is not None:
            out["min"] = self.low
        if self.high is not None:
            out["max"] = self.high
        return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _measures(spec: SloCheck, stats: RequestStats) -> list[_Measured]:
    measured: list[_Measured] = []
    no_ttft = "no successful request with a TTFT (no evidence)"
    ttfts: list[tuple[str, DurationBound | None, float | None]] = [
        ("ttft_p50", spec.ttft_p50, stats.ttft_p50_s),
        ("ttft_p95", spec.ttft_p95, stats.ttft_p95_s),
        ("ttft_p99", spec.ttft_p99, stats.ttft_p99_s),
    ]
    for label, dbound, seconds in ttfts:
        if dbound is not None:
            measured.append(
                _Measured(
                    label,
                    f"{label}_ms",
                    _ms(seconds),
                    _ms(dbound.min),
                    _ms(dbound.max),
                    unit="ms",
                    decimals=1,
                    no_data=no_ttft,
                )
            )
    rates: list[tuple[str, Bound | None, float | None, str]] = [
        ("tokens_per_s", spec.tokens_per_s, stats.tokens_per_s, "no requests (no evidence)"),
        (
            "request_tokens_per_s_p50",
            spec.request_tokens_per_s_p50,
            stats.request_tokens_per_s_p50,
            "no successful request with output tokens (no evidence)",
        ),
    ]
    for label, bound, value, no_data in rates:
        if bound is not None:
            measured.append(
                _Measured(label, label, value, bound.min, bound.max, decimals=1, no_data=no_data)
            )
    if spec.error_rate is not None:
        measured.append(_fraction("error_rate", "error_rate", stats.error_rate, spec.error_rate))
    for cls, fbound in sorted(spec.error_rate_by_class.items()):
        rate = None if not stats.requests else stats.errors_by_class.get(cls, 0) / stats.requests
        measured.append(_fraction(f"error_rate[{cls}]", f"error_rate_by_class.{cls}", rate, fbound))
    return measured


def _fraction(label: str, key: str, value: float | None, bound: FractionBound) -> _Measured:
    return _Measured(label, key, value, bound.min, bound.max, no_data="no requests (no evidence)")


def evaluate_slo(
    name: str, phase: str, spec: SloCheck, evidence: Evidence, window: Window
) -> CheckResult:
    started: Iterable[RequestRecord] = evidence.requests_started_in(window.start, window.end)
    if spec.shapes is not None:
        wanted = set(spec.shapes)
        started = (r for r in started if r.shape in wanted)
    # Requests still in flight when the load stopped have no outcome to judge; whether
    # they were hung is no_hung_requests' question, so request_stats leaves them out and
    # counts them. Read once, as they stream: a soak's million requests are never a list.
    stats = request_stats(started, window_s=window.end - window.start)
    measured = _measures(spec, stats)
    violations = [v for m in measured if (v := m.violation()) is not None]

    observed: dict[str, Any] = {
        "requests": stats.requests,
        "succeeded": stats.succeeded,
        "failed": stats.failed,
        "errors_by_class": stats.errors_by_class,
        "unfinished_at_stop": stats.unfinished_at_stop,
    }
    expected: dict[str, Any] = {"min_requests": spec.min_requests}
    for m in measured:
        observed[m.key] = m.value
        expected[m.key] = m.expected()

    if spec.allowed_error_classes is not None:
        allowed = set(spec.allowed_error_classes)
        disallowed = {c: n for c, n in stats.errors_by_class.items() if c not in allowed}
        observed["disallowed_errors"] = disallowed
        expected["allowed_error_classes"] = sorted(allowed)
        if disallowed:
            listed = ", ".join(f"{c} {n}" for c, n in sorted(disallowed.items()))
            violations.append(f"errors of classes not allowed: {listed}")

    # Zero requests never passes, even with min_requests: 0: no data is not success.
    # Too few requests is inconclusive, not failed: they show too little to judge either
    # way, whatever bound their few numbers miss.
    needed = max(spec.min_requests, 1)
    observed["min_requests"] = needed
    bounds = len(measured) + (spec.allowed_error_classes is not None)
    status: CheckStatus = "failed" if violations else "passed"
    if stats.requests < needed:
        status = "inconclusive"
        summary = (f"inconclusive: too little evidence: {stats.requests} requests started "
                   f"in the window (finished), need {needed}")
    elif violations:
        summary = "; ".join(violations)
    elif bounds:
        summary = f"all {bounds} bounds held over {stats.requests} requests"
    else:
        summary = f"{stats.requests} requests started (needed {needed})"
    return make_result(
        name,
        KIND,
        phase,
        status,
        summary,
        window=window,
        observed=observed,
        expected=expected,
        evidence={"stats": stats.model_dump()},
    )


SLO = CheckKind(
    spec=SloCheck,
    evaluate=evaluate_slo,
    description="Client-side service levels: TTFT, throughput, errors.",
    runbook=(
        "Clients saw worse service than the SLO allows. Compare the phase's TTFT, throughput "
        "and error classes with the baseline's in the per-phase table: timeouts and resets "
        "point at the network path or gateway timeouts (proxy_read_timeout, upstream "
        "keepalive); 5xx at the engine or gateway logs; a slow TTFT with a long waiting queue "
        "at engine capacity (max_num_seqs, max_num_batched_tokens, "
        "vllm:num_requests_waiting)."
    ),
    probe=None,
)
