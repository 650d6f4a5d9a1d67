"""Reporters: turn one RunResult (never a re-run) into result.json, JUnit, HTML and Markdown."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from llmdrill.model.result import RESULT_SCHEMA, RunResult
from llmdrill.report.html import render_html, render_index
from llmdrill.report.junit import junit_xml, write_junit
from llmdrill.report.markdown import render_markdown

__all__ = [
    "load_result",
    "render_html",
    "render_markdown",
    "write_reports",
    "write_suite_index",
    "write_suite_junit",
]

# Kind -> file name inside the run's output directory.
REPORT_FILES: dict[str, str] = {
    "json": "result.json",
    "junit": "junit.xml",
    "html": "report.html",
    "markdown": "summary.md",
}


def _write(path: Path, text: str) -> Path:
    # Write then rename, so a CI step reading the directory never sees half a report.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def write_reports(result: RunResult, out_dir: Path) -> dict[str, Path]:
    """Write all four reports for one run into out_dir; returns their paths by kind.

    The written result.json lists the report files (relative to out_dir) in `files`; the
    caller's `result` object is left unchanged.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    recorded = result.model_copy(update={"files": {**result.files, **REPORT_FILES}})
    paths = {kind: out_dir / name for kind, name in REPORT_FILES.items()}
    _write(paths["json"], recorded.to_json())
    _write(paths["junit"], junit_xml([recorded]))
    _write(paths["html"], render_html(recorded))
    _write(paths["markdown"], render_markdown(recorded))
    return paths


def write_suite_junit(results: Sequence[RunResult], path: Path) -> Path:
    """One <testsuites> file with one <testsuite> per scenario run."""
    return write_junit(results, path)


def _href(target: Path, out_dir: Path) -> str:
    report = target if target.suffix == ".html" else target / REPORT_FILES["html"]
    try:
        rel = os.path.relpath(report.resolve(), out_dir.resolve())
    except ValueError:  # another drive on Windows: no relative path exists
        return report.resolve().as_uri()
    # quote() also encodes ':' so a file name can never turn into a URL scheme.
    return quote(Path(rel).as_posix())


def write_suite_index(results: Sequence[tuple[RunResult, Path]], out_dir: Path,
                      history: Sequence[Mapping[str, Any]] | None = None) -> Path:
    """index.html in out_dir linking each run's report; a Path may be the run's directory
    or its report.html. `history`: the trends of every recorded run (llmdrill.history)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = [(result, _href(path, out_dir)) for result, path in results]
    return _write(out_dir / "index.html", render_index(entries, history))


def load_result(path: Path) -> RunResult:
    """Read a result.json; refuses other schema versions rather than misreport them."""
    result = RunResult.model_validate_json(path.read_text(encoding="utf-8"))
    if result.schema_ != RESULT_SCHEMA:
        raise ValueError(f"{path}: schema {result.schema_!r} is not {RESULT_SCHEMA!r}")
    return result
