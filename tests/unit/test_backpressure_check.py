"""The backpressure check on hand-made evidence: a gateway that sheds (429/503 with
Retry-After) while queues and served latency stay bounded passes; queueing, slow service,
refusals without Retry-After and other errors fail; and it fails closed without the
evidence it needs, or when the load never exceeded what the system serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmdrill.checks.backpressure import BackpressureCheck, evaluate_backpressure
from llmdrill.model.records import (
    ENGINE_LABEL,
    Evidence,
    FaultEvent,
    MetricSample,
    PhaseWindow,
    RequestRecord,
)
from llmdrill.model.result import Window
from llmdrill.plugin import check_kinds
from llmdrill.scenario.errors import ScenarioError
from llmdrill.scenario.loader import load_scenario

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0
APPLY, END = T0 + 20, T0 + 50
WINDOW = Window(phase="overload", start=APPLY, end=END)
WAITING = "vllm:num_requests_waiting"
GW_QUEUE = "haproxy_backend_current_queue"


def samples(engine: str | None, name: str, values: dict[float, float],
            labels: dict[str, str] | None = None) -> list[MetricSample]:
    tags = {**({ENGINE_LABEL: engine} if engine is not None else {}), **(labels or {})}
    return [MetricSample(T0 + t, name, v, tags) for t, v in values.items()]


def queue_metrics(peak0: tuple[float, float] | None = None,
                  peak1: tuple[float, float] | None = None) -> list[MetricSample]:
    """replica-0 (the survivor) scraped every second with 1 waiting, 2 from 30 s; replica-1
    (taken down at 20 s) scraped until then; `peakN` puts (second, value) on one."""
    times = [float(t) for t in range(0, 51)]
    zero = {t: (1.0 if t < 30 else 2.0) for t in times}
    one = {t: 0.0 for t in times if t <= 20}
    if peak0 is not None:
        zero[peak0[0]] = peak0[1]
    if peak1 is not None:
        one[peak1[0]] = peak1[1]
    return samples("replica-0", WAITING, zero) + samples("replica-1", WAITING, one)


def gateway_metrics() -> list[MetricSample]:
    """HAProxy's exporter, scraped as engine `gateway`: the llm backend's queue peaks at
    12 at 27 s; another backend's queue (stats) is higher but not asked for."""
    times = [float(t) for t in range(0, 51)]
    llm = {t: (12.0 if t == 27 else 3.0) for t in times}
    return (samples("gateway", GW_QUEUE, llm, {"proxy": "llm"})
            + samples("gateway", GW_QUEUE, dict.fromkeys(times, 50.0), {"proxy": "stats"}))


def req(start: float, duration: float = 2.0, *, ttft: float | None = 0.5,
        status: int | None = 200, error: str | None = None, retry_after: bool = False,
        attempts: int = 1, finished: bool = True) -> RequestRecord:
    return RequestRecord(T0 + start, T0 + start + duration, ttft=None if error else ttft,
                         status=status, error_class=error, retry_after=retry_after,
                         attempts=attempts, output_tokens=0 if error else 20,
                         finished=finished)


def served(start: float, end: float, ttft: float = 0.5) -> list[RequestRecord]:
    """A request every half second, each served in 2 s."""
    return [req(start + i * 0.5, ttft=ttft) for i in range(int((end - start) / 0.5))]


def refused(start: float, count: int, *, status: int = 503, retry_after: bool = True
            ) -> list[RequestRecord]:
    """Refusals answered at once, one every half second from `start`."""
    return [req(start + i * 0.5, 0.01, status=status, error="http_429" if status == 429
                else "http_5xx", retry_after=retry_after) for i in range(count)]


# Shedding from 21.3 s (1.3 s after the fault): 40 refusals 503 with Retry-After.
SHED = refused(21.3, 40)


def evidence(requests: list[RequestRecord], metrics: list[MetricSample] | None = None,
             fault: bool = True) -> Evidence:
    return Evidence(
        requests=requests,
        metrics=queue_metrics() if metrics is None else metrics,
        phases=[PhaseWindow("base", T0, APPLY),
                PhaseWindow("overload", APPLY, END, faults=("down",))],
        faults=[FaultEvent("down", APPLY, END + 0.5, END)] if fault else [],
        run_end=END + 2,
    )


