"""metric: a condition on a scraped engine series within the window.

Engines rename metrics between versions, so a check lists alternatives and the first
one the target exposes is used. A metric that is not there, or fewer than `min_samples`
scrapes of it in the window (`increase` always needs 2), makes the check inconclusive:
a drill that silently passes because it watched nothing is worse than no drill.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any, Literal

from pydantic import Field, model_validator

from llmdrill.checks.base import fmt, make_result
from llmdrill.checks.counters import step
from llmdrill.model.records import Evidence
from llmdrill.model.result import CheckResult, CheckStatus, Window
from llmdrill.plugin import CheckKind, Location, Problem
from llmdrill.scenario.fields import (
    Strict,
)

# --- the spec: the YAML under this key ----------------------------------------


class MetricCheck(Strict):
    """A condition on a scraped engine series within the window."""

    series: list[str] = Field(
        min_length=1, description="Metric names, first one the target exposes is used."
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Only samples with these labels; matching series are summed per scrape.",
    )
    aggregate: Literal["max", "min", "mean", "last", "first", "increase"] = Field(
        default="max",
        description="How the window's samples become one value; increase reads a counter "
        "across restarts.",
    )
    min: float | None = Field(default=None, description="Lowest allowed value (inclusive).")
    max: float | None = Field(default=None, description="Highest allowed value (inclusive).")
    min_samples: int = Field(
        default=2, ge=1,
        description="Fewer scrapes of the series in the window is inconclusive (increase "
        "always needs 2).",
    )

    @model_validator(mode="after")
    def _bounds(self) -> MetricCheck:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        return self


KIND = "metric"
SIMILAR_SHOWN = 10


def increase(values: Sequence[float]) -> float:
    """Counter increase over the samples, across restarts.

    A drop means the counter reset (engine restart), so the sample after the drop is
    itself the increase since the reset; this is how Prometheus' increase() reads it.
    """
    return sum(step(prev, cur) for prev, cur in pairwise(values))


AGGREGATES: dict[str, Callable[[Sequence[float]], float]] = {
    "max": max,
    "min": min,
    "mean": lambda v: sum(v) / len(v),
    "first": lambda v: v[0],
    "last": lambda v: v[-1],
    "increase": increase,
}


def similar_names(tried: Sequence[str], present: set[str]) -> list[str]:
    """Up to SIMILAR_SHOWN exposed names that look like the ones asked for."""
    found: list[str] = []
    for name in tried:
        for match in difflib.get_close_matches(name, sorted(present), n=SIMILAR_SHOWN, cutoff=0.6):
            if match not in found:
                found.append(match)
    return found[:SIMILAR_SHOWN]


def evaluate_metric(
    name: str, phase: str, spec: MetricCheck, evidence: Evidence, window: Window
) -> CheckResult:
    expected: dict[str, object] = {"aggregate": spec.aggregate, "series": list(spec.series)}
    if spec.labels:
        expected["labels"] = dict(spec.labels)
    if spec.min is not None:
        expected["min"] = spec.min
    if spec.max is not None:
        expected["max"] = spec.max
    needed = max(spec.min_samples, 2 if spec.aggregate == "increase" else 1)
    expected["min_samples"] = needed

    present = evidence.metric_names()
    series = next((s for s in spec.series if s in present), None)
    if series is None:
        similar = similar_names(spec.series, present)
        hint = f"; similar exposed names: {', '.join(similar)}" if similar else ""
        return make_result(
            name,
            KIND,
            phase,
            "inconclusive",
            f"inconclusive: metric not found: tried {', '.join(spec.series)}{hint}",
            window=window,
            observed={"series": None, "tried": list(spec.series), "similar": similar},
            expected=expected,
        )

    samples = [
        (ts, v)
        for ts, v in evidence.series(series, spec.labels)
        if window.start <= ts <= window.end
    ]
    observed: dict[str, object] = {"series": series, "samples": len(samples), "value": None}
    where = f"{series}{_labels(spec.labels)}"
    if len(samples) < needed:
        return make_result(
            name,
            KIND,
            phase,
            "inconclusive",
            f"inconclusive: {len(samples)} samples of {where} in the window, need {needed}",
            window=window,
            observed=observed,
            expected=expected,
        )

    value = AGGREGATES[spec.aggregate]([v for _, v in samples])
    observed["value"] = value
    shown = f"{spec.aggregate}({where}) = {fmt(value)}"
    status: CheckStatus = "passed"
    if spec.max is not None and value > spec.max:
        status, summary = "failed", f"{shown} > max {fmt(spec.max)}"
    elif spec.min is not None and value < spec.min:
        status, summary = "failed", f"{shown} < min {fmt(spec.min)}"
    else:
        summary = f"{shown} within {_bounds(spec)} over {len(samples)} samples"
    return make_result(
        name, KIND, phase, status, summary, window=window, observed=observed, expected=expected
    )


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def _bounds(spec: MetricCheck) -> str:
    parts = []
    if spec.min is not None:
        parts.append(f"min {fmt(spec.min)}")
    if spec.max is not None:
        parts.append(f"max {fmt(spec.max)}")
    return ", ".join(parts)


def references(spec: MetricCheck, scenario: Any, location: Location) -> list[Problem]:
    """A scraped series needs target.metrics_url; a `promql:<name>` one, a query of that
    name in monitoring.queries."""
    problems: list[Problem] = []
    queries = scenario.monitoring.queries
    for name in spec.series:
        query = name.removeprefix("promql:")
        if name.startswith("promql:") and query not in queries:
            defined = ", ".join(sorted(queries)) or "none"
            problems.append(((*location, "series"),
                             f"'{name}' names no query in monitoring.queries "
                             f"(defined: {defined})"))
    if not scenario.target.metrics_url and not all(
            name.startswith("promql:") for name in spec.series):
        problems.append((location, "a metric check needs target.metrics_url"))
    return problems


METRIC = CheckKind(
    references=references,
    spec=MetricCheck,
    evaluate=evaluate_metric,
    description="A condition on a scraped engine metric.",
    runbook=(
        "An engine metric broke its condition (or was not scraped at all, for inconclusive). "
        "Open the metric's chart under 'Over time'; check that the engine exposes the series "
        "under the name listed (engines rename metrics between versions) and that the scrape "
        "interval gives enough samples in the window."
    ),
    probe=None,
)
