"""`llmdrill compare A B`: the key figures of two runs side by side, and which moved."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jinja2

from llmdrill.history.figures import FIGURES, key_figures
from llmdrill.history.store import HistoryError, HistoryStore
from llmdrill.history.trends import RELATIVE, changed, moved


@dataclass(frozen=True)
class RunFigures:
    label: str
    scenario: str
    status: str
    figures: dict[str, float]


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    unit: str
    a: float | None
    b: float | None
    moved: bool  # beyond noise, either way
    worse: bool  # beyond noise, the wrong way

    @property
    def change(self) -> str:
        if self.a is None or self.b is None:
            return "no data"
        if self.a == 0:
            return "n/a" if self.b == 0 else "new"
        return f"{(self.b - self.a) / abs(self.a) * 100:+.0f}%"


def resolve(ref: str, store_path: Path | None) -> RunFigures:
    """A run folder (or its result.json), else a run id in the history store."""
    from llmdrill.report import load_result

    path = Path(ref).expanduser()
    result_json = path / "result.json" if path.is_dir() else path
    if result_json.is_file():
        try:
            result = load_result(result_json)
        except (OSError, ValueError) as exc:
            raise HistoryError(f"{result_json}: cannot read the result ({exc})") from None
        return RunFigures(result.run_id, result.scenario.name, result.status,
                          key_figures(result))
    if store_path is None or not store_path.exists():
        raise HistoryError(f"'{ref}' is neither a run folder with a result.json nor a run "
                           f"in a history store (--history; none at {store_path})")
    with HistoryStore(store_path) as store:
        row = store.run(ref)
    if row is None:
        raise HistoryError(f"'{ref}' is neither a run folder with a result.json nor a run "
                           f"id in {store_path}")
    return RunFigures(row.run_id, row.scenario, row.status, row.figures)


def compare(a: RunFigures, b: RunFigures) -> list[Row]:
    rows = []
    for fig in FIGURES:
        va, vb = a.figures.get(fig.name), b.figures.get(fig.name)
        if va is None and vb is None:
            continue
        rows.append(Row(fig.name, fig.label, fig.unit, va, vb, changed(fig.name, va, vb),
                        moved(fig.name, va, vb)))
    return rows




def fmt(value: float | None, unit: str) -> str:
    return "no data" if value is None else f"{value:.3g}{unit}"


def render_html(a: RunFigures, b: RunFigures, rows: list[Row]) -> str:
    env = jinja2.Environment(loader=jinja2.PackageLoader("llmdrill.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    return env.get_template("compare.html.j2").render(a=a, b=b, rows=rows, fmt=fmt,
                                                      relative=round(RELATIVE * 100))
