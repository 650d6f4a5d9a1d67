"""Reporters: files written, JUnit counts, HTML self-contained and escaped, charts robust."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from llmdrill.model.result import (
    CheckResult,
    ClientPoint,
    FaultResult,
    PhaseResult,
    RequestStats,
    RunResult,
    ScenarioInfo,
    Series,
    TargetInfo,
    Window,
)
from llmdrill.report import (
    load_result,
    render_html,
    render_markdown,
    write_reports,
    write_suite_index,
    write_suite_junit,
)
from llmdrill.report.charts import Span, line_chart, stacked_bar_chart, timeline_chart
from llmdrill.report.figures import fault_windows, x_range
from llmdrill.report.html import MAX_ITEMS, prune
from llmdrill.report.junit import junit_xml
from llmdrill.report.markdown import escape

pytestmark = pytest.mark.unit

T0 = 1_717_000_000.0
BASE_URL = "http://127.0.0.1:8000"
HOSTILE = "<img src=x onerror=alert(1)>"


def _check(name: str, status: str = "passed", phase: str = "fault", **kw: object) -> CheckResult:
    data: dict[str, object] = {
        "name": name,
        "kind": "slo",
        "phase": phase,
        "status": status,
        "summary": f"{name}: p95 TTFT 812.0 ms vs at most 1000 ms",
        "observed": {"ttft_p95_ms": 812.0},
        "expected": {"ttft_p95_ms": {"max": 1000}},
        "window": Window(phase=phase, start=T0 + 10, end=T0 + 40),
        "evidence": {"samples": list(range(120)), "worst": [{"id": "r1", "ttft_s": 1.2}]},
    }
    data.update(kw)
    return CheckResult.model_validate(data)


def _series() -> Series:
    client = [
        ClientPoint(
            t=float(t),
            requests=4,
            ttft_p95_s=None if t == 15 else 0.2 + (0.5 if 10 <= t < 20 else 0.0),
            tokens_per_s=120.0 if t < 10 else 60.0,
            errors={"timeout": 1, "http_5xx": 2} if 12 <= t < 18 else {},
        )
        for t in range(30)
    ]
    engine = {
        "running": [(float(t), float(t % 5)) for t in range(30)],
        "kv_cache_usage": [(float(t), 0.42) for t in range(30)],
    }
    return Series(t0=T0, bucket_s=1.0, client=client, engine=engine)


def _stats() -> dict[str, RequestStats]:
    return {
        "baseline": RequestStats(
            requests=40, succeeded=40, error_rate=0.0, ttft_p50_s=0.15, ttft_p95_s=0.2
        ),
        "fault": RequestStats(
            requests=40,
            succeeded=22,
            failed=18,
            error_rate=0.45,
            errors_by_class={"timeout": 6, "http_5xx": 12},
            ttft_p50_s=0.5,
            ttft_p95_s=0.7123,
            ttft_p99_s=0.9,
            tokens_per_s=60.0,
            retried=3,
        ),
        "overall": RequestStats(requests=80, succeeded=62, failed=18, error_rate=0.225),
    }


def _result(
    status: str = "passed", checks: list[CheckResult] | None = None, **kw: object
) -> RunResult:
    data: dict[str, object] = {
        "run_id": "run-20240529-0001",
        "scenario": ScenarioInfo(
            name="upstream-latency",
            file="scenarios/upstream-latency.yaml",
            description="Adds 500 ms latency between client and server.",
            tags=["latency", "smoke"],
        ),
        "status": status,
        "started_at": T0,
        "ended_at": T0 + 30,
        "target": TargetInfo(base_url=BASE_URL, model="tiny-gpt2", engine_version="vllm 0.8.1"),
        "versions": {"llmdrill": "0.1.0", "vllm": "0.8.1"},
        "phases": [
            PhaseResult(
                name="baseline",
                planned_start=T0,
                planned_end=T0 + 10,
                start=T0,
                end=T0 + 10,
                completed=True,
            ),
            PhaseResult(
                name="fault",
                planned_start=T0 + 10,
                planned_end=T0 + 20,
                start=T0 + 10,
                end=T0 + 20,
                faults=["latency"],
                completed=True,
            ),
            PhaseResult(
                name="recovery",
                planned_start=T0 + 20,
                planned_end=T0 + 30,
                start=T0 + 20,
                end=T0 + 30,
                completed=True,
            ),
        ],
        "faults": [
            FaultResult(
                name="latency",
                backend="toxiproxy",
                kind="latency",
                params={"latency_ms": 500},
                applied_at=T0 + 10.2,
                reverted_at=T0 + 20.1,
            )
        ],
        "checks": checks if checks is not None else [_check("ttft_slo"), _check("recovers")],
        "stats": _stats(),
        "series": _series(),
    }
    data.update(kw)
    return RunResult.model_validate(data)


def passing() -> RunResult:
    return _result()


def failing() -> RunResult:
    bad = _check(
        "error_budget",
        "failed",
        summary="error rate 45.00 % | above the 5 % budget",
        observed={"error_rate": 0.45},
        expected={"error_rate": {"max": 0.05}},
    )
    return _result("failed", [_check("ttft_slo"), bad, _check("later", "skipped")])


def aborted() -> RunResult:
    # The run stopped while the partition was active: it was never reverted.
    partition = FaultResult(
        name="partition", backend="toxiproxy", kind="timeout", applied_at=T0 + 11
    )
    kill = FaultResult(
        name="kill-engine",
        backend="docker",
        kind="kill",
        applied_at=T0 + 12,
        reverted_at=T0 + 14,
        revert_error="container did not restart",
    )
    return _result(
        "aborted",
        [_check("ttft_slo", "error", summary="no samples in window")],
        abort_reason="target unreachable for 30 s",
        ended_at=T0 + 25,
        faults=[partition, kill],
    )


def minimal() -> RunResult:
    return _result(
        "error",
        [],
        abort_reason="could not start load",
        series=None,
        stats={},
        phases=[],
        faults=[],
        versions={},
    )


ALL = [passing, failing, aborted, minimal]


# --- files ------------------------------------------------------------------------------


@pytest.mark.parametrize("make", ALL)
def test_write_reports_writes_all_files(make: Callable[[], RunResult], tmp_path: Path) -> None:
    result = make()
    paths = write_reports(result, tmp_path / "out")
    assert set(paths) == {"json", "junit", "html", "markdown"}
    assert {p.name for p in paths.values()} == {
        "result.json",
        "junit.xml",
        "report.html",
        "summary.md",
    }
    for path in paths.values():
        assert path.is_file() and path.stat().st_size > 0
    loaded = load_result(paths["json"])
    assert loaded.run_id == result.run_id
    assert loaded.files["html"] == "report.html"
    assert result.files == {}  # the caller's object is not mutated
    assert loaded.model_dump(exclude={"files"}) == result.model_dump(exclude={"files"})


def test_load_result_rejects_other_schema(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text(passing().to_json().replace("llmdrill.result/v1", "llmdrill.result/v9"))
    with pytest.raises(ValueError, match="schema"):
        load_result(path)


# --- junit ------------------------------------------------------------------------------


def _suite(result: RunResult) -> ET.Element:
    root = ET.fromstring(junit_xml([result]).encode())
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    return suites[0]


def test_junit_passing_counts() -> None:
    suite = _suite(passing())
    assert suite.get("name") == "upstream-latency"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "0", "0")
    assert float(suite.get("time", "0")) == pytest.approx(30.0)
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["ttft_slo", "recovers"]
    assert {c.get("classname") for c in cases} == {"llmdrill.upstream-latency"}
    assert float(cases[0].get("time", "0")) == pytest.approx(30.0)


def test_junit_failing_has_failure_and_skipped() -> None:
    suite = _suite(failing())
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    failure = suite.find("testcase[@name='error_budget']/failure")
    assert failure is not None
    assert failure.get("message") == "error rate 45.00 % | above the 5 % budget"
    assert failure.text is not None
    assert "observed" in failure.text and "expected" in failure.text
    assert "window: phase fault: +10.0 s → +40.0 s" in failure.text
    assert suite.find("testcase[@name='later']/skipped") is not None


def test_junit_aborted_adds_run_error() -> None:
    suite = _suite(aborted())
    assert (suite.get("tests"), suite.get("errors"), suite.get("failures")) == ("2", "2", "0")
    run_error = suite.find("testcase[@name='run']/error")
    assert run_error is not None
    assert run_error.get("message") == "target unreachable for 30 s"


def test_junit_strips_xml_illegal_characters() -> None:
    result = _result("failed", [_check("bad\x00name", "failed", summary="nul \x00 \x1b byte")])
    suite = _suite(result)
    assert suite.find("testcase[@name='badname']/failure") is not None


def test_suite_junit_one_testsuite_per_scenario(tmp_path: Path) -> None:
    path = write_suite_junit([passing(), failing(), aborted()], tmp_path / "suite.xml")
    root = ET.parse(path).getroot()
    assert len(root.findall("testsuite")) == 3
    assert root.get("tests") == "7" and root.get("failures") == "1" and root.get("errors") == "2"


# --- html -------------------------------------------------------------------------------

CSP = (
    '<meta http-equiv="Content-Security-Policy" '
    "content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">"
)
_EXTERNAL = re.compile(r"""(?:src|href|xlink:href)\s*=\s*["']?\s*(?:[a-z]+:)?//""", re.I)


