"""Every check kind (kv_cache_cleanup has its own tests) refuses to pass on empty, absent,
too thin or contradicting evidence: inconclusive or failed, never passed."""

from __future__ import annotations

from typing import Any

import pytest

from llmdrill.checks import evaluate_check
from llmdrill.model.records import Evidence, FaultEvent, MetricSample, PhaseWindow, RequestRecord
from llmdrill.model.result import CheckResult
from llmdrill.scenario.models import Check

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0
PHASES = [
    PhaseWindow("baseline", T0, T0 + 30),
    PhaseWindow("fault", T0 + 30, T0 + 60, faults=("f",)),
    PhaseWindow("recover", T0 + 60, T0 + 90),
]
Event = tuple[float, str, dict[str, Any]]


def rec(start: float, duration: float = 0.5, *, error: str | None = None,
        ttft: float = 0.1, finished: bool = True) -> RequestRecord:
    return RequestRecord(start=T0 + start, end=T0 + start + duration,
                         ttft=None if error else ttft, error_class=error,
                         output_tokens=0 if error else 10, finished=finished)


def every(start: float, end: float, step: float = 0.5, **kw: Any) -> list[RequestRecord]:
    return [rec(start + i * step, **kw) for i in range(int((end - start) / step))]


def judge(phase: str, *, requests: list[RequestRecord] | None = None,
          metrics: list[MetricSample] | None = None, events: list[Event] | None = None,
          faults: list[FaultEvent] | None = None, **kind: Any) -> CheckResult:
    ev = Evidence(requests=requests or [], metrics=metrics or [], phases=PHASES,
                  faults=faults or [], events=sorted(events or [], key=lambda e: e[0]),
                  run_end=T0 + 90)
    return evaluate_check(Check.model_validate({"name": "c", "phase": phase, **kind}), 0, ev)


def not_passed(result: CheckResult, status: str = "inconclusive") -> None:
    assert result.status == status, result.summary
    if status == "inconclusive":
        assert result.summary.startswith("inconclusive")


# --- slo ------------------------------------------------------------------------------


def test_slo_empty_and_thin_evidence() -> None:
    not_passed(judge("fault", slo={"error_rate": {"max": 0.1}}))
    thin = judge("fault", requests=every(30, 32), slo={"error_rate": {"max": 0.1},
                                                       "min_requests": 10})
    not_passed(thin)
    assert thin.observed["requests"] == 4 and thin.expected["min_requests"] == 10
    # Requests cut by the load stop are no outcome: they do not make up the number.
    cut = judge("fault", requests=every(30, 60, finished=False), slo={"error_rate": {"max": 1}})
    not_passed(cut)


def test_slo_contradicting_evidence_fails() -> None:
    bad = judge("fault", requests=every(30, 60, error="reset"),
                slo={"error_rate": {"max": 0.1}, "min_requests": 5})
    not_passed(bad, "failed")


# --- no_hung_requests -----------------------------------------------------------------


def test_no_hung_requests_empty_thin_and_hung() -> None:
    not_passed(judge("fault", no_hung_requests={"deadline": "10s"}))
    thin = judge("fault", requests=every(30, 31), no_hung_requests={"deadline": "10s",
                                                                     "min_requests": 5})
    not_passed(thin)
    assert "2 requests started in the window, need 5" in thin.summary
    # One hung request fails however few there are.
    hung = judge("fault", requests=[rec(31, 20)], no_hung_requests={"deadline": "10s",
                                                                     "min_requests": 5})
    not_passed(hung, "failed")


# --- recovers -------------------------------------------------------------------------

RECOVERS = {"measure": "ttft_p95", "baseline_phase": "baseline", "within": "10s"}


