"""alert_fires, alert_resolves, no_false_alarms: the alerting stack judged end to end.

The evidence comes from the harness's alert watcher (Prometheus' loaded rules, alert state
changes in Prometheus and Alertmanager) and its webhook receiver (every notification).
A check never passes on missing evidence: Prometheus not answering (its rules unknown,
or no answer over the part of the phase that decides) makes the check inconclusive, a
run that ended before the deadline too; an alert name no loaded rule has fails it.
alert_fires tells apart the stages of the path, so a failure points at the broken part:
the rule never fired; it fired but never reached Alertmanager; Alertmanager had it but no
notification arrived.
"""

from __future__ import annotations

import difflib
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import Field

from llmdrill.checks.base import fmt, make_result
from llmdrill.model.events import EventKind
from llmdrill.model.records import Evidence
from llmdrill.model.result import CheckResult, Window

if TYPE_CHECKING:
    from llmdrill.scenario.models import Scenario
from llmdrill.plugin import CheckKind, Location, Problem
from llmdrill.scenario import refs
from llmdrill.scenario.fields import (
    Name,
    Strict,
)
from llmdrill.scenario.units import Duration

# --- the spec: the YAML under this key ----------------------------------------


class _AlertCheckBase(Strict):
    """What the alert checks share: where the alert's state comes from."""

    notification: bool = Field(
        default=True,
        description="Also require (alert_fires, alert_resolves) or forbid (no_false_alarms) "
        "a notification at the harness's webhook receiver (`monitoring.webhook`): the whole "
        "path from rule to notification, not only rule evaluation.",
    )


class AlertFiresCheck(_AlertCheckBase):
    """Alert `alert` reaches firing in Prometheus within `within` of the fault, and (with
    `notification`) its firing notification reaches the webhook receiver in that time."""

    alert: str = Field(description="Alert name (the alertname label) of a loaded rule.")
    within: Duration = Field(description="Deadline from the fault's apply (or phase start).")
    fault: Name | None = Field(
        default=None,
        description="The fault whose apply starts the clock (default: the first fault "
        "applied in the phase, else the phase start).",
    )


class AlertResolvesCheck(_AlertCheckBase):
    """Alert `alert` is no longer firing in Prometheus within `within` after the fault was
    reverted, and (with `notification`) its resolved notification arrives in that time."""

    alert: str = Field(description="Alert name (the alertname label) of a loaded rule.")
    within: Duration = Field(description="Deadline from the fault's revert (or phase start).")
    fault: Name | None = Field(
        default=None,
        description="The fault whose revert starts the clock (default: the last fault "
        "reverted by the start of the phase, else the phase start).",
    )


class NoFalseAlarmsCheck(_AlertCheckBase):
    """None of the listed alerts fires (in Prometheus or as a notification) in the phase."""

    alerts: list[str] = Field(min_length=1, description="Alert names that must stay quiet.")


PROMETHEUS, ALERTMANAGER = "prometheus", "alertmanager"
# The run's range query of Prometheus' ALERTS series for the watched alerts, kept as
# `promql:ALERTS` samples labelled alertname and alertstate (harness/runner.py).
ALERTS_QUERY = "ALERTS"


def alert_names(scenario: Scenario) -> set[str]:
    """Every alert the scenario's enabled alert checks name."""
    names: set[str] = set()
    for check in scenario.alert_checks:
        spec = check.spec
        if isinstance(spec, AlertFiresCheck | AlertResolvesCheck):
            names.add(spec.alert)
        elif isinstance(spec, NoFalseAlarmsCheck):
            names.update(spec.alerts)
    return names


def alerts_queries(scenario: Scenario) -> dict[str, str]:
    """Prometheus' own record of when each watched alert was pending and firing, at its
    evaluation resolution, read after the run: the alert checks trust it over the polled
    state, which a busy harness may read late."""
    alerts = sorted(alert_names(scenario))
    if not alerts:
        return {}
    pattern = "|".join(re.escape(a) for a in alerts)
    # Only the labels the checks read: one series per alert and state, fewer rows.
    return {ALERTS_QUERY:
            f'max by (alertname, alertstate) (ALERTS{{alertname=~"{pattern}"}})'}


