"""The drain check on hand-made evidence: in-flight streams finish, the drained replica's
own counter stops, and it fails closed without the evidence it needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmdrill.checks.drain import DrainCheck, ending, evaluate_drain
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
APPLY, REVERT = T0 + 20, T0 + 40
WINDOW = Window(phase="drain", start=APPLY, end=REVERT)


def samples(engine: str, name: str, values: dict[float, float]) -> list[MetricSample]:
    return [MetricSample(T0 + t, name, v, {ENGINE_LABEL: engine, "model_name": "tiny"})
            for t, v in values.items()]


def drain_metrics(grows_from: float | None = None, scraped_until: float = 45.0
                  ) -> list[MetricSample]:
    """replica-0, scraped every second: receives requests until the fault at 20 s (one
    more scrape's worth at 21 s, within stop_within), nothing after unless `grows_from`;
    2 running until 22 s, idle from 23 s. replica-1 serves throughout."""
    times = [float(t) for t in range(0, int(scraped_until) + 1)]
    arrivals = {t: 100.0 * min(t, 21) + (50.0 * (t - grows_from + 1) if grows_from is not None
                                          and t >= grows_from else 0.0) for t in times}
    running = {t: 2.0 if t <= 22 else 0.0 for t in times}
    return (samples("replica-0", "vllm:prompt_tokens_total", arrivals)
            + samples("replica-0", "vllm:num_requests_running", running)
            + samples("replica-0", "vllm:num_requests_waiting", dict.fromkeys(times, 0.0))
            + samples("replica-1", "vllm:prompt_tokens_total",
                      {float(t): 100.0 * t for t in range(46)}))


def req(start: float, duration: float = 1.0, *, error: str | None = None,
        error_type: str | None = None, attempts: int = 1, finished: bool = True
        ) -> RequestRecord:
    return RequestRecord(T0 + start, T0 + start + duration, error_class=error,
                         error_type=error_type, attempts=attempts, ttft=0.1,
                         output_tokens=0 if error else 10, finished=finished)


def steady(start: float, end: float) -> list[RequestRecord]:
    """Short requests that are never in flight at the fault (20 s)."""
    return [req(start + i * 0.5, 0.4) for i in range(int((end - start) / 0.5))]


# Three streams in flight at the fault, ending 1 s, 2.5 s and 3 s after it.
IN_FLIGHT = [req(18, 3), req(19, 3.5), req(19.5, 3.5)]


def evidence(requests: list[RequestRecord], metrics: list[MetricSample] | None = None,
             events: list[tuple[float, str, dict[str, Any]]] | None = None) -> Evidence:
    return Evidence(
        requests=requests,
        metrics=drain_metrics() if metrics is None else metrics,
        phases=[PhaseWindow("base", T0, APPLY), PhaseWindow("drain", APPLY, REVERT,
                                                            faults=("drain",))],
        faults=[FaultEvent("drain", APPLY, REVERT + 0.1, REVERT)],
        run_end=T0 + 50,
        events=events or [],
    )


SPEC = DrainCheck(fault="drain", engine="replica-0")


def judge(ev: Evidence, spec: DrainCheck = SPEC, **update: Any) -> tuple[str, str, dict[str, Any]]:
    if update:
        spec = DrainCheck.model_validate({"fault": spec.fault, "engine": spec.engine, **update})
    result = evaluate_drain("dr", "drain", spec, ev, WINDOW)
    return result.status, result.summary, result.observed


def test_passes_when_in_flight_streams_finish_and_the_counter_stops() -> None:
    status, summary, observed = judge(evidence(steady(0, 60) + IN_FLIGHT))
    assert status == "passed", summary
    assert summary == ("all 3 requests in flight at the fault completed, the last 3s after "
                       "it; replica-0 received no new request from 2s after the fault to its "
                       "revert; replica-0 idle 3s after the fault")
    assert observed["in_flight"] == 3 and observed["cut"] == 0
    assert observed["last_in_flight_ended_s"] == 3.0
    assert observed["replica_idle_after_s"] == 3.0
    assert observed["arrivals_after_stop"] == 0


def test_fails_when_an_in_flight_stream_is_cut_and_names_it() -> None:
    cut = req(19, 2, error="incomplete_stream", error_type="no_done_event")
    status, summary, observed = judge(evidence(steady(0, 60) + IN_FLIGHT + [cut]))
    assert status == "failed"
    assert summary == ("1 of 4 requests in flight at the fault did not complete at their "
                       "first attempt (1 incomplete_stream (cut)), over max_cut 0")
    assert observed["endings"] == {"incomplete_stream (cut)": 1}


def test_a_retried_or_interrupted_stream_is_cut_too() -> None:
    retried = req(19, 2, attempts=2)
    hanging = req(19, 31, error="interrupted", finished=False)
    status, summary, _ = judge(evidence(steady(0, 60) + IN_FLIGHT + [retried, hanging]))
    assert status == "failed"
    assert "(1 interrupted (cut), 1 retried (cut))" in summary


def test_max_cut_allows_some() -> None:
    cut = req(19, 2, error="reset", error_type="ConnectionResetError")
    status, summary, _ = judge(evidence(steady(0, 60) + IN_FLIGHT + [cut]), max_cut=1)
    assert status == "passed", summary
    assert summary.startswith("3 of 4 requests in flight at the fault completed (1 reset "
                              "(cut); max_cut 1), the last 3s after it")


def test_fails_when_the_counter_keeps_growing_after_stop_within() -> None:
    status, summary, observed = judge(evidence(steady(0, 60) + IN_FLIGHT, drain_metrics(30)))
    assert status == "failed"
    assert summary == ("replica-0 still received new requests more than 2s after the fault "
                       "(550 prompt tokens by its own counter, first seen 10s after it)")
    assert observed["arrivals_after_stop"] == 550


def test_growth_within_stop_within_is_allowed() -> None:
    # It grew until 21 s: 1 s after the fault, inside the default 2 s.
    assert judge(evidence(steady(0, 60) + IN_FLIGHT))[0] == "passed"
    status, summary, _ = judge(evidence(steady(0, 60) + IN_FLIGHT), stop_within="0.5s")
    assert status == "failed" and "first seen 1s after it" in summary


@pytest.mark.parametrize("error_type", ["InternalServerError", "server_error"])
def test_clear_errors_are_allowed_only_when_asked(error_type: str) -> None:
    status_5xx = req(19, 2, error="http_5xx", error_type="status_503")
    event = req(19, 2, error="incomplete_stream", error_type=error_type)
    ev = evidence(steady(0, 60) + IN_FLIGHT + [status_5xx, event])
    status, summary, _ = judge(ev)
    assert status == "failed"
    assert (f"(1 error event {error_type} (clear error), 1 http_5xx (clear error)), over "
            "max_cut 0") in summary
    status, summary, observed = judge(ev, allow_clear_errors=True)
    assert status == "passed", summary
    assert observed["clear_errors_allowed"] == 2 and observed["cut"] == 0
    assert summary.startswith("3 of 5 requests in flight at the fault completed")


def test_allowed_clear_errors_do_not_cover_dropped_streams() -> None:
    dropped = [req(19, 2, error="incomplete_stream", error_type="ConnectionResetError"),
               req(19, 2, error="incomplete_stream", error_type="HTTPConnectionClosed"),
               req(19, 2, error="timeout", error_type="ReadTimeout")]
    status, summary, _ = judge(evidence(steady(0, 60) + IN_FLIGHT + dropped),
                               allow_clear_errors=True)
    assert status == "failed"
    assert "3 of 6 requests" in summary and "2 incomplete_stream (cut), 1 timeout (cut)" in \
        summary


def test_endings_of_requests() -> None:
    assert ending(req(19, 2)) is None
    assert ending(req(19, 2, error="http_429")) == ("http_429", "clear")
    assert ending(req(19, 2, error="empty", error_type="no_tokens")) == ("empty", "cut")
    assert ending(req(19, 2, error="incomplete_stream")) == ("incomplete_stream", "cut")
    assert ending(RequestRecord(T0, T0 + 1, output_tokens=0)) == ("no_tokens", "cut")
    # vLLM aborting its streams at shutdown: a 200 cut short, ended by the server itself.
    assert ending(req(19, 2, error="incomplete_stream", error_type="finish_reason_abort")
                  ) == ("ended with finish_reason_abort", "clear")


def test_streams_the_replica_aborted_at_shutdown_fail_the_drain() -> None:
    # The CI failure this guards: a replica without a drain ended its streams with
    # finish_reason abort and [DONE]; read as completions, they passed the drain.
    aborted = req(19, 2, error="incomplete_stream", error_type="finish_reason_abort")
    status, summary, observed = judge(evidence([*steady(0, 18), aborted]))
    assert status == "failed", summary
    assert observed["endings"] == {"ended with finish_reason_abort (clear)": 1}


def test_drained_within_exceeded_fails() -> None:
    slow = req(19, 9)  # ends 8 s after the fault, successfully
    ev = evidence(steady(0, 60) + IN_FLIGHT + [slow])
    assert judge(ev, drained_within="10s")[0] == "passed"
    status, summary, observed = judge(ev, drained_within="5s")
    assert status == "failed"
    assert summary == ("the last request in flight at the fault ended 8s after it, over "
                       "drained_within 5s")
    assert observed["last_in_flight_ended_s"] == 8.0


def test_a_replica_that_exits_receives_nothing_from_its_failed_scrapes() -> None:
    # SIGTERM: it finishes its streams and exits; scraped last at 22 s, failing from 23 s.
    metrics = [m for m in drain_metrics() if m.ts <= T0 + 22
               or m.labels[ENGINE_LABEL] != "replica-0"]
    failed = [(T0 + t, "scrape_failed", {"engine": "replica-0", "error": "connect"})
              for t in range(23, 46)]
    status, summary, observed = judge(evidence(steady(0, 60) + IN_FLIGHT, metrics, failed))
    assert status == "passed", summary
    assert ("replica-0 received no new request from 2s after the fault to its revert (its "
            "scrapes failed from 3s after the fault: it exited, and counts as receiving "
            "nothing since)") in summary
    assert observed["scrapes_failed_from_s"] == 3.0
    # Not scraped at all after the fault, only failures: the same.
    metrics = [m for m in metrics if m.ts <= APPLY or m.labels[ENGINE_LABEL] != "replica-0"]
    assert judge(evidence(steady(0, 60) + IN_FLIGHT, metrics, failed))[0] == "passed"


def test_inconclusive_with_nothing_in_flight() -> None:
    status, summary, _ = judge(evidence(steady(0, 60)))
    assert status == "inconclusive"
    assert summary == ("inconclusive: 0 requests were in flight when the fault was applied, "
                       "need 1: nothing shows how in-flight streams end")
    status, summary, _ = judge(evidence(steady(0, 60) + IN_FLIGHT), min_in_flight=5)
    assert status == "inconclusive" and "3 requests were in flight" in summary


def test_inconclusive_without_the_fault() -> None:
    ev = evidence(steady(0, 60) + IN_FLIGHT)
    ev.faults = []
    status, summary, _ = judge(ev)
    assert status == "inconclusive"
    assert summary == "inconclusive: fault 'drain' was never applied in phase 'drain'"


def test_inconclusive_without_the_replicas_series_or_a_scrape_after_the_fault() -> None:
    status, summary, _ = judge(evidence(steady(0, 60) + IN_FLIGHT, []))
    assert status == "inconclusive"
    assert "no vllm:prompt_tokens_total series of replica-0 at all" in summary
    before_only = [m for m in drain_metrics() if m.ts <= APPLY]
    status, summary, _ = judge(evidence(steady(0, 60) + IN_FLIGHT, before_only))
    assert status == "inconclusive"
    assert "no scrape of replica-0 between 2s after the fault and its revert" in summary


def test_a_cut_stream_fails_even_when_the_counter_cannot_tell() -> None:
    cut = req(19, 2, error="reset")
    status, summary, _ = judge(evidence(steady(0, 60) + IN_FLIGHT + [cut], []))
    assert status == "failed" and "1 reset (cut)" in summary


def test_the_kind_is_registered_with_a_runbook() -> None:
    kind = check_kinds()["drain"]
    assert kind.spec is DrainCheck and kind.builtin
    assert "--shutdown-timeout" in kind.runbook and "terminationGracePeriodSeconds" in \
        kind.runbook


BASE = """\
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: dr}
target:
  base_url: http://127.0.0.1:18040
  model: tiny
  engines:
    replica-0: {metrics_url: http://127.0.0.1:18010/metrics}
    replica-1: {metrics_url: http://127.0.0.1:18020/metrics}
faults:
  out: {haproxy: {socket: /tmp/haproxy.sock, server: replica-0}}
phases:
  - {name: drain, duration: 10s, faults: [out]}
checks:
  - {phase: drain, drain: {fault: %s, engine: %s, stop_within: 3s, drained_within: 20s}}
"""


def test_scenario_references_name_the_fault_and_the_engine(tmp_path: Path) -> None:
    def load(fault: str, engine: str) -> None:
        path = tmp_path / "dr.yaml"
        path.write_text(BASE % (fault, engine))
        load_scenario(path, env={})

    load("out", "replica-0")
    with pytest.raises(ScenarioError, match="unknown engine 'replica-9'"):
        load("out", "replica-9")
    with pytest.raises(ScenarioError, match="unknown fault 'gone'"):
        load("gone", "replica-0")