def _assert_self_contained(page: str) -> None:
    assert CSP in page
    assert "<script" not in page.lower()
    assert not _EXTERNAL.search(page)
    assert "url(" not in page and "@import" not in page
    # The target's base URL is the only URL the report may mention (as text).
    assert "http://" not in page.replace(BASE_URL, "") and "https://" not in page


@pytest.mark.parametrize("make", ALL)
def test_html_self_contained(make: Callable[[], RunResult]) -> None:
    page = render_html(make())
    _assert_self_contained(page)
    assert page.lstrip().startswith("<!DOCTYPE html>")


def test_html_escapes_hostile_text() -> None:
    result = _result(
        "failed",
        [_check(HOSTILE, "failed", summary=HOSTILE, evidence={HOSTILE: [HOSTILE]})],
        scenario=ScenarioInfo(name="x", file="x.yaml", description=HOSTILE, tags=[HOSTILE]),
        faults=[FaultResult(name=HOSTILE, backend="b", kind=HOSTILE, applied_at=T0 + 1)],
        abort_reason=HOSTILE,
        versions={HOSTILE: HOSTILE},
    )
    page = render_html(result)
    assert "<img" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    _assert_self_contained(page)


def test_html_banner_and_failing_check() -> None:
    page = render_html(failing())
    banner = page[page.index('<header class="banner') : page.index("</header>")]
    assert "FAILED" in banner and "error_budget" in banner
    assert "s-failed" in banner
    assert "PASSED" in render_html(passing())


