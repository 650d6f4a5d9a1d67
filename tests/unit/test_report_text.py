"""The report people read: the drill in plain words, runbook hints under the checks that
did not pass, and alert notifications drawn on the charts."""

from __future__ import annotations

import re

import pytest

from llmdrill.model.records import Evidence
from llmdrill.model.result import FaultResult, PhaseResult, RequestStats, RunResult
from llmdrill.monitoring.webhook import notification_markers
from llmdrill.plugin import check_kinds
from llmdrill.report import render_html, render_markdown
from llmdrill.report.figures import charts, timeline
from llmdrill.report.narrative import MAX_ALERTS_NAMED, drill_story
from tests.unit.test_reports import T0, _check, _result, _series

pytestmark = pytest.mark.unit

SLO_HINT = check_kinds()["slo"].runbook.strip()


def _with_alerts(*alerts: tuple[float, str]) -> RunResult:
    series = _series().model_copy(update={"alerts": list(alerts)})
    return _result("failed", [_check("ttft", "failed")], series=series)


# --- the paragraph ----------------------------------------------------------------------


def test_the_story_tells_phases_faults_load_numbers_and_verdict() -> None:
    result = _result("failed", [_check("ttft", "failed"), _check("errors")])
    story = drill_story(result)
    assert story.startswith("Adds 500 ms latency between client and server. ")
    assert ("It ran 3 phases over 30.0 s: baseline (10.0 s), fault (10.0 s) and "
            "recovery (10.0 s).") in story
    assert "Fault latency (toxiproxy latency) was applied at 10.2 s and reverted 9.9 s later." \
        in story
    assert "Clients sent 80 requests: 62 succeeded and 18 failed" in story
    assert "at 4.0 requests/s on average (peak 4.0/s)" in story
    assert "fault: error rate 45.0 %, TTFT p95 712.3 ms" in story
    assert story.endswith("The drill failed: 1 of 2 checks passed, 1 failed; not met: ttft.")


def test_the_story_is_deterministic_and_shows_in_both_reports() -> None:
    result = _result("passed", [_check("ttft")])
    story = drill_story(result)
    assert story == drill_story(result.model_copy(deep=True))
    assert "The drill passed: 1 of 1 checks passed." in story
    assert f'<p class="story">{story}</p>' in render_html(result)
    assert story in render_markdown(result)


def test_the_story_says_what_went_wrong_with_faults_and_phases() -> None:
    phases = [
        PhaseResult(name="baseline", planned_start=T0, planned_end=T0 + 10, start=T0,
                    end=T0 + 10, completed=True),
        PhaseResult(name="fault", planned_start=T0 + 10, planned_end=T0 + 20, start=T0 + 10,
                    end=T0 + 13.5, completed=False),
        PhaseResult(name="recovery", planned_start=T0 + 20, planned_end=T0 + 30),
    ]
    faults = [
        FaultResult(name="kill", backend="docker", kind="kill", applied_at=T0 + 11,
                    effect="unknown"),
        FaultResult(name="slow", backend="toxiproxy", kind="latency", applied_at=T0 + 11,
                    reverted_at=None, revert_error="proxy gone", effect="missed"),
        FaultResult(name="later", backend="toxiproxy", kind="latency"),
    ]
    result = _result("aborted", [], phases=phases, faults=faults,
                     abort_reason="guardrail: error rate 90 % over 50 %", series=None,
                     stats={"overall": RequestStats()})
    story = drill_story(result)
    assert "fault (stopped after 3.5 s) and recovery (never started)" in story
    assert ("Fault kill (docker kill) was applied at 11.0 s and was still in place when the "
            "run ended; nothing showed whether it took effect.") in story
    assert "Fault slow (toxiproxy latency) was applied at 11.0 s, and its revert failed; " \
        "it had no observable effect." in story
    assert "Fault later (toxiproxy latency) was never applied." in story
    assert "No requests were recorded." in story
    assert story.endswith("The drill was aborted: 0 of 0 checks passed. "
                          "Reason: guardrail: error rate 90 % over 50 %.")


