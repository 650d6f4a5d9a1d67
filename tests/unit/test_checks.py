from __future__ import annotations

from typing import Any

import pytest

from llmdrill.checks import base, evaluate_check, evaluator_for, registered_kinds
from llmdrill.checks.metric import increase
from llmdrill.model.records import (
    Evidence,
    FaultEvent,
    MetricSample,
    PhaseWindow,
    RequestRecord,
)
from llmdrill.model.result import CheckResult, Window
from llmdrill.scenario.models import Check
from tests.unit.fake_backends import register_check, unregister_check

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0
PHASES = [
    PhaseWindow("baseline", T0, T0 + 30),
    PhaseWindow("fault", T0 + 30, T0 + 60, faults=("down",)),
    PhaseWindow("recovery", T0 + 60, T0 + 90),
]


def rec(
    start: float,
    duration: float = 1.0,
    *,
    ttft: float | None = 0.1,
    error: str | None = None,
    tokens: int = 10,
    finished: bool = True,
) -> RequestRecord:
    """A request `start` seconds after T0."""
    return RequestRecord(
        start=T0 + start,
        end=T0 + start + duration,
        ttft=None if error else ttft,
        error_class=error,
        output_tokens=0 if error else tokens,
        finished=finished,
    )


def every(start: float, end: float, step: float = 0.5, **kw: Any) -> list[RequestRecord]:
    """One request each `step` seconds in [start, end)."""
    out: list[RequestRecord] = []
    t = start
    while t < end - 1e-9:
        out.append(rec(t, **kw))
        t += step
    return out


def evidence(
    requests: list[RequestRecord] | None = None,
    metrics: list[MetricSample] | None = None,
    phases: list[PhaseWindow] | None = None,
) -> Evidence:
    return Evidence(
        requests=requests or [],
        metrics=metrics or [],
        phases=PHASES if phases is None else phases,
        run_end=T0 + 90,
    )


def check(phase: str, **kind: Any) -> Check:
    return Check.model_validate({"phase": phase, **kind})


# --- evaluate_check: windows, dispatch, errors ----------------------------------------


def test_check_on_phase_that_did_not_run_is_skipped() -> None:
    ev = evidence(every(0, 30), phases=PHASES[:1])
    result = evaluate_check(check("recovery", slo={"error_rate": {"max": 0.1}}), 0, ev)
    assert result.status == "skipped"
    assert "did not run" in result.summary
    assert result.name == "recovery-slo-1"


def test_check_on_incomplete_phase_is_skipped() -> None:
    phases = [*PHASES[:2], PhaseWindow("recovery", T0 + 60, T0 + 65, completed=False)]
    result = evaluate_check(
        check("recovery", slo={"error_rate": {"max": 0.1}}), 2, evidence(phases=phases)
    )
    assert result.status == "skipped"
    assert "did not complete" in result.summary


