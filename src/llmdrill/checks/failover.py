"""failover: a gateway takes a failed replica out of rotation in time, and back after.

One replica of several (target.engines) is taken out by a fault (killed, hung, unhealthy,
drained). Judged from two sides, because each alone can be fooled:

- the clients: a request sent more than `switch_within` after the fault must succeed at
  its first attempt (a retry means an attempt still reached the dead replica, or the
  gateway answered for it); the attempts that failed during the switch stay within a
  budget; the streams cut when the fault hit are no more than the replica itself was
  serving (more means streams on the healthy replicas were cut too);
- the replicas' own counters: the failed replica receives no new request after the switch
  (`vllm:prompt_tokens_total` does not grow: what a drained or sick replica that still
  answers shows), the other replicas serve what the clients got, and after the revert new
  requests reach the replica again within `back_within`.

Fail closed: a fault that never applied, a replica that got no traffic before the fault
(the gateway never sent to it: nothing to fail over from), replicas whose counters never
moved while clients were served (metrics of engines not behind the target), or too few
requests after the switch are inconclusive, never a pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field

from llmdrill.checks.base import fault_span, fmt, make_result
from llmdrill.checks.counters import first_growth, increase
from llmdrill.model.records import Evidence, RequestRecord
from llmdrill.model.result import CheckResult, CheckStatus, Window
from llmdrill.plugin import CheckKind, Location, Problem
from llmdrill.scenario import refs
from llmdrill.scenario.fields import Strict
from llmdrill.scenario.units import Duration

KIND = "failover"


class Counters(Strict):
    """Which of each engine's metrics say what it received, served and had in flight: a
    vLLM replica's by default; a gateway instance's when the engines are gateways (HAProxy:
    `haproxy_frontend_http_requests_total`, `..._http_responses_total`,
    `..._current_sessions`, with `labels: {proxy: <its frontend>}`)."""

    arrivals: str = Field(
        default="vllm:prompt_tokens_total",
        description="A counter that grows with every request the engine receives.")
    served: str = Field(
        default="vllm:request_success_total",
        description="A counter that grows with every request the engine answers.")
    in_flight: list[str] = Field(
        default=["vllm:num_requests_running", "vllm:num_requests_waiting"],
        description="Gauges whose sum is what the engine is serving at a moment.")
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Only the samples with these labels (e.g. {proxy: llm}).")


class FailoverCheck(Strict):
    fault: str = Field(description="The fault that takes the replica out (in this phase).")
    engine: str = Field(description="The replica it takes out: its label in target.engines.")
    switch_within: Duration = Field(
        default=5.0,
        description="From the fault to the moment the gateway no longer sends to the "
        "replica: requests sent after it must succeed at their first attempt.")
    max_failed_attempts: int = Field(
        default=10, ge=0,
        description="Attempts that may fail during the switch (streams cut on the replica, "
        "requests sent to it before the gateway noticed).")
    back_within: Duration | None = Field(
        default=None,
        description="After the fault's revert, new requests reach the replica again within "
        "this (read from its own counters); unset: not judged.")
    min_requests: int = Field(
        default=10, ge=1,
        description="Fewer requests sent between the switch and the revert is inconclusive.")
    counters: Counters = Field(
        default_factory=Counters,
        description="The engines' metrics the check reads (default: a vLLM replica's).")
    cut_slack: int = Field(
        default=1, ge=0,
        description="Streams cut at the fault beyond what the replica was serving that are "
        "still put down to scrape timing rather than to cut streams on healthy replicas.")


@dataclass(frozen=True, slots=True)
class _Times:
    applied: float
    switched: float  # applied + switch_within
    revert_began: float  # or the end of the load when the fault stayed on
    reverted: float | None


def _fault_times(evidence: Evidence, spec: FailoverCheck, window: Window) -> _Times | None:
    span = fault_span(evidence, spec.fault, window)
    if span is None:
        return None
    return _Times(span.applied, span.applied + spec.switch_within, span.until, span.reverted)


def _failed_attempts(r: RequestRecord) -> int:
    return r.attempts - (1 if r.ok else 0)


def _last_before(points: list[tuple[float, float]], at: float) -> tuple[float, float] | None:
    before = [p for p in points if p[0] <= at]
    return before[-1] if before else None


def _cut_bound(evidence: Evidence, engine: str, applied: float, counters: Counters
               ) -> tuple[int, str] | None:
    """How many streams the engine could have been serving when the fault hit: its
    in-flight gauges at its last scrape before, plus every request sent after that scrape
    (some of which went to it). None without a scrape."""
    gauges = [evidence.engine_series(engine, (name,), counters.labels)
              for name in counters.in_flight]
    first = _last_before(gauges[0], applied) if gauges else None
    if first is None:
        return None
    at = first[0]
    values = [dict(series).get(at, 0.0) for series in gauges]
    sent_since = sum(1 for r in evidence.requests if at < r.start < applied)
    bound = int(sum(values)) + sent_since
    shown = " and ".join(f"{fmt(v)} {name.rsplit(':', 1)[-1]}"
                         for v, name in zip(values, counters.in_flight, strict=True))
    return bound, (f"{shown} on {engine} {fmt(applied - at, 1)}s before the fault, "
                   f"{sent_since} sent since")


def evaluate_failover(name: str, phase: str, spec: FailoverCheck, evidence: Evidence,
                      window: Window) -> CheckResult:
    expected: dict[str, Any] = {
        "switch_within_s": spec.switch_within, "max_failed_attempts": spec.max_failed_attempts,
        "back_within_s": spec.back_within, "min_requests": spec.min_requests}
    observed: dict[str, Any] = {"engine": spec.engine}

    def result(status: CheckStatus, summary: str) -> CheckResult:
        return make_result(name, KIND, phase, status, summary, window=window,
                           observed=observed, expected=expected)

    times = _fault_times(evidence, spec, window)
    if times is None:
        return result("inconclusive", f"inconclusive: fault '{spec.fault}' was never applied "
                      f"in phase '{phase}'")
    counters = spec.counters
    arrivals = evidence.engine_series(spec.engine, (counters.arrivals,), counters.labels)
    others = sorted({m.labels.get("llmdrill_engine", "") for m in evidence.metrics}
                    - {"", spec.engine})
    before = increase(arrivals, arrivals[0][0], times.applied) if arrivals else 0.0
    observed["arrivals_before_fault"] = before
    if not arrivals or arrivals[0][0] >= times.applied:
        return result("inconclusive", f"inconclusive: no scrape of {spec.engine}'s metrics "
                      "before the fault (is target.engines." + spec.engine
                      + ".metrics_url that replica's /metrics?)")
    if before <= 0:
        return result("inconclusive", f"inconclusive: {spec.engine} received no request "
                      "before the fault: the gateway does not send to it, so there was "
                      "nothing to fail over from")

    # The clients' side.
    after = [r for r in evidence.requests if times.switched <= r.start < times.revert_began]
    during = [r for r in evidence.requests
              if r.start < times.switched and r.end > times.applied]
    failed_after = [r for r in after if _failed_attempts(r) > 0]
    failed_during = sum(_failed_attempts(r) for r in during)
    cut = [r for r in during if r.start < times.applied and not r.ok]
    failing = [r for r in evidence.requests
               if times.applied <= r.start < times.revert_began and _failed_attempts(r) > 0]
    last_failing = max((r.start for r in failing), default=None)
    observed.update({
        "requests_after_switch": len(after),
        "failed_or_retried_after_switch": len(failed_after),
        "error_classes_after_switch": _classes(failed_after),
        "failed_attempts_during_switch": failed_during,
        "streams_cut_at_fault": len(cut),
        "last_failing_request_sent_s": (None if last_failing is None
                                        else round(last_failing - times.applied, 3)),
    })
    # The replicas' side.
    still_sent = increase(arrivals, times.switched, times.revert_began)
    observed["arrivals_after_switch"] = still_sent
    served_others = sum(increase(evidence.engine_series(o, (counters.served,),
                                                        counters.labels),
                                 times.switched, times.revert_began) for o in others)
    ok_after = sum(1 for r in evidence.requests
                   if r.ok and times.switched <= r.end <= times.revert_began)
    observed.update({"other_engines": others, "served_by_others_after_switch": served_others,
                     "client_successes_after_switch": ok_after})
    bound = _cut_bound(evidence, spec.engine, times.applied, counters)
    switch = f"{fmt(spec.switch_within)}s"

    problems: list[str] = []
    if failed_after:
        problems.append(
            f"{len(failed_after)} of {len(after)} requests sent more than {switch} after the "
            f"fault failed or needed a retry ({_classes_text(failed_after)}): the gateway "
            f"still sent to {spec.engine}")
    if failed_during > spec.max_failed_attempts:
        problems.append(f"{failed_during} attempts failed during the switch, over the budget "
                        f"of {spec.max_failed_attempts}")
    if bound is not None:
        observed["cut_bound"] = bound[0]
        if len(cut) > bound[0] + spec.cut_slack:
            problems.append(f"{len(cut)} streams in flight failed when the fault hit, more "
                            f"than {spec.engine} was serving ({bound[1]}): streams on the "
                            "healthy replicas were cut")
    if still_sent > 0:
        problems.append(f"{spec.engine} still received new requests after the switch "
                        f"({counters.arrivals} grew by {fmt(still_sent)})")
    back = _judge_back(evidence, spec, times, arrivals, observed)
    if back is not None and back[0] == "failed":
        problems.append(back[1])
    if problems:
        return result("failed", "; ".join(problems))

    if not others:
        return result("inconclusive", "inconclusive: no other replica in target.engines was "
                      "scraped: nothing shows where the traffic went")
    if ok_after > 0 and served_others <= 0:
        return result("inconclusive", f"inconclusive: {ok_after} requests succeeded after "
                      f"the switch but the other replicas' counters ({', '.join(others)}) did "
                      "not move: are target.engines the replicas behind base_url?")
    if len(after) < spec.min_requests:
        return result("inconclusive", f"inconclusive: {len(after)} requests sent between the "
                      f"switch and the revert, need {spec.min_requests}")
    if back is not None and back[0] == "inconclusive":
        return result("inconclusive", f"inconclusive: {back[1]}")
    summary = (f"{spec.engine} out of rotation within {switch}: all {len(after)} requests "
               f"sent after it succeeded first time, {failed_during} attempts failed during "
               f"the switch (budget {spec.max_failed_attempts}), {len(cut)} streams cut")
    if last_failing is not None:
        summary += f", the last failing one sent {fmt(last_failing - times.applied, 1)}s in"
    if back is not None:
        summary += f"; {back[1]}"
    return result("passed", summary)


def _judge_back(evidence: Evidence, spec: FailoverCheck, times: _Times,
                arrivals: list[tuple[float, float]], observed: dict[str, Any]
                ) -> tuple[CheckStatus, str] | None:
    if spec.back_within is None:
        return None
    if times.reverted is None:
        return "inconclusive", f"fault '{spec.fault}' was not reverted during the run"
    returned = first_growth(arrivals, times.reverted)
    limit = f"{fmt(spec.back_within)}s"
    if returned is not None:
        took = returned - times.reverted
        observed["back_after_revert_s"] = round(took, 3)
        if took <= spec.back_within:
            return "passed", f"traffic back on {spec.engine} {fmt(took, 1)}s after the revert"
        return "failed", (f"traffic reached {spec.engine} again only {fmt(took, 1)}s after "
                          f"the revert, over {limit}")
    observed["back_after_revert_s"] = None
    seen_until = max((r.end for r in evidence.requests), default=times.reverted)
    if seen_until >= times.reverted + spec.back_within:
        return "failed", f"no new request reached {spec.engine} within {limit} of the revert"
    return "inconclusive", (f"the run ended {fmt(seen_until - times.reverted, 1)}s after the "
                            f"revert, before {spec.engine}'s return within {limit} could show")


def _classes(records: list[RequestRecord]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        key = r.error_class or "retried"
        out[key] = out.get(key, 0) + 1
    return out


def _classes_text(records: list[RequestRecord]) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(_classes(records).items()))


def _references(spec: FailoverCheck, scenario: Any, location: Location) -> list[Problem]:
    problems = refs.unknown_fault(scenario, spec.fault, (*location, "fault"))
    engines = scenario.target.engines
    if unknown := refs.unknown_engine(scenario, spec.engine, (*location, "engine")):
        problems += unknown
    elif len(engines) < 2:
        problems.append(((*location, "engine"), "a failover needs at least two replicas in "
                         "target.engines: the one taken out and one to take its traffic"))
    return problems


FAILOVER = CheckKind(
    spec=FailoverCheck,
    evaluate=evaluate_failover,
    references=_references,
    description="A gateway takes a failed replica out of rotation in time and back after.",
    runbook=(
        "The gateway kept sending requests to a replica that was dead, hung or failing, or "
        "took too long to stop. Look at its active health checks (HAProxy: `check inter` "
        "and `fall`, `option httpchk GET /health`, `timeout check`; vllm-router: "
        "--health-check-interval-secs, --health-failure-threshold, the circuit breaker), "
        "retries on connection failures (HAProxy `retry-on`, `option redispatch`), and at "
        "each replica's own counters (vllm:prompt_tokens_total, "
        "vllm:request_success_total) in the report's replica charts. A hung replica (port "
        "open, nothing answers) is caught only by a health check with a timeout; passive "
        "checks miss it."
    ),
)