def test_the_story_names_the_checks_with_too_little_evidence() -> None:
    result = _result("inconclusive", [_check("ttft"), _check("queue", "inconclusive")])
    assert drill_story(result).endswith(
        "The drill was inconclusive: 1 of 2 checks passed, 1 inconclusive; too little "
        "evidence for queue.")


def test_the_story_holds_counts_and_timings_not_check_details() -> None:
    secret = "PROMPT-TEXT-never-shown"
    check = _check("ttft", "failed", evidence={"prompt": secret}, observed={"out": secret})
    assert secret not in drill_story(_result("failed", [check]))


def test_the_story_names_a_few_alerts_and_counts_the_rest() -> None:
    alerts = [(12.0 + i, f"A{i} firing") for i in range(MAX_ALERTS_NAMED + 2)]
    story = drill_story(_with_alerts(*alerts))
    assert f"{MAX_ALERTS_NAMED + 2} alert notifications arrived: A0 firing at 12.0 s" in story
    assert "and 2 more." in story


# --- runbook hints ----------------------------------------------------------------------


@pytest.mark.parametrize("status", ["failed", "error", "inconclusive"])
def test_a_check_that_did_not_pass_shows_its_kinds_hint(status: str) -> None:
    result = _result("failed", [_check("ttft", status)])
    html = render_html(result)
    assert '<div class="hint"><strong>Where to look:</strong>' in html
    assert "proxy_read_timeout" in html  # a part of the slo hint, HTML-escaped as a whole
    md = render_markdown(result)
    line = next(x for x in md.splitlines() if x.startswith("- **ttft** (slo): "))
    assert "proxy\\_read\\_timeout" in line
    assert "### Where to look" in md


@pytest.mark.parametrize("status", ["passed", "skipped"])
def test_a_passed_or_skipped_check_has_no_hint(status: str) -> None:
    result = _result("passed", [_check("ttft", status)])
    assert 'class="hint"' not in render_html(result)
    assert "Where to look" not in render_markdown(result)


def test_a_kind_with_no_hint_leaves_the_hint_out() -> None:
    result = _result("failed", [_check("custom", "failed", kind="not_installed_here")])
    assert 'class="hint"' not in render_html(result)
    assert "Where to look" not in render_markdown(result)


# --- alert markers ----------------------------------------------------------------------


def test_an_alert_notification_is_drawn_on_every_timeline_chart() -> None:
    result = _with_alerts((12.5, "HighErrorRate firing"))
    figures = [timeline(result), *charts(result)]
    assert figures
    for figure in figures:
        group = re.search(r'<g class="alerts">(.*?)</g></g>', figure.svg)
        assert group is not None, figure.title
        assert "HighErrorRate firing" in group.group(1)
        assert "alert notification: HighErrorRate firing at 12.5 s" in group.group(1)
        assert re.search(r'<line x1="[\d.]+" x2="[\d.]+"[^>]*stroke="#7c3aed"', group.group(1))
    assert "Violet lines: alert notifications received." in render_html(result)


def test_without_notifications_no_alert_marker_is_drawn() -> None:
    result = _result("passed", [_check("ttft")])
    for figure in [timeline(result), *charts(result)]:
        assert '<g class="alerts"></g>' in figure.svg


def test_notifications_in_the_evidence_become_markers() -> None:
    def note(ts: float, alert: str, status: str) -> tuple[float, str, dict[str, object]]:
        return ts, "alert_notification", {"alert": alert, "status": status}

    evidence = Evidence(events=[
        note(T0 + 12.04, "HighErrorRate", "firing"),
        note(T0 + 12.04, "HighErrorRate", "firing"),  # the same alert in one payload twice
        note(T0 + 12.04, "SlowTTFT", "firing"),
        note(T0 + 25.0, "HighErrorRate", "resolved"),
        (T0 + 13.0, "alert_state", {"alert": "HighErrorRate", "state": "firing"}),
    ])
    assert notification_markers(evidence, T0) == [
        (12.0, "HighErrorRate firing"), (12.0, "SlowTTFT firing"),
        (25.0, "HighErrorRate resolved")]