def references(spec: Any, scenario: Scenario, location: Location) -> list[Problem]:
    """An enabled alert check needs Prometheus, the webhook receiver when it checks the
    notification, and a fault of that name if it names one. A disabled one (an opt-in
    check left off) needs none of them."""
    index = location[1]
    if isinstance(index, int) and not scenario.checks[index].enabled:
        return []
    kind = str(location[-1])
    problems: list[Problem] = []
    if not scenario.prometheus:
        problems.append((location, f"an {kind} check needs `prometheus: {{url: ...}}`"))
    if spec.notification and not scenario.monitoring.webhook:
        problems.append(
            ((*location, "notification"),
             "notification: true needs `monitoring: {webhook: {listen: 127.0.0.1:PORT}}` "
             "(or notification: false to check rule evaluation only)"))
    return problems + refs.unknown_fault(scenario, getattr(spec, "fault", None),
                                         (*location, "fault"))


def recorded_firing(evidence: Evidence, alert: str, start: float, end: float) -> float | None:
    """The first evaluation in [start, end] at which Prometheus' ALERTS series has the
    alert firing (from the range query at the run's end)."""
    times = [ts for ts, _ in evidence.series(f"promql:{ALERTS_QUERY}",
                                             {"alertname": alert, "alertstate": "firing"})
             if start <= ts <= end]
    return min(times) if times else None


def _earliest(*times: float | None) -> float | None:
    found = [t for t in times if t is not None]
    return min(found) if found else None
FIRING = {PROMETHEUS: ("firing",), ALERTMANAGER: ("active", "suppressed", "unprocessed")}


def loaded_rules(evidence: Evidence) -> tuple[list[str] | None, str]:
    """The alert rule names Prometheus had loaded, or None and why they are unknown."""
    errors = []
    for _, detail in evidence.events_of(EventKind.ALERT_RULES):
        if "names" in detail:
            return [str(n) for n in detail["names"]], ""
        errors.append(str(detail.get("error", "")))
    if errors:
        return None, f"Prometheus did not answer its rules API: {errors[0]}"
    return None, "the alerting stack was not watched (no Prometheus rules in the evidence)"


def unknown_alert(name: str, rules: list[str]) -> str | None:
    if name in rules:
        return None
    similar = difflib.get_close_matches(name, rules, n=3, cutoff=0.6)
    hint = f"; similar: {', '.join(similar)}" if similar else ""
    return (f"alert '{name}' is not among the {len(rules)} alert rules Prometheus has "
            f"loaded{hint}: check the rule files and the name")


def state_at(evidence: Evidence, source: str, alert: str, ts: float) -> str:
    """The alert's state in a source at a moment (inactive until a change says otherwise)."""
    state = "inactive"
    for when, d in evidence.events_of(EventKind.ALERT_STATE, end=ts):
        if d.get("source") == source and d.get("alert") == alert and when <= ts:
            state = str(d.get("state"))
    return state


def first_change(evidence: Evidence, source: str, alert: str, states: tuple[str, ...],
                 start: float, end: float) -> float | None:
    for when, d in evidence.events_of(EventKind.ALERT_STATE, start, end):
        if d.get("source") == source and d.get("alert") == alert and d.get("state") in states:
            return when
    return None