BASE_SPEC: dict[str, Any] = {"fault": "down", "max_ttft": "4s", "max_waiting": 4}


def judge(ev: Evidence, **update: Any) -> tuple[str, str, dict[str, Any]]:
    spec = BackpressureCheck.model_validate({**BASE_SPEC, **update})
    result = evaluate_backpressure("bp", "overload", spec, ev, WINDOW)
    return result.status, result.summary, result.observed


def test_passes_when_the_gateway_sheds_and_everything_stays_bounded() -> None:
    status, summary, observed = judge(evidence(served(0, 50) + SHED))
    assert status == "passed", summary
    assert summary == ("shed 40 of 104 requests (503: 40, all with Retry-After) from 1.3s "
                       "after the fault; queue peak 2 (replica-0); served TTFT p95 0.5s "
                       "(<= 4s)")
    assert observed["refused"] == 40 and observed["refused_by_status"] == {"503": 40}
    assert observed["refused_without_retry_after"] == 0
    assert observed["shedding_started_s"] == 1.31
    assert observed["judged"] == 82 and observed["served"] == 50  # 32 refused
    assert observed["ttft_p95_s"] == 0.5
    assert observed["waiting_peak"] == 2.0 and observed["waiting_peak_engine"] == "replica-0"
    assert observed["waiting_peak_at_s"] == 10.0
    assert observed["waiting_series"] == {"replica-0": WAITING}
    assert observed["waiting_unseen"] == ["replica-1"]  # down: not scraped after the fault
    assert observed["other_errors"] == 0 and observed["other_errors_by_class"] == {}
    assert "gateway_queue_peak" not in observed


def test_fails_when_the_queue_builds_instead_of_shedding() -> None:
    ev = evidence(served(0, 50) + SHED, queue_metrics(peak0=(26.2, 14.0)))
    status, summary, observed = judge(ev)
    assert status == "failed"
    assert summary == ("queued instead of shedding: replica-0's waiting queue peaked at 14 "
                       "(> 4) 6.2s after the fault")
    assert observed["waiting_peak"] == 14.0 and observed["waiting_peak_at_s"] == 6.2


def test_the_queue_during_the_settle_is_not_judged() -> None:
    ev = evidence(served(0, 50) + SHED, queue_metrics(peak0=(23.0, 14.0)))
    status, summary, observed = judge(ev)
    assert status == "passed", summary
    assert observed["waiting_peak"] == 2.0
    assert judge(ev, settle="2s")[0] == "failed"


def test_fails_when_served_latency_grows() -> None:
    status, summary, observed = judge(evidence(served(0, 50, ttft=6.0) + SHED))
    assert status == "failed"
    assert summary == "served TTFT p95 6s (> 4s): queueing latency was not bounded"
    assert observed["ttft_p95_s"] == 6.0


def test_slow_requests_before_the_settle_are_not_judged() -> None:
    slow = [req(20 + i * 0.5, ttft=9.0) for i in range(9)]  # sent 20..24 s
    status, summary, _ = judge(evidence(served(0, 20) + slow + served(25, 50) + SHED))
    assert status == "passed", summary


def test_fails_when_requests_still_wait_for_a_first_token_at_stop() -> None:
    stuck = [req(40, END + 2 - (T0 + 40), ttft=None, status=None, error="interrupted",
                 finished=False) for _ in range(3)]
    status, summary, observed = judge(evidence(served(0, 50) + SHED + stuck))
    assert status == "failed"
    assert summary == ("3 requests sent from 5s after the fault still had no first token "
                       "when the load stopped, up to 12s after they were sent (> max_ttft "
                       "4s)")
    assert observed["unfinished_at_stop"] == 3
    # Unfinished ones that got a token, or not yet waited long, are only counted.
    young = [req(49, 3, ttft=None, status=None, error="interrupted", finished=False)]
    status, summary, observed = judge(evidence(served(0, 50) + SHED + young))
    assert status == "passed", summary
    assert observed["unfinished_at_stop"] == 1 and observed["judged"] == 82


