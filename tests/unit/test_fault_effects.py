"""Every fault proves it landed: each backend's `effect` on made-up evidence, seen (the
traffic or the target shows it), missed (the evidence that should show it is there and
does not) and unknown (no evidence either way)."""

from __future__ import annotations

from typing import Any

import pytest

from llmdrill.faults.cancel_storm import CancelStorm, judge_storm
from llmdrill.faults.client import RUNNING, WAITING
from llmdrill.faults.docker_backend import DockerFault, DockerInjector, judge_docker
from llmdrill.faults.request_flood import RequestFlood, judge_flood
from llmdrill.faults.toxiproxy import ToxiproxyFault, judge_toxic
from llmdrill.faults.toxiproxy import ToxiproxySpec as ToxicSpec
from llmdrill.model.records import Evidence, FaultEvent, MetricSample, RequestRecord

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0
APPLIED, REVERTED = T0 + 20, T0 + 40


def req(start: float, ttft: float = 0.2, duration: float = 0.5, error: str | None = None,
        shape: str | None = "chat", status: int | None = 200, attempts: int = 1,
        tokens: int = 8) -> RequestRecord:
    return RequestRecord(start=start, end=start + duration, ttft=ttft if error is None else None,
                         status=status, error_class=error, shape=shape, attempts=attempts,
                         output_tokens=tokens)


def steady(start: float, end: float, **kw: Any) -> list[RequestRecord]:
    """One request a second over [start, end)."""
    return [req(t, **kw) for t in range(int(start), int(end))]


def evidence(requests: list[RequestRecord], fault: str = "spike",
             events: list[tuple[float, str, dict[str, Any]]] | None = None,
             metrics: list[MetricSample] | None = None) -> Evidence:
    return Evidence(requests=requests, faults=[FaultEvent(fault, APPLIED, REVERTED)],
                    events=sorted(events or [], key=lambda e: e[0]), metrics=metrics or [],
                    run_end=T0 + 60)


def toxic(kind: str, **kw: Any) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(ToxicSpec).validate_python({"proxy": "vllm", "toxic": kind, **kw})


# --- Toxiproxy ---------------------------------------------------------------------------


def test_latency_seen_when_ttft_rose_by_a_good_share_of_it() -> None:
    reqs = steady(T0, APPLIED) + steady(APPLIED, REVERTED, ttft=1.7, duration=2.0)
    fault = ToxiproxyFault("run", "spike", toxic("latency", latency="1500ms"), "http://x")
    effect = fault.effect(evidence(reqs))
    assert effect.landed is True, effect.detail
    assert "20 of 20 requests" in effect.detail and "1500 ms" in effect.detail


def test_latency_on_a_proxy_no_client_uses_is_missed_and_says_why() -> None:
    # The toxic is on, the traffic goes elsewhere: requests in the window are as fast as before.
    reqs = steady(T0, T0 + 60)
    fault = ToxiproxyFault("run", "spike", toxic("latency", latency="1500ms"), "http://x")
    fault.listen = "127.0.0.1:18002"
    effect = fault.effect(evidence(reqs))
    assert effect.landed is False and effect.label == "missed"
    assert "0 of 20 requests" in effect.detail
    assert "127.0.0.1:18002" in effect.detail and "pointed at" in effect.detail


def test_latency_with_no_request_in_the_window_is_unknown() -> None:
    reqs = steady(T0, APPLIED - 1)
    effect = ToxiproxyFault("run", "spike", toxic("latency", latency="1s"), "u").effect(
        evidence(reqs))
    assert effect.landed is None and "no request started" in effect.detail


def test_latency_without_a_baseline_uses_an_absolute_share() -> None:
    spec = toxic("latency", latency="2s")
    assert judge_toxic(spec, steady(APPLIED, REVERTED, ttft=1.2, duration=1.5),
                       APPLIED, REVERTED).landed is True
    assert judge_toxic(spec, steady(APPLIED, REVERTED, ttft=0.2),
                       APPLIED, REVERTED).landed is False


def test_timeouts_count_as_the_latency_landing() -> None:
    reqs = steady(T0, APPLIED) + steady(APPLIED, REVERTED, error="timeout", duration=5.0)
    assert judge_toxic(toxic("latency", latency="3s"), reqs, APPLIED, REVERTED).landed is True