def rfc3339(text: str) -> float | None:
    """Alertmanager's times (nanosecond fractions, Z) as epoch seconds; None if unset."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", text)
    if not match or text.startswith("0001-"):
        return None
    head, frac, zone = match.groups()
    stamp = datetime.fromisoformat(f"{head}{(frac or '')[:7]}{'+00:00' if zone == 'Z' else zone}")
    return stamp.timestamp()


def _ended_before(evidence: Evidence, detail: dict[str, Any], ts: float) -> bool:
    """A resolved notification says this alert (same fingerprint, same start) ended
    before `ts`: a late delivery of an earlier alert (Alertmanager retries a receiver
    that was down), not an alarm after `ts`."""
    for _, d in evidence.events_of(EventKind.ALERT_NOTIFICATION):
        if (d.get("status") == "resolved" and d.get("fingerprint") == detail.get("fingerprint")
                and d.get("starts_at") == detail.get("starts_at")):
            ended = rfc3339(str(d.get("ends_at", "")))
            if ended is not None and ended < ts:
                return True
    return False


def notified(evidence: Evidence, alert: str, status: str, start: float, end: float
             ) -> list[float]:
    """When notifications of an alert arrived in [start, end], leaving out firing ones of
    an alert known to have ended before `start`."""
    return [when for when, d in evidence.events_of(EventKind.ALERT_NOTIFICATION, start, end)
            if d.get("alert") == alert and d.get("status") == status
            and not (status == "firing" and _ended_before(evidence, d, start))]


def blind_spans(evidence: Evidence, source: str, start: float, end: float
                ) -> list[tuple[float, float]]:
    """Parts of [start, end] during which a source did not answer the watcher."""
    spans: list[tuple[float, float]] = []
    down_since: float | None = None
    for when, d in evidence.events_of(EventKind.ALERT_POLL):
        if d.get("source") != source:
            continue
        if not d.get("ok") and down_since is None:
            down_since = when
        elif d.get("ok") and down_since is not None:
            if when >= start and down_since <= end:
                spans.append((max(down_since, start), min(when, end)))
            down_since = None
    if down_since is not None and down_since <= end:
        spans.append((max(down_since, start), end))
    return spans


def _watched(evidence: Evidence, source: str) -> bool:
    return any(d.get("source") == source and d.get("ok")
               for _, d in evidence.events_of(EventKind.ALERT_POLL))


def fault_time(evidence: Evidence, fault: str | None, window: Window, at: str
               ) -> tuple[float | None, str]:
    """When the clock starts: a fault's apply or revert, or the phase start."""
    if at == "applied":
        if fault:
            hit = next((f for f in evidence.faults if f.fault == fault), None)
            if hit is None:
                return None, f"fault '{fault}' was never applied"
            return hit.applied_at, f"fault '{fault}' applied"
        applied = sorted((f.applied_at, f.fault) for f in evidence.faults
                         if window.start - 1.0 <= f.applied_at <= window.end)
        if applied:
            return applied[0][0], f"fault '{applied[0][1]}' applied"
        return window.start, f"phase '{window.phase}' start"
    if fault:
        hit = next((f for f in evidence.faults if f.fault == fault), None)
        if hit is None or hit.reverted_at is None:
            return None, f"fault '{fault}' was never {'applied' if hit is None else 'reverted'}"
        return hit.reverted_at, f"fault '{fault}' reverted"
    reverted = sorted((f.reverted_at, f.fault) for f in evidence.faults
                      if f.reverted_at is not None and f.reverted_at <= window.start + 1.0)
    if reverted:
        return reverted[-1][0], f"fault '{reverted[-1][1]}' reverted"
    return window.start, f"phase '{window.phase}' start"


def unwatched(evidence: Evidence, start: float, end: float) -> float:
    """Seconds of [start, end] Prometheus was not answering the watcher (all of it when it
    never answered by `end`)."""
    if end <= start:
        return 0.0
    answered = [when for when, d in evidence.events_of(EventKind.ALERT_POLL, end=end)
                if d.get("source") == PROMETHEUS and d.get("ok")]
    if not answered:
        return end - start
    return sum(b - a for a, b in blind_spans(evidence, PROMETHEUS, start, end))


def _rel(ts: float | None, ref: float) -> str:
    return "-" if ts is None else f"+{fmt(ts - ref, 1)}s"


