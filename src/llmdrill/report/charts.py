"""Inline SVG charts in pure Python: no JavaScript, no fonts, no external files.

Every function returns one `<svg>` element as a string that is also well-formed XML. There
is no xmlns attribute on purpose: inside HTML the parser puts <svg> in the SVG namespace
anyway, and the report must not contain any http(s) reference at all. All user text
(series names, fault and phase labels) is escaped here, so callers may insert the result
as markup.

x values are seconds on a shared axis; callers pass `x_range` so that several charts in
one report line up.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import NamedTuple

from llmdrill.report.fmt import xml_safe

Point = tuple[float, float | None]
Shade = tuple[float, float, str]
Marker = tuple[float, str]

# Okabe-Ito: distinguishable with the common colour-vision deficiencies and in greyscale.
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000")
SHADE_FILL = "#dc2626"
SHADE_TEXT = "#991b1b"
MARKER_STROKE = "#6b7280"
ALERT_STROKE = "#7c3aed"
GRID = "#e5e7eb"
AXIS = "#9ca3af"
TEXT = "#374151"
MUTED = "#6b7280"

_CHAR_W = 6.2  # average glyph width at font-size 11, for layout estimates
_FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"


# --- small helpers ----------------------------------------------------------------------


def esc(text: object) -> str:
    """Escape for both SVG text and attribute values."""
    return html.escape(xml_safe(str(text)), quote=True)


def _n(v: float) -> str:
    return f"{v:.1f}"


def _clip_label(text: str, max_chars: int) -> str:
    if max_chars < 2:
        return ""
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def _decimals(step: float) -> int:
    """Fewest decimals that show `step` (0.25 -> 2, 0.5 -> 1, 20 -> 0)."""
    for d in range(7):
        if abs(round(step, d) - step) <= abs(step) * 1e-6:
            return d
    return 6


def _nice_step(span: float, target: int) -> float:
    raw = span / max(target, 1)
    if raw <= 0 or not math.isfinite(raw):
        return 1.0
    mag = 10.0 ** math.floor(math.log10(raw))
    for mult in (1.0, 2.0, 2.5, 5.0):
        if mult * mag >= raw * (1 - 1e-9):
            return mult * mag
    return 10.0 * mag


def fmt_tick(value: float, step: float) -> str:
    """Tick label with the precision the step needs; large values get k/M suffixes."""
    if abs(value) < abs(step) * 1e-9:
        return "0"
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= 10 * scale and step >= scale / 10:
            return f"{value / scale:.{_decimals(step / scale)}f}{suffix}"
    return f"{value:.{_decimals(step)}f}"


def y_ticks(lo: float, hi: float, target: int = 4) -> list[float]:
    """Ticks that cover [lo, hi]; the first and last become the y domain."""
    step = _nice_step(hi - lo, target)
    start = math.floor(lo / step + 1e-9) * step
    count = max(1, math.ceil((hi - start) / step - 1e-9))
    return [round(start + i * step, 12) for i in range(count + 1)]


def x_ticks(lo: float, hi: float, target: int) -> list[float]:
    """Ticks inside [lo, hi]; the x domain itself stays exact."""
    step = _nice_step(hi - lo, target)
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def _value_domain(values: Iterable[float]) -> tuple[float, float]:
    """Always includes 0: every metric here is a count, rate or latency, where 0 matters."""
    vals = list(values)
    lo, hi = min([0.0, *vals]), max([0.0, *vals])
    if hi - lo <= 0:
        hi = lo + 1.0
    return lo, hi


def _x_domain(
    xs: Iterable[float], x_range: tuple[float, float] | None, extra: float = 0.0
) -> tuple[float, float] | None:
    if x_range is not None:
        lo, hi = x_range
    else:
        finite = [x for x in xs if math.isfinite(x)]
        if not finite:
            return None
        lo, hi = min(finite), max(finite) + extra
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    if hi - lo <= 0:  # a single point still gets a visible axis around it
        lo, hi = lo - 0.5, lo + 0.5
    return lo, hi


class _Scale:
    def __init__(self, d0: float, d1: float, r0: float, r1: float) -> None:
        self.d0, self.d1, self.r0, self.r1 = d0, d1, r0, r1

    def __call__(self, v: float) -> float:
        return self.r0 + (v - self.d0) / (self.d1 - self.d0) * (self.r1 - self.r0)

    def contains(self, v: float) -> bool:
        return self.d0 - 1e-9 <= v <= self.d1 + 1e-9


@dataclass
class _Plot:
    """Pixel layout of one chart: outer size and the inner plot rectangle."""

    width: int
    height: int
    left: float
    top: float
    right: float = 16
    bottom: float = 34

    @property
    def x1(self) -> float:
        return self.width - self.right

    @property
    def y1(self) -> float:
        return self.height - self.bottom

    @property
    def w(self) -> float:
        return max(self.x1 - self.left, 10.0)

    @property
    def h(self) -> float:
        return max(self.y1 - self.top, 10.0)


# --- shared drawing ---------------------------------------------------------------------


def _svg_open(title: str, width: int, height: int, kind: str) -> list[str]:
    return [
        f'<svg class="chart chart-{kind}" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{esc(title)}" font-family="{_FONT}" '
        f'font-size="11">',
        f"<title>{esc(title)}</title>",
        f'<text x="8" y="17" font-size="13" font-weight="600" fill="{TEXT}">{esc(title)}</text>',
    ]


def _legend(
    items: Sequence[tuple[str, str]], width: int, left: float, y0: float
) -> tuple[list[str], float]:
    """Legend rows under the title, wrapped to the width; returns parts and the next free y."""
    parts: list[str] = []
    x, y = left, y0
    for label, color in items:
        text = _clip_label(label, 32)
        item_w = 16 + len(text) * _CHAR_W + 14
        if x + item_w > width - 8 and x > left:
            x, y = left, y + 16
        parts.append(
            f'<rect x="{_n(x)}" y="{_n(y - 9)}" width="10" height="10" rx="2" fill="{color}"/>'
            f'<text x="{_n(x + 14)}" y="{_n(y)}" fill="{TEXT}">{esc(text)}</text>'
        )
        x += item_w
    return parts, (y + 10 if items else y0 - 6)


def _top_area(
    title: str, legend: Sequence[tuple[str, str]], width: int, height: int, kind: str, left: float
) -> tuple[list[str], _Plot]:
    parts = _svg_open(title, width, height, kind)
    legend_parts, y = _legend(legend, width, left, 36)
    parts += legend_parts
    return parts, _Plot(width=width, height=height, left=left, top=y + 18)


def _axes(
    plot: _Plot,
    xs: _Scale,
    ys: _Scale,
    yticks: Sequence[float],
    unit: str,
    x_label: str,
) -> list[str]:
    parts = ['<g class="axes">']
    ystep = yticks[1] - yticks[0] if len(yticks) > 1 else 1.0
    for v in yticks:
        y = ys(v)
        parts.append(
            f'<line x1="{_n(plot.left)}" x2="{_n(plot.x1)}" y1="{_n(y)}" y2="{_n(y)}" '
            f'stroke="{GRID}" stroke-width="1"/>'
            f'<text x="{_n(plot.left - 6)}" y="{_n(y + 4)}" text-anchor="end" '
            f'fill="{MUTED}">{esc(fmt_tick(v, ystep))}</text>'
        )
    target = max(2, int(plot.w // 70))
    ticks = x_ticks(xs.d0, xs.d1, target)
    xstep = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    for v in ticks:
        x = xs(v)
        parts.append(
            f'<line x1="{_n(x)}" x2="{_n(x)}" y1="{_n(plot.y1)}" y2="{_n(plot.y1 + 4)}" '
            f'stroke="{AXIS}"/>'
            f'<text x="{_n(x)}" y="{_n(plot.y1 + 15)}" text-anchor="middle" '
            f'fill="{MUTED}">{esc(fmt_tick(v, xstep))}</text>'
        )
    parts.append(
        f'<line x1="{_n(plot.left)}" x2="{_n(plot.x1)}" y1="{_n(plot.y1)}" y2="{_n(plot.y1)}" '
        f'stroke="{AXIS}"/>'
        f'<line x1="{_n(plot.left)}" x2="{_n(plot.left)}" y1="{_n(plot.top)}" '
        f'y2="{_n(plot.y1)}" stroke="{AXIS}"/>'
    )
    if x_label:
        parts.append(
            f'<text x="{_n(plot.x1)}" y="{_n(plot.y1 + 28)}" text-anchor="end" '
            f'fill="{MUTED}">{esc(x_label)}</text>'
        )
    if unit:
        parts.append(
            f'<text x="{_n(plot.left - 6)}" y="{_n(plot.top - 8)}" text-anchor="end" '
            f'fill="{MUTED}">{esc(unit)}</text>'
        )
    parts.append("</g>")
    return parts


def _visible(xs: _Scale, start: float, end: float) -> tuple[float, float] | None:
    """The part of [start, end] inside the x domain, in pixels; None when off-axis."""
    if not (math.isfinite(start) and math.isfinite(end)):
        return None
    lo, hi = max(min(start, end), xs.d0), min(max(start, end), xs.d1)
    if hi < lo:
        return None
    return xs(lo), max(xs(hi) - xs(lo), 2.0)  # a zero-length fault still shows as a thin band


def _shades(plot: _Plot, xs: _Scale, shaded: Sequence[Shade]) -> list[str]:
    """Fault windows: translucent bands over the full plot height, drawn under the data."""
    parts = ['<g class="shades">']
    for start, end, label in shaded:
        box = _visible(xs, start, end)
        if box is None:
            continue
        parts.append(
            f"<g><title>{esc(f'fault {label}: {start:.1f} s to {end:.1f} s')}</title>"
            f'<rect x="{_n(box[0])}" y="{_n(plot.top)}" width="{_n(box[1])}" '
            f'height="{_n(plot.h)}" fill="{SHADE_FILL}" fill-opacity="0.12"/></g>'
        )
    parts.append("</g>")
    return parts


def _shade_labels(plot: _Plot, xs: _Scale, shaded: Sequence[Shade]) -> list[str]:
    """Fault names at the bottom of their band, drawn over the data with a white halo.

    Overlapping faults would print over each other, so labels stack upwards in rows; past
    three rows a label is left out (the band's tooltip still names it).
    """
    parts = ['<g class="shade-labels">']
    row_ends: list[float] = []
    visible = [(box, label) for s, e, label in shaded if (box := _visible(xs, s, e))]
    for (x0, _), label in sorted(visible, key=lambda v: v[0][0]):
        text = _clip_label(label, min(24, int((plot.x1 - x0 - 3) // (_CHAR_W * 0.9))))
        if not text:
            continue
        row = next((i for i, end in enumerate(row_ends) if end <= x0), len(row_ends))
        if row >= 3:
            continue
        right = x0 + 3 + len(text) * _CHAR_W * 0.9 + 6
        if row < len(row_ends):
            row_ends[row] = right
        else:
            row_ends.append(right)
        parts.append(
            f'<text x="{_n(x0 + 3)}" y="{_n(plot.y1 - 4 - row * 12)}" font-size="10" '
            f'fill="{SHADE_TEXT}" stroke="#ffffff" stroke-width="3" paint-order="stroke">'
            f"{esc(text)}</text>"
        )
    parts.append("</g>")
    return parts


def _markers(plot: _Plot, xs: _Scale, markers: Sequence[Marker]) -> list[str]:
    """Phase boundaries: dashed verticals, labelled at the top with a white halo."""
    parts = ['<g class="markers">']
    for at, label in markers:
        if not (math.isfinite(at) and xs.contains(at)):
            continue
        x = xs(at)
        parts.append(
            f"<g><title>{esc(f'{label} at {at:.1f} s')}</title>"
            f'<line x1="{_n(x)}" x2="{_n(x)}" y1="{_n(plot.top)}" y2="{_n(plot.y1)}" '
            f'stroke="{MARKER_STROKE}" stroke-width="1" stroke-dasharray="4 3"/>'
            f'<text x="{_n(x + 3)}" y="{_n(plot.top + 10)}" font-size="10" fill="{TEXT}" '
            f'stroke="#ffffff" stroke-width="3" paint-order="stroke">'
            f"{esc(_clip_label(label, 20))}</text></g>"
        )
    parts.append("</g>")
    return parts


def _alerts(plot: _Plot, xs: _Scale, alerts: Sequence[Marker]) -> list[str]:
    """Alert notifications: solid violet verticals, labelled under the phase labels.

    Notifications often come in bursts (a group, then its repeats), so labels stack
    downwards in rows like the fault labels; past three rows a label is left out (the
    line's tooltip still names it).
    """
    parts = ['<g class="alerts">']
    row_ends: list[float] = []
    for at, label in sorted(alerts):
        if not (math.isfinite(at) and xs.contains(at)):
            continue
        x = xs(at)
        parts.append(
            f"<g><title>{esc(f'alert notification: {label} at {at:.1f} s')}</title>"
            f'<line x1="{_n(x)}" x2="{_n(x)}" y1="{_n(plot.top)}" y2="{_n(plot.y1)}" '
            f'stroke="{ALERT_STROKE}" stroke-width="1.5"/>'
        )
        text = _clip_label(label, min(28, int((plot.x1 - x - 3) // (_CHAR_W * 0.9))))
        row = next((i for i, end in enumerate(row_ends) if end <= x), len(row_ends))
        if text and row < 3:
            right = x + 3 + len(text) * _CHAR_W * 0.9 + 6
            if row < len(row_ends):
                row_ends[row] = right
            else:
                row_ends.append(right)
            parts.append(
                f'<text x="{_n(x + 3)}" y="{_n(plot.top + 22 + row * 12)}" font-size="10" '
                f'fill="{ALERT_STROKE}" stroke="#ffffff" stroke-width="3" '
                f'paint-order="stroke">{esc(text)}</text>'
            )
        parts.append("</g>")
    parts.append("</g>")
    return parts


def _message(plot: _Plot, text: str) -> str:
    return (
        f'<text class="no-data" x="{_n(plot.left + plot.w / 2)}" y="{_n(plot.top + plot.h / 2)}" '
        f'text-anchor="middle" font-size="13" fill="{MUTED}">{esc(text)}</text>'
    )


def _empty(title: str, width: int, height: int, kind: str, left: float, text: str) -> str:
    parts, plot = _top_area(title, [], width, height, kind, left)
    parts.append(
        f'<rect x="{_n(plot.left)}" y="{_n(plot.top)}" width="{_n(plot.w)}" '
        f'height="{_n(plot.h)}" fill="none" stroke="{GRID}"/>'
    )
    parts.append(_message(plot, text))
    parts.append("</svg>")
    return "".join(parts)


# --- line / area chart ------------------------------------------------------------------


def _segments(points: Sequence[Point], xs: _Scale) -> list[list[tuple[float, float]]]:
    """Split a series at missing values (None, NaN, off-axis) so gaps stay gaps."""
    segments: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: p[0]):
        if y is None or not math.isfinite(y) or not math.isfinite(x) or not xs.contains(x):
            if current:
                segments.append(current)
            current = []
            continue
        current.append((x, y))
    if current:
        segments.append(current)
    return segments


def line_chart(
    title: str,
    series: Mapping[str, Sequence[Point]],
    unit: str = "",
    shaded: Sequence[Shade] = (),
    markers: Sequence[Marker] = (),
    width: int = 720,
    height: int = 220,
    *,
    x_range: tuple[float, float] | None = None,
    area: bool = False,
    x_label: str = "time (s)",
    left: float = 56,
    alerts: Sequence[Marker] = (),
) -> str:
    """A multi-series line chart (optionally filled as areas) with fault bands and markers.

    Values of None (or NaN) break the line; a point with no neighbour is drawn as a dot.
    """
    ys_all = [y for pts in series.values() for _, y in pts if _finite(y)]
    domain = _x_domain((x for pts in series.values() for x, _ in pts), x_range)
    if not ys_all or domain is None:
        return _empty(title, width, height, "line", left, "no data")
    legend = [(name, PALETTE[i % len(PALETTE)]) for i, name in enumerate(series)]
    parts, plot = _top_area(title, legend if len(series) > 1 else [], width, height, "line", left)
    lo, hi = _value_domain(y for y in ys_all if y is not None)
    yticks = y_ticks(lo, hi)
    xs = _Scale(domain[0], domain[1], plot.left, plot.x1)
    ys = _Scale(yticks[0], yticks[-1], plot.y1, plot.top)
    parts += _shades(plot, xs, shaded)
    parts += _axes(plot, xs, ys, yticks, unit, x_label)
    base = ys(min(max(0.0, yticks[0]), yticks[-1]))
    for i, (name, points) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        parts.append(f'<g class="series"><title>{esc(name)}</title>')
        for seg in _segments(points, xs):
            coords = [(xs(x), ys(y)) for x, y in seg]
            if len(coords) == 1:
                cx, cy = coords[0]
                parts.append(f'<circle cx="{_n(cx)}" cy="{_n(cy)}" r="2.5" fill="{color}"/>')
                continue
            path = " ".join(f"{_n(x)},{_n(y)}" for x, y in coords)
            if area:
                poly = f"{_n(coords[0][0])},{_n(base)} {path} {_n(coords[-1][0])},{_n(base)}"
                parts.append(f'<polygon points="{poly}" fill="{color}" fill-opacity="0.15"/>')
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.75" '
                f'stroke-linejoin="round" stroke-linecap="round"/>'
            )
        parts.append("</g>")
    parts += _shade_labels(plot, xs, shaded)
    parts += _markers(plot, xs, markers)
    parts += _alerts(plot, xs, alerts)
    parts.append("</svg>")
    return "".join(parts)


# --- stacked bars -----------------------------------------------------------------------


def _bar_width(xs: Sequence[float]) -> float:
    distinct = sorted(set(xs))
    gaps = [b - a for a, b in pairwise(distinct) if b > a]
    return min(gaps) if gaps else 1.0


def stacked_bar_chart(
    title: str,
    bars: Sequence[tuple[float, Mapping[str, float]]],
    unit: str = "",
    shaded: Sequence[Shade] = (),
    markers: Sequence[Marker] = (),
    width: int = 720,
    height: int = 220,
    *,
    bar_width: float | None = None,
    x_range: tuple[float, float] | None = None,
    x_label: str = "time (s)",
    empty_text: str = "none",
    left: float = 56,
    alerts: Sequence[Marker] = (),
) -> str:
    """Stacked bars over time, e.g. errors by class per bucket; a bar spans [x, x + width)."""
    xs_all = [x for x, _ in bars if math.isfinite(x)]
    bw = bar_width if bar_width and bar_width > 0 else _bar_width(xs_all)
    domain = _x_domain(xs_all, x_range, extra=bw)
    if not xs_all or domain is None:
        return _empty(title, width, height, "bars", left, "no data")
    totals: dict[str, float] = {}
    for _, values in bars:
        for name, v in values.items():
            if _finite(v) and v > 0:
                totals[name] = totals.get(name, 0.0) + v
    # Biggest class at the bottom and first in the legend; colours follow that order.
    classes = sorted(totals, key=lambda k: (-totals[k], k))
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(classes)}
    parts, plot = _top_area(title, [(c, colors[c]) for c in classes], width, height, "bars", left)
    stack_max = max(
        (sum(v for v in vals.values() if _finite(v) and v > 0) for _, vals in bars), default=0.0
    )
    yticks = y_ticks(*_value_domain([stack_max]))
    xs = _Scale(domain[0], domain[1], plot.left, plot.x1)
    ys = _Scale(yticks[0], yticks[-1], plot.y1, plot.top)
    parts += _shades(plot, xs, shaded)
    parts += _axes(plot, xs, ys, yticks, unit, x_label)
    parts.append('<g class="bars">')
    for x, values in bars:
        lo, hi = max(x, xs.d0), min(x + bw, xs.d1)
        if not math.isfinite(x) or hi <= lo:
            continue
        x0 = xs(lo)
        w = max(xs(hi) - x0 - 1.0, 1.0)  # 1 px gap between neighbouring buckets
        acc = 0.0
        for name in classes:
            count = values.get(name)
            if count is None or not math.isfinite(count) or count <= 0:
                continue
            y_top, y_bottom = ys(acc + count), ys(acc)
            acc += count
            parts.append(
                f'<rect x="{_n(x0)}" y="{_n(y_top)}" width="{_n(w)}" '
                f'height="{_n(max(y_bottom - y_top, 0.5))}" fill="{colors[name]}">'
                f"<title>{esc(f'{x:.1f} s: {name} {count:g}')}</title></rect>"
            )
    parts.append("</g>")
    if not classes:
        parts.append(_message(plot, empty_text))
    parts += _shade_labels(plot, xs, shaded)
    parts += _markers(plot, xs, markers)
    parts += _alerts(plot, xs, alerts)
    parts.append("</svg>")
    return "".join(parts)


# --- timeline ---------------------------------------------------------------------------


class Span(NamedTuple):
    """One bar on a timeline lane; `end=None` means still open when the run ended."""

    start: float
    end: float | None
    label: str
    tone: str = "phase"


# fill, stroke, dash pattern per tone
_TONES: dict[str, tuple[str, str, str]] = {
    "phase": ("#dbeafe", "#2563eb", ""),
    "phase-incomplete": ("#f3f4f6", "#6b7280", "4 3"),
    "fault": ("#ffedd5", "#ea580c", ""),
    "fault-open": ("#fee2e2", "#dc2626", "4 3"),
    "fault-error": ("#fecaca", "#b91c1c", ""),
}


def _span_parts(span: Span, xs: _Scale, y: float, bar_h: float, last: bool) -> list[str]:
    end = span.end if span.end is not None else xs.d1
    lo, hi = max(span.start, xs.d0), min(end, xs.d1)
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        return []
    x0, w = xs(lo), max(xs(hi) - xs(lo), 2.0)
    fill, stroke, dash = _TONES.get(span.tone, _TONES["phase"])
    dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
    end_text = "still active at the end" if span.end is None else f"{span.end:.1f} s"
    parts = [
        f"<g><title>{esc(f'{span.label}: {span.start:.1f} s to {end_text}')}</title>"
        f'<rect x="{_n(x0)}" y="{_n(y)}" width="{_n(w)}" height="{_n(bar_h)}" rx="3" '
        f'fill="{fill}" stroke="{stroke}"{dash_attr}/>'
    ]
    char_w = _CHAR_W * 0.9  # font-size 10
    text_x, room = x0 + 4, w - 8
    # A short bar that is last on its lane can carry its label to its right instead.
    outside = xs.r1 - (x0 + w) - 6
    if last and len(span.label) * char_w > room and outside > room:
        text_x, room = x0 + w + 4, outside
    text = _clip_label(span.label, int(room // char_w))
    if text:
        parts.append(
            f'<text x="{_n(text_x)}" y="{_n(y + bar_h - 4)}" font-size="10" fill="{TEXT}">'
            f"{esc(text)}</text>"
        )
    parts.append("</g>")
    return parts


def timeline_chart(
    title: str,
    lanes: Sequence[tuple[str, Sequence[Span]]],
    x_range: tuple[float, float] | None = None,
    width: int = 720,
    *,
    markers: Sequence[Marker] = (),
    x_label: str = "time (s)",
    left: float = 120,
    alerts: Sequence[Marker] = (),
) -> str:
    """Phases and faults as bars on labelled lanes over the shared time axis."""
    lane_h = 22
    height = int(52 + max(len(lanes), 1) * lane_h + 34)
    points = [s.start for _, spans in lanes for s in spans] + [
        s.end for _, spans in lanes for s in spans if s.end is not None
    ]
    domain = _x_domain(points, x_range)
    if not lanes or domain is None:
        return _empty(title, width, height, "timeline", left, "no phases or faults")
    parts, plot = _top_area(title, [], width, height, "timeline", left)
    xs = _Scale(domain[0], domain[1], plot.left, plot.x1)
    parts += _axes(plot, xs, _Scale(0, 1, plot.y1, plot.top), [], "", x_label)
    for row, (lane, spans) in enumerate(lanes):
        y = plot.top + row * lane_h + 3
        parts.append(
            f'<text x="{_n(plot.left - 6)}" y="{_n(y + 12)}" text-anchor="end" fill="{TEXT}">'
            f"{esc(_clip_label(lane, int((plot.left - 12) // _CHAR_W)))}</text>"
        )
        ordered = sorted(spans, key=lambda sp: sp.start)
        for k, span in enumerate(ordered):
            parts += _span_parts(span, xs, y, lane_h - 6, k == len(ordered) - 1)
    parts += _markers(plot, xs, markers)
    parts += _alerts(plot, xs, alerts)
    parts.append("</svg>")
    return "".join(parts)