@pytest.mark.parametrize("kind,extra,error", [
    ("down", {}, "connect"), ("reset_peer", {}, "reset"), ("limit_data", {"bytes": "1KiB"},
                                                           "incomplete_stream"),
    ("timeout", {"timeout": "2s"}, "timeout"),
])
def test_breaking_toxics_seen_from_client_errors_missed_without(
        kind: str, extra: dict[str, Any], error: str) -> None:
    spec = toxic(kind, **extra)
    broken = steady(T0, APPLIED) + steady(APPLIED, REVERTED, error=error, status=None)
    effect = judge_toxic(spec, broken, APPLIED, REVERTED)
    assert effect.landed is True and "20 of 20" in effect.detail
    assert judge_toxic(spec, steady(T0, T0 + 60), APPLIED, REVERTED).landed is False


def test_down_seen_from_retries_or_much_longer_requests() -> None:
    retried = steady(T0, APPLIED) + steady(APPLIED, REVERTED, attempts=3, duration=0.6)
    assert judge_toxic(toxic("down"), retried, APPLIED, REVERTED).landed is True
    slow = steady(T0, APPLIED) + steady(APPLIED, REVERTED, duration=4.0)
    assert judge_toxic(toxic("down"), slow, APPLIED, REVERTED).landed is True


def test_bandwidth_seen_when_slower() -> None:
    spec = toxic("bandwidth", rate="1KiB")
    slow = steady(T0, APPLIED) + steady(APPLIED, REVERTED, duration=3.0)
    assert judge_toxic(spec, slow, APPLIED, REVERTED).landed is True
    assert judge_toxic(spec, steady(T0, T0 + 60), APPLIED, REVERTED).landed is False


def test_slow_close_unseen_is_unknown_not_missed() -> None:
    effect = judge_toxic(toxic("slow_close", delay="1s"), steady(T0, T0 + 60), APPLIED, REVERTED)
    assert effect.landed is None and "slow close" in effect.detail


def test_low_toxicity_with_few_requests_is_unknown() -> None:
    spec = toxic("reset_peer", toxicity=0.1)
    effect = judge_toxic(spec, steady(T0, APPLIED) + steady(APPLIED, APPLIED + 3),
                         APPLIED, REVERTED)
    assert effect.landed is None and "too few" in effect.detail


def test_baseline_is_per_request_shape() -> None:
    # Long flood requests do not hide that the chat requests became slower.
    reqs = (steady(T0, APPLIED) + steady(T0, APPLIED, shape="flood", ttft=3.0, duration=9.0)
            + steady(APPLIED, REVERTED, ttft=1.0, duration=1.3))
    assert judge_toxic(toxic("latency", latency="1s"), reqs, APPLIED, REVERTED).landed is True


def test_a_toxic_never_applied_has_no_window() -> None:
    ev = Evidence(requests=steady(T0, T0 + 60))
    effect = ToxiproxyFault("r", "spike", toxic("down"), "u").effect(ev)
    assert effect.landed is None


# --- Docker --------------------------------------------------------------------------------


def docker(action: str, **kw: Any) -> DockerFault:
    return DockerFault.model_validate({"action": action, "target": {"name": "engine"}, **kw})


def dev(at: float, action: str, fault: str = "crash", **kw: Any
        ) -> tuple[float, str, dict[str, Any]]:
    return (at, "docker_event", {"action": action, "container": "engine", "fault": fault, **kw})


def state(status: str = "running", fault: str = "crash", started: str = "2023-11-14T22:00:00Z",
          **kw: Any) -> tuple[float, str, dict[str, Any]]:
    return (REVERTED - 0.5, "docker_state", {"fault": fault, "container": "engine",
                                             "status": status, "oom_killed": False,
                                             "started_at": started, **kw})


ACTION = (APPLIED - 0.2, "docker_action", {"fault": "crash", "action": "kill"})