def test_recovers_without_baseline_or_traffic_is_inconclusive() -> None:
    not_passed(judge("recover", requests=every(60, 90), recovers=RECOVERS))
    result = judge("recover", requests=every(0, 30), recovers=RECOVERS)
    not_passed(result)
    assert "requests needed to judge it" in result.summary
    # A trickle: one request per window is fewer than min_requests (3).
    sparse = every(0, 30) + every(60, 90, step=6.0)
    not_passed(judge("recover", requests=sparse, recovers=RECOVERS))


def test_recovers_with_most_requests_reset_is_no_recovery() -> None:
    # 90% of the recover phase's requests are reset fast; the few that succeed are quick.
    reqs = every(0, 30)
    for i, r in enumerate(every(60, 90, step=0.1)):
        reqs.append(r if i % 10 == 0 else rec(r.start - T0, 0.01, error="reset"))
    result = judge("recover", requests=reqs, recovers=RECOVERS)
    not_passed(result, "failed")
    assert "at most 5% errors" in result.summary
    # The same phase without the resets recovers at once.
    assert judge("recover", requests=every(0, 30) + every(60, 90, step=1.0),
                 recovers=RECOVERS).status == "passed"


# --- metric ---------------------------------------------------------------------------


def gauge(name: str, points: list[tuple[float, float]]) -> list[MetricSample]:
    return [MetricSample(T0 + t, name, v) for t, v in points]


def test_metric_absent_or_thin_is_inconclusive() -> None:
    spec = {"series": ["vllm:num_requests_running"], "max": 10}
    not_passed(judge("fault", metric=spec))
    one = gauge("vllm:num_requests_running", [(40, 1)])
    result = judge("fault", metrics=one, metric=spec)
    not_passed(result)
    assert "1 samples" in result.summary and "need 2" in result.summary
    # increase always needs two scrapes, whatever min_samples says.
    counter = {"series": ["vllm:num_preemptions_total"], "aggregate": "increase", "min": 1,
               "min_samples": 1}
    not_passed(judge("fault", metrics=gauge("vllm:num_preemptions_total", [(40, 5)]),
                     metric=counter))
    over = gauge("vllm:num_requests_running", [(40, 1), (45, 30)])
    not_passed(judge("fault", metrics=over, metric=spec), "failed")


# --- queue_bounded --------------------------------------------------------------------

WAITING = "vllm:num_requests_waiting"


def test_queue_bounded_absent_or_thin_is_inconclusive_over_bound_fails() -> None:
    not_passed(judge("fault", queue_bounded={"max_waiting": 8}))
    result = judge("fault", metrics=gauge(WAITING, [(40, 1), (41, 0)]),
                   queue_bounded={"max_waiting": 8})
    not_passed(result)
    assert "2 samples" in result.summary and "need 3" in result.summary
    # One sample over the bound is enough to fail.
    not_passed(judge("fault", metrics=gauge(WAITING, [(40, 50)]),
                     queue_bounded={"max_waiting": 8}), "failed")


# --- engine_healthy -------------------------------------------------------------------


def poll(t: float, ok: bool = True, check: str = "c") -> Event:
    return (T0 + t, "health_poll", {"check": check, "ok": ok, "status": 200 if ok else None,
                                    "elapsed_s": 0.01, "error": None if ok else "refused"})


def test_engine_healthy_needs_polls_all_through_the_phase() -> None:
    not_passed(judge("fault", engine_healthy={}))
    # One good poll is not health.
    result = judge("fault", events=[poll(31)], engine_healthy={})
    not_passed(result)
    assert "1 health polls in the phase, need 3" in result.summary
    # Polls only in the first half leave the second half unwatched.
    half = judge("fault", events=[poll(t) for t in range(30, 45)], engine_healthy={})
    not_passed(half)
    assert "no health poll for" in half.summary
    # Polls of another phase or another check are not this check's evidence.
    other = [poll(t) for t in range(0, 30)] + [poll(t, check="x") for t in range(30, 60)]
    not_passed(judge("fault", events=other, engine_healthy={}))
    full = [poll(t) for t in range(30, 60)]
    assert judge("fault", events=full, engine_healthy={}).status == "passed"
    failing = [*full, poll(45.5, ok=False)]
    not_passed(judge("fault", events=failing, engine_healthy={}), "failed")


