"""kv_cache_cleanup on synthetic evidence: storm waves and engine gauges scraped every 0.2s."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from llmdrill.checks import evaluate_check
from llmdrill.checks.kv_cleanup import (
    KvCacheCleanupCheck,
    Point,
    counter_increase,
    first_clean,
    join,
)
from llmdrill.model.records import Evidence, MetricSample, PhaseWindow, RequestRecord
from llmdrill.model.result import CheckResult
from llmdrill.scenario.models import Check

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0
STEP = 0.2
RUNNING = "vllm:num_requests_running"
KV = "vllm:kv_cache_usage_perc"
OLD_KV = "vllm:gpu_cache_usage_perc"
PHASES = [
    PhaseWindow("baseline", T0, T0 + 10),
    PhaseWindow("storm", T0 + 10, T0 + 30, faults=("storm",)),
    PhaseWindow("recover", T0 + 30, T0 + 40),
]
BACKGROUND = (1.0, 0.03)  # light load: one request running, 3% of the KV cache
STORM = (30.0, 0.9)

Level = Callable[[float], tuple[float, float]]


def wave(number: int, started: float, dropped: float, aborted: int = 30,
         **extra: Any) -> tuple[float, str, dict[str, Any]]:
    """A storm_wave event (the fault's `number`th wave); times are seconds after T0."""
    detail = {"fault": "storm", "wave": number - 1, "started_at": T0 + started,
              "dropped_at": T0 + dropped, "streams": 30, "aborted": aborted,
              "failed": 30 - aborted, "errors": {"connect": 30 - aborted} if aborted < 30 else {},
              "close": "reset", **extra}
    return (T0 + started, "storm_wave", detail)


def engine(busy: list[tuple[float, float]], until: float = 40.0) -> Level:
    """Background level, and the storm level inside each busy span (seconds after T0)."""
    def level(t: float) -> tuple[float, float]:
        return STORM if any(a <= t < b for a, b in busy) else BACKGROUND
    return level


def scrapes(level: Level, start: float = 0.0, end: float = 40.0, kv_name: str = KV,
            running: bool = True, kv: bool = True) -> list[MetricSample]:
    out: list[MetricSample] = []
    i = 0
    while (t := start + i * STEP) < end:
        run_v, kv_v = level(t)
        if running:
            out.append(MetricSample(T0 + t, RUNNING, run_v, {"engine": "0"}))
        if kv:
            out.append(MetricSample(T0 + t, kv_name, kv_v, {"engine": "0"}))
        i += 1
    return out


def evaluate(metrics: list[MetricSample], events: list[tuple[float, str, dict[str, Any]]],
             requests: list[RequestRecord] | None = None, **spec: Any) -> CheckResult:
    check = Check.model_validate({"name": "cleanup", "phase": spec.pop("phase", "storm"),
                                  "kv_cache_cleanup": {"within": "3s", **spec}})
    evidence = Evidence(metrics=metrics, phases=PHASES, events=events,
                        requests=requests or [])
    return evaluate_check(check, 0, evidence)


THREE_WAVES = [wave(1, 10, 11), wave(2, 16, 17), wave(3, 22, 23)]


def busy_for(cleanup: list[float]) -> list[tuple[float, float]]:
    """The engine holds each wave's streams until `cleanup` seconds after its drop."""
    return [(10 + 6 * i, 11 + 6 * i + c) for i, c in enumerate(cleanup)]


def test_passes_when_every_wave_cleans_up_in_time() -> None:
    result = evaluate(scrapes(engine(busy_for([0.1, 0.3, 0.5]))), THREE_WAVES)
    assert result.status == "passed", result.summary
    assert result.summary.startswith("3 waves cleaned up in ")
    assert result.summary.endswith("(limit 3s)")
    waves = result.observed["waves"]
    assert [w["wave"] for w in waves] == [1, 2, 3]
    for w, cleanup in zip(waves, [0.1, 0.3, 0.5], strict=True):
        assert w["baseline_running"] == 1.0 and w["baseline_kv"] == 0.03
        assert w["peak_running"] == 30.0 and w["peak_kv"] == 0.9
        # A clean scrape is dated by the next scrape's start: at most two steps late.
        assert cleanup <= w["cleanup_s"] <= cleanup + 2 * STEP + 1e-6
        assert w["samples"] > 0 and w["fault"] == "storm"
    assert result.observed["worst_cleanup_s"] == max(w["cleanup_s"] for w in waves)
    assert result.observed["series"] == {"running": RUNNING, "kv": KV}


def test_fails_when_a_wave_keeps_running_past_the_limit() -> None:
    # Wave 2's streams keep generating for 5s after the drop (limit 3s), and stop before
    # wave 3 starts, so wave 3 is fine.
    result = evaluate(scrapes(engine(busy_for([0.1, 4.5, 0.1]))), THREE_WAVES)
    assert result.status == "failed"
    assert "wave 2: cleaned up only after 4." in result.summary
    assert "wave 1" not in result.summary and "wave 3" not in result.summary
    waves = result.observed["waves"]
    assert waves[1]["cleanup_s"] > 4 and waves[0]["cleanup_s"] < 1


def test_fails_naming_what_is_still_held_when_never_cleaned() -> None:
    # The engine never lets go of wave 1 (a gateway that keeps streaming for nobody).
    result = evaluate(scrapes(engine([(10, 40)])), THREE_WAVES)
    assert result.status == "failed"
    assert ("wave 1: running requests still 30 (baseline 1) and KV cache still 90% "
            "(baseline 3%) 3s after the drop (limit 3s)") in result.summary
    assert result.observed["worst_cleanup_s"] is None
    # Later waves fall back to the pre-storm baseline instead of the held level.
    assert result.observed["waves"][2]["baseline_running"] == 1.0
    assert result.observed["waves"][2]["baseline_note"] == "from wave 1"


def test_running_alone_back_is_not_enough() -> None:
    def level(t: float) -> tuple[float, float]:
        if 10 <= t < 11:
            return STORM
        return (1.0, 0.5) if 11 <= t < 40 else BACKGROUND  # KV never freed
    result = evaluate(scrapes(level), [wave(1, 10, 11)])
    assert result.status == "failed"
    assert "KV cache still 50% (baseline 3%)" in result.summary
    assert "running requests still" not in result.summary


def test_tolerances_allow_a_little_above_baseline() -> None:
    def level(t: float) -> tuple[float, float]:
        if 10 <= t < 11:
            return STORM
        return (2.0, 0.04) if t >= 11 else BACKGROUND
    events = [wave(1, 10, 11)]
    assert evaluate(scrapes(level), events).status == "failed"
    result = evaluate(scrapes(level), events, running_tolerance=1, kv_tolerance=0.02)
    assert result.status == "passed", result.summary


@pytest.mark.parametrize("missing,named", [
    ("running", [RUNNING]),
    ("kv", [KV, OLD_KV]),
])
def test_missing_metric_fails_naming_every_name_tried(missing: str, named: list[str]) -> None:
    metrics = scrapes(engine(busy_for([0.1])), running=missing != "running",
                      kv=missing != "kv")
    result = evaluate(metrics, [wave(1, 10, 11)])
    assert result.status == "failed"
    assert result.summary.startswith("metric not found: tried ")
    for name in named:
        assert name in result.summary
    assert result.observed["series"] is None


def test_old_kv_metric_name_is_found() -> None:
    result = evaluate(scrapes(engine(busy_for([0.2])), kv_name=OLD_KV), [wave(1, 10, 11)])
    assert result.status == "passed", result.summary
    assert result.observed["series"]["kv"] == OLD_KV
    assert result.summary.startswith("1 wave cleaned up in ")


def test_no_wave_in_the_window_fails() -> None:
    result = evaluate(scrapes(engine([])), [])
    assert result.status == "failed"
    assert "no storm wave in the window" in result.summary
    # A wave in another phase does not count for this one.
    result = evaluate(scrapes(engine([])), [wave(1, 32, 33)])
    assert "no storm wave in the window" in result.summary


def test_no_scrape_after_the_drop_is_inconclusive() -> None:
    result = evaluate(scrapes(engine([(10, 11)]), end=10.9), [wave(1, 10, 11)])
    assert result.status == "inconclusive"
    assert ("wave 1: no scrape of the engine was answered between the drop and when the "
            "window ended (19s later;") in result.summary
    assert result.summary.endswith("(no evidence)")


def test_no_scrape_before_the_wave_is_inconclusive() -> None:
    result = evaluate(scrapes(engine([(10, 11)]), start=10.0), [wave(1, 10, 11)])
    assert result.status == "inconclusive"
    assert "no baseline" in result.summary


def test_a_storm_that_did_not_happen_is_inconclusive() -> None:
    result = evaluate(scrapes(engine([])), [wave(1, 10, 11, aborted=0)])
    assert result.status == "inconclusive"
    assert "no stream reached its abort point" in result.summary
    assert "connect 30" in result.summary


def test_gauges_that_never_rose_are_no_evidence() -> None:
    # Streams were dropped, but no scrape ever saw them on the engine: nothing was shown.
    result = evaluate(scrapes(engine([])), [wave(1, 10, 11)])
    assert result.status == "inconclusive"
    assert "wave 1: the storm never reached the scraped engine" in result.summary
    assert "no sample of its streams says whether they were answered" in result.summary


def tokens_counter(per_wave: dict[float, float], end: float = 40.0) -> list[MetricSample]:
    """vllm:generation_tokens_total, growing by `per_wave[t]` right after second t."""
    out: list[MetricSample] = []
    i = 0
    total = 1000.0
    while (t := i * STEP) < end:
        total += sum(n for at, n in per_wave.items() if at < t <= at + STEP + 1e-9)
        out.append(MetricSample(T0 + t, "vllm:generation_tokens_total", total))
        i += 1
    return out


def test_a_storm_the_gauges_missed_counts_when_the_token_counter_saw_it() -> None:
    # Scrapes during the waves were answered after them (a busy API server), so the
    # gauges never rose; the engine's token counter still shows it served the wave.
    events = [wave(1, 10, 11, tokens=900)]
    seen = evaluate(scrapes(engine([])) + tokens_counter({10.4: 1200}), events)
    assert seen.status == "passed", seen.summary
    assert seen.observed["waves"][0]["engine_tokens"] == 1200
    assert seen.observed["waves"][0]["client_tokens"] == 900
    # Another engine than the one the storm hit: its counter did not move.
    other = evaluate(scrapes(engine([])) + tokens_counter({}), events)
    assert other.status == "inconclusive"
    assert "is metrics_url the engine behind base_url?" in other.summary


def test_clients_that_saw_the_server_stream_on_after_their_fin_fail_the_wave() -> None:
    # The gauges were back in time (the drop came late, when the work was nearly done),
    # but 80 of 100 clients saw the server keep streaming after their FIN for `hold`.
    events = [wave(1, 10, 11, close="graceful",
                   drain={"hold_expired": 80, "server_closed": 20})]
    result = evaluate(scrapes(engine(busy_for([0.1]))), events)
    assert result.status == "failed"
    assert ("wave 1: after their FIN the server kept streaming to 80 of 100 clients for "
            "over 3s, until they gave up waiting") in result.summary
    assert result.observed["waves"][0]["drain"] == {"hold_expired": 80, "server_closed": 20}
    # Both symptoms at once are both reported.
    both = evaluate(scrapes(engine([(10, 40)])), events)
    assert "running requests still 30" in both.summary and "kept streaming" in both.summary
    # A server that closed at once is fine.
    ok = evaluate(scrapes(engine(busy_for([0.1]))),
                  [wave(1, 10, 11, close="graceful", drain={"server_closed": 100})])
    assert ok.status == "passed", ok.summary
    # A busy healthy engine that noticed a few FINs late (4 of 100) is not a server that
    # ignores them (which streams on to nearly all): up to 10% is tolerated.
    few = evaluate(scrapes(engine(busy_for([0.1]))),
                   [wave(1, 10, 11, close="graceful",
                         drain={"hold_expired": 4, "server_closed": 96})])
    assert few.status == "passed", few.summary
    over = evaluate(scrapes(engine(busy_for([0.1]))),
                    [wave(1, 10, 11, close="graceful",
                          drain={"hold_expired": 11, "server_closed": 89})])
    assert over.status == "failed" and "kept streaming to 11 of 100" in over.summary
    # Streams still open when the fault was reverted count once they were open > within.
    stopped = [wave(1, 10, 11, close="graceful", drain={"stopped": 60, "server_closed": 40},
                    streamed_on_s=[0.5] * 20 + [4.0] * 40)]
    cut = evaluate(scrapes(engine(busy_for([0.1]))), stopped)
    assert "kept streaming to 40 of 100 clients for over 3s" in cut.summary


def test_a_wave_dropped_far_later_than_planned_is_no_evidence() -> None:
    result = evaluate(scrapes(engine(busy_for([0.1]))), [wave(1, 10, 11, late_s=17.1)])
    assert result.status == "inconclusive"
    assert ("wave 1: the harness dropped the streams 17.1s later than planned (the machine "
            "starved it)") in result.summary
    # A few seconds late is normal on a busy machine: the drop is timed as it happened.
    ok = evaluate(scrapes(engine(busy_for([0.1]))), [wave(1, 10, 11, late_s=6.0)])
    assert ok.status == "passed", ok.summary


def test_counter_increase_uses_scrapes_answered_before_and_started_after() -> None:
    series = [(1.0, 10.0), (2.0, 15.0), (3.0, 40.0), (4.0, 41.0)]
    # Before 2.5: the scrape at 1.0 was answered by 2.0; the one at 2.0 maybe after 2.5.
    assert counter_increase(series, 2.5, 3.0) == 30.0
    assert counter_increase(series, 2.0, 3.5) == 31.0
    assert counter_increase(series, 0.5, 3.0) is None  # nothing answered before
    assert counter_increase(series, 2.5, 4.5) is None  # nothing started after
    assert counter_increase([(1.0, 50.0), (2.0, 60.0), (3.0, 5.0)], 2.5, 3.0) is None


def test_a_wave_overlapped_by_the_next_is_judged_with_it() -> None:
    # Wave 1 dropped late (a starved harness), and wave 2 starts 2s after its drop (within
    # is 3s): wave 1's leftovers would show in wave 2's cleanup, so they are judged together.
    events = [wave(1, 10, 11), wave(2, 13, 14)]
    broken = evaluate(scrapes(engine([(10, 18)])), events)
    assert broken.status == "failed"
    assert broken.summary == "wave 2: cleaned up only after 4.2s (limit 3s)"
    assert broken.observed["waves"][0]["merged_into"] == "wave 2"
    healthy = evaluate(scrapes(engine([(10, 11), (13, 14.1)])), events)
    assert healthy.status == "passed", healthy.summary
    assert "wave 1 overlapped wave 2 and was judged with it" not in healthy.summary
    # Held until wave 2 started, cleaned after wave 2's drop: judged with wave 2, passes.
    held = evaluate(scrapes(engine([(10, 14.1)])), events)
    assert held.status == "passed", held.summary
    assert "wave 1 overlapped wave 2 and was judged with it" in held.summary
    assert held.observed["waves"][0]["cleanup_s"] is None
    # A drop after the next wave had already started: nothing to watch in between.
    late = evaluate(scrapes(engine([(10, 14.1)])), [wave(1, 10, 13.5), wave(2, 13, 14)])
    assert late.status == "passed", late.summary
    assert late.observed["waves"][0]["merged_into"] == "wave 2"


def test_a_late_cleanup_cut_by_the_next_wave_fails() -> None:
    # Wave 2 starts 3.5s after wave 1's drop (within is 3s), and wave 1 is still held.
    events = [wave(1, 10, 11), wave(2, 14.5, 15.5)]
    result = evaluate(scrapes(engine([(10, 18)])), events)
    assert result.status == "failed"
    assert ("wave 1: running requests still 30 (baseline 1) and KV cache still 90% "
            "(baseline 3%) 3s after the drop (limit 3s)") in result.summary


def test_waves_of_two_faults_are_numbered_in_time_order() -> None:
    events = [wave(1, 10, 11), wave(2, 22, 23), wave(1, 16, 17, fault="prefill")]
    result = evaluate(scrapes(engine(busy_for([0.1, 0.1, 0.1]))), events)
    assert result.status == "passed", result.summary
    waves = result.observed["waves"]
    assert [(w["wave"], w["fault"], w["fault_wave"]) for w in waves] == [
        (1, "storm", 1), (2, "prefill", 1), (3, "storm", 2)]


def test_phase_start_mode_times_from_the_phase_start() -> None:
    # A flood loads the engine through the storm phase; recovery is judged from the
    # recover phase's start against the baseline phase's level.
    def level(cleanup: float) -> Level:
        return engine([(10, 30 + cleanup)])
    spec = {"phase": "recover", "after": "phase_start", "baseline_phase": "baseline"}
    ok = evaluate(scrapes(level(0.3)), [], **spec)
    assert ok.status == "passed", ok.summary
    assert ok.summary.startswith("the engine after the phase start cleaned up in 0.")
    assert ok.observed["waves"][0]["wave"] == "phase start"
    slow = evaluate(scrapes(level(5)), [], **spec)
    assert slow.status == "failed"
    assert "phase start: cleaned up only after 5" in slow.summary
    idle = evaluate(scrapes(engine([])), [], **spec)
    assert idle.status == "inconclusive" and "never showed the storm" in idle.summary


def test_join_holds_the_last_value_of_each_gauge() -> None:
    running = [(1.0, 5.0), (2.0, 0.0)]
    kv = [(1.0, 0.5), (1.5, 0.1)]
    assert join(running, kv, 0.0, 10.0) == [Point(1.0, 5.0, 0.5, 1.5),
                                           Point(1.5, 5.0, 0.1, 2.0),
                                           Point(2.0, 0.0, 0.1, None)]
    assert join(running, kv, 1.2, 1.8) == [Point(1.5, 5.0, 0.1, 2.0)]


def test_first_clean_ignores_scrapes_before_the_drop() -> None:
    spec = KvCacheCleanupCheck()
    points = [Point(0.5, 0.0, 0.0, 1.0), Point(1.0, 3.0, 0.2, 1.2),
              Point(1.2, 0.0, 0.01, 1.4), Point(1.4, 0.0, 0.0, None)]
    assert first_clean(points, 0.8, 0.0, 0.0, spec) == points[2]
    # The last scrape's answer cannot be dated, so it is no evidence of cleanup.
    assert first_clean(points, 1.3, 0.0, 0.0, spec) is None


def test_a_slow_scrape_does_not_date_a_clean_reading_early() -> None:
    # The engine keeps generating for 4s after the drop, and the API server that serves
    # /metrics is so busy that the scrape started just after the drop is only answered
    # once it is done, reporting clean gauges. Dated by its request, the cleanup would
    # look instant; it took 4s.
    level = engine([(10, 15)])
    metrics = scrapes(level, end=11.1)
    for t, values in ((11.05, (1.0, 0.03)), (15.1, (1.0, 0.03)), (15.3, (1.0, 0.03))):
        metrics += [MetricSample(T0 + t, RUNNING, values[0]), MetricSample(T0 + t, KV, values[1])]
    result = evaluate(metrics, [wave(1, 10, 11)])
    # Nothing shows whether it took 4s, or the reading was taken at once and answered
    # late: not a pass, and not a failure either.
    assert result.status == "inconclusive", result.summary
    assert ("wave 1: back to baseline somewhere between 0s and 4.1s after the drop (limit "
            "3s): the scrapes were answered too late to tell") in result.summary
    # A scrape started after the deadline that still saw the wave held makes it certain.
    held = scrapes(level, end=11.1)
    for t, values in ((11.05, STORM), (14.5, STORM), (15.1, BACKGROUND), (15.3, BACKGROUND)):
        held += [MetricSample(T0 + t, RUNNING, values[0]), MetricSample(T0 + t, KV, values[1])]
    late = evaluate(held, [wave(1, 10, 11)])
    assert late.status == "failed", late.summary
    assert "wave 1: cleaned up only after 4.3s (limit 3s)" in late.summary


# --- judged on work, not only gauges ---------------------------------------------------

GENERATED = "vllm:generation_tokens_total"
FINISHED = "vllm:request_success_total"


def counter(name: str, growth: Callable[[float], float], times: list[float],
            labels: dict[str, str] | None = None) -> list[MetricSample]:
    """A counter scraped at `times` (seconds after T0); `growth(t)` is its value."""
    return [MetricSample(T0 + t, name, 1000.0 + growth(t), labels or {}) for t in times]


def storm_streams(started: float, n: int = 30, status: int | None = 200
                  ) -> list[RequestRecord]:
    return [RequestRecord(start=T0 + started + 0.01, end=T0 + started + 1, shape="cancel_storm",
                          status=status, output_tokens=10 if status == 200 else 0)
            for _ in range(n)]


def every_step(start: float, end: float) -> list[float]:
    return [round(start + i * STEP, 6) for i in range(int((end - start) / STEP))]


def test_gauges_back_fast_but_work_went_on_after_the_drop_is_not_a_pass() -> None:
    # The reproduction: a gateway that keeps the engine generating after its clients left.
    # The gauges are back within a second, and the busy API server answered only 2 scrapes
    # in the window, while the engine generated 13,008 tokens for nobody and 30 dropped
    # streams ran to their end ("length").
    times = [*every_step(0, 23.0), 23.3, 25.1, *every_step(30.2, 40)]
    def level(t: float) -> tuple[float, float]:
        return STORM if 22 <= t < 23 else BACKGROUND
    metrics = []
    for t in times:
        run_v, kv_v = level(t)
        metrics += [MetricSample(T0 + t, RUNNING, run_v), MetricSample(T0 + t, KV, kv_v)]
    metrics += counter(GENERATED, lambda t: 0 if t < 22 else 500 if t < 24 else 13_508, times)
    metrics += counter(FINISHED, lambda t: 0 if t < 24 else 30, times,
                       {"finished_reason": "length"})
    result = evaluate(metrics, [wave(1, 22, 23)], storm_streams(22))
    assert result.status == "failed", result.summary
    assert "wave 1: the engine generated 13008 tokens after its clients left" in result.summary
    assert "30 requests ran to their end" in result.summary
    w = result.observed["waves"][0]
    assert w["status"] == "failed" and w["samples"] == 2 and w["cleanup_s"] is not None
    # Without the counters, 2 scrapes are too few to call it cleaned up.
    gauges_only = [m for m in metrics if m.name in (RUNNING, KV)]
    unsure = evaluate(gauges_only, [wave(1, 22, 23)], storm_streams(22))
    assert unsure.status == "inconclusive", unsure.summary
    assert "wave 1: only 2 scrapes of the engine answered after the drop" in unsure.summary
    assert "at least 3 needed" in unsure.summary


def test_healthy_cleanup_with_counters_passes() -> None:
    # The engine stops within the grace: its counters grow only by what the background
    # users received (their records explain it).
    times = every_step(0, 40)
    metrics = scrapes(engine(busy_for([0.1])))
    metrics += counter(GENERATED, lambda t: 10 * t + (600 if t > 11.1 else 0), times)
    metrics += counter(FINISHED, lambda t: int(t), times, {"finished_reason": "length"})
    background = [RequestRecord(start=T0 + t, end=T0 + t + 0.9, output_tokens=10, shape="bg")
                  for t in range(40)]
    result = evaluate(metrics, [wave(1, 10, 11)], storm_streams(10) + background)
    assert result.status == "passed", result.summary
    w = result.observed["waves"][0]
    assert w["status"] == "passed" and w["seen"] is True and w["answered"] == 30
    assert w["tokens_after_drop"] is not None and w["tokens_after_drop"] <= w["tokens_explained"]


def test_a_wave_the_engine_never_saw_is_not_a_cleaned_up_wave() -> None:
    # Wave 2's streams were answered (200), yet the engine never showed them: no evidence.
    events = [wave(1, 10, 11), wave(2, 16, 17)]
    level = engine([(10, 11.1)])
    answered = evaluate(scrapes(level), events, storm_streams(10) + storm_streams(16))
    assert answered.status == "inconclusive", answered.summary
    assert "wave 2: the storm never reached the scraped engine" in answered.summary
    assert "30 of its 30 streams were answered (200)" in answered.summary
    assert answered.observed["waves"][1]["status"] == "inconclusive"
    # No stream of wave 2 got an answer (a gateway queued it and the clients left before
    # it was forwarded): nothing to clean, and said so.
    queued = evaluate(scrapes(level), events,
                      storm_streams(10) + storm_streams(16, status=None))
    assert queued.status == "passed", queued.summary
    assert ("1 wave cleaned up in" in queued.summary
            and "wave 2 never reached the engine (none of its 30 streams got an answer"
            in queued.summary)
    assert queued.observed["waves"][1]["nothing_to_clean"] is True
    # A single wave nobody saw is never a pass, answered or not.
    alone = evaluate(scrapes(engine([])), [wave(1, 10, 11)], storm_streams(10, status=None))
    assert alone.status == "inconclusive"
    assert "never showed the storm" in alone.summary


def test_work_is_not_judged_on_counters_other_clients_swamp() -> None:
    # Another client of the engine generates 1000 tokens/s all along, which no record of
    # the harness explains: after the drop its work could alone exceed the bound, so the
    # counter does not judge the wave (and the summary says so); the gauges still do.
    times = every_step(0, 40)
    metrics = scrapes(engine(busy_for([0.1])))
    metrics += counter(GENERATED, lambda t: 1000 * t, times)
    result = evaluate(metrics, [wave(1, 10, 11)], storm_streams(10))
    assert result.status == "passed", result.summary
    assert "work after the drop not judged for wave 1" in result.summary
    w = result.observed["waves"][0]
    assert w["unknown_tokens_per_s"] == pytest.approx(1000, rel=0.05)
    assert "tokens after the drop not judged" in w["notes"][0]
    # A little unknown traffic is subtracted, and the wave is judged.
    small = scrapes(engine(busy_for([0.1]))) + counter(GENERATED, lambda t: 20 * t, times)
    judged = evaluate(small, [wave(1, 10, 11)], storm_streams(10))
    assert judged.status == "passed" and "not judged" not in judged.summary
    assert judged.observed["waves"][0]["tokens_after_drop"] is not None
