"""replicas_ready and ready_serves: how a Kubernetes workload comes back from a fault.

Both read the pod states the API's watch reported (`kube_pod` events: the fault's own
watch while it was applied, and the check's probe, which watches the same pods for the
check's phase). "Routable" is what a Service sends traffic to: Ready and not terminating.

replicas_ready: from the fault (its first action, or its revert with `since: reverted`)
to the moment at least `replicas` pods are routable again and stay so to the end of the
phase, within `within`. Never fewer than `replicas` after the fault passes at once (the
fault's own judge says whether it landed). Still short at the end of the phase fails; no
pod state recorded, or a watch that broke and did not resume, is inconclusive.

ready_serves: a pod Kubernetes calls Ready must answer. The probe polls each Deployment's
own health URL (`urls`) through the phase; a pod that was routable while its Deployment's
URL failed for longer than `grace` fails the check: the Service was sending traffic to a
pod that was not serving (no readiness probe, or one that passes too early). While a
node restart keeps the node down (its stop to its Ready again, plus `grace` for the
kubelet to report its pods) Kubernetes' view of that node's pods cannot be current: that
span is the node restart's subject, not this check's, and is left out. No polls, no pod
state, or no routable time covered by polls: inconclusive.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import httpx
from pydantic import Field, field_validator

from llmdrill.checks.base import fmt, make_result
from llmdrill.checks.health import poll_once
from llmdrill.model.events import EventKind
from llmdrill.model.records import Evidence
from llmdrill.model.result import CheckResult, Window
from llmdrill.plugin import CheckKind, Location, Problem
from llmdrill.probes.kube_events import matches, routable_counts
from llmdrill.scenario import refs
from llmdrill.scenario.fields import Name, Strict, http_url
from llmdrill.scenario.units import Duration, PositiveInt

if TYPE_CHECKING:
    from llmdrill.faults.kubernetes import KubernetesFault
    from llmdrill.model.context import RunContext

POD = EventKind.KUBE_POD
NODE = EventKind.KUBE_NODE
ACTION = EventKind.KUBE_ACTION
SERVING = EventKind.KUBE_SERVING
MAX_SHOWN = 30
_EPS = 1e-9


# --- the specs --------------------------------------------------------------------------------


class ReplicasReadyCheck(Strict):
    """After a Kubernetes fault, at least `replicas` pods are routable (Ready, not
    terminating) again within `within`, and stay so to the end of the phase."""

    fault: Name = Field(
        description="The kubernetes fault: its cluster, namespace and pods are watched, and "
        "the time is measured from it.",
    )
    replicas: PositiveInt | None = Field(
        default=None,
        description="Routable pods needed (default: as many as just before the fault).",
    )
    within: Duration = Field(description="Bound on the time from the fault to `replicas`.")
    since: Literal["applied", "reverted"] = Field(
        default="applied",
        description="Measure from the fault's action (applied) or from its revert "
        "(reverted: a drain's pods can only come back once the node is uncordoned).",
    )
    selector: dict[str, str] | None = Field(
        default=None,
        description="The pods counted, by labels (default: the fault's pods); give the "
        "Service's selector when the fault targets only some of its pods.",
    )


class ReadyServesCheck(Strict):
    """Every pod Kubernetes calls Ready answers its health URL: a Ready pod whose URL fails
    for longer than `grace` is traffic sent to a pod that is not serving."""

    fault: Name = Field(description="The kubernetes fault whose cluster and pods are watched.")
    selector: dict[str, str] | None = Field(
        default=None,
        description="The pods judged, by labels (default: the fault's pods); give the "
        "Service's selector when the fault targets only some of its pods.",
    )
    urls: dict[str, str] = Field(
        min_length=1,
        description="Health URL of each Deployment's pod, by Deployment name (e.g. "
        "{vllm-0: http://127.0.0.1:18200/health}); its pods are judged against it.",
    )
    grace: Duration = Field(
        default=5.0,
        description="Longest a Ready pod may fail its URL: the kubelet needs a moment to see "
        "a container die, and a busy engine may miss a poll.",
    )
    poll_interval: Duration = Field(default=0.5, description="Time between two rounds of polls.")
    poll_timeout: Duration = Field(
        default=2.0, description="A poll without a 2xx this soon counts as failed."
    )

    @field_validator("urls")
    @classmethod
    def _urls(cls, urls: dict[str, str]) -> dict[str, str]:
        return {name: http_url(url) for name, url in urls.items()}


# --- the probes -------------------------------------------------------------------------------


def _fault_spec(ctx: RunContext, name: str) -> KubernetesFault:
    from llmdrill.faults.kubernetes import KubernetesFault

    fault = ctx.scenario.faults.get(name)
    spec = fault.spec_as(KubernetesFault) if fault is not None else None
    if spec is None:
        raise ValueError(f"fault '{name}' is not a kubernetes fault")
    return spec


def _watcher(ctx: RunContext, check_name: str, fault: str,
             selector: dict[str, str] | None) -> Any:
    """A pod watcher on the fault's cluster and pods (or `selector`), tagged with the check."""
    from llmdrill.faults.kube_api import KubeApi, deployment_path
    from llmdrill.probes.kube_events import KubeWatcher

    spec = _fault_spec(ctx, fault)
    store = ctx.store
    assert store is not None

    def api() -> KubeApi:
        return KubeApi(spec.kubeconfig, spec.context, spec.timeout)

    labels = selector or dict(spec.selector)
    if not labels and spec.deployment is not None:
        with api() as client:
            dep = client.get(deployment_path(spec.namespace, spec.deployment))
        labels = dict(((dep.get("spec") or {}).get("selector") or {}).get("matchLabels")
                      or {})
    return KubeWatcher(api, spec.namespace, labels, store.add_event,
                       {"check": check_name, "source": "check"})