def _preconditions(name: str, kind: str, phase: str, alerts: list[str], evidence: Evidence,
                   window: Window, expected: dict[str, Any]) -> CheckResult | None:
    rules, why = loaded_rules(evidence)
    if rules is None:
        return make_result(name, kind, phase, "inconclusive", f"inconclusive: {why}",
                           window=window, expected=expected)
    for alert in alerts:
        problem = unknown_alert(alert, rules)
        if problem:
            return make_result(name, kind, phase, "failed", problem, window=window,
                               expected=expected, observed={"loaded_rules": rules[:50]})
    return None


def evaluate_alert_fires(name: str, phase: str, spec: AlertFiresCheck, evidence: Evidence,
                         window: Window) -> CheckResult:
    kind = "alert_fires"
    expected: dict[str, Any] = {"alert": spec.alert, "within_s": spec.within,
                                "notification": spec.notification}
    failed = _preconditions(name, kind, phase, [spec.alert], evidence, window, expected)
    if failed:
        return failed
    ref, what = fault_time(evidence, spec.fault, window, "applied")
    if ref is None:
        return make_result(name, kind, phase, "failed", f"no clock start: {what}",
                           window=window, expected=expected)
    deadline = ref + spec.within
    end_seen = evidence.run_end or window.end
    before = state_at(evidence, PROMETHEUS, spec.alert, ref - 1e-6)
    fired = _earliest(
        first_change(evidence, PROMETHEUS, spec.alert, FIRING[PROMETHEUS], ref, deadline),
        recorded_firing(evidence, spec.alert, ref, deadline))
    in_am = first_change(evidence, ALERTMANAGER, spec.alert, FIRING[ALERTMANAGER], ref,
                         deadline)
    notes = notified(evidence, spec.alert, "firing", ref, deadline)
    observed: dict[str, Any] = {
        "clock_start": what, "state_before": before,
        "firing_after_s": None if fired is None else round(fired - ref, 3),
        "alertmanager_after_s": None if in_am is None else round(in_am - ref, 3),
        "notified_after_s": round(notes[0] - ref, 3) if notes else None,
        "notifications": len(notes),
    }
    if before == "firing":
        return make_result(
            name, kind, phase, "failed",
            f"{spec.alert} was already firing before the {what}: the drill cannot show the "
            f"fault made it fire", window=window, observed=observed, expected=expected)
    if fired is None:
        lost = unwatched(evidence, ref, min(deadline, end_seen))
        state = state_at(evidence, PROMETHEUS, spec.alert, min(deadline, end_seen))
        extra = (f"; Prometheus did not answer for {fmt(lost, 1)}s of that time"
                 if lost > 0 else "")
        short = (f" (the run ended {fmt(end_seen - ref, 1)}s after it)"
                 if end_seen < deadline else "")
        unsure = lost > 0 or end_seen < deadline  # it may have fired unseen
        return make_result(
            name, kind, phase, "inconclusive" if unsure else "failed",
            f"{'inconclusive: ' if unsure else ''}"
            f"rule never reached firing: {spec.alert} was {state} in Prometheus "
            f"{fmt(spec.within)}s after the {what}{short}{extra}",
            window=window, observed=observed | {"stage": "rule"}, expected=expected)
    if spec.notification and not notes:
        am = ("" if not _watched(evidence, ALERTMANAGER) else
              f"; in Alertmanager at {_rel(in_am, ref)}" if in_am is not None else
              "; Alertmanager never had it")
        return make_result(
            name, kind, phase, "failed",
            f"firing but no notification: {spec.alert} fired in Prometheus at "
            f"{_rel(fired, ref)} after the {what}{am}, but no firing notification reached the "
            f"webhook receiver within {fmt(spec.within)}s (check Alertmanager's route and "
            f"receiver)", window=window, observed=observed | {"stage": "notification"},
            expected=expected)
    via = f", notified at {_rel(notes[0], ref)}" if spec.notification and notes else ""
    return make_result(
        name, kind, phase, "passed",
        f"{spec.alert} firing at {_rel(fired, ref)} after the {what}{via} "
        f"(within {fmt(spec.within)}s)", window=window, observed=observed, expected=expected)