# --- caps_enforced --------------------------------------------------------------------

CAPS = {"context_length": 512, "rounds": 2,
        "cases": [{"name": "big", "kind": "prompt_over_context"}]}


def caps_events(rounds: int, health: bool = True) -> list[Event]:
    body_ok = {"body_ok": True, "schema_problems": [], "message_ok": True,
               "message_excerpt": "over the maximum context length", "request_id": None}
    out: list[Event] = []
    for r in range(rounds):
        out.append((T0 + 31 + 10 * r, "caps_probe",
                    {"check": "c", "case": "big", "kind": "prompt_over_context", "round": r,
                     "status": 400, "elapsed_s": 0.01, "error_class": None, **body_ok}))
        if health:
            out.append((T0 + 32 + 10 * r, "caps_health",
                        {"check": "c", "round": r, "status": 200, "ok": True}))
    return out


def test_caps_enforced_needs_every_round() -> None:
    not_passed(judge("fault", caps_enforced=CAPS))
    one = judge("fault", events=caps_events(1), caps_enforced=CAPS)
    not_passed(one)
    assert "big 1/2" in one.summary and "1/2 rounds had a normal request" in one.summary
    no_health = judge("fault", events=caps_events(2, health=False), caps_enforced=CAPS)
    not_passed(no_health)
    assert judge("fault", events=caps_events(2), caps_enforced=CAPS).status == "passed"


# --- stream_recovery and warm_up ------------------------------------------------------

KILL = 35.0


def node_world(*, die: bool, failed_polls: int, requests: list[RequestRecord],
               token: bool = True) -> dict[str, Any]:
    """A kill at +35s; polls every 0.5s, `failed_polls` of them failing from +35.5s."""
    events: list[Event] = [(T0 + KILL, "docker_action", {"fault": "f", "action": "kill"})]
    if die:
        events.append((T0 + KILL + 0.1, "docker_event", {"action": "die", "fault": "f"}))
    t = 30.0
    while t < 60:
        down = KILL + 0.5 <= t < KILL + 0.5 + failed_polls * 0.5
        events.append((T0 + t, "recovery_poll", {"check": "c", "ok": not down,
                                                 "at": T0 + t + 0.01}))
        t += 0.5
    if token:
        events.append((T0 + KILL + 5, "token_probe", {"check": "c", "ok": True,
                                                      "first_token_at": T0 + KILL + 5.1}))
    return {"requests": requests, "events": events}


SR = {"fault": "f", "deadline": "5s"}
WU = {"fault": "f", "baseline_phase": "baseline", "healthy_within": "30s",
      "first_token_within": "30s", "ttft_within": "30s", "slack": 0.1}


@pytest.mark.parametrize("kind", ["stream_recovery", "warm_up"])
def test_no_die_and_nothing_failing_is_inconclusive(kind: str) -> None:
    # No die, every request completes, every poll answers: nothing shows the node went down.
    world = node_world(die=False, failed_polls=0, requests=every(0, 60))
    result = judge("fault", **world, **{kind: SR if kind == "stream_recovery" else WU})
    not_passed(result)
    assert "no evidence the engine went down" in result.summary


@pytest.mark.parametrize("kind", ["stream_recovery", "warm_up"])
def test_one_or_two_failed_polls_are_a_blip_not_an_outage(kind: str) -> None:
    world = node_world(die=False, failed_polls=2, requests=every(0, 60))
    result = judge("fault", **world, **{kind: SR if kind == "stream_recovery" else WU})
    not_passed(result)
    assert "at most 2 failed health polls in a row (need 3)" in result.summary