def probe_replicas(ctx: RunContext, check_name: str, spec: ReplicasReadyCheck,
                   stop: threading.Event) -> None:
    if ctx.store is None:
        return
    watcher = _watcher(ctx, check_name, spec.fault, spec.selector)
    watcher.start()
    try:
        stop.wait()
    finally:
        watcher.stop()


def probe_serving(ctx: RunContext, check_name: str, spec: ReadyServesCheck,
                  stop: threading.Event) -> None:
    store = ctx.store
    if store is None:
        return
    watcher = _watcher(ctx, check_name, spec.fault, spec.selector)
    watcher.start()
    try:
        # No keep-alive: each poll shows the pod accepts connections now.
        with httpx.Client(timeout=spec.poll_timeout, trust_env=False, follow_redirects=False,
                          limits=httpx.Limits(max_keepalive_connections=0)) as client:
            while not stop.is_set():
                began = time.time()
                for deployment, url in spec.urls.items():
                    sent = time.time()
                    ok, status, error = poll_once(client, url, spec.poll_timeout)
                    store.add_event(sent, SERVING, {
                        "check": check_name, "deployment": deployment, "url": url, "ok": ok,
                        "status": status, "error": error, "at": time.time()})
                stop.wait(max(0.05, spec.poll_interval - (time.time() - began)))
    finally:
        watcher.stop()


# --- pure evaluation helpers -------------------------------------------------------------------


def _states(evidence: Evidence, check: str, fault: str, selector: dict[str, str] | None
            ) -> list[tuple[float, dict[str, Any]]]:
    """The pod states the fault's watch and this check's probe recorded (errors apart)."""
    return sorted(((ts, d) for ts, d in evidence.events_of(POD)
                   if (d.get("fault") == fault or d.get("check") == check) and "error" not in d
                   and (selector is None or matches(d.get("labels") or {}, selector))),
                  key=lambda e: e[0])


def _watch_errors(evidence: Evidence, check: str, fault: str) -> list[float]:
    return sorted(ts for ts, d in evidence.events_of(POD)
                  if (d.get("fault") == fault or d.get("check") == check) and "error" in d)


def reference_time(evidence: Evidence, fault: str, since: str) -> float | None:
    """The fault's first action (its earliest kube_action, else its fault_applied), or its
    first revert."""
    if since == "reverted":
        times = [ts for ts, d in evidence.events_of(EventKind.FAULT_REVERTED)
                 if d.get("fault") == fault]
        return min(times) if times else None
    times = [ts for ts, d in evidence.events_of(ACTION) if d.get("fault") == fault]
    times += [ts for ts, d in evidence.events_of(EventKind.FAULT_APPLIED)
              if d.get("fault") == fault]
    return min(times) if times else None


def count_at(counts: Sequence[tuple[float, int]], t: float) -> int | None:
    """Routable pods at time t (the last change at or before t); None before any record."""
    found = None
    for ts, n in counts:
        if ts > t:
            break
        found = n
    return found