def test_fails_when_refusals_lack_retry_after_unless_not_required() -> None:
    shed = refused(21.3, 28) + refused(36, 12, retry_after=False)
    ev = evidence(served(0, 50) + shed)
    status, summary, observed = judge(ev)
    assert status == "failed"
    assert summary == "12 of 40 refusals had no Retry-After"
    assert observed["refused_without_retry_after"] == 12
    status, summary, _ = judge(ev, require_retry_after=False)
    assert status == "passed", summary
    assert "(503: 40, 12 without Retry-After)" in summary


def test_refusals_count_from_the_fault_whatever_the_settle() -> None:
    shed = refused(20.5, 4, status=429) + refused(30, 6)
    status, summary, observed = judge(evidence(served(0, 50) + shed))
    assert status == "passed", summary
    assert observed["refused_by_status"] == {"429": 4, "503": 6}
    assert summary.startswith("shed 10 of 74 requests (429: 4, 503: 6, all with "
                              "Retry-After) from 0.5s after the fault")
    # A refusal before the fault is not this fault's.
    early = refused(10, 4)
    _, _, observed = judge(evidence(served(0, 50) + early + shed))
    assert observed["refused"] == 10


def test_fails_on_other_errors_by_class_and_retries_that_succeeded_are_not_errors() -> None:
    errors = [req(30, error="timeout", status=None), req(31, error="reset", status=None),
              req(32, error="http_5xx", status=500), req(33, error="http_5xx", status=502)]
    retried = [req(34 + i * 0.1, attempts=3) for i in range(5)]
    ev = evidence(served(0, 50) + SHED + errors + retried)
    status, summary, observed = judge(ev)
    assert status == "failed"
    assert summary == ("4 of 91 judged requests (4.4%) failed other than with a refusal "
                       "(http_5xx: 2, reset: 1, timeout: 1), over max_other_errors 2%")
    assert observed["other_errors"] == 4
    assert observed["other_errors_by_class"] == {"http_5xx": 2, "reset": 1, "timeout": 1}
    status, summary, _ = judge(ev, max_other_errors=0.05)
    assert status == "passed", summary
    assert summary.endswith("; 4 of 91 judged requests failed otherwise (http_5xx: 2, "
                            "reset: 1, timeout: 1; max 5%)")


def test_a_status_not_listed_as_a_refusal_is_another_error() -> None:
    shed = refused(21.3, 20, status=429) + refused(31.3, 20)
    status, summary, observed = judge(evidence(served(0, 50) + shed), refusal_statuses=[429])
    assert status == "failed"
    assert "20 of 82 judged requests (24.4%) failed other than with a refusal (http_5xx: " \
        "20)" in summary
    assert observed["refused"] == 20


def test_every_failure_reason_is_listed() -> None:
    shed = refused(21.3, 30) + refused(36.3, 10, retry_after=False)
    ev = evidence(served(0, 50, ttft=6.0) + shed, queue_metrics(peak0=(26.2, 14.0)))
    status, summary, _ = judge(ev)
    assert status == "failed"
    assert summary.split("; ") == [
        "queued instead of shedding: replica-0's waiting queue peaked at 14 (> 4) 6.2s "
        "after the fault",
        "served TTFT p95 6s (> 4s): queueing latency was not bounded",
        "10 of 40 refusals had no Retry-After",
    ]


def test_a_queue_over_the_bound_fails_even_with_few_requests() -> None:
    ev = evidence(served(0, 20) + refused(21.3, 2) + [req(30)],
                  queue_metrics(peak0=(30.0, 9.0)))
    status, summary, _ = judge(ev)
    assert status == "failed" and "peaked at 9 (> 4)" in summary
    # ...but the statistics are not judged on them: inconclusive.
    ev = evidence(served(0, 20) + refused(21.3, 2) + [req(30, ttft=9.0)])
    status, summary, _ = judge(ev)
    assert status == "inconclusive"
    assert summary == ("inconclusive: 1 requests sent from 5s after the fault to the phase "
                       "end ended, need 10")


