"""oom_observed: the kernel's OOM killer struck in a Docker fault's containers.

Evidence, both recorded by the Docker injector: the engine's `oom` events (its event
stream, with the engine's own timestamps) and each container's state as inspected when
the fault ended (`docker_state`: State.OOMKilled, which a restart clears, so the events
come first). The clock starts at the fault's Docker call. An `oom` event means some
process in the container was killed, maybe only the hog: `container_died` also asks for
the container's `die` after it. No OOM fails the check with what was seen instead.

Only evidence of this fault counts: events in the phase from the fault's start, and
container states inspected at its end (within the phase plus a grace) whose OOM kill
(the state's FinishedAt) came after the fault started: an OOMKilled flag left by an
earlier run says nothing. `within` bounds every kind of evidence: an OOM known only from
a state without a usable FinishedAt cannot be timed, so with `within` it is inconclusive.
No Docker fault applied in the phase is inconclusive (nothing to judge).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from llmdrill.checks.alerts import rfc3339
from llmdrill.checks.base import fmt, make_result
from llmdrill.model.events import EventKind
from llmdrill.model.records import Evidence
from llmdrill.model.result import CheckResult, CheckStatus, Window
from llmdrill.plugin import CheckKind
from llmdrill.scenario.fields import (
    Name,
    Strict,
)
from llmdrill.scenario.units import Duration

# --- the spec: the YAML under this key ----------------------------------------


class OomObservedCheck(Strict):
    """The kernel's OOM killer struck in the fault's containers: an `oom` event from the
    Docker Engine, or State.OOMKilled, within the phase (and within `within` of the
    fault). Reported with its time; no OOM fails the check and says what was seen."""

    fault: Name | None = Field(
        default=None,
        description="The Docker fault whose containers are watched and whose apply starts "
        "the clock (default: the first Docker fault applied in the phase).",
    )
    within: Duration | None = Field(
        default=None, description="The first OOM must come this soon after the fault."
    )
    container_died: bool = Field(
        default=False,
        description="Also require the container to die (a `die` event) after the OOM, not "
        "only a process in it.",
    )


EVENT = EventKind.DOCKER_EVENT
STATE = EventKind.DOCKER_STATE
STATE_GRACE_S = 60.0  # states are inspected at the revert, just after the phase's end
_EPS = 1e-9


def fault_start(evidence: Evidence, window: Window, fault: str | None
                ) -> tuple[float, str] | None:
    """When the fault's Docker call began, and its name (default: the first Docker fault
    of the window)."""
    actions = sorted((ts, str(d.get("fault"))) for ts, d in
                     evidence.events_of(EventKind.DOCKER_ACTION, window.start, window.end))
    if fault is not None:
        actions = [a for a in actions if a[1] == fault]
    return actions[0] if actions else None


def _of_fault(detail: dict[str, Any], fault: str | None) -> bool:
    return fault is None or detail.get("fault") in (None, fault)


def container_events(evidence: Evidence, window: Window, fault: str | None
                     ) -> list[tuple[float, dict[str, Any]]]:
    """The fault's container events in the window, each once: two faults on the same
    container (a squeeze and a hog) each record the engine's events."""
    seen: set[tuple[float, str, str]] = set()
    found = []
    for ts, d in evidence.events_of(EVENT, window.start, window.end):
        key = (round(ts, 6), str(d.get("action")), str(d.get("container")))
        if key in seen or not _of_fault(d, fault):
            continue
        seen.add(key)
        found.append((ts, d))
    return sorted(found, key=lambda e: e[0])