def test_kill_seen_from_a_die_event() -> None:
    reqs = steady(T0, APPLIED) + steady(APPLIED, REVERTED, error="connect", status=None)
    ev = evidence(reqs, "crash", [ACTION, dev(APPLIED + 0.1, "die", exit_code=137),
                                  dev(APPLIED + 3, "start"), state()])
    effect = judge_docker(docker("kill"), "crash", ev)
    assert effect.landed is True
    assert "die event" in effect.detail and "137" in effect.detail and "failed" in effect.detail


def test_restart_seen_from_the_state_read_back_when_events_were_lost() -> None:
    ev = evidence([], "crash", [ACTION, state(started="2099-01-01T00:00:00.5Z")])
    effect = judge_docker(docker("restart"), "crash", ev)
    assert effect.landed is True and "read back" in effect.detail


def test_kill_of_a_container_that_never_died_is_missed() -> None:
    ev = evidence(steady(T0, T0 + 60), "crash", [ACTION, dev(APPLIED, "kill"), state()])
    effect = judge_docker(docker("kill", signal="SIGUSR1"), "crash", ev)
    assert effect.landed is False and "no die event" in effect.detail
    assert "wrong container" in effect.detail


def test_docker_fault_with_nothing_recorded_is_unknown() -> None:
    ev = evidence(steady(T0, T0 + 60), "crash", [ACTION])
    assert judge_docker(docker("stop"), "crash", ev).landed is None


def test_pause_seen_when_requests_stalled_missed_when_they_did_not() -> None:
    events = [ACTION, dev(APPLIED, "pause"), state("paused")]
    stalled = steady(T0, APPLIED) + steady(APPLIED, REVERTED, duration=8.0)
    assert judge_docker(docker("pause"), "crash", evidence(stalled, "crash", events)
                        ).landed is True
    effect = judge_docker(docker("pause"), "crash", evidence(steady(T0, T0 + 60), "crash",
                                                             events))
    assert effect.landed is False and "0 of 20" in effect.detail


def test_memory_seen_from_an_oom_or_the_limit_read_back() -> None:
    spec = docker("memory", memory="256MiB")
    oom = evidence([], "crash", [ACTION, dev(APPLIED + 5, "oom"), state()])
    assert "oom event" in judge_docker(spec, "crash", oom).detail
    held = evidence([], "crash", [ACTION, state(memory=256 << 20)])
    effect = judge_docker(spec, "crash", held)
    assert effect.landed is True and "256MiB" in effect.detail
    wrong = evidence([], "crash", [ACTION, state(memory=1 << 30)])
    assert judge_docker(spec, "crash", wrong).landed is False


def test_cpu_is_only_the_setting_read_back_and_says_so() -> None:
    spec = docker("cpu", cpus=0.5)
    effect = judge_docker(spec, "crash", evidence([], "crash", [ACTION, state(cpu_quota=50_000)]))
    assert effect.landed is True and "only the setting" in effect.detail
    unread = evidence([], "crash", [ACTION, dev(APPLIED, "update"), state()])
    assert judge_docker(spec, "crash", unread).landed is None


def test_hog_seen_running_or_from_oom_killed_missed_when_it_ended_early() -> None:
    spec = docker("hog", memory="64MiB")
    ran = (APPLIED + 1, "docker_hog", {"fault": "crash", "container": "engine",
                                       "running": True, "exit_code": None})
    assert judge_docker(spec, "crash", evidence([], "crash", [ACTION, ran, state()])
                        ).landed is True
    killed = evidence([], "crash", [ACTION, state("exited", oom_killed=True)])
    assert judge_docker(spec, "crash", killed).landed is True
    ended = (APPLIED + 1, "docker_hog", {"fault": "crash", "container": "engine",
                                         "running": False, "exit_code": 1})
    effect = judge_docker(spec, "crash", evidence([], "crash", [ACTION, ended, state()]))
    assert effect.landed is False and "exit 1" in effect.detail


# --- cancel storm ------------------------------------------------------------------------


def wave(n: int, at: float, streams: int = 10, aborted: int = 10, tokens: int = 30,
         errors: dict[str, int] | None = None) -> tuple[float, str, dict[str, Any]]:
    return (at, "storm_wave", {"fault": "storm", "wave": n, "started_at": at,
                               "dropped_at": at + 2, "streams": streams, "aborted": aborted,
                               "failed": streams - aborted, "errors": errors or {},
                               "tokens": tokens, "abort_after": "after 3 chunks"})