def test_inconclusive_when_the_fault_never_applied() -> None:
    status, summary, _ = judge(evidence(served(0, 50) + SHED, fault=False))
    assert status == "inconclusive"
    assert summary == "inconclusive: fault 'down' was never applied in phase 'overload'"


def test_inconclusive_without_a_waiting_series_naming_what_was_tried() -> None:
    metrics = [m for m in queue_metrics() if m.ts <= APPLY + 3]
    status, summary, observed = judge(evidence(served(0, 50) + SHED, metrics))
    assert status == "inconclusive"
    assert summary == ("inconclusive: no sample of vllm:num_requests_waiting from replica-0, "
                       "replica-1 between 5s after the fault and the phase end: an "
                       "unwatched queue is not a bounded one")
    assert observed["waiting_peak"] is None
    status, summary, _ = judge(evidence(served(0, 50) + SHED),
                               waiting_series=["sglang:num_queue_reqs"])
    assert status == "inconclusive" and "no sample of sglang:num_queue_reqs" in summary
    status, summary, _ = judge(evidence(served(0, 50) + SHED, []))
    assert status == "inconclusive"
    assert "from the target's own metrics between" in summary


def test_inconclusive_when_the_pressure_was_never_shown() -> None:
    status, summary, observed = judge(evidence(served(0, 50)))
    assert status == "inconclusive"
    assert summary == ("inconclusive: no request was refused and no queue built: the load "
                       "did not exceed what the system serves, so backpressure was not shown")
    assert observed["refused"] == 0 and observed["shedding_started_s"] is None


def test_inconclusive_when_nothing_judged_was_served() -> None:
    status, summary, _ = judge(evidence(served(0, 20) + refused(21.3, 57)))
    assert status == "inconclusive"
    assert summary == ("inconclusive: none of the 49 judged requests was served with a first "
                       "token: nothing shows the latency of what was admitted")


def test_inconclusive_when_the_settle_outlasts_the_phase() -> None:
    status, summary, _ = judge(evidence(served(0, 50) + SHED), settle="40s")
    assert status == "inconclusive"
    assert summary.startswith("inconclusive: the settle (40s after the fault) reaches past "
                              "the phase end: no request is judged")


def test_engines_filter_which_queues_are_judged() -> None:
    # A queue on replica-1 after the fault (it came back, say) fails by default...
    metrics = queue_metrics() + samples("replica-1", WAITING, {30.0: 9.0})
    status, summary, _ = judge(evidence(served(0, 50) + SHED, metrics))
    assert status == "failed" and "replica-1's waiting queue peaked at 9 (> 4) 10s" in summary
    # ...and is not watched when only replica-0 is.
    status, summary, observed = judge(evidence(served(0, 50) + SHED, metrics),
                                      engines=["replica-0"])
    assert status == "passed", summary
    assert observed["engines"] == ["replica-0"] and observed["waiting_unseen"] == []
    # An engine named but never scraped leaves nothing to watch.
    status, summary, _ = judge(evidence(served(0, 50) + SHED), engines=["replica-1"])
    assert status == "inconclusive" and "from replica-1 between" in summary


def test_the_gateway_queue_is_reported_not_judged() -> None:
    ev = evidence(served(0, 50) + SHED, queue_metrics() + gateway_metrics())
    gq = {"engine": "gateway", "labels": {"proxy": "llm"}}
    status, summary, observed = judge(ev, gateway_queue=gq)
    assert status == "passed", summary
    assert summary.endswith("; gateway queue peak 12 (gateway, 7s after the fault)")
    assert observed["gateway_queue_peak"] == 12.0
    assert observed["gateway_queue_peak_at_s"] == 7.0
    assert observed["gateway_queue_series"] == GW_QUEUE
    # The gateway is not one of the watched replicas.
    assert observed["engines"] == ["replica-0", "replica-1"]
    # Without labels every backend's queue is summed per scrape; still never judged.
    _, summary, observed = judge(ev, gateway_queue={"engine": "gateway"})
    assert observed["gateway_queue_peak"] == 62.0
    _, summary, observed = judge(evidence(served(0, 50) + SHED), gateway_queue=gq)
    assert summary.endswith("; gateway queue not seen (tried haproxy_backend_current_queue "
                            "on gateway)")
    assert observed["gateway_queue_peak"] is None


