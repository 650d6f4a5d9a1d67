"""Turn a RunResult into the report's SVG figures (timeline and time-series charts).

Every figure shares one x axis (seconds since the time origin, see fmt.time_origin), one
left margin and one width, so a fault band sits at the same place in every chart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmdrill.model.result import RunResult, Series
from llmdrill.report.charts import (
    Marker,
    Point,
    Shade,
    Span,
    line_chart,
    stacked_bar_chart,
    timeline_chart,
)
from llmdrill.report.fmt import offset, time_origin

WIDTH = 900
LEFT = 120


@dataclass(frozen=True)
class Figure:
    title: str
    svg: str


def x_range(result: RunResult) -> tuple[float, float]:
    t0 = time_origin(result)
    lo = min(0.0, offset(result.started_at, t0))
    hi = offset(result.ended_at, t0)
    if result.series is not None and result.series.client:
        hi = max(hi, max(p.t for p in result.series.client) + result.series.bucket_s)
    for points in result.series.engine.values() if result.series is not None else ():
        if points:
            hi = max(hi, max(t for t, _ in points))
    return lo, max(hi, lo + 1.0)


def fault_windows(result: RunResult) -> list[Shade]:
    """Applied faults as (start, end, name); one never reverted lasts to the end of the run."""
    t0 = time_origin(result)
    end = offset(result.ended_at, t0)
    windows: list[Shade] = []
    for fault in result.faults:
        if fault.applied_at is None:
            continue
        stop = offset(fault.reverted_at, t0) if fault.reverted_at is not None else end
        windows.append(
            (offset(fault.applied_at, t0), max(stop, offset(fault.applied_at, t0)), fault.name)
        )
    return windows


def phase_markers(result: RunResult) -> list[Marker]:
    t0 = time_origin(result)
    return [
        (offset(p.start if p.start is not None else p.planned_start, t0), p.name)
        for p in result.phases
    ]


def alert_markers(result: RunResult) -> list[Marker]:
    """Alert notifications the run received, on the same axis as everything else."""
    return list(result.series.alerts) if result.series is not None else []


def timeline(result: RunResult) -> Figure:
    t0 = time_origin(result)
    phase_spans = [
        Span(
            offset(p.start if p.start is not None else p.planned_start, t0),
            offset(p.end if p.end is not None else p.planned_end, t0),
            p.name if p.completed else f"{p.name} (incomplete)",
            "phase" if p.completed else "phase-incomplete",
        )
        for p in result.phases
    ]
    lanes: list[tuple[str, list[Span]]] = [("phases", phase_spans)] if phase_spans else []
    for fault in result.faults:
        spans: list[Span] = []
        if fault.applied_at is not None:
            if fault.revert_error:
                tone, label = "fault-error", f"{fault.kind}: revert failed"
            elif fault.reverted_at is None:
                tone, label = "fault-open", f"{fault.kind}: not reverted"
            else:
                tone, label = "fault", fault.kind
            end = offset(fault.reverted_at, t0) if fault.reverted_at is not None else None
            spans.append(Span(offset(fault.applied_at, t0), end, label, tone))
        lanes.append((fault.name, spans))
    title = "Timeline"
    return Figure(title, timeline_chart(title, lanes, x_range(result), WIDTH, left=LEFT,
                                        alerts=alert_markers(result)))


def _client_charts(
    series: Series, xr: tuple[float, float], shaded: list[Shade], markers: list[Marker]
) -> list[Figure]:
    alerts = list(series.alerts)
    client = sorted(series.client, key=lambda p: p.t)
    bucket = series.bucket_s if series.bucket_s > 0 else 1.0
    ttft: list[Point] = [
        (p.t, p.ttft_p95_s * 1000 if p.ttft_p95_s is not None else None) for p in client
    ]
    tps: list[Point] = [(p.t, p.tokens_per_s) for p in client]
    rate: list[Point] = [(p.t, p.requests / bucket) for p in client]
    specs: list[tuple[str, str, list[Point], bool]] = [
        ("TTFT p95", "ms", ttft, False),
        ("Output tokens/s", "tokens/s", tps, True),
        ("Request rate", "req/s", rate, True),
    ]
    figures = [
        Figure(
            title,
            line_chart(
                title,
                {title: pts},
                unit,
                shaded,
                markers,
                WIDTH,
                200,
                x_range=xr,
                area=area,
                left=LEFT,
                alerts=alerts,
            ),
        )
        for title, unit, pts, area in specs
    ]
    errors = [(p.t, {k: float(v) for k, v in p.errors.items()}) for p in client]
    figures.append(
        Figure(
            "Errors by class",
            stacked_bar_chart(
                "Errors by class",
                errors,
                "errors",
                shaded,
                markers,
                WIDTH,
                200,
                bar_width=bucket,
                x_range=xr,
                empty_text="no errors",
                left=LEFT,
                alerts=alerts,
            ),
        )
    )
    return figures


def charts(result: RunResult) -> list[Figure]:
    """Client charts, then one chart per engine gauge (the keys vary by engine)."""
    series = result.series
    if series is None:
        return []
    shaded, markers = fault_windows(result), phase_markers(result)
    xr = x_range(result)
    figures = _client_charts(series, xr, shaded, markers)
    engine_markers = markers + list(series.markers)
    for name, lines in _engine_charts(series.engine).items():
        title = f"Engine: {name}" if name in series.engine else f"Replicas: {name}"
        figures.append(
            Figure(
                title,
                line_chart(
                    title,
                    lines,
                    "",
                    shaded,
                    engine_markers,
                    WIDTH,
                    180,
                    x_range=xr,
                    left=LEFT,
                    alerts=series.alerts,
                ),
            )
        )
    figures.extend(_around_markers(series))
    return figures


def _engine_charts(engine: dict[str, list[tuple[float, float]]]
                   ) -> dict[str, dict[str, Sequence[Point]]]:
    """One chart per gauge: the target's alone; each replica's (`<gauge>@<replica>`) as
    one line per replica, so a failover shows as one line falling while another rises."""
    charts: dict[str, dict[str, Sequence[Point]]] = {}
    for key in sorted(engine):
        gauge, _, replica = key.partition("@")
        lines = charts.setdefault(gauge if replica else key, {})
        lines[replica or key] = [(t, v) for t, v in engine[key]]
    return charts


# Cleanup after a cancel-storm wave takes a fraction of a second: each wave gets a chart
# of its own, from a few seconds before the drop to a few after, so the return to baseline
# is visible at all.
ZOOM_BEFORE_S, ZOOM_AFTER_S = 3.0, 6.0
ZOOM_SERIES = ("running", "kv_cache_usage", "waiting")


def _around_markers(series: Series) -> list[Figure]:
    figures = []
    for at, label in series.markers:
        lo, hi = at - ZOOM_BEFORE_S, at + ZOOM_AFTER_S
        lines: dict[str, Sequence[Point]] = {
            name: [(t, v) for t, v in series.engine[name] if lo <= t <= hi]
            for name in ZOOM_SERIES
            if name in series.engine
        }
        if not lines:
            continue
        title = f"Around {label} (t={at:.1f}s)"
        figures.append(Figure(title, line_chart(title, lines, "", (), [(at, label)], WIDTH,
                                                180, x_range=(lo, hi), left=LEFT)))
    return figures