def storm_streams(at: float, n: int = 10, **kw: Any) -> list[RequestRecord]:
    return [req(at + 0.5, shape="cancel_storm", duration=1.0, **kw) for _ in range(n)]


def queue(points: list[tuple[float, float]]) -> list[MetricSample]:
    return [MetricSample(ts, name, v if name == RUNNING else 0.0)
            for ts, v in points for name in (RUNNING, WAITING)]


def test_storm_seen_when_dropped_streams_had_been_answered() -> None:
    ev = evidence(storm_streams(APPLIED + 1), "storm", [wave(0, APPLIED + 1)],
                  queue([(APPLIED, 2), (APPLIED + 2, 12), (APPLIED + 4, 2)]))
    effect = judge_storm("storm", ev)
    assert effect.landed is True
    assert "10 of 10 streams dropped" in effect.detail and "2 -> 12" in effect.detail


def test_storm_whose_streams_never_got_an_answer_is_missed() -> None:
    ev = evidence(storm_streams(APPLIED + 1, error="connect", status=None), "storm",
                  [wave(0, APPLIED + 1, aborted=0, tokens=0, errors={"connect": 10})])
    effect = judge_storm("storm", ev)
    assert effect.landed is False and "never got an answer" in effect.detail


def test_a_wave_the_engine_never_saw_is_reported() -> None:
    flat = queue([(APPLIED, 3), (APPLIED + 1.8, 3), (APPLIED + 2.6, 3), (APPLIED + 7.8, 3)])
    reqs = storm_streams(APPLIED + 1) + storm_streams(APPLIED + 7)
    ev = evidence(reqs, "storm", [wave(0, APPLIED + 1), wave(1, APPLIED + 7)], flat)
    effect = judge_storm("storm", ev)
    assert effect.landed is False and "engine never saw" in effect.detail
    rising = queue([(APPLIED, 3), (APPLIED + 1.8, 13), (APPLIED + 7.8, 3)])
    one = judge_storm("storm", evidence(reqs, "storm", [wave(0, APPLIED + 1),
                                                         wave(1, APPLIED + 7)], rising))
    assert one.landed is True and "1 of 2 waves" in one.detail and "never saw" in one.detail


def test_a_wave_dropped_while_queued_lands_when_the_engine_took_it_in() -> None:
    # Dropped 200ms after sending, before any answer, by design: no client saw a status.
    unanswered = storm_streams(APPLIED + 1, status=None, ttft=None, error="interrupted")
    dropped = [wave(0, APPLIED + 1, streams=10, aborted=10, tokens=0)]
    rose = queue([(APPLIED, 2), (APPLIED + 2.5, 12), (APPLIED + 4, 2)])
    effect = judge_storm("storm", evidence(unanswered, "storm", dropped, rose))
    assert effect.landed is True and "took them in" in effect.detail
    prompts = [MetricSample(APPLIED, "vllm:prompt_tokens_total", 500.0),
               MetricSample(APPLIED + 2.5, "vllm:prompt_tokens_total", 660.0)]
    flat = queue([(APPLIED, 2), (APPLIED + 2.5, 2)])
    by_tokens = judge_storm("storm", evidence(unanswered, "storm", dropped, flat + prompts))
    assert by_tokens.landed is True and "160 prompt tokens" in by_tokens.detail
    # The engine neither queued nor read them: the wave went nowhere.
    still = [MetricSample(APPLIED, "vllm:prompt_tokens_total", 500.0),
             MetricSample(APPLIED + 2.5, "vllm:prompt_tokens_total", 503.0)]
    missed = judge_storm("storm", evidence(unanswered, "storm", dropped, flat + still))
    assert missed.landed is False


def test_storm_without_a_wave_is_unknown() -> None:
    assert judge_storm("storm", evidence([], "storm")).landed is None


# --- request flood -----------------------------------------------------------------------


def flood(n: int = 16, **kw: Any) -> list[RequestRecord]:
    return [req(APPLIED + 0.1 * i, shape="flood", duration=5.0, **kw) for i in range(n)]