def recovery(counts: Sequence[tuple[float, int]], ref: float, end: float, want: int
             ) -> tuple[float | None, bool, int | None]:
    """(when `want` routable pods were reached for good after ref, whether the count was
    ever below it after ref, the count at the end). Reached is None if it is short at the
    end; ref itself when it never fell short."""
    at_ref = count_at(counts, ref)
    below = at_ref is not None and at_ref < want
    last_up: float | None = None if below else ref
    for ts, n in counts:
        if ts <= ref or ts > end:
            continue
        if n < want:
            below = True
            last_up = None
        elif last_up is None:
            last_up = ts
    final = count_at(counts, end)
    if final is None or final < want:
        return None, below, final
    return last_up, below, final


def _timeline(states: Sequence[tuple[float, dict[str, Any]]], ref: float, start: float,
              end: float) -> list[dict[str, Any]]:
    shown = []
    for ts, d in states:
        if not start - 1 <= ts <= end:
            continue
        item: dict[str, Any] = {"at_s": round(ts - ref, 3), "pod": d.get("pod"),
                                "routable": d.get("routable"), "phase": d.get("phase"),
                                "restarts": d.get("restarts")}
        if d.get("terminating") or d.get("deleted"):
            item["gone"] = "deleted" if d.get("deleted") else "terminating"
        reasons = sorted({str(r) for c in (d.get("containers") or {}).values()
                          for r in (c.get("reason"), c.get("last_reason")) if r})
        if reasons:
            item["reasons"] = reasons
        shown.append(item)
    return shown[:MAX_SHOWN]


def evaluate_replicas_ready(name: str, phase: str, spec: ReplicasReadyCheck,
                            evidence: Evidence, window: Window) -> CheckResult:
    kind = "replicas_ready"
    expected: dict[str, Any] = {"replicas": spec.replicas, "within_s": spec.within,
                                "since": spec.since}
    observed: dict[str, Any] = {"fault": spec.fault}

    def result(status: Any, summary: str) -> CheckResult:
        return make_result(name, kind, phase, status, summary, window=window,
                           observed=observed, expected=expected)

    crash = _probe_crash(evidence, name)
    if crash:
        return result("inconclusive", f"inconclusive: the pod watch crashed: {crash}")
    ref = reference_time(evidence, spec.fault, spec.since)
    if ref is None or ref > window.end:
        what = "applied" if spec.since == "applied" else "reverted"
        return result("inconclusive", f"inconclusive: fault '{spec.fault}' was not {what} "
                                      f"by the end of phase '{phase}'")
    states = _states(evidence, name, spec.fault, spec.selector)
    if not states:
        return result("inconclusive", "inconclusive: no pod state was recorded (the watch "
                                      "failed, or no pod matches): nothing shows the replicas")
    counts = routable_counts(states)
    start = max(ref, window.start)
    before = count_at(counts, ref)
    want = spec.replicas or before
    observed.update({"ready_before": before, "pods_seen": len({d.get("pod") for _, d in states}),
                     "timeline": _timeline(states, ref, start, window.end)})
    if want is None or want == 0:
        return result("inconclusive", "inconclusive: no pod was routable before the fault, "
                                      "so how many should come back is unknown: give replicas")
    expected["replicas"] = want
    reached, fell, final = recovery(counts, ref, window.end, want)
    lowest = min([n for ts, n in counts if ref < ts <= window.end] + [before or 0])
    observed.update({"fewest_after": lowest, "ready_at_end": final, "fell_short": fell})
    errors = [ts for ts in _watch_errors(evidence, name, spec.fault) if ts >= ref]
    if reached is None:
        if errors and max(errors) > states[-1][0]:
            return result("inconclusive", f"inconclusive: the pod watch failed "
                                          f"{fmt(max(errors) - ref)}s after the fault and did not "
                                          "resume: the last state seen is not the end")
        return result("failed", f"{final} of {want} replicas routable at the end of the phase "
                                f"({fmt(window.end - ref)}s after the fault {spec.since}); they "
                                f"did not come back (limit {fmt(spec.within)}s)")
    took = reached - ref
    observed["ready_after_s"] = round(took, 3)
    if not fell:
        return result("passed", f"{want} replicas routable all along after the fault "
                                f"(never fewer; {final} at the end)")
    if took > spec.within + _EPS:
        return result("failed", f"{want} replicas routable again only {fmt(took)}s after the "
                                f"fault {spec.since} (limit {fmt(spec.within)}s; fewest "
                                f"{lowest})")
    return result("passed", f"{want} replicas routable again {fmt(took)}s after the fault "
                            f"{spec.since} (limit {fmt(spec.within)}s; fewest {lowest})")