def test_html_aborted_shows_reason_and_unreverted_fault() -> None:
    page = render_html(aborted())
    assert "ABORTED" in page and "target unreachable for 30 s" in page
    assert "container did not restart" in page
    assert "timeout: not reverted" in page  # timeline label of a fault active at the end
    assert "kill: revert failed" in page
    assert "14.0 s (to the end of the run)" in page  # applied at +11 s, run ended at +25 s
    assert page.count('class="bad-row"') == 3  # two fault rows plus the revert error row


def test_html_charts_and_stats() -> None:
    page = render_html(passing())
    assert page.count("<svg") == 1 + 4 + 2  # timeline, 4 client charts, 2 engine gauges
    for title in ("TTFT p95", "Output tokens/s", "Request rate", "Errors by class"):
        assert title in page
    assert "Engine: kv_cache_usage" in page and "Engine: running" in page
    assert "712.3" in page  # fault-phase TTFT p95 in ms, one decimal
    assert "45.0 %" in page and "timeout: 6" in page
    assert "vllm 0.8.1" in page
    # long evidence lists are cut to MAX_ITEMS
    assert f"… {120 - MAX_ITEMS} more (120 in all)" in page


def test_html_minimal_run() -> None:
    page = render_html(minimal())
    assert "ERROR" in page and "could not start load" in page
    assert "No time series was recorded" in page
    assert "No request statistics" in page
    assert "No phases were recorded." in page and "<svg" not in page