def evaluate_alert_resolves(name: str, phase: str, spec: AlertResolvesCheck,
                            evidence: Evidence, window: Window) -> CheckResult:
    kind = "alert_resolves"
    expected: dict[str, Any] = {"alert": spec.alert, "within_s": spec.within,
                                "notification": spec.notification}
    failed = _preconditions(name, kind, phase, [spec.alert], evidence, window, expected)
    if failed:
        return failed
    ref, what = fault_time(evidence, spec.fault, window, "reverted")
    if ref is None:
        return make_result(name, kind, phase, "failed", f"no clock start: {what}",
                           window=window, expected=expected)
    deadline = ref + spec.within
    # Firing shortly before the revert counts: Prometheus is polled, not watched.
    was = state_at(evidence, PROMETHEUS, spec.alert, ref)
    resolved = first_change(evidence, PROMETHEUS, spec.alert, ("inactive",), ref, deadline)
    notes = notified(evidence, spec.alert, "resolved", ref, deadline)
    observed: dict[str, Any] = {
        "clock_start": what, "state_at_revert": was,
        "resolved_after_s": None if resolved is None else round(resolved - ref, 3),
        "notified_after_s": round(notes[0] - ref, 3) if notes else None,
        "notifications": len(notes),
    }
    if was != "firing":
        return make_result(
            name, kind, phase, "failed",
            f"{spec.alert} was {was}, not firing, at the {what}: there was nothing to resolve",
            window=window, observed=observed, expected=expected)
    end_seen = evidence.run_end or window.end
    if resolved is None:
        short = (f" (the run ended {fmt(end_seen - ref, 1)}s after it: make the phase longer)"
                 if end_seen < deadline else "")
        lost = unwatched(evidence, ref, min(deadline, end_seen))
        unsure = lost > 0 or end_seen < deadline  # it may have resolved unseen
        blind = f"; Prometheus did not answer for {fmt(lost, 1)}s of that time" if lost else ""
        return make_result(
            name, kind, phase, "inconclusive" if unsure else "failed",
            f"{'inconclusive: ' if unsure else ''}{spec.alert} still firing in Prometheus "
            f"{fmt(spec.within)}s after the "
            f"{what}{short}{blind}",
            window=window, observed=observed | {"stage": "rule"}, expected=expected)
    lost_after = unwatched(evidence, resolved, window.end)
    if lost_after > 0:
        return make_result(
            name, kind, phase, "inconclusive",
            f"inconclusive: {spec.alert} resolved at {_rel(resolved, ref)} after the {what}, "
            f"but Prometheus did not answer for {fmt(lost_after, 1)}s of the rest of the "
            f"phase: nothing shows it stayed resolved",
            window=window, observed=observed, expected=expected)
    again = first_change(evidence, PROMETHEUS, spec.alert, FIRING[PROMETHEUS], resolved,
                         window.end)
    if again is not None:
        return make_result(
            name, kind, phase, "failed",
            f"{spec.alert} resolved at {_rel(resolved, ref)} but fired again at "
            f"{_rel(again, ref)} after the {what}",
            window=window, observed=observed | {"fired_again_after_s": round(again - ref, 3)},
            expected=expected)
    if spec.notification and not notes:
        return make_result(
            name, kind, phase, "failed",
            f"resolved but no notification: {spec.alert} resolved in Prometheus at "
            f"{_rel(resolved, ref)} after the {what}, but no resolved notification reached "
            f"the webhook receiver within {fmt(spec.within)}s (is send_resolved off?)",
            window=window, observed=observed | {"stage": "notification"}, expected=expected)
    via = f", notified at {_rel(notes[0], ref)}" if spec.notification and notes else ""
    return make_result(
        name, kind, phase, "passed",
        f"{spec.alert} resolved at {_rel(resolved, ref)} after the {what}{via} "
        f"(within {fmt(spec.within)}s)", window=window, observed=observed, expected=expected)