def _probe_crash(evidence: Evidence, name: str) -> str | None:
    crashes = [d for _, d in evidence.events_of(EventKind.PROBE_ERROR) if d.get("check") == name]
    return str(crashes[0].get("error")) if crashes else None


Interval = tuple[float, float]


def routable_spans(states: Sequence[tuple[float, dict[str, Any]]], deployment: str,
                   end: float) -> list[Interval]:
    """When at least one pod of the Deployment was routable: [start, end) spans."""
    current: dict[str, bool] = {}
    spans: list[Interval] = []
    opened: float | None = None
    for ts, d in states:
        if d.get("deployment") != deployment:
            continue
        current[str(d.get("pod"))] = bool(d.get("routable"))
        up = any(current.values())
        if up and opened is None:
            opened = ts
        elif not up and opened is not None:
            spans.append((opened, ts))
            opened = None
    if opened is not None:
        spans.append((opened, end))
    return spans


def failing_spans(polls: Sequence[tuple[float, dict[str, Any]]], end: float
                  ) -> list[Interval]:
    """Runs of failed polls: from the first failed poll to the answer of the next good one."""
    spans: list[Interval] = []
    opened: float | None = None
    for ts, d in sorted(polls, key=lambda p: p[0]):
        if not d.get("ok"):
            if opened is None:
                opened = ts
        elif opened is not None:
            spans.append((opened, float(d.get("at") or ts)))
            opened = None
    if opened is not None:
        spans.append((opened, end))
    return spans


def node_down_spans(evidence: Evidence, end: float, grace: float) -> list[Interval]:
    """From each node restart's stop until its node is Ready again after the start, plus
    `grace` for the kubelet to report its pods."""
    spans: list[Interval] = []
    actions = sorted(((ts, d) for ts, d in evidence.events_of(ACTION)
                      if d.get("action") == "node_restart"), key=lambda e: e[0])
    nodes = evidence.events_of(NODE)
    for ts, d in actions:
        if d.get("step") != "stop":
            continue
        fault, node = d.get("fault"), d.get("node")
        start = next((t for t, a in actions if t > ts and a.get("fault") == fault
                      and a.get("step") in ("start", "started")), None)
        start = start if start is not None else next(
            (t for t, r in evidence.events_of(EventKind.FAULT_REVERTED)
             if t > ts and r.get("fault") == fault), None)
        if start is None:
            spans.append((ts, end))
            continue
        back = next((t for t, n in sorted(nodes, key=lambda e: e[0]) if t >= start
                     and n.get("node") == node and n.get("ready") == "True"), start)
        spans.append((ts, back + grace))
    return spans