def test_prune_truncates_and_nests() -> None:
    pruned = prune({"a": list(range(200)), "b": [{"c": 1}] * 60, "d": {}, "e": None})
    assert isinstance(pruned, dict)
    assert isinstance(pruned["a"], str) and "150 more" in pruned["a"]
    assert isinstance(pruned["b"], list) and len(pruned["b"]) == MAX_ITEMS + 1
    assert pruned["d"] == "—" and pruned["e"] == "—"


def test_suite_index_links_reports(tmp_path: Path) -> None:
    entries = []
    for make in (passing, failing):
        result = make()
        run_dir = tmp_path / "runs" / f"{result.status} run"
        write_reports(result, run_dir)
        entries.append((result, run_dir))
    index = write_suite_index(entries, tmp_path)
    page = index.read_text(encoding="utf-8")
    _assert_self_contained(page)
    assert 'href="runs/passed%20run/report.html"' in page
    assert 'href="runs/failed%20run/report.html"' in page
    assert "FAILED" in page  # the suite verdict is the worst run


# --- markdown ---------------------------------------------------------------------------


def test_markdown_tables() -> None:
    md = render_markdown(failing())
    assert md.startswith("## llmdrill FAILED: upstream-latency")
    assert "| Status | Check | Phase | Summary |" in md
    assert "| FAILED | error\\_budget | fault | error rate 45.00 % \\| above the 5 % budget |" in md
    assert "| fault | 40 | 45.0 % | 500.0 | 712.3 | 60.0 |" in md


def test_markdown_aborted_and_empty() -> None:
    md = render_markdown(aborted())
    assert "ABORTED" in md and "target unreachable for 30 s" in md
    md = render_markdown(minimal())
    assert "No checks were evaluated." in md and "No request statistics" in md


def test_markdown_escape() -> None:
    assert escape("a|b\nc <b>") == "a\\|b c &lt;b&gt;"


# --- charts -----------------------------------------------------------------------------


def _parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # every chart is well-formed XML on its own
    assert root.tag == "svg"
    return root


def test_chart_empty_series() -> None:
    empties: list[dict[str, list[tuple[float, float | None]]]] = [
        {},
        {"a": []},
        {"a": [(0.0, None), (1.0, None)]},
    ]
    for series in empties:
        svg = line_chart("Empty", series, "ms", [], [])
        assert "no data" in svg
        _parse(svg)


def test_chart_single_point_and_flat() -> None:
    root = _parse(line_chart("One", {"a": [(5.0, 3.0)]}, "ms", [], []))
    assert root.find("g[@class='series']/circle") is not None
    flat = _parse(line_chart("Flat", {"a": [(0.0, 2.0), (1.0, 2.0), (2.0, 2.0)]}, "", [], []))
    assert flat.find("g[@class='series']/polyline") is not None
    zero = line_chart("Zero", {"a": [(0.0, 0.0), (1.0, 0.0)]}, "", [], [])
    _parse(zero)
    assert "nan" not in zero.lower() and "inf" not in zero.lower()


def test_chart_gaps_split_lines() -> None:
    pts: list[tuple[float, float | None]] = [(0, 1), (1, 2), (2, None), (3, 2), (4, 3), (5, None)]
    root = _parse(line_chart("Gaps", {"a": pts, "b": [(0, float("nan")), (1, 1)]}, "", [], []))
    assert len(root.findall(".//polyline")) == 2
    assert len(root.findall(".//circle")) == 1