def test_stream_recovery_needs_a_stream_actually_cut() -> None:
    # Down for real (a die), but every request in flight completed normally.
    reqs = every(0, 60, duration=0.4)
    reqs.append(rec(KILL - 0.2, 0.3))  # open at the kill, completed normally
    world = node_world(die=True, failed_polls=4, requests=reqs)
    result = judge("fault", **world, stream_recovery=SR)
    not_passed(result)
    assert "0 of 1 requests in flight at the kill were cut" in result.summary
    assert result.observed["in_flight_cut"] == 0


def test_warm_up_without_token_probes_or_traffic_after_is_inconclusive() -> None:
    world = node_world(die=True, failed_polls=4, requests=every(0, 30), token=False)
    result = judge("fault", **world, warm_up=WU)
    not_passed(result)
    assert "no token probe was sent" in result.summary
    assert "nothing shows TTFT came back" in result.summary


# --- oom_observed ---------------------------------------------------------------------


def docker_action(t: float) -> Event:
    return (T0 + t, "docker_action", {"fault": "hog", "action": "exec"})


def state(t: float, finished_at: str | None, oom_killed: bool = True) -> Event:
    return (T0 + t, "docker_state", {"fault": "hog", "container": "engine", "status": "running",
                                     "oom_killed": oom_killed, "finished_at": finished_at})