def test_without_a_fault_times_count_from_the_phase_start_on_the_targets_metrics() -> None:
    metrics = samples(None, WAITING, {float(t): 3.0 for t in range(51)})
    status, summary, observed = judge(evidence(served(0, 50) + SHED, metrics, fault=False),
                                      fault=None)
    assert status == "passed", summary
    assert summary == ("shed 40 of 104 requests (503: 40, all with Retry-After) from 1.3s "
                       "after the phase start; queue peak 3 (the target); served TTFT p95 "
                       "0.5s (<= 4s)")
    assert observed["since"] == "phase_start" and observed["engines"] == ["target"]
    ev = evidence(served(0, 50) + SHED, samples(None, WAITING, {27.0: 8.0}), fault=False)
    status, summary, _ = judge(ev, fault=None)
    assert status == "failed"
    assert summary == ("queued instead of shedding: the target's waiting queue peaked at 8 "
                       "(> 4) 7s after the phase start")


def test_the_kind_is_registered_with_a_runbook() -> None:
    kind = check_kinds()["backpressure"]
    assert kind.spec is BackpressureCheck and kind.builtin
    assert "timeout queue" in kind.runbook and "Retry-After" in kind.runbook


def test_the_spec_requires_its_bounds() -> None:
    with pytest.raises(ValueError, match="max_ttft"):
        BackpressureCheck.model_validate({"max_waiting": 4})
    with pytest.raises(ValueError, match="max_waiting"):
        BackpressureCheck.model_validate({"max_ttft": "4s", "max_waiting": -1})
    with pytest.raises(ValueError, match="max_other_errors"):
        BackpressureCheck.model_validate({**BASE_SPEC, "max_other_errors": 2})
    spec = BackpressureCheck.model_validate({"max_ttft": "4s", "max_waiting": 4})
    assert spec.fault is None and spec.settle == 5.0 and spec.refusal_statuses == [429, 503]
    assert spec.require_retry_after and spec.min_requests == 10
    assert spec.waiting_series == [WAITING] and spec.max_other_errors == 0.02


BASE = """\
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: bp}
target:
  base_url: http://127.0.0.1:18040
  model: tiny
%s
faults:
  down: {haproxy: {socket: /tmp/haproxy.sock, server: replica-1, state: maint}}
phases:
  - {name: overload, duration: 30s, faults: [down]}
checks:
  - {phase: overload, backpressure: %s}
"""
ENGINES = """\
  engines:
    replica-0: {metrics_url: http://127.0.0.1:18010/metrics}
    replica-1: {metrics_url: http://127.0.0.1:18020/metrics}
    gateway: {metrics_url: http://127.0.0.1:18041/metrics}"""


def test_scenario_references_name_the_fault_and_the_engines(tmp_path: Path) -> None:
    def load(spec: str, target: str = ENGINES) -> None:
        path = tmp_path / "bp.yaml"
        path.write_text(BASE % (target, spec))
        load_scenario(path, env={})

    load("{fault: down, max_ttft: 4s, max_waiting: 4, engines: [replica-0], "
         "gateway_queue: {engine: gateway, labels: {proxy: llm}}}")
    load("{max_ttft: 4s, max_waiting: 4}")
    with pytest.raises(ScenarioError, match="unknown fault 'gone'"):
        load("{fault: gone, max_ttft: 4s, max_waiting: 4}")
    with pytest.raises(ScenarioError, match="unknown engine 'replica-9'"):
        load("{max_ttft: 4s, max_waiting: 4, engines: [replica-0, replica-9]}")
    with pytest.raises(ScenarioError, match="unknown engine 'haproxy'"):
        load("{max_ttft: 4s, max_waiting: 4, gateway_queue: {engine: haproxy}}")
    with pytest.raises(ScenarioError, match=r"needs target\.metrics_url"):
        load("{max_ttft: 4s, max_waiting: 4}", target="")
    load("{max_ttft: 4s, max_waiting: 4}",
         target="  metrics_url: http://127.0.0.1:18010/metrics")
