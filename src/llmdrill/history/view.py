"""What the suite index shows of the history: per scenario, the verdicts over time, a
sparkline per key figure (inline SVG: the index stays one file with no scripts, like the
report), and the regressions of its last run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

from llmdrill.history.figures import FIGURES
from llmdrill.history.store import RunRow
from llmdrill.history.trends import Move, regressions

SHOWN_RUNS = 30
WIDTH, HEIGHT, PAD = 140, 30, 3


def sparkline(values: list[float | None], label: str, flagged: bool) -> Markup:
    """A small line of one figure over the runs, oldest left; the last point red when it
    is a regression. Missing values leave gaps."""
    points = [(i, v) for i, v in enumerate(values) if v is not None]
    title = escape(label)
    if not points:
        return Markup(f'<span class="muted" title="{title}">no data</span>')
    lo = min(v for _, v in points)
    hi = max(v for _, v in points)
    span = (hi - lo) or 1.0
    steps = max(len(values) - 1, 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        x = PAD + (WIDTH - 2 * PAD) * i / steps
        y = HEIGHT - PAD - (HEIGHT - 2 * PAD) * (v - lo) / span
        return round(x, 1), round(y, 1)

    coords = [xy(i, v) for i, v in points]
    line = " ".join(f"{x},{y}" for x, y in coords)
    last_x, last_y = coords[-1]
    color = "#c0392b" if flagged else "#2c3e50"
    return Markup(
        f'<svg class="spark" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="{title}"><title>{title}</title>'
        f'<polyline fill="none" stroke="#7f8c8d" stroke-width="1.5" points="{line}"/>'
        f'<circle cx="{last_x}" cy="{last_y}" r="3" fill="{color}"/></svg>')


def _href(report: str, out_dir: Path) -> str:
    target = Path(report) / "report.html"
    try:
        return Path(os.path.relpath(target, out_dir)).as_posix()
    except ValueError:
        return target.as_uri()


def scenario_trends(rows: list[RunRow], out_dir: Path) -> list[dict[str, Any]]:
    """The index's history section: one entry per scenario, most recently run first."""
    by_scenario: dict[str, list[RunRow]] = {}
    for row in rows:
        by_scenario.setdefault(row.scenario, []).append(row)
    sections = []
    for scenario, history in sorted(by_scenario.items(),
                                    key=lambda kv: -kv[1][-1].started_at):
        shown = history[-SHOWN_RUNS:]
        moves: list[Move] = regressions(history)
        flagged = {m.figure for m in moves}
        figures = []
        for fig in FIGURES:
            values = [r.figures.get(fig.name) for r in shown]
            if all(v is None for v in values):
                continue
            last = values[-1]
            figures.append({
                "label": fig.label, "unit": fig.unit, "flagged": fig.name in flagged,
                "last": "no data" if last is None else f"{last:.3g}{fig.unit}",
                "spark": sparkline(values, f"{fig.label} over the last {len(shown)} runs",
                                   fig.name in flagged)})
        sections.append({
            "scenario": scenario,
            "runs": len(history),
            "verdicts": [{"status": r.status, "run_id": r.run_id,
                          "href": _href(r.report, out_dir)} for r in shown],
            "figures": figures,
            "regressions": [m.sentence() for m in moves],
        })
    return sections
