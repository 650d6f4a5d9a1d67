"""Alert checks on synthetic evidence, the webhook receiver on a real socket, the alert
watcher's change tracking, the rule renderer and the scenario fields of the alert checks."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmdrill.checks import evaluate_check
from llmdrill.faults.base import EnvironmentProblem
from llmdrill.harness.preflight import check_alerting
from llmdrill.model.records import Evidence, FaultEvent, MetricSample, PhaseWindow
from llmdrill.model.result import CheckResult
from llmdrill.monitoring import rules as alert_rules
from llmdrill.monitoring.alert_watch import AlertWatcher
from llmdrill.monitoring.webhook import WebhookReceiver, notifications
from llmdrill.scenario.models import Check, Scenario

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0
PHASES = [PhaseWindow("baseline", T0, T0 + 10), PhaseWindow("down", T0 + 10, T0 + 30, ("down",)),
          PhaseWindow("recover", T0 + 30, T0 + 50)]
FAULTS = [FaultEvent("down", T0 + 10, T0 + 30)]
RULES = ["LlmTargetDown", "LlmTtftP95High"]
Event = tuple[float, str, dict[str, Any]]


def state(t: float, alert: str, st: str, source: str = "prometheus") -> Event:
    return (T0 + t, "alert_state", {"source": source, "alert": alert, "state": st,
                                    "labels": {"alertname": alert}})


def note(t: float, alert: str, status: str = "firing") -> Event:
    return (T0 + t, "alert_notification", {"alert": alert, "status": status, "labels": {}})


def watched(*events: Event, rules: list[str] | None = None) -> list[Event]:
    head: list[Event] = [
        (T0 - 1, "alert_rules", {"names": RULES if rules is None else rules}),
        (T0 - 1, "alert_poll", {"source": "prometheus", "ok": True}),
        (T0 - 1, "alert_poll", {"source": "alertmanager", "ok": True}),
    ]
    return head + sorted(events, key=lambda e: e[0])


def judge(events: list[Event], phase: str, **kind: Any) -> CheckResult:
    check = Check.model_validate({"phase": phase, **kind})
    return evaluate_check(check, 0, Evidence(phases=PHASES, faults=FAULTS, run_end=T0 + 50,
                                             events=events))


FIRES = {"alert_fires": {"alert": "LlmTargetDown", "within": "10s"}}
RESOLVES = {"alert_resolves": {"alert": "LlmTargetDown", "within": "10s"}}
QUIET = {"no_false_alarms": {"alerts": ["LlmTargetDown", "LlmTtftP95High"]}}
WHOLE_PATH = watched(state(13, "LlmTargetDown", "pending"), state(14, "LlmTargetDown", "firing"),
                     state(14.5, "LlmTargetDown", "active", "alertmanager"),
                     note(14.6, "LlmTargetDown"), state(32, "LlmTargetDown", "inactive"),
                     note(33, "LlmTargetDown", "resolved"))


def test_alert_fires_passes_on_the_whole_path() -> None:
    result = judge(WHOLE_PATH, "down", **FIRES)
    assert result.status == "passed", result.summary
    assert "firing at +4s after the fault 'down' applied, notified at +4.6s" in result.summary
    assert result.observed["alertmanager_after_s"] == pytest.approx(4.5)


def test_alert_fires_fails_when_the_rule_never_fires() -> None:
    result = judge(watched(state(13, "LlmTargetDown", "pending")), "down", **FIRES)
    assert result.status == "failed"
    assert result.summary.startswith("rule never reached firing: LlmTargetDown was pending")
    assert result.observed["stage"] == "rule"


def test_alert_fires_fails_too_late() -> None:
    result = judge(watched(state(21, "LlmTargetDown", "firing"), note(21, "LlmTargetDown")),
                   "down", **FIRES)
    assert result.status == "failed" and "rule never reached firing" in result.summary


def test_alert_fires_fails_without_a_notification_and_names_the_stage() -> None:
    events = watched(state(14, "LlmTargetDown", "firing"),
                     state(14.5, "LlmTargetDown", "active", "alertmanager"))
    result = judge(events, "down", **FIRES)
    assert result.status == "failed"
    assert result.summary.startswith("firing but no notification: LlmTargetDown fired in "
                                     "Prometheus at +4s")
    assert "in Alertmanager at +4.5s" in result.summary
    assert result.observed["stage"] == "notification"
    no_am = judge(watched(state(14, "LlmTargetDown", "firing")), "down", **FIRES)
    assert "Alertmanager never had it" in no_am.summary


def test_alert_fires_without_notification_needs_only_the_rule() -> None:
    events = watched(state(14, "LlmTargetDown", "firing"))
    result = judge(events, "down", alert_fires={"alert": "LlmTargetDown", "within": "10s",
                                                "notification": False})
    assert result.status == "passed", result.summary


def test_alert_fires_fails_when_already_firing_before_the_fault() -> None:
    result = judge(watched(state(2, "LlmTargetDown", "firing"), note(2, "LlmTargetDown")),
                   "down", **FIRES)
    assert result.status == "failed" and "already firing before" in result.summary


@pytest.mark.parametrize("kind", [FIRES, RESOLVES, QUIET])
def test_an_alert_no_rule_has_fails_every_alert_check(kind: dict[str, Any]) -> None:
    result = judge(watched(rules=["LlmTargetDwn", "Other"]), "recover" if kind is RESOLVES
                   else "down", **kind)
    assert result.status == "failed"
    assert "is not among the 2 alert rules Prometheus has loaded" in result.summary


@pytest.mark.parametrize("kind", [FIRES, RESOLVES, QUIET])
def test_missing_prometheus_is_inconclusive_for_every_alert_check(kind: dict[str, Any]) -> None:
    refused = [(T0 - 1, "alert_rules", {"error": "http://127.0.0.1:1/api/v1/rules: "
                                        "ConnectError: refused"})]
    result = judge(refused, "baseline", **kind)
    assert result.status == "inconclusive"
    assert result.summary.startswith("inconclusive: Prometheus did not answer its rules API")
    unwatched = judge([], "baseline", **kind)
    assert unwatched.status == "inconclusive" and "not watched" in unwatched.summary


def test_alert_resolves_passes_and_fails() -> None:
    assert judge(WHOLE_PATH, "recover", **RESOLVES).status == "passed"
    stuck = watched(state(14, "LlmTargetDown", "firing"), note(14, "LlmTargetDown"))
    result = judge(stuck, "recover", **RESOLVES)
    assert result.status == "failed" and "still firing in Prometheus 10s after" in result.summary
    silent = watched(state(14, "LlmTargetDown", "firing"), state(32, "LlmTargetDown", "inactive"))
    result = judge(silent, "recover", **RESOLVES)
    assert result.status == "failed" and result.summary.startswith(
        "resolved but no notification")
    never = judge(watched(), "recover", **RESOLVES)
    assert never.status == "failed" and "nothing to resolve" in never.summary
    flap = watched(state(14, "LlmTargetDown", "firing"), state(32, "LlmTargetDown", "inactive"),
                   note(33, "LlmTargetDown", "resolved"), state(40, "LlmTargetDown", "firing"))
    result = judge(flap, "recover", **RESOLVES)
    assert result.status == "failed" and "fired again at +10s" in result.summary


def test_no_false_alarms() -> None:
    assert judge(WHOLE_PATH, "baseline", **QUIET).status == "passed"
    noisy = watched(state(3, "LlmTtftP95High", "firing"))
    result = judge(noisy, "baseline", **QUIET)
    assert result.status == "failed"
    assert result.summary == "1 of 2 alerts fired: LlmTtftP95High (firing in Prometheus at +3s)"
    always = watched(state(-5, "LlmTtftP95High", "firing"))
    assert "at the phase start" in judge(always, "baseline", **QUIET).summary
    notified = watched(note(4, "LlmTargetDown"))
    assert "firing notification at +4s" in judge(notified, "baseline", **QUIET).summary
    blind = watched((T0 + 2, "alert_poll", {"source": "prometheus", "ok": False}))
    result = judge(blind, "baseline", **QUIET)
    assert result.status == "inconclusive" and "did not answer for 8s" in result.summary


def test_a_late_delivery_of_an_earlier_alert_is_no_alarm() -> None:
    """Alertmanager retries a receiver that was down: the next run's receiver gets the
    firing and resolved notifications of an alert that ended before it started."""
    stale = {"alert": "LlmTargetDown", "fingerprint": "f1",
             "starts_at": "2023-11-14T22:13:15.412345678Z", "labels": {}}
    events = watched((T0 + 0.6, "alert_notification", {**stale, "status": "firing",
                                                        "ends_at": "0001-01-01T00:00:00Z"}),
                     (T0 + 0.6, "alert_notification", {**stale, "status": "resolved",
                                                        "ends_at": "2023-11-14T22:13:18Z"}))
    assert judge(events, "baseline", **QUIET).status == "passed"
    late = {**stale, "status": "resolved", "ends_at": "2023-11-14T22:13:21Z"}  # after T0
    events = watched((T0 + 0.6, "alert_notification", {**stale, "status": "firing"}),
                     (T0 + 0.6, "alert_notification", late))
    assert judge(events, "baseline", **QUIET).status == "failed"


def test_prometheus_own_alerts_series_beats_a_late_poll() -> None:
    """A busy harness polls late; the ALERTS range read at the end has the real time."""
    ranged = [MetricSample(T0 + t, "promql:ALERTS", 1.0,
                           {"alertname": "LlmTargetDown", "alertstate": "firing"})
              for t in (13.0, 14.0, 15.0)]
    events = watched(state(19, "LlmTargetDown", "firing"), note(14, "LlmTargetDown"))
    check = Check.model_validate({"phase": "down", **FIRES})
    result = evaluate_check(check, 0, Evidence(metrics=ranged, phases=PHASES, faults=FAULTS,
                                               run_end=T0 + 50, events=events))
    assert result.status == "passed" and result.observed["firing_after_s"] == 3.0
    quiet = Check.model_validate({"phase": "down", "no_false_alarms": {
        "alerts": ["LlmTargetDown"], "notification": False}})
    missed = evaluate_check(quiet, 0, Evidence(metrics=ranged, phases=PHASES, faults=FAULTS,
                                               run_end=T0 + 50, events=watched()))
    assert missed.status == "failed" and "firing in Prometheus at +3s" in missed.summary


def test_a_disabled_check_is_skipped() -> None:
    result = judge([], "down", enabled=False, **FIRES)
    assert result.status == "skipped" and "not enabled" in result.summary


# --- webhook receiver --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PAYLOAD = {"version": "4", "status": "firing", "receiver": "llmdrill", "groupKey": "{}",
           "externalURL": "http://am", "commonAnnotations": {"summary": "x"},
           "alerts": [{"status": "firing", "labels": {"alertname": "LlmTargetDown",
                                                      "job": "vllm"},
                       "annotations": {"description": "free text"},
                       "startsAt": "2026-01-01T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                       "generatorURL": "http://prom/graph", "fingerprint": "abc"}]}


def test_webhook_receiver_records_every_notification_and_stops() -> None:
    recorded: list[tuple[float, dict[str, Any], str]] = []
    port = _free_port()
    receiver = WebhookReceiver("127.0.0.1", port, lambda t, d, k: recorded.append((t, d, k)))
    receiver.start()
    try:
        url = f"http://127.0.0.1:{port}/"
        assert httpx.post(url, json=PAYLOAD, timeout=5).status_code == 200
        assert httpx.post(url, content=b"not json", timeout=5).status_code == 400
    finally:
        receiver.stop()
        receiver.stop()  # idempotent
    kinds = [k for _, _, k in recorded]
    assert kinds == ["alert_notification", "alert_webhook_error"]
    detail = recorded[0][1]
    assert detail["alert"] == "LlmTargetDown" and detail["status"] == "firing"
    assert detail["labels"] == {"alertname": "LlmTargetDown", "job": "vllm"}
    assert "free text" not in json.dumps(detail) and "generator" not in json.dumps(detail)
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"http://127.0.0.1:{port}/", json=PAYLOAD, timeout=2)


def test_webhook_receiver_refuses_a_huge_body_and_a_taken_port() -> None:
    port = _free_port()
    receiver = WebhookReceiver("127.0.0.1", port, lambda t, d, k: None)
    receiver.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n")
            assert b" 413 " in sock.recv(200)
        with pytest.raises(EnvironmentProblem, match=f"cannot listen on 127.0.0.1:{port}"):
            WebhookReceiver("127.0.0.1", port, lambda t, d, k: None).start()
    finally:
        receiver.stop()


def test_notifications_reject_what_is_not_a_webhook_payload() -> None:
    with pytest.raises(ValueError, match="no alerts list"):
        notifications({"status": "firing"}, T0)
    assert notifications({"alerts": [{"labels": {}}], "status": "resolved"}, T0)[0][
        "status"] == "resolved"


# --- alert watcher ----------------------------------------------------------------------


def test_watcher_records_only_changes_and_disappearances() -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    watcher = AlertWatcher(None, None, 1.0, lambda t, k, d: events.append((k, d)))
    watcher._changes("prometheus", {"A": ("pending", {})}, T0)
    watcher._changes("prometheus", {"A": ("pending", {})}, T0 + 1)
    watcher._changes("prometheus", {"A": ("firing", {"alertname": "A"})}, T0 + 2)
    watcher._changes("prometheus", {}, T0 + 3)
    assert [(d["alert"], d["state"]) for _, d in events] == [
        ("A", "pending"), ("A", "firing"), ("A", "inactive")]


# --- rules and scenario fields ----------------------------------------------------------


def test_shipped_rules_are_the_rendering_of_the_defaults() -> None:
    shipped = (REPO / "deploy/prometheus/rules/llm-serving.rules.yml").read_text()
    assert shipped == alert_rules.render(), (
        "run: llmdrill alert-rules --out deploy/prometheus/rules/llm-serving.rules.yml")


def test_rule_parameters_are_all_used_and_documented() -> None:
    docs = (REPO / "docs/alerts.md").read_text()
    for param in alert_rules.PARAMETERS:
        assert f"<<{param.name}>>" in alert_rules.TEMPLATE, param.name
        assert f"`{param.name}`" in docs, f"docs/alerts.md does not document {param.name}"
    for name in alert_rules.ALERT_NAMES:
        assert name in docs, f"docs/alerts.md does not describe {name}"
    rendered = alert_rules.render({"for": "1s", "window": "10s"})
    assert "<<" not in rendered and "for: 1s" in rendered and "[10s]" in rendered
    with pytest.raises(ValueError, match="unknown parameter 'nope'"):
        alert_rules.render({"nope": "1"})


BASE = {"apiVersion": "llmdrill/v1", "kind": "Scenario", "metadata": {"name": "a"},
        "target": {"base_url": "http://127.0.0.1:1", "model": "m"},
        "phases": [{"name": "p", "duration": "5s"}]}


def _problems(**extra: Any) -> list[str]:
    scenario = Scenario.model_validate({**BASE, **extra},
                                       context={"defer_references": True})
    return [m for _, m in scenario.reference_problems()]


def test_alert_checks_need_prometheus_and_a_webhook_unless_disabled() -> None:
    checks = [{"phase": "p", "alert_fires": {"alert": "A", "within": "5s", "fault": "x"}}]
    problems = _problems(checks=checks)
    assert any("needs `prometheus: {url: ...}`" in m for m in problems)
    assert any("notification: true needs `monitoring: {webhook" in m for m in problems)
    assert any("unknown fault 'x'" in m for m in problems)
    assert _problems(checks=[{**checks[0], "enabled": False}]) == []
    ok = _problems(checks=[{"phase": "p", "no_false_alarms": {"alerts": ["A"]}}],
                   prometheus={"url": "http://127.0.0.1:9090"},
                   monitoring={"webhook": {"listen": "127.0.0.1:18290"}})
    assert ok == []


@pytest.mark.parametrize("listen", ["0.0.0.0:18290", "10.0.0.1:80", "127.0.0.1", "x:99999"])
def test_webhook_listens_on_loopback_only(listen: str) -> None:
    with pytest.raises(ValueError):
        Scenario.model_validate({**BASE, "monitoring": {"webhook": {"listen": listen}}})


def test_promql_queries_need_prometheus_and_metric_checks_name_them() -> None:
    metric = {"phase": "p", "metric": {"series": ["promql:up"], "min": 1}}
    problems = _problems(checks=[metric], monitoring={"queries": {"upp": "up"}})
    assert "PromQL queries need `prometheus: {url: ...}`" in problems
    assert "'promql:up' names no query in monitoring.queries (defined: upp)" in problems
    assert not any("metrics_url" in m for m in problems)  # Prometheus, not /metrics
    assert _problems(checks=[metric], monitoring={"queries": {"up": "up"}},
                     prometheus={"url": "http://127.0.0.1:9090"}) == []
    plain = _problems(checks=[{"phase": "p", "metric": {"series": ["x"], "min": 1}}])
    assert "a metric check needs target.metrics_url" in plain


def test_plan_check_preflight_of_the_alerting_stack() -> None:
    assert check_alerting(Scenario.model_validate(BASE)) == []
    port = _free_port()
    checks = [{"phase": "p", "no_false_alarms": {"alerts": ["A"]}}]
    dead = Scenario.model_validate({**BASE, "checks": checks,
                                    "prometheus": {"url": f"http://127.0.0.1:{port}"},
                                    "monitoring": {"webhook": {"listen": f"127.0.0.1:{port}"}}})
    with pytest.raises(EnvironmentProblem, match=f"127.0.0.1:{port}/api/v1/rules"):
        check_alerting(dead)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = Scenario.model_validate({
            **BASE, "checks": [{**checks[0], "no_false_alarms": {"alerts": ["A"],
                                                                  "notification": True}}],
            "prometheus": {"url": f"http://127.0.0.1:{port}"},
            "monitoring": {"webhook": {"listen": f"127.0.0.1:{taken.getsockname()[1]}"}}})
        with pytest.raises(EnvironmentProblem, match="cannot listen on"):
            check_alerting(busy)