def evaluate_no_false_alarms(name: str, phase: str, spec: NoFalseAlarmsCheck,
                             evidence: Evidence, window: Window) -> CheckResult:
    kind = "no_false_alarms"
    expected: dict[str, Any] = {"alerts": list(spec.alerts), "notification": spec.notification}
    failed = _preconditions(name, kind, phase, list(spec.alerts), evidence, window, expected)
    if failed:
        return failed
    lost = unwatched(evidence, window.start, window.end)
    if lost > 0:
        return make_result(
            name, kind, phase, "inconclusive",
            f"inconclusive: Prometheus did not answer for {fmt(lost, 1)}s of the phase: no "
            f"evidence that the alerts stayed quiet", window=window, expected=expected,
            observed={"unwatched_s": round(lost, 3)})
    noisy: dict[str, str] = {}
    for alert in spec.alerts:
        if state_at(evidence, PROMETHEUS, alert, window.start) == "firing":
            noisy[alert] = "firing in Prometheus at the phase start"
            continue
        fired = _earliest(
            first_change(evidence, PROMETHEUS, alert, FIRING[PROMETHEUS], window.start,
                         window.end),
            recorded_firing(evidence, alert, window.start, window.end))
        if fired is not None:
            noisy[alert] = f"firing in Prometheus at {_rel(fired, window.start)}"
            continue
        notes = notified(evidence, alert, "firing", window.start, window.end)
        if spec.notification and notes:
            noisy[alert] = f"firing notification at {_rel(notes[0], window.start)}"
    observed = {"fired": noisy}
    if noisy:
        return make_result(
            name, kind, phase, "failed",
            f"{len(noisy)} of {len(spec.alerts)} alerts fired: "
            + "; ".join(f"{a} ({why})" for a, why in noisy.items()),
            window=window, observed=observed, expected=expected)
    return make_result(
        name, kind, phase, "passed",
        f"none of {', '.join(spec.alerts)} fired over {fmt(window.end - window.start, 1)}s"
        + (" (no notifications either)" if spec.notification else ""),
        window=window, observed=observed, expected=expected)


ALERT_FIRES = CheckKind(
    references=references,
    queries=alerts_queries,
    spec=AlertFiresCheck,
    evaluate=evaluate_alert_fires,
    description="An alert fires in time and its notification arrives.",
    runbook=(
        "The alert did not go the whole way from rule to notification in time; the check "
        "names the stage that broke. Rule never fired: its PromQL expression, 'for:' duration "
        "and the evaluation interval in Prometheus. Fired but not in Alertmanager: "
        "Prometheus' alerting config (alertmanagers). In Alertmanager but no notification: "
        "its route, group_wait and receiver (the webhook URL)."
    ),
    probe=None,
)


ALERT_RESOLVES = CheckKind(
    references=references,
    queries=alerts_queries,
    spec=AlertResolvesCheck,
    evaluate=evaluate_alert_resolves,
    description="An alert resolves in time after the revert, notified.",
    runbook=(
        "The alert did not resolve in time after the revert, fired again, or its resolved "
        "notification never arrived. Check the rule's expression and 'for:' (a slow-moving "
        "rate window keeps it firing), and in Alertmanager send_resolved on the receiver, "
        "group_interval and resolve_timeout."
    ),
    probe=None,
)


NO_FALSE_ALARMS = CheckKind(
    references=references,
    queries=alerts_queries,
    spec=NoFalseAlarmsCheck,
    evaluate=evaluate_no_false_alarms,
    description="None of the listed alerts fires in the phase.",
    runbook=(
        "A listed alert fired in a phase where nothing should have triggered it. Look at the "
        "alert's rule: a threshold too close to normal load, a 'for:' too short, or a rate "
        "window that catches the previous phase's fault; the check's observed values say when "
        "it fired."
    ),
    probe=None,
)