def intersect(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    out = []
    for s1, e1 in a:
        for s2, e2 in b:
            lo, hi = max(s1, s2), min(e1, e2)
            if hi > lo:
                out.append((lo, hi))
    return sorted(out)


def subtract(spans: Sequence[Interval], holes: Sequence[Interval]) -> list[Interval]:
    out = list(spans)
    for hs, he in holes:
        nxt = []
        for s, e in out:
            if he <= s or hs >= e:
                nxt.append((s, e))
                continue
            if s < hs:
                nxt.append((s, hs))
            if he < e:
                nxt.append((he, e))
        out = nxt
    return sorted(out)


def evaluate_ready_serves(name: str, phase: str, spec: ReadyServesCheck, evidence: Evidence,
                          window: Window) -> CheckResult:
    kind = "ready_serves"
    expected: dict[str, Any] = {"grace_s": spec.grace, "urls": dict(spec.urls)}
    observed: dict[str, Any] = {"fault": spec.fault}

    def result(status: Any, summary: str) -> CheckResult:
        return make_result(name, kind, phase, status, summary, window=window,
                           observed=observed, expected=expected)

    crash = _probe_crash(evidence, name)
    if crash:
        return result("inconclusive", f"inconclusive: the probe crashed: {crash}")
    states = _states(evidence, name, spec.fault, spec.selector)
    polls = [(ts, d) for ts, d in evidence.events_of(SERVING, window.start, window.end)
             if d.get("check") == name]
    if not polls:
        return result("inconclusive", "inconclusive: no health poll was made")
    if not states:
        return result("inconclusive", "inconclusive: no pod state was recorded (the watch "
                                      "failed, or no pod matches)")
    excluded = node_down_spans(evidence, window.end, spec.grace)
    clip = [(window.start, window.end)]
    problems: list[str] = []
    per: dict[str, Any] = {}
    covered = 0.0
    for deployment, url in spec.urls.items():
        mine = [(ts, d) for ts, d in polls if d.get("deployment") == deployment]
        routable = intersect(routable_spans(states, deployment, window.end), clip)
        failing = failing_spans(mine, window.end)
        bad = subtract(intersect(routable, failing), excluded)
        longest = max(bad, key=lambda s: s[1] - s[0], default=None)
        seconds = sum(e - s for s, e in routable)
        if mine and routable:
            covered += sum(e - s for s, e in intersect(
                routable, [(min(ts for ts, _ in mine), max(ts for ts, _ in mine))]))
        per[deployment] = {
            "url": url, "polls": len(mine), "failed_polls": sum(1 for _, d in mine
                                                              if not d.get("ok")),
            "routable_s": round(seconds, 3),
            "ready_not_serving_s": round(sum(e - s for s, e in bad), 3),
            "longest_s": None if longest is None else round(longest[1] - longest[0], 3),
        }
        if longest is not None and longest[1] - longest[0] > spec.grace + _EPS:
            pods = sorted({str(d.get("pod")) for ts, d in states
                           if d.get("deployment") == deployment and d.get("routable")
                           and ts <= longest[1]})
            problems.append(
                f"{deployment} ({', '.join(pods[-1:]) or '?'}) was Ready for "
                f"{fmt(longest[1] - longest[0], 1)}s (from +{fmt(longest[0] - window.start, 1)}s"
                f" into the phase) while {url} failed: traffic was sent to a pod that was not "
                "serving")
    observed.update({"deployments": per, "excluded_node_down": [
        (round(s - window.start, 3), round(e - window.start, 3)) for s, e in excluded]})
    unknown = sorted(set(spec.urls) - {str(d.get("deployment")) for _, d in states})
    if unknown:
        observed["deployments_without_pods"] = unknown
    if problems:
        return result("failed", "; ".join(problems) + f" (grace {fmt(spec.grace)}s)")
    if covered <= 0:
        return result("inconclusive", "inconclusive: no pod was routable while the probe "
                                      "polled: nothing shows whether Ready pods serve")
    total = sum(v["polls"] for v in per.values())
    return result("passed", f"every pod Kubernetes called Ready answered: {total} polls over "
                            f"{fmt(covered, 1)}s of Ready time, none failing longer than "
                            f"{fmt(spec.grace)}s")


# --- references and the kinds -----------------------------------------------------------------


def _kube_fault(scenario: Any, fault: str, location: Location) -> list[Problem]:
    found = refs.unknown_fault(scenario, fault, location)
    if found:
        return found
    if scenario.faults[fault].backend != "kubernetes":
        return [(location, f"fault '{fault}' is not a kubernetes fault")]
    return []


def replicas_references(spec: ReplicasReadyCheck, scenario: Any, location: Location
                        ) -> list[Problem]:
    return _kube_fault(scenario, spec.fault, (*location, "fault"))


def serves_references(spec: ReadyServesCheck, scenario: Any, location: Location
                      ) -> list[Problem]:
    return _kube_fault(scenario, spec.fault, (*location, "fault"))


REPLICAS_READY = CheckKind(
    spec=ReplicasReadyCheck,
    evaluate=evaluate_replicas_ready,
    description="After a Kubernetes fault, N pods routable again within T.",
    runbook=(
        "After the Kubernetes fault fewer pods than needed were routable (Ready, not "
        "terminating) within the time. Look at the pods' events and restart counts, the "
        "readiness probe's delays and thresholds, image pulls and scheduling (node "
        "resources), and the Deployment's rollout settings."
    ),
    probe=probe_replicas,
    references=replicas_references,
)

READY_SERVES = CheckKind(
    spec=ReadyServesCheck,
    evaluate=evaluate_ready_serves,
    description="Every pod Kubernetes calls Ready answers its health URL.",
    runbook=(
        "Kubernetes called a pod Ready while its health URL did not answer, so the Service "
        "sent traffic to a pod that was not serving. Add or tighten the readiness probe "
        "(path, initialDelaySeconds, periodSeconds, failureThreshold) so it checks the engine "
        "itself, not only the process."
    ),
    probe=probe_serving,
    references=serves_references,
)