def iso(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(T0 + t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def test_oom_observed_absent_stale_or_late_evidence_does_not_pass() -> None:
    not_passed(judge("fault", oom_observed={}))
    # An OOMKilled flag from before the fault (FinishedAt earlier) is not this fault's OOM.
    stale = judge("fault", events=[docker_action(31), state(60, iso(10))], oom_observed={})
    not_passed(stale, "failed")
    assert stale.observed["state_oom_killed_before_fault"] == ["engine"]
    # A state recorded before the fault started does not count either.
    early = judge("fault", events=[docker_action(40), state(35, iso(36))], oom_observed={})
    not_passed(early, "failed")
    # `within` bounds state evidence too: killed 25s after the fault, limit 10s.
    late = judge("fault", events=[docker_action(31), state(60, iso(56))],
                 oom_observed={"within": "10s"})
    not_passed(late, "failed")
    assert "25s after fault 'hog'" in late.summary
    # A state without any time cannot show `within`.
    untimed = judge("fault", events=[docker_action(31), state(60, None)],
                    oom_observed={"within": "10s"})
    not_passed(untimed)
    # In time, it passes.
    ok = judge("fault", events=[docker_action(31), state(60, iso(36))],
               oom_observed={"within": "10s"})
    assert ok.status == "passed", ok.summary


# --- alerts ---------------------------------------------------------------------------

RULES: Event = (T0 - 5, "alert_rules", {"names": ["Down"]})
UP: Event = (T0 - 5, "alert_poll", {"source": "prometheus", "ok": True})


def blind(t: float) -> Event:
    return (T0 + t, "alert_poll", {"source": "prometheus", "ok": False})


def alert(t: float, st: str) -> Event:
    return (T0 + t, "alert_state", {"source": "prometheus", "alert": "Down", "state": st})


@pytest.mark.parametrize("kind", [
    {"alert_fires": {"alert": "Down", "within": "10s", "notification": False}},
    {"alert_resolves": {"alert": "Down", "within": "10s", "notification": False}},
    {"no_false_alarms": {"alerts": ["Down"], "notification": False}},
])
def test_no_prometheus_answer_is_not_a_pass(kind: dict[str, Any]) -> None:
    phase = "recover" if "alert_resolves" in kind else "fault"
    not_passed(judge(phase, **kind))  # no rules, no polls: nothing watched
    refused = (T0 - 5, "alert_rules", {"error": "refused"})
    not_passed(judge(phase, events=[refused], **kind))


def test_alert_checks_with_prometheus_blind_are_inconclusive() -> None:
    faults = [FaultEvent("f", T0 + 31, T0 + 60)]
    fires = {"alert": "Down", "within": "10s", "notification": False}
    result = judge("fault", events=[RULES, UP, blind(32)], faults=faults, alert_fires=fires)
    not_passed(result)
    assert "did not answer" in result.summary
    # Watched all along and never firing: a real failure.
    not_passed(judge("fault", events=[RULES, UP], faults=faults, alert_fires=fires), "failed")
    resolves = {"alert": "Down", "within": "10s", "notification": False}
    firing = [RULES, UP, alert(40, "firing")]
    result = judge("recover", events=[*firing, alert(62, "inactive"), blind(70)],
                   faults=faults, alert_resolves=resolves)
    not_passed(result)
    assert "nothing shows it stayed resolved" in result.summary
    quiet = judge("fault", events=[RULES, UP, blind(50)],
                  no_false_alarms={"alerts": ["Down"], "notification": False})
    not_passed(quiet)


# --- stream_recovery: streams the killed engine drained (`when_busy`) --------------------


def busy(running: float, polled: float = KILL - 0.03, met: bool = True) -> Event:
    return (T0 + polled + 0.01, "fault_busy", {"fault": "f", "met": met, "running": running,
                                               "polled_at": T0 + polled})


def drained_world(*events: Event, open_at_kill: int = 2) -> dict[str, Any]:
    """Down for real (a die); the requests open at the kill all complete a second later,
    as a killed engine's streams do when its grace period lets them finish. One request of
    the steady load ends at +34.9s, between the busy poll and the kill."""
    reqs = every(0, 60, duration=0.4)
    reqs += [rec(KILL - 0.5, 1.5) for _ in range(open_at_kill)]
    world = node_world(die=True, failed_polls=4, requests=reqs)
    world["events"] += list(events)
    return world


def test_stream_recovery_counts_streams_the_killed_engine_drained() -> None:
    result = judge("fault", **drained_world(busy(2)), stream_recovery=SR)
    assert result.status == "passed", result.summary
    # 2 running at the poll, 1 request (any replica's) ended before the kill: 1 is shown.
    assert result.observed["busy_at_kill"] == 2
    assert result.observed["ended_between_busy_poll_and_kill"] == 1
    assert result.observed["in_flight_drained"] == 1
    assert "1 of them on the killed engine, which drained them" in result.summary


def test_streams_the_kill_cut_are_not_counted_as_drained_too() -> None:
    # 3 running at the poll, 1 ended before the kill, 1 cut: at most 1 of the 2 that
    # completed is shown to be the killed engine's.
    world = drained_world(busy(3))
    world["requests"].append(rec(KILL - 0.5, 0.6, error="incomplete_stream"))
    result = judge("fault", **world, stream_recovery=SR)
    assert result.status == "passed", result.summary
    assert result.observed["in_flight_cut"] == 1
    assert result.observed["in_flight_drained"] == 1
    world = drained_world(busy(2))
    world["requests"].append(rec(KILL - 0.5, 0.6, error="incomplete_stream"))
    assert judge("fault", **world, stream_recovery=SR).observed["in_flight_drained"] == 0


@pytest.mark.parametrize(("event", "why"), [
    (None, "no wait for load on the fault"),
    (busy(2, met=False), "the wait was not met"),
    (busy(2, polled=KILL - 5), "the poll was seconds before the kill"),
    (busy(1), "its one stream may be the one that ended before the kill"),
])
def test_completed_streams_without_evidence_of_the_killed_engine_are_not_a_pass(
        event: Event | None, why: str) -> None:
    world = drained_world(*([event] if event else []))
    result = judge("fault", **world, stream_recovery=SR)
    not_passed(result)
    assert "0 of 2 requests in flight at the kill were cut and 0 shown drained" in \
        result.summary, why


def test_drained_streams_do_not_hide_a_hung_one() -> None:
    world = drained_world(busy(3))
    world["requests"].append(rec(KILL - 0.5, 30, error="interrupted", finished=False))
    result = judge("fault", **world, stream_recovery=SR)
    not_passed(result, "failed")
    assert "hung" in result.summary
