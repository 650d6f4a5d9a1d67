"""The failover check and the counter readings it rests on, on hand-made evidence."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmdrill.checks import counters
from llmdrill.checks.failover import FailoverCheck, evaluate_failover
from llmdrill.model.records import (
    ENGINE_LABEL,
    Evidence,
    FaultEvent,
    MetricSample,
    PhaseWindow,
    RequestRecord,
)
from llmdrill.model.result import Window
from llmdrill.scenario.errors import ScenarioError
from llmdrill.scenario.loader import load_scenario

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0
APPLY, REVERT = T0 + 20, T0 + 40
WINDOW = Window(phase="out", start=APPLY, end=REVERT)


# --- counters -------------------------------------------------------------------------


def test_increase_survives_a_restart() -> None:
    points = [(1.0, 10.0), (2.0, 15.0), (3.0, 2.0), (4.0, 6.0)]
    assert counters.increase(points, 1.0, 4.0) == 5 + 2 + 4
    assert counters.increase(points, 2.0, 3.0) == 2
    assert counters.increase(points, 4.0, 9.0) == 0


def test_first_growth_after_a_moment() -> None:
    flat_then_up = [(1.0, 5.0), (2.0, 5.0), (3.0, 5.0), (4.0, 7.0)]
    assert counters.first_growth(flat_then_up, 1.5) == 4.0
    # Killed before `after` (last scrape 9), restarted: its first scrape counts from 0.
    restarted = [(1.0, 9.0), (5.0, 0.0), (6.0, 3.0)]
    assert counters.first_growth(restarted, 4.0) == 6.0
    assert counters.first_growth([(5.0, 4.0)], 4.0) == 5.0  # no scrape before: a new process
    assert counters.first_growth([(1.0, 4.0), (5.0, 4.0)], 4.0) is None


def test_counter_rate() -> None:
    assert counters.counter_rate([(0.0, 0.0), (2.0, 10.0), (3.0, 1.0)]) == [(2.0, 5.0),
                                                                           (3.0, 1.0)]


# --- the check ------------------------------------------------------------------------


def samples(engine: str, name: str, values: dict[float, float]) -> list[MetricSample]:
    return [MetricSample(T0 + t, name, v, {ENGINE_LABEL: engine, "model_name": "tiny"})
            for t, v in values.items()]


def healthy_failover_metrics(out_after_switch: float = 0.0) -> list[MetricSample]:
    """replica-0 serves until the fault at 20s, nothing after; back at 43s. replica-1
    serves throughout, more while replica-0 is out."""
    r0_arrivals = {float(t): 100.0 * min(t, 20) for t in range(0, 20)}
    r0_arrivals.update({float(t): 2000.0 + out_after_switch * (t >= 30)
                        for t in range(20, 42)})
    r0_arrivals.update({43.0: 2100.0, 44.0: 2200.0})
    r1_served = {float(t): 3.0 * t for t in range(0, 45)}
    r1_arrivals = {float(t): 100.0 * t for t in range(0, 45)}
    r0_running = {float(t): 2.0 for t in range(0, 20)}
    return (samples("replica-0", "vllm:prompt_tokens_total", r0_arrivals)
            + samples("replica-0", "vllm:num_requests_running", r0_running)
            + samples("replica-0", "vllm:num_requests_waiting", dict.fromkeys(r0_running, 0.0))
            + samples("replica-1", "vllm:prompt_tokens_total", r1_arrivals)
            + samples("replica-1", "vllm:request_success_total", r1_served))


def req(start: float, duration: float = 1.0, *, error: str | None = None,
        attempts: int = 1) -> RequestRecord:
    return RequestRecord(T0 + start, T0 + start + duration, error_class=error,
                         attempts=attempts, ttft=0.1, output_tokens=0 if error else 10)


def steady(start: float, end: float) -> list[RequestRecord]:
    return [req(start + i * 0.5) for i in range(int((end - start) / 0.5))]


def evidence(requests: list[RequestRecord], metrics: list[MetricSample] | None = None,
             reverted: float | None = REVERT) -> Evidence:
    return Evidence(
        requests=requests,
        metrics=healthy_failover_metrics() if metrics is None else metrics,
        phases=[PhaseWindow("base", T0, APPLY), PhaseWindow("out", APPLY, REVERT,
                                                            faults=("kill",))],
        faults=[FaultEvent("kill", APPLY, reverted, REVERT)],
        run_end=T0 + 60,
    )


SPEC = FailoverCheck(fault="kill", engine="replica-0", switch_within="5s",
                     max_failed_attempts=4, back_within="10s", min_requests=10)


def judge(ev: Evidence, spec: FailoverCheck = SPEC) -> tuple[str, str]:
    result = evaluate_failover("fo", "out", spec, ev, WINDOW)
    return result.status, result.summary


def test_passes_when_the_gateway_switches_in_time() -> None:
    requests = [*steady(0, 60), req(18, 5, error="incomplete_stream"), req(21, 1, attempts=2)]
    status, summary = judge(evidence(requests))
    assert status == "passed", summary
    assert "1 streams cut" in summary and "traffic back on replica-0 3" in summary


def test_fails_when_requests_after_the_switch_still_fail() -> None:
    # A gateway without health checks: every other request goes to the dead replica.
    requests = steady(0, 60) + [req(26 + i * 2, 0.1, error="http_5xx") for i in range(5)]
    status, summary = judge(evidence(requests))
    assert status == "failed"
    assert "5 of" in summary and "5 http_5xx" in summary


def test_fails_when_retries_hide_the_dead_replica() -> None:
    requests = [*steady(0, 60), req(30, attempts=2)]
    status, summary = judge(evidence(requests))
    assert status == "failed" and "1 retried" in summary


def test_fails_over_the_switch_budget() -> None:
    requests = steady(0, 60) + [req(20.5 + i * 0.5, 0.2, error="timeout") for i in range(5)]
    status, summary = judge(evidence(requests))
    assert status == "failed" and "5 attempts failed during the switch" in summary


def test_fails_when_streams_on_healthy_replicas_are_cut() -> None:
    # replica-0 ran 2 streams; 5 in-flight streams died: the others' were cut too.
    cut = [req(18.5, 3, error="incomplete_stream") for _ in range(5)]
    status, summary = judge(evidence(steady(0, 60) + cut),
                            SPEC.model_copy(update={"max_failed_attempts": 10}))
    assert status == "failed" and "streams on the healthy replicas were cut" in summary


def test_fails_when_the_replica_still_receives_requests() -> None:
    status, summary = judge(evidence(steady(0, 60), healthy_failover_metrics(50.0)))
    assert status == "failed" and "still received new requests" in summary


def test_fails_when_traffic_does_not_come_back() -> None:
    metrics = [m for m in healthy_failover_metrics() if m.ts < T0 + 43
               or m.labels[ENGINE_LABEL] != "replica-0"]
    metrics += samples("replica-0", "vllm:prompt_tokens_total", {50.0: 2000.0, 55.0: 2000.0})
    status, summary = judge(evidence(steady(0, 60), metrics))
    assert status == "failed" and "within 10s of the revert" in summary


def test_inconclusive_when_the_replica_had_no_traffic_before() -> None:
    metrics = [m for m in healthy_failover_metrics()
               if not (m.labels[ENGINE_LABEL] == "replica-0" and m.name.endswith("tokens_total"))]
    metrics += samples("replica-0", "vllm:prompt_tokens_total", {float(t): 7.0 for t in range(45)})
    status, summary = judge(evidence(steady(0, 60), metrics))
    assert status == "inconclusive" and "nothing to fail over from" in summary


def test_inconclusive_without_the_replicas_metrics_or_the_fault() -> None:
    assert judge(evidence(steady(0, 60), []))[0] == "inconclusive"
    no_fault = evidence(steady(0, 60))
    no_fault.faults = []
    assert "never applied" in judge(no_fault)[1]


def test_inconclusive_when_the_others_counters_never_move() -> None:
    metrics = [m for m in healthy_failover_metrics() if m.name != "vllm:request_success_total"]
    metrics += samples("replica-1", "vllm:request_success_total",
                       {float(t): 3.0 for t in range(45)})
    status, summary = judge(evidence(steady(0, 60), metrics))
    assert status == "inconclusive" and "behind base_url" in summary


def test_inconclusive_with_too_few_requests_after_the_switch() -> None:
    status, summary = judge(evidence(steady(0, 24) + steady(41, 60)))
    assert status == "inconclusive" and "need 10" in summary


def test_target_series_leave_the_replicas_out() -> None:
    target = MetricSample(T0 + 1, "vllm:prompt_tokens_total", 5.0, {})
    ev = evidence([], [*healthy_failover_metrics(), target])
    assert ev.series("vllm:prompt_tokens_total") == [(T0 + 1, 5.0)]
    assert len(ev.engine_series("replica-1", ("vllm:prompt_tokens_total",))) == 45


BASE = """\
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: fo}
target:
  base_url: http://127.0.0.1:18040
  model: tiny
  engines:
    replica-0: {metrics_url: http://127.0.0.1:18010/metrics}
    %s
faults:
  hang: {toxiproxy: {proxy: replica-0, toxic: timeout, timeout: 0s}}
phases:
  - {name: out, duration: 10s, faults: [hang]}
checks:
  - {phase: out, failover: {fault: hang, engine: %s}}
"""


def test_scenario_references_name_the_engine(tmp_path: Path) -> None:
    def load(other: str, engine: str) -> None:
        path = tmp_path / "fo.yaml"
        path.write_text(BASE % (other, engine))
        load_scenario(path, env={})

    two = "replica-1: {metrics_url: http://127.0.0.1:18020/metrics}"
    load(two, "replica-0")
    with pytest.raises(ScenarioError, match="unknown engine 'replica-9'"):
        load(two, "replica-9")
    with pytest.raises(ScenarioError, match="at least two replicas"):
        load("", "replica-0")


def test_a_toxic_behind_a_gateway_is_seen_on_the_replicas_counter() -> None:
    from llmdrill.faults.base import FaultWindow, engine_behind, replica_cut_off

    engines = {"replica-0": "http://127.0.0.1:18010/metrics",
               "replica-1": "http://127.0.0.1:18020/metrics"}
    assert engine_behind(engines, "127.0.0.1:18020") == "replica-1"
    assert engine_behind(engines, "127.0.0.1:18000") is None
    window = FaultWindow(APPLY, REVERT)
    seen = replica_cut_off(evidence([]), "replica-0", window)
    assert seen is not None and seen.landed is True
    # Still served in the fault's second half: the toxic did not cut it off.
    growing = samples("replica-0", "vllm:prompt_tokens_total",
                      {float(t): 100.0 * t for t in range(45)})
    assert replica_cut_off(evidence([], growing), "replica-0", window) is None
    assert replica_cut_off(evidence([], []), "replica-0", window) is None


def test_a_toxic_on_one_of_two_replicas_needs_only_its_share_of_requests() -> None:
    from llmdrill.faults.toxiproxy import TimeoutToxic, judge_toxic

    spec = TimeoutToxic(proxy="replica-0", toxic="timeout", timeout="0s")
    # Before: all fine; during: 4 of 10 failed (round robin sent half to the hung one).
    requests = [req(t) for t in range(0, 18, 2)]
    requests += [req(20 + i, error="timeout" if i < 4 else None) for i in range(10)]
    assert judge_toxic(spec, requests, APPLY, REVERT).landed is False
    assert judge_toxic(spec, requests, APPLY, REVERT, share=0.5).landed is True


# --- engines that are gateway instances (HAProxy's own exporter) ----------------------

HAPROXY_COUNTERS = {"arrivals": "haproxy_frontend_http_requests_total",
                    "served": "haproxy_frontend_http_responses_total",
                    "in_flight": ["haproxy_frontend_current_sessions"],
                    "labels": {"proxy": "llm"}}


def gateway_metrics(killed_keeps_counting: bool = False) -> list[MetricSample]:
    """Two HAProxy instances. gw-a serves until it is killed at 20s (its scrapes stop,
    unless `killed_keeps_counting`), restarted at 41s; gw-b serves throughout. Each also
    counts the scrapes of its metrics frontend, which the check must not read."""
    def frontend(engine: str, name: str, values: dict[float, float], proxy: str
                 ) -> list[MetricSample]:
        return [MetricSample(T0 + t, name, v, {ENGINE_LABEL: engine, "proxy": proxy})
                for t, v in values.items()]
    a_times = [float(t) for t in range(0, 20)] + [42.0, 43.0, 44.0]
    if killed_keeps_counting:
        a_times = [float(t) for t in range(0, 45)]
    a_requests = {t: 3.0 * t for t in a_times}
    if not killed_keeps_counting:
        a_requests.update({42.0: 1.0, 43.0: 4.0, 44.0: 7.0})  # restarted: counts from 0
    b_times = [float(t) for t in range(0, 45)]
    out: list[MetricSample] = []
    out += frontend("gw-a", "haproxy_frontend_http_requests_total", a_requests, "llm")
    out += frontend("gw-a", "haproxy_frontend_http_requests_total",
                    {t: 2.0 * t for t in a_times}, "metrics")
    out += frontend("gw-a", "haproxy_frontend_current_sessions",
                    dict.fromkeys(a_times, 3.0), "llm")
    for name in ("haproxy_frontend_http_requests_total",
                 "haproxy_frontend_http_responses_total"):
        out += frontend("gw-b", name, {t: 3.0 * t for t in b_times}, "llm")
    return out


def gateway_evidence(requests: list[RequestRecord], **kw: bool) -> Evidence:
    ev = evidence(requests, gateway_metrics(**kw))
    return ev


GATEWAY_SPEC = FailoverCheck(fault="kill", engine="gw-a", switch_within="5s",
                             max_failed_attempts=4, back_within="10s", min_requests=10,
                             counters=HAPROXY_COUNTERS)


def test_gateway_instances_judged_by_their_own_frontend_counters() -> None:
    requests = [*steady(0, 60), req(19.5, 2, error="incomplete_stream")]
    status, summary = judge(gateway_evidence(requests), GATEWAY_SPEC)
    assert status == "passed", summary
    assert "traffic back on gw-a" in summary and "current_sessions" not in summary


def test_a_gateway_instance_still_counting_requests_fails() -> None:
    status, summary = judge(gateway_evidence(steady(0, 60), killed_keeps_counting=True),
                            GATEWAY_SPEC)
    assert status == "failed", summary
    assert "gw-a still received new requests" in summary
    assert "haproxy_frontend_http_requests_total grew by" in summary


def test_vllm_counters_on_gateway_instances_are_inconclusive() -> None:
    spec = FailoverCheck(fault="kill", engine="gw-a", switch_within="5s")
    status, summary = judge(gateway_evidence(steady(0, 60)), spec)
    assert status == "inconclusive", summary