def test_evaluator_exception_becomes_error_result(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(name: str, phase: str, spec: Any, ev: Evidence, window: Window) -> CheckResult:
        raise ZeroDivisionError("oops")

    from dataclasses import replace

    from llmdrill.plugin import check_kinds

    monkeypatch.setitem(check_kinds(), "slo", replace(check_kinds()["slo"], evaluate=boom))
    result = evaluate_check(check("fault", slo={"error_rate": {"max": 0.1}}), 0, evidence())
    assert result.status == "error"
    assert "ZeroDivisionError: oops" in result.summary
    assert result.window is not None and result.window.start == T0 + 30


def test_a_registered_kind_is_found_by_its_key() -> None:
    def always(name: str, phase: str, spec: Any, ev: Evidence, window: Window) -> CheckResult:
        return base.make_result(name, "always", phase, "passed", "ok")

    register_check("always", always)
    try:
        assert evaluator_for("always") is always
        assert "always" in registered_kinds()
    finally:
        unregister_check("always")
    assert evaluator_for("always") is None


def test_builtin_kinds_are_registered() -> None:
    assert {"slo", "no_hung_requests", "recovers", "metric"} <= set(registered_kinds())


def test_result_carries_the_phase_window() -> None:
    ev = evidence(every(30, 60))
    result = evaluate_check(check("fault", slo={"error_rate": {"max": 0.1}}), 0, ev)
    assert result.window == Window(phase="fault", start=T0 + 30, end=T0 + 60)


# --- slo ------------------------------------------------------------------------------


def test_slo_passes_when_all_bounds_hold() -> None:
    ev = evidence(every(30, 60, ttft=0.2))
    spec = {
        "ttft_p50": {"max": "500ms"},
        "ttft_p95": {"max": "800ms"},
        "error_rate": {"max": 0.1},
        "tokens_per_s": {"min": 10},
        "allowed_error_classes": [],
        "min_requests": 10,
    }
    result = evaluate_check(check("fault", slo=spec), 0, ev)
    assert result.status == "passed", result.summary
    assert result.summary == "all 5 bounds held over 60 requests"
    assert result.observed["ttft_p95_ms"] == pytest.approx(200.0)
    assert result.expected["ttft_p95_ms"] == {"max": 800.0}
    assert result.observed["tokens_per_s"] == pytest.approx(20.0)


def test_slo_fails_listing_each_violated_bound() -> None:
    requests = every(30, 45, ttft=1.8302) + every(45, 60, error="http_5xx")
    result = evaluate_check(
        check("fault", slo={"ttft_p95": {"max": "800ms"}, "error_rate": {"max": 0.2}}),
        0,
        evidence(requests),
    )
    assert result.status == "failed"
    assert result.summary == "ttft_p95 1830.2ms > max 800ms; error_rate 0.5 > max 0.2"


def test_slo_with_no_requests_is_inconclusive_for_lack_of_evidence() -> None:
    result = evaluate_check(
        check("fault", slo={"error_rate": {"max": 0.2}, "min_requests": 0}),
        0,
        evidence(every(0, 30)),  # only baseline traffic
    )
    assert result.status == "inconclusive"
    assert "too little evidence: 0 requests started" in result.summary
    assert result.observed["error_rate"] is None


def test_slo_fewer_than_min_requests_is_inconclusive() -> None:
    result = evaluate_check(
        check("fault", slo={"error_rate": {"max": 0.2}, "min_requests": 100}),
        0,
        evidence(every(30, 60)),
    )
    assert result.status == "inconclusive"
    assert "60 requests started in the window (finished), need 100" in result.summary


def test_slo_ttft_bound_without_successes_fails() -> None:
    result = evaluate_check(
        check("fault", slo={"ttft_p95": {"max": "1s"}}), 0, evidence(every(30, 60, error="reset"))
    )
    assert result.status == "failed"
    assert "ttft_p95: no successful request with a TTFT" in result.summary
    assert result.observed["ttft_p95_ms"] is None


def test_slo_disallowed_error_classes_fail_naming_them() -> None:
    requests = every(30, 50) + every(50, 55, error="http_429") + every(55, 60, error="reset")
    spec = {"allowed_error_classes": ["http_429"]}
    result = evaluate_check(check("fault", slo=spec), 0, evidence(requests))
    assert result.status == "failed"
    assert "errors of classes not allowed: reset 10" in result.summary
    assert result.observed["disallowed_errors"] == {"reset": 10}


def test_slo_allowed_error_classes_pass() -> None:
    requests = every(30, 50) + every(50, 60, error="http_429")
    spec = {"allowed_error_classes": ["http_429"]}
    result = evaluate_check(check("fault", slo=spec), 0, evidence(requests))
    assert result.status == "passed", result.summary


def test_slo_error_rate_by_class_is_over_all_requests() -> None:
    requests = every(30, 45) + every(45, 50, error="http_5xx") + every(50, 60, error="timeout")
    spec = {"error_rate_by_class": {"http_5xx": {"max": 0.2}, "timeout": {"max": 0.2}}}
    result = evaluate_check(check("fault", slo=spec), 0, evidence(requests))
    assert result.status == "failed"
    assert result.summary == "error_rate[timeout] 0.333 > max 0.2"
    assert result.observed["error_rate_by_class.http_5xx"] == pytest.approx(10 / 60)


# --- no_hung_requests ------------------------------------------------------------------


def test_no_hung_passes_when_everything_ends_in_time() -> None:
    requests = [*every(30, 60, duration=2.0), rec(40, 5.0, error="timeout")]
    result = evaluate_check(
        check("fault", no_hung_requests={"deadline": "10s"}), 0, evidence(requests)
    )
    assert result.status == "passed", result.summary
    assert result.observed["checked"] == 61
    assert result.observed["max_duration_s"] == pytest.approx(5.0)


def test_no_hung_fails_on_a_request_over_the_deadline() -> None:
    requests = [*every(30, 60), rec(35, 42.0, error="timeout")]
    result = evaluate_check(
        check("fault", no_hung_requests={"deadline": "30s"}), 0, evidence(requests)
    )
    assert result.status == "failed"
    assert result.summary == "1 of 61 requests hung past the 30s deadline (longest 42s)"
    worst = result.observed["worst"][0]
    assert worst == {
        "start_offset_s": 5.0,
        "duration_s": 42.0,
        "error_class": "timeout",
        "finished": True,
        "hung": True,
    }
    assert len(result.observed["worst"]) == 10


def test_no_hung_interrupted_request_inside_its_deadline_is_not_hung() -> None:
    # Started 5 s before the stop at T0+90: cut before its 10 s deadline passed.
    cut = rec(85, 5.0, error="interrupted", finished=False)
    result = evaluate_check(
        check("recovery", no_hung_requests={"deadline": "10s"}),
        0,
        evidence([*every(60, 80), cut]),
    )
    assert result.status == "passed", result.summary
    assert result.observed["interrupted"] == 1


def test_no_hung_interrupted_request_past_its_deadline_is_hung() -> None:
    # Open for 25 s when the load stopped: it had hung before the stop.
    stuck = rec(65, 25.0, error="interrupted", finished=False)
    result = evaluate_check(
        check("recovery", no_hung_requests={"deadline": "10s"}),
        0,
        evidence([*every(60, 80), stuck]),
    )
    assert result.status == "failed"
    assert result.observed["hung"] == 1


def test_no_hung_with_no_requests_is_inconclusive() -> None:
    result = evaluate_check(check("fault", no_hung_requests={"deadline": "10s"}), 0, evidence())
    assert result.status == "inconclusive"
    assert "0 requests started in the window, need 1" in result.summary


# --- recovers -------------------------------------------------------------------------


def _ttft_run(recover_after: float | None) -> Evidence:
    """Healthy baseline (TTFT 0.1 s), slow fault, recovery that heals after N seconds."""
    heal = 90.0 if recover_after is None else 60 + recover_after
    return evidence(
        every(0, 30, ttft=0.1)
        + every(30, 60, ttft=2.0)
        + every(60, heal, ttft=2.0)
        + every(heal, 90, ttft=0.1)
    )


def _recovers(measure: str = "ttft_p95", within: str = "10s", **extra: Any) -> Check:
    spec = {"measure": measure, "baseline_phase": "baseline", "within": within, "window": "2s"}
    return check("recovery", recovers={**spec, **extra})


def test_recovers_passes_when_measure_returns_in_time() -> None:
    result = evaluate_check(_recovers(), 0, _ttft_run(recover_after=4.0))
    assert result.status == "passed", result.summary
    assert result.observed["baseline"] == pytest.approx(0.1)
    assert result.observed["recovery_time_s"] == pytest.approx(4.0)
    assert result.observed["value_at_recovery"] == pytest.approx(0.1)
    assert result.expected["band"] == {"max": pytest.approx(0.12)}


def test_recovers_fails_when_recovery_is_late() -> None:
    result = evaluate_check(_recovers(within="3s"), 0, _ttft_run(recover_after=4.0))
    assert result.status == "failed"
    assert "too late" in result.summary
    assert result.observed["recovery_time_s"] == pytest.approx(4.0)


def test_recovers_fails_when_never_recovered() -> None:
    result = evaluate_check(_recovers(), 0, _ttft_run(recover_after=None))
    assert result.status == "failed"
    assert "never recovered" in result.summary
    assert result.observed["recovery_time_s"] is None
    assert len(result.observed["steps"]) == 57  # (30 - 2) / 0.5 + 1


def test_recovers_does_not_take_requests_before_a_late_fault_for_recovery() -> None:
    # The fault of the checked phase was applied 3s after the phase started (a busy
    # harness): the requests before it were fast, the ones after it never recovered.
    ev = evidence(every(0, 30, ttft=0.1) + every(30, 63, ttft=0.1) + every(63, 90, ttft=2.0))
    late = FaultEvent("slow", applied_at=T0 + 63, reverted_at=T0 + 90)
    ev.faults = [late]
    result = evaluate_check(_recovers(), 0, ev)
    assert result.status == "failed", result.summary
    assert "never recovered" in result.summary
    assert result.observed["judged_from_s"] == pytest.approx(3.0)
    # Without the fault event the same requests look like a recovery at once.
    ev.faults = []
    assert evaluate_check(_recovers(), 0, ev).status == "passed"
    # A recovery after a late fault is timed from the phase start, as always.
    healed = evidence(every(0, 30, ttft=0.1) + every(30, 63, ttft=0.1)
                      + every(63, 66, ttft=2.0) + every(66, 90, ttft=0.1))
    healed.faults = [late]
    result = evaluate_check(_recovers(), 0, healed)
    assert result.status == "passed", result.summary
    assert result.observed["recovery_time_s"] == pytest.approx(6.0)


def test_recovers_judges_nothing_past_the_revert_of_a_fault_in_its_phase() -> None:
    """A phase ends after its reverts. Requests sent while a latency toxic was being
    removed (or whose first token its removal let through) are fast: they show the
    fault's end, not a recovery while it held. Seen in CI: `slow-recovers` passed against
    a slow target whose toxic held all phase."""
    slow_all_phase = (every(0, 30, ttft=0.1) + every(30, 57, ttft=2.0)
                      # in flight at the revert: its first token came after it began
                      + [rec(56.5, duration=3.0, ttft=1.0)]
                      + every(57, 60, ttft=0.1))
    ev = evidence(slow_all_phase)
    spec = {"measure": "ttft_p95", "baseline_phase": "baseline", "within": "30s",
            "window": "2s"}
    without_the_revert = evaluate_check(check("fault", recovers=spec), 0, ev)
    assert without_the_revert.status == "passed"  # what the check saw before the fix
    ev.faults = [FaultEvent("down", applied_at=T0 + 30, reverted_at=T0 + 59,
                            reverting_at=T0 + 57)]
    result = evaluate_check(check("fault", recovers=spec), 0, ev)
    assert result.status == "failed", result.summary
    assert "never recovered" in result.summary
    assert result.observed["judged_until_s"] == pytest.approx(27.0)
    # A revert that only ends (no start recorded) bounds the judgement the same way.
    ev.faults = [FaultEvent("down", applied_at=T0 + 30, reverted_at=T0 + 57)]
    assert evaluate_check(check("fault", recovers=spec), 0, ev).status == "failed"
    # A real recovery before the revert still passes, timed from the phase start.
    healed = evidence(every(0, 30, ttft=0.1) + every(30, 40, ttft=2.0)
                      + every(40, 60, ttft=0.1))
    healed.faults = [FaultEvent("down", applied_at=T0 + 30, reverted_at=T0 + 59,
                                reverting_at=T0 + 57)]
    result = evaluate_check(check("fault", recovers=spec), 0, healed)
    assert result.status == "passed", result.summary
    assert result.observed["recovery_time_s"] == pytest.approx(10.0)


def test_recovers_slack_widens_the_band() -> None:
    result = evaluate_check(_recovers(slack=2.0), 0, _ttft_run(recover_after=None))
    assert result.status == "passed"
    assert result.observed["recovery_time_s"] == 0.0


def test_recovers_is_inconclusive_without_baseline_data() -> None:
    ev = evidence(every(60, 90))  # nothing in the baseline phase
    result = evaluate_check(_recovers(), 0, ev)
    assert result.status == "inconclusive"
    assert "no requests started in baseline phase 'baseline'" in result.summary


def test_recovers_is_inconclusive_when_baseline_phase_did_not_run() -> None:
    ev = evidence(every(60, 90), phases=PHASES[1:])
    result = evaluate_check(_recovers(), 0, ev)
    assert result.status == "inconclusive"
    assert "did not run" in result.summary


def test_recovers_error_rate_ignores_empty_windows() -> None:
    # Errors for 3 s, then 3 s without traffic, then healthy again. The empty 2 s
    # windows from 3.0 s to 4.0 s must not count as recovered (error rate "0"), nor do
    # windows with fewer than min_requests (3) requests: the first with 3 is 5.5 s.
    ev = evidence(every(0, 30) + every(60, 63, error="connect") + every(66, 90))
    result = evaluate_check(_recovers("error_rate"), 0, ev)
    assert result.status == "passed", result.summary
    assert result.observed["recovery_time_s"] == pytest.approx(5.5)
    assert [3.5, None] in result.observed["steps"]


def test_recovers_tokens_per_s_is_higher_is_better() -> None:
    # Baseline: 10 tokens every 0.5 s = 20 tok/s. Recovery: nothing completes for 6 s.
    ev = evidence(every(0, 30) + every(30, 60, error="reset") + every(65, 90))
    result = evaluate_check(_recovers("tokens_per_s"), 0, ev)
    assert result.status == "passed", result.summary
    assert result.observed["baseline"] == pytest.approx(20.0)
    assert result.expected["band"] == {"min": pytest.approx(16.0)}
    # The first request ends at 66 s; a 2 s window needs 4 of them, from 66 s.
    assert result.observed["recovery_time_s"] == pytest.approx(6.0)


# --- metric ---------------------------------------------------------------------------


def samples(name: str, values: list[float], start: float = 30, **labels: str) -> list[MetricSample]:
    return [MetricSample(T0 + start + i, name, v, dict(labels)) for i, v in enumerate(values)]


def test_metric_passes_within_bounds() -> None:
    ev = evidence(metrics=samples("vllm:num_requests_waiting", [0, 3, 5, 2]))
    spec = {"series": ["vllm:num_requests_waiting"], "max": 10}
    result = evaluate_check(check("fault", metric=spec), 0, ev)
    assert result.status == "passed", result.summary
    assert result.observed == {"series": "vllm:num_requests_waiting", "samples": 4, "value": 5}


def test_metric_fails_above_max() -> None:
    ev = evidence(metrics=samples("vllm:num_requests_waiting", [0, 30, 5]))
    spec = {"series": ["vllm:num_requests_waiting"], "max": 10}
    result = evaluate_check(check("fault", metric=spec), 0, ev)
    assert result.status == "failed"
    assert result.summary == "max(vllm:num_requests_waiting) = 30 > max 10"


def test_metric_uses_first_alternative_present() -> None:
    ev = evidence(metrics=samples("vllm:kv_cache_usage_perc", [0.2, 0.4]))
    spec = {
        "series": ["vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc"],
        "aggregate": "mean",
        "max": 0.5,
    }
    result = evaluate_check(check("fault", metric=spec), 0, ev)
    assert result.status == "passed"
    assert result.observed["series"] == "vllm:kv_cache_usage_perc"
    assert result.observed["value"] == pytest.approx(0.3)


def test_metric_missing_fails_naming_alternatives_and_similar_names() -> None:
    ev = evidence(metrics=samples("vllm:kv_cache_usage_percent", [0.2]) + samples("up", [1]))
    spec = {"series": ["vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc"], "max": 0.9}
    result = evaluate_check(check("fault", metric=spec), 0, ev)
    assert result.status == "inconclusive"
    assert "vllm:gpu_cache_usage_perc" in result.summary
    assert "tried vllm:gpu_cache_usage_perc, vllm:kv_cache_usage_perc" in result.summary
    assert "similar exposed names: vllm:kv_cache_usage_percent" in result.summary
    assert result.observed["similar"] == ["vllm:kv_cache_usage_percent"]


def test_metric_without_samples_in_window_is_inconclusive() -> None:
    ev = evidence(metrics=samples("vllm:num_requests_running", [1, 2], start=0))
    spec = {"series": ["vllm:num_requests_running"], "max": 10}
    result = evaluate_check(check("fault", metric=spec), 0, ev)
    assert result.status == "inconclusive"
    assert "0 samples of vllm:num_requests_running in the window, need 2" in result.summary


def test_metric_labels_filter_and_sum_per_scrape() -> None:
    metrics = (
        samples("running", [1, 2], engine="0", model="m")
        + samples("running", [3, 4], engine="1", model="m")
        + samples("running", [50, 50], engine="2", model="other")
    )
    spec = {"series": ["running"], "labels": {"model": "m"}, "max": 10}
    result = evaluate_check(check("fault", metric=spec), 0, evidence(metrics=metrics))
    assert result.status == "passed"
    assert result.observed["value"] == 6


def test_metric_increase_min_bound() -> None:
    ev = evidence(metrics=samples("vllm:request_success_total", [100, 110, 5, 20]))
    spec = {"series": ["vllm:request_success_total"], "aggregate": "increase", "min": 50}
    result = evaluate_check(check("fault", metric=spec), 0, ev)
    assert result.status == "failed"
    assert result.observed["value"] == 30  # +10, a reset (+5 since it), then +15
    assert "< min 50" in result.summary


def test_increase_handles_counter_resets() -> None:
    assert increase([1.0, 4.0, 10.0]) == 9.0
    assert increase([10.0, 12.0, 0.0, 3.0]) == 5.0
    assert increase([7.0]) == 0.0


def test_recovers_caps_the_reported_steps() -> None:
    phases = [PhaseWindow("baseline", T0, T0 + 30), PhaseWindow("recovery", T0 + 30, T0 + 330)]
    ev = evidence(every(0, 330), phases=phases)
    result = evaluate_check(_recovers(), 0, ev)
    assert result.status == "passed"
    steps = result.observed["steps"]
    assert 100 < len(steps) <= 200
    assert steps[0] == [0.0, pytest.approx(0.1)]


def test_slo_judges_only_the_named_shapes_and_skips_requests_cut_by_the_stop() -> None:
    from llmdrill.checks.slo import SloCheck, evaluate_slo
    from llmdrill.model.records import Evidence, RequestRecord
    from llmdrill.model.result import Window

    short = [RequestRecord(start=1.0 + i, end=1.5 + i, ttft=0.05, shape="short",
                           output_tokens=8) for i in range(5)]
    long_slow = [RequestRecord(start=1.0 + i, end=9.0, ttft=3.0, shape="flood",
                               output_tokens=100) for i in range(5)]
    cut = [RequestRecord(start=8.0, end=10.0, shape="short", error_class="interrupted",
                         finished=False)]
    evidence = Evidence(requests=short + long_slow + cut)
    window = Window(phase="p", start=0.0, end=10.0)
    spec = SloCheck.model_validate({"shapes": ["short"], "ttft_p95": {"max": "100ms"},
                                    "error_rate": {"max": 0}})
    result = evaluate_slo("c", "p", spec, evidence, window)
    assert result.status == "passed", result.summary
    assert result.observed["requests"] == 5
    assert result.observed["unfinished_at_stop"] == 1
    everything = SloCheck.model_validate({"ttft_p95": {"max": "100ms"}})
    assert evaluate_slo("c", "p", everything, evidence, window).status == "failed"