def evaluate_oom_observed(name: str, phase: str, spec: OomObservedCheck,
                          evidence: Evidence, window: Window) -> CheckResult:
    kind = "oom_observed"
    expected: dict[str, Any] = {"fault": spec.fault, "within_s": spec.within,
                                "container_died": spec.container_died}
    observed: dict[str, Any] = {}

    def result(status: CheckStatus, summary: str) -> CheckResult:
        return make_result(name, kind, phase, status, summary, window=window,
                           observed=observed, expected=expected)

    started = fault_start(evidence, window, spec.fault)
    if started is None:
        what = (f"Docker fault '{spec.fault}' was not applied" if spec.fault
                else "no Docker fault was applied")
        return result("inconclusive", f"inconclusive: no evidence of memory pressure: "
                                      f"{what} in phase '{phase}'")
    t0, fault = started
    events = container_events(evidence, window, spec.fault)
    ooms = [(ts, d) for ts, d in events if d.get("action") == "oom" and ts >= t0 - 1.0]
    states = [d for _, d in evidence.events_of(STATE, t0, window.end + STATE_GRACE_S)
              if _of_fault(d, spec.fault) and "error" not in d]
    # An OOM kill known from a state: when the container last stopped, if it says; one
    # that stopped before the fault began is an older OOM, not this fault's.
    killed_at: dict[str, float | None] = {}
    stale: list[str] = []
    for d in states:
        if not d.get("oom_killed"):
            continue
        when = rfc3339(str(d.get("finished_at") or ""))
        container = str(d.get("container"))
        if when is not None and not t0 - 1.0 <= when <= window.end + STATE_GRACE_S:
            stale.append(container)
            continue
        previous = killed_at.get(container)
        killed_at[container] = when if previous is None else min(previous, when or previous)
    oom_killed = sorted(killed_at)
    state_times = [w for w in killed_at.values() if w is not None]
    actions: dict[str, int] = {}
    for _, d in events:
        actions[str(d.get("action"))] = actions.get(str(d.get("action")), 0) + 1
    observed.update({
        "fault": fault, "fault_at_s": round(t0 - window.start, 3),
        "oom_events": len(ooms),
        "containers": sorted({str(d.get("container")) for _, d in ooms}),
        "state_oom_killed": oom_killed,
        "state_oom_killed_before_fault": sorted(set(stale)),
        "container_events": actions,
        "states": [{k: d.get(k) for k in ("container", "status", "oom_killed", "exit_code",
                                          "restart_count")} for d in states],
    })
    if not ooms and not oom_killed:
        seen = ", ".join(f"{k} {v}" for k, v in sorted(actions.items())) or "none"
        return result("failed", (
            f"no OOM: the kernel killed nothing in the containers of fault '{fault}' in "
            f"phase '{phase}' (no `oom` event, State.OOMKilled false; container events "
            f"seen: {seen}); the memory pressure was not enough: squeeze the limit "
            "lower or give the hog more memory"))
    problems: list[str] = []
    parts: list[str] = []
    first = min([ts for ts, _ in ooms] + state_times, default=None)
    if not ooms:
        timed = "" if state_times else " (no `oom` event was recorded and the state has no " \
                                       "usable FinishedAt, so no time)"
        parts.append(f"State.OOMKilled of {', '.join(oom_killed)}{timed}")
    if first is None:
        if spec.within is not None:
            return result("inconclusive", (
                f"inconclusive: State.OOMKilled of {', '.join(oom_killed)} but no time for "
                f"it (no `oom` event, no FinishedAt): nothing shows the OOM came within "
                f"{fmt(spec.within)}s of fault '{fault}'"))
    else:
        after = first - t0
        observed["first_oom_after_s"] = round(after, 3)
        observed["first_oom_at_s"] = round(first - window.start, 3)
        if ooms:
            parts.append(f"{len(ooms)} OOM event(s), the first {fmt(after)}s after fault "
                         f"'{fault}'")
        else:
            parts[-1] += f", killed {fmt(after)}s after fault '{fault}'"
        if spec.within is not None and after > spec.within + _EPS:
            problems.append(f"the first OOM came {fmt(after)}s after fault '{fault}' (limit "
                            f"{fmt(spec.within)}s)")
    from_ = first if first is not None else t0
    dies = [(ts, d) for ts, d in events if d.get("action") == "die" and ts >= from_ - _EPS]
    if dies:
        ts, d = dies[0]
        observed["died_after_s"] = round(ts - t0, 3)
        observed["exit_code"] = d.get("exit_code")
        parts.append(f"the container died {fmt(ts - t0)}s after the fault (exit "
                     f"{d.get('exit_code')})")
    elif spec.container_died:
        problems.append("the container did not die after the OOM (only a process in it was "
                        "killed, e.g. the hog)")
    else:
        parts.append("the container did not die (a process in it was killed)")
    starts = [ts for ts, d in events if d.get("action") == "start"
              and (not dies or ts >= dies[0][0])]
    if dies and starts:
        observed["restarted_after_s"] = round(starts[0] - t0, 3)
        parts.append(f"started again {fmt(starts[0] - t0)}s after the fault")
    if problems:
        return result("failed", "; ".join(problems) + " (" + "; ".join(parts) + ")")
    return result("passed", "; ".join(parts))


OOM_OBSERVED = CheckKind(
    spec=OomObservedCheck,
    evaluate=evaluate_oom_observed,
    description="The OOM killer struck in the fault's containers, timed.",
    runbook=(
        "The memory fault did not lead to an OOM kill in the fault's containers in time (or "
        "it could not be timed). Check the container's memory limit against what the hog "
        "allocates, that the fault targeted the right containers, and the Docker events (oom, "
        "die) in the check's evidence."
    ),
    probe=None,
)
