"""A generated report and the suite index, opened from disk in a real headless Chromium:
no console error, no network request, every chart drawn, every <details> opens, and a
screenshot of each page kept as a test artifact (LLMDRILL_TEST_ARTIFACTS, default
test-artifacts/ in the repository).

Needs Debian's chromium (`make system-deps` installs it); without it the test fails, it
does not skip: a CI that silently stops looking at its reports has lost the check.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from llmdrill.model.result import RunResult
from llmdrill.report import write_reports, write_suite_index
from llmdrill.report.figures import charts
from tests.browser.cdp import Chromium
from tests.unit.test_reports import _check, _result, _series

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
ALERTS = [(12.5, "HighErrorRate firing"), (24.0, "HighErrorRate resolved")]

# Per chart: its data marks (a line's points, a bar, a timeline span) and its size drawn.
CHARTS_JS = """
[...document.querySelectorAll('svg.chart')].map(svg => {
  const box = svg.getBoundingClientRect();
  const lines = [...svg.querySelectorAll('g.series polyline')]
    .filter(p => (p.getAttribute('points') || '').trim().length > 0
                 && p.getTotalLength() > 0).length;
  return {
    kind: svg.getAttribute('class'),
    title: svg.querySelector('title') ? svg.querySelector('title').textContent : '',
    width: box.width, height: box.height,
    lines: lines,
    bars: svg.querySelectorAll('g.bars rect').length,
    spans: [...svg.querySelectorAll('rect[rx="3"]')].filter(r => r.getBBox().width > 0).length,
    alerts: svg.querySelectorAll('g.alerts line').length,
  };
})
"""

# Each <details>: its height closed, then open (layout, not only the attribute).
DETAILS_JS = """
[...document.querySelectorAll('details')].map(d => {
  d.open = false;
  const closed = d.getBoundingClientRect().height;
  d.open = true;
  const opened = d.getBoundingClientRect().height;
  return {closed: closed, opened: opened};
})
"""


def _chromium() -> str:
    found = os.environ.get("LLMDRILL_CHROMIUM") or shutil.which("chromium")
    if not found:
        pytest.fail("Debian's chromium is not installed (no `chromium` on PATH): run "
                    "`make system-deps` or `apt-get install --no-install-recommends chromium`; "
                    "the report's browser test cannot run without it", pytrace=False)
    return found


def _artifacts() -> Path:
    folder = Path(os.environ.get("LLMDRILL_TEST_ARTIFACTS") or REPO / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _drill() -> RunResult:
    """A failed drill with every part the report draws: charts, engine gauges, a fault,
    failed, inconclusive and passed checks (details), alert notifications."""
    series = _series().model_copy(update={"alerts": ALERTS})
    checks = [
        _check("ttft", "failed"),
        _check("queue", "inconclusive", kind="queue_bounded"),
        _check("errors", "passed"),
    ]
    return _result("failed", checks, series=series)


def _passed() -> RunResult:
    return _result("passed", [_check("ttft")], run_id="run-20240529-0002")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Any:
    binary = _chromium()
    with Chromium(binary, tmp_path_factory.mktemp("chromium") / "profile") as chromium:
        yield chromium


def _assert_quiet(chromium: Chromium, url: str) -> None:
    assert chromium.log.errors == [], f"{url}: console errors {chromium.log.errors}"
    others = [u for u in chromium.log.requests if u != url]
    assert others == [], f"{url}: requests other than the page itself: {others}"


def test_the_report_opens_offline_with_every_chart_drawn(browser: Chromium,
                                                         tmp_path: Path) -> None:
    result = _drill()
    paths = write_reports(result, tmp_path / "run")
    url = paths["html"].resolve().as_uri()
    browser.open(url)

    assert browser.evaluate("document.title").startswith("FAILED: upstream-latency")
    drawn = browser.evaluate(CHARTS_JS)
    assert len(drawn) == 1 + len(charts(result)), drawn  # the timeline, then the charts
    for chart in drawn:
        assert chart["width"] > 100 and chart["height"] > 50, chart
        assert chart["alerts"] == len(ALERTS), chart
        if "chart-line" in chart["kind"]:
            assert chart["lines"] > 0, chart
        elif "chart-bars" in chart["kind"]:
            assert chart["bars"] > 0, chart
        else:
            assert "chart-timeline" in chart["kind"] and chart["spans"] > 0, chart

    hints = browser.evaluate("[...document.querySelectorAll('.hint')].map(h => h.innerText)")
    assert len(hints) == 2 and all(h.startswith("Where to look:") for h in hints), hints
    story = browser.evaluate("document.querySelector('p.story').innerText")
    assert "2 alert notifications arrived" in story

    details = browser.evaluate(DETAILS_JS)
    assert len(details) == len(result.checks)
    for one in details:
        assert one["opened"] > one["closed"] > 0, details

    shot = browser.screenshot(_artifacts() / "report.png")
    assert shot.stat().st_size > 10_000
    _assert_quiet(browser, url)


def test_the_suite_index_opens_offline_and_links_each_report(browser: Chromium,
                                                             tmp_path: Path) -> None:
    runs = [(r, tmp_path / r.run_id) for r in (_drill(), _passed())]
    for result, folder in runs:
        write_reports(result, folder)
    index = write_suite_index(runs, tmp_path)
    url = index.resolve().as_uri()
    browser.open(url)

    links = browser.evaluate("[...document.querySelectorAll('a')].map(a => a.href)")
    assert len(links) == len(runs)
    for link in links:
        assert link.startswith("file://")
        assert Path(link.removeprefix("file://")).is_file(), link
    badges = browser.evaluate("[...document.querySelectorAll('.badge')].map(b => b.innerText)")
    assert badges == ["FAILED", "PASSED"]

    shot = browser.screenshot(_artifacts() / "index.png")
    assert shot.stat().st_size > 5_000
    _assert_quiet(browser, url)


def test_the_index_history_draws_trends_and_the_regression(browser: Chromium,
                                                           tmp_path: Path) -> None:
    """Three recorded runs of one scenario, the last one slower: the history section draws
    a sparkline per figure, flags the regression, and links every past run's report."""
    from llmdrill.history.store import HistoryStore
    from llmdrill.history.view import scenario_trends
    from llmdrill.model.result import RequestStats

    out = tmp_path / "reports"
    runs = []
    with HistoryStore(out / "history.sqlite") as store:
        for i, ttft in enumerate((0.2, 0.21, 0.9)):
            result = _passed().model_copy(update={
                "run_id": f"run-{i}", "started_at": 1_700_000_000.0 + 3600 * i,
                "ended_at": 1_700_000_030.0 + 3600 * i,
                "stats": {"overall": RequestStats(requests=40, ttft_p95_s=ttft,
                                                  tokens_per_s=95.0 + i, error_rate=0.0)}})
            folder = out / result.run_id
            write_reports(result, folder)
            store.record(result, folder)
            runs.append((result, folder))
        trends = scenario_trends(store.runs(), out)
    index = write_suite_index(runs[-1:], out, trends)
    url = index.resolve().as_uri()
    browser.open(url)

    lines = browser.evaluate(
        "[...document.querySelectorAll('svg.spark polyline')]"
        ".map(p => p.getAttribute('points').split(' ').length)")
    assert lines == [3, 3, 3], lines  # TTFT, tokens/s, error rate: a point per run
    drawn = browser.evaluate(
        "[...document.querySelectorAll('svg.spark')].every(s => s.getBBox().width > 0)")
    assert drawn is True
    flagged = browser.evaluate("document.querySelector('ul.regressions').innerText")
    assert "REGRESSION" in flagged and "TTFT p95" in flagged
    links = browser.evaluate("[...document.querySelectorAll('p.verdicts a')].map(a => a.href)")
    assert len(links) == 3
    for link in links:
        assert Path(link.removeprefix("file://")).is_file(), link

    shot = browser.screenshot(_artifacts() / "index-history.png")
    assert shot.stat().st_size > 5_000
    _assert_quiet(browser, url)