def test_flood_seen_when_the_engine_queue_rose() -> None:
    ev = evidence(flood(), "kv", metrics=queue([(APPLIED - 1, 2), (APPLIED + 3, 18)]))
    effect = judge_flood("flood", ev, APPLIED, REVERTED)
    assert effect.landed is True and "16 answered" in effect.detail and "18" in effect.detail


def test_flood_refused_counts_as_reaching_the_server() -> None:
    refused = flood(error="http_429", status=429, tokens=0)
    ev = evidence(refused, "kv", metrics=queue([(APPLIED - 1, 2), (APPLIED + 3, 2)]))
    assert judge_flood("flood", ev, APPLIED, REVERTED).landed is True


def test_flood_that_reached_nothing_is_missed() -> None:
    ev = evidence(flood(error="connect", status=None, tokens=0), "kv")
    effect = judge_flood("flood", ev, APPLIED, REVERTED)
    assert effect.landed is False and "none reached" in effect.detail


def test_flood_answered_elsewhere_than_the_scraped_engine_is_missed() -> None:
    ev = evidence(flood(), "kv", metrics=queue([(APPLIED - 1, 2), (APPLIED + 3, 2)]))
    effect = judge_flood("flood", ev, APPLIED, REVERTED)
    assert effect.landed is False and "metrics_url" in effect.detail


def test_flood_with_no_request_recorded_is_unknown() -> None:
    assert judge_flood("flood", evidence([], "kv"), APPLIED, REVERTED).landed is None


def test_every_backend_judges_its_effect() -> None:
    for cls in (ToxiproxyFault, DockerInjector, CancelStorm, RequestFlood):
        assert callable(getattr(cls, "effect", None)), cls


def test_a_kill_whose_container_died_but_no_request_felt_it_is_missed() -> None:
    # The bystander case: the targeted container died, the clients' engine did not.
    ev = evidence(steady(T0, T0 + 60), "crash",
                  [ACTION, dev(APPLIED, "kill"), dev(APPLIED + 0.1, "die", exit_code=137)])
    effect = judge_docker(docker("kill"), "crash", ev)
    assert effect.landed is False
    assert "died, but 0 of" in effect.detail and "clients do not go through it" in effect.detail


def test_failures_already_there_before_the_toxic_are_not_its_effect() -> None:
    # Another outage before the fault: refusals before and during it are not the toxic's.
    before = steady(T0, APPLIED - 1, error="connect")
    during = steady(APPLIED + 1, APPLIED + 15, error="connect")
    effect = judge_toxic(toxic("down"), before + during, APPLIED, APPLIED + 20)
    assert effect.landed is None and "already failing" in effect.detail


def test_a_queue_rise_of_one_is_not_a_storm_of_ten() -> None:
    # Another client's single request moved the queue 0 -> 1 during the wave.
    nudge = queue([(APPLIED, 0), (APPLIED + 1.8, 1), (APPLIED + 4, 0)])
    effect = judge_storm("storm", evidence(storm_streams(APPLIED + 1), "storm",
                                           [wave(0, APPLIED + 1)], nudge))
    assert effect.landed is False and "never saw" in effect.detail


def test_a_wave_with_no_scrape_while_open_is_not_judged_from_answers_alone() -> None:
    # Scrapes before and long after, none while the wave was open (they were failing).
    gap = queue([(APPLIED - 5, 0), (APPLIED + 30, 0)])
    effect = judge_storm("storm", evidence(storm_streams(APPLIED + 1), "storm",
                                           [wave(0, APPLIED + 1)], gap))
    assert effect.landed is None and "no scrape" in effect.detail


def test_an_answered_wave_the_queue_gauge_missed_lands_on_the_prompt_counter() -> None:
    flat = queue([(APPLIED, 0), (APPLIED + 1.8, 0), (APPLIED + 4, 0)])
    prompts = [MetricSample(APPLIED, "vllm:prompt_tokens_total", 100.0),
               MetricSample(APPLIED + 2.5, "vllm:prompt_tokens_total", 400.0)]
    effect = judge_storm("storm", evidence(storm_streams(APPLIED + 1), "storm",
                                           [wave(0, APPLIED + 1)], flat + prompts))
    assert effect.landed is True and "prompt tokens" in effect.detail