def test_chart_shades_markers_and_escaping() -> None:
    svg = line_chart(
        HOSTILE,
        {HOSTILE: [(0.0, 1.0), (10.0, 2.0)], "b": [(0.0, 2.0), (10.0, 1.0)]},
        "ms",
        [(2.0, 6.0, HOSTILE), (8.0, 99.0, "open fault")],
        [(0.0, "baseline"), (5.0, HOSTILE), (50.0, "off axis")],
        x_range=(0.0, 10.0),
    )
    assert "<img" not in svg
    root = _parse(svg)
    assert len(root.findall("g[@class='shades']/g")) == 2
    assert len(root.findall("g[@class='markers']/g")) == 2


def test_stacked_bars() -> None:
    bars = [(0.0, {"timeout": 1.0}), (1.0, {"timeout": 2.0, "http_5xx": 3.0}), (2.0, {})]
    root = _parse(stacked_bar_chart("Errors", bars, "errors", [(0.5, 1.5, "f")], [(1.0, "p")]))
    assert len(root.findall("g[@class='bars']/rect")) == 3
    assert "no errors" in stacked_bar_chart("E", [(0.0, {}), (1.0, {})], empty_text="no errors")
    assert "no data" in stacked_bar_chart("E", [])
    _parse(stacked_bar_chart("One", [(3.0, {"x": 1.0})]))


def test_timeline() -> None:
    lanes = [
        ("phases", [Span(0, 10, "baseline"), Span(10, 20, "fault", "phase-incomplete")]),
        (HOSTILE, [Span(12, None, "kill: not reverted", "fault-open")]),
        ("never applied", []),
    ]
    svg = timeline_chart("Timeline", lanes, (0.0, 25.0))
    assert "<img" not in svg
    assert len(_parse(svg).findall(".//rect")) == 3
    assert "no phases or faults" in timeline_chart("Timeline", [])


def test_fault_windows_extend_unreverted_faults_to_the_end() -> None:
    result = aborted()
    assert fault_windows(result) == [(11.0, 25.0, "partition"), (12.0, 14.0, "kill-engine")]
    assert x_range(result) == (0.0, 30.0)  # the series runs past ended_at: keep it visible


def test_engine_charts_mark_events_and_zoom_around_them() -> None:
    from llmdrill.model.result import RunResult, ScenarioInfo, Series, TargetInfo
    from llmdrill.report.html import render_html

    series = Series(
        t0=1000.0,
        engine={"running": [(i / 5, 30.0 if 9.5 < i / 5 < 10.2 else 0.0) for i in range(100)],
                "kv_cache_usage": [(i / 5, 0.4 if 9.5 < i / 5 < 10.2 else 0.0)
                                   for i in range(100)]},
        markers=[(10.0, "storm wave 1")],
    )
    result = RunResult(run_id="r", scenario=ScenarioInfo(name="s", file="f"), status="passed",
                       started_at=1000.0, ended_at=1020.0,
                       target=TargetInfo(base_url="http://127.0.0.1:1", model="m"),
                       series=series)
    html = render_html(result)
    assert "Around storm wave 1" in html
    assert html.count("storm wave 1") >= 3  # on both engine charts and its own zoom


def test_html_says_how_a_when_busy_wait_went() -> None:
    result = passing()
    result.faults[0].busy = {"met": True, "running": 3.0, "min_running": 3, "waited_s": 0.646}
    page = render_html(result)
    assert "waited (when_busy): applied once its engine served requests: 3 running after " \
           "0.6s" in page
    result.faults[0].busy = {"met": False, "running": 0.0, "min_running": 2, "waited_s": 30.0}
    assert "its engine never served 2 requests (0 running after 30.0s): applied anyway" in \
        render_html(result)
