"""backpressure: when capacity goes away under load, the gateway sheds what it cannot serve
(429/503 with Retry-After) instead of letting queueing latency grow without bound.

The drill: one replica of several behind a gateway goes down (the `fault`) while the load
is held and a flood of long requests arrives. Times are measured from the fault's
application (or from the phase start when no fault is named). The first `settle` seconds
are the gateway's switch: requests sent before then are not judged. Judged from three
sides:

- the refusals, counted from the fault on (a request whose final status is one of
  `refusal_statuses`, answered after the fault): when shedding started, and whether every
  refusal said when to come back (Retry-After, where required);
- the requests sent from the settle on to the phase end (those the load stopped before
  they ended are left out, and counted): the TTFT p95 of those served stays within
  `max_ttft` (a request still waiting for its first token more than `max_ttft` after it was
  sent when the load stopped breaks the bound too), and those that failed other than with
  a refusal (timeouts, resets, other 5xx, incomplete streams...) stay within
  `max_other_errors` of them. A request whose last attempt succeeded is served, however
  many attempts it took;
- the engines' own waiting queues (`engines`, default every replica of target.engines
  scraped, else the target's own metrics) over the same span: the peak of any of them
  stays within `max_waiting`. An optional gateway queue (`gateway_queue`) is reported, not
  judged.

A waiting peak over the bound, refusals without a required Retry-After and requests left
waiting for a first token fail on any number of requests; the TTFT p95 and error share are
statistics, judged from `min_requests` judged requests on.

Fail closed: a fault that never applied in the phase, fewer than `min_requests` judged
requests, no waiting-queue sample of any watched engine in the judged span (naming what
was tried), or no served request to measure TTFT on are inconclusive, never a pass. So is
a run that never showed the pressure: no request refused and every bound held means the
load did not exceed what the system serves, and backpressure was not shown.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from llmdrill.checks.base import fault_span, fmt, make_result
from llmdrill.checks.stats import percentile
from llmdrill.model.records import ENGINE_LABEL, Evidence, RequestRecord
from llmdrill.model.result import CheckResult, CheckStatus, Window
from llmdrill.plugin import CheckKind, Location, Problem
from llmdrill.scenario import refs
from llmdrill.scenario.fields import Strict
from llmdrill.scenario.units import Duration, Fraction

KIND = "backpressure"
# The name of the target's own series when no replica of target.engines is scraped.
TARGET = "target"


class GatewayQueue(Strict):
    """Where the gateway's own queue is read (reported, not judged): HAProxy's exporter
    by default, scraped as one of target.engines."""

    engine: str = Field(
        description="The label in target.engines whose metrics are the gateway's.")
    series: list[str] = Field(
        default_factory=lambda: ["haproxy_backend_current_queue"], min_length=1,
        description="Queue metric names, the first one the gateway has is used.")
    labels: dict[str, str] | None = Field(
        default=None,
        description="Only the samples with these labels (e.g. {proxy: llm}); unset: all, "
        "summed per scrape.")


class BackpressureCheck(Strict):
    """When capacity goes away under load, excess requests are refused (429/503 with
    Retry-After) while the queues and the latency of what is served stay bounded."""

    fault: str | None = Field(
        default=None,
        description="The fault that takes capacity away (in this phase); times are "
        "measured from its application. Unset: from the phase start.")
    settle: Duration = Field(
        default=5.0,
        description="Requests sent before the fault (or the phase start) plus this are not "
        "judged for latency and errors (the gateway's switch); refusals count from the "
        "fault on.")
    refusal_statuses: list[int] = Field(
        default_factory=lambda: [429, 503], min_length=1,
        description="Final HTTP statuses that count as a request refused under load.")
    require_retry_after: bool = Field(
        default=True, description="Every refusal must carry a Retry-After header.")
    max_ttft: Duration = Field(
        description="Bound on the TTFT p95 of the judged requests served: queueing latency "
        "stays bounded.")
    max_waiting: float = Field(
        ge=0,
        description="Bound on the peak of each watched engine's waiting queue from the "
        "settle on.")
    engines: list[str] | None = Field(
        default=None, min_length=1,
        description="The replicas whose waiting queues are watched: labels in "
        "target.engines. Unset: every replica scraped (the gateway_queue's excepted), or "
        "the target's own metrics when no replica is.")
    waiting_series: list[str] = Field(
        default_factory=lambda: ["vllm:num_requests_waiting"], min_length=1,
        description="Waiting-queue metric names, the first one each engine has is used.")
    gateway_queue: GatewayQueue | None = Field(
        default=None,
        description="The gateway's own queue, read from its metrics: its peak is reported, "
        "not judged.")
    max_other_errors: Fraction = Field(
        default=0.02,
        description="Share of the judged requests that may fail other than with a refusal "
        "status (timeouts, resets, other 5xx, incomplete streams...).")
    min_requests: int = Field(
        default=10, ge=1,
        description="Fewer judged requests is inconclusive.")


@dataclass(frozen=True, slots=True)
class _Peak:
    engine: str
    series: str
    value: float
    at: float  # epoch seconds


def _first_series(evidence: Evidence, engine: str, names: list[str],
                  labels: dict[str, str] | None, start: float, end: float
                  ) -> tuple[str | None, list[tuple[float, float]]]:
    """One engine's samples within [start, end] under the first of `names` it has (the
    target's own, unlabelled, for TARGET), and that name."""
    if engine == TARGET:
        have = {m.name for m in evidence.metrics if ENGINE_LABEL not in m.labels}
        extra: dict[str, str] = {}
    else:
        have = {m.name for m in evidence.metrics if m.labels.get(ENGINE_LABEL) == engine}
        extra = {ENGINE_LABEL: engine}
    name = next((n for n in names if n in have), None)
    if name is None:
        return None, []
    points = evidence.series(name, {**(labels or {}), **extra})
    return name, [(ts, v) for ts, v in points if start <= ts <= end]


def _peak(evidence: Evidence, engines: list[str], names: list[str],
          labels: dict[str, str] | None, start: float, end: float
          ) -> tuple[_Peak | None, dict[str, str], list[str]]:
    """The highest sample of the engines' series within [start, end] (its first time on a
    tie), the series each engine was read from, and the engines with no sample there."""
    best: _Peak | None = None
    used: dict[str, str] = {}
    unseen: list[str] = []
    for engine in engines:
        name, points = _first_series(evidence, engine, names, labels, start, end)
        if name is None or not points:
            unseen.append(engine)
            continue
        used[engine] = name
        ts, value = max(points, key=lambda p: (p[1], -p[0]))
        if best is None or (value, -ts) > (best.value, -best.at):
            best = _Peak(engine, name, value, ts)
    return best, used, unseen


def watched_engines(evidence: Evidence, spec: BackpressureCheck) -> list[str]:
    """The engines whose waiting queues are judged: those named, else every replica the
    evidence has series of (the gateway's excepted), else the target itself."""
    if spec.engines is not None:
        return list(spec.engines)
    gateway = spec.gateway_queue.engine if spec.gateway_queue is not None else None
    found = sorted({m.labels[ENGINE_LABEL] for m in evidence.metrics
                    if ENGINE_LABEL in m.labels} - {gateway})
    return found or [TARGET]


def _shown(engine: str) -> str:
    return "the target" if engine == TARGET else engine


def _counts(counter: Counter[Any]) -> dict[str, int]:
    return {str(k): n for k, n in sorted(counter.items())}


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {n}" for k, n in counts.items())


def _percent(value: float) -> str:
    return f"{fmt(value * 100, 1)}%"


def evaluate_backpressure(name: str, phase: str, spec: BackpressureCheck, evidence: Evidence,
                          window: Window) -> CheckResult:
    expected: dict[str, Any] = {
        "fault": spec.fault, "settle_s": spec.settle,
        "refusal_statuses": list(spec.refusal_statuses),
        "require_retry_after": spec.require_retry_after, "max_ttft_s": spec.max_ttft,
        "max_waiting": spec.max_waiting, "waiting_series": list(spec.waiting_series),
        "max_other_errors": spec.max_other_errors, "min_requests": spec.min_requests}
    observed: dict[str, Any] = {}

    def result(status: CheckStatus, summary: str) -> CheckResult:
        return make_result(name, KIND, phase, status, summary, window=window,
                           observed=observed, expected=expected)

    if spec.fault is None:
        t0, since = window.start, "the phase start"
    else:
        times = fault_span(evidence, spec.fault, window)
        if times is None:
            return result("inconclusive", f"inconclusive: fault '{spec.fault}' was never "
                          f"applied in phase '{phase}'")
        t0, since = times.applied, "the fault"
    judged_from = t0 + spec.settle
    statuses = set(spec.refusal_statuses)

    def refusal(r: RequestRecord) -> bool:
        return r.status in statuses

    # The refusals, from the fault on: when the client got them.
    answered = [r for r in evidence.requests if r.finished and r.end >= t0
                and r.start < window.end]
    refused = [r for r in answered if refusal(r)]
    without_ra = [r for r in refused if not r.retry_after]
    shedding = min((r.end for r in refused), default=None)

    # The requests judged for latency and errors: sent from the settle on.
    sent = [r for r in evidence.requests if judged_from <= r.start < window.end]
    judged = [r for r in sent if r.finished]
    served = [r for r in judged if r.ok]
    ttfts = [r.ttft for r in served if r.ttft is not None]
    ttft_p95 = percentile(ttfts, 95)
    waited = [r.end - r.start for r in sent if not r.finished and r.ttft is None
              and r.end - r.start > spec.max_ttft]
    other = [r for r in judged if not r.ok and not refusal(r)]
    other_by_class = _counts(Counter(r.error_class or f"status {r.status}" for r in other))
    other_share = len(other) / len(judged) if judged else 0.0

    # The engines' waiting queues, and the gateway's.
    engines = watched_engines(evidence, spec)
    peak, used, unseen = _peak(evidence, engines, spec.waiting_series, None, judged_from,
                               window.end)
    observed.update({
        "since": "fault" if spec.fault is not None else "phase_start",
        "requests": len(answered),
        "refused": len(refused),
        "refused_by_status": _counts(Counter(r.status for r in refused)),
        "refused_without_retry_after": len(without_ra),
        "shedding_started_s": None if shedding is None else round(shedding - t0, 3),
        "judged": len(judged),
        "unfinished_at_stop": len(sent) - len(judged),
        "served": len(served),
        "ttft_p95_s": None if ttft_p95 is None else round(ttft_p95, 3),
        "engines": engines,
        "waiting_series": used,
        "waiting_unseen": unseen,
        "waiting_peak": None if peak is None else peak.value,
        "waiting_peak_engine": None if peak is None else peak.engine,
        "waiting_peak_at_s": None if peak is None else round(peak.at - t0, 3),
        "other_errors": len(other),
        "other_errors_by_class": other_by_class,
    })
    gateway_text = ""
    if spec.gateway_queue is not None:
        gq = spec.gateway_queue
        gpeak, gused, _ = _peak(evidence, [gq.engine], gq.series, gq.labels, judged_from,
                                window.end)
        observed.update({
            "gateway_queue_series": gused.get(gq.engine),
            "gateway_queue_peak": None if gpeak is None else gpeak.value,
            "gateway_queue_peak_at_s": None if gpeak is None else round(gpeak.at - t0, 3),
        })
        gateway_text = (f"; gateway queue peak {fmt(gpeak.value)} ({gq.engine}, "
                        f"{fmt(gpeak.at - t0, 1)}s after {since})" if gpeak is not None
                        else f"; gateway queue not seen (tried {', '.join(gq.series)} on "
                        f"{gq.engine})")

    settle_text = f"{fmt(spec.settle)}s after {since}"
    problems: list[str] = []
    unknowns: list[str] = []
    enough = len(judged) >= spec.min_requests
    if peak is not None and peak.value > spec.max_waiting:
        problems.append(f"queued instead of shedding: {_shown(peak.engine)}'s waiting queue "
                        f"peaked at {fmt(peak.value)} (> {fmt(spec.max_waiting)}) "
                        f"{fmt(peak.at - t0, 1)}s after {since}")
    if enough and ttft_p95 is not None and ttft_p95 > spec.max_ttft:
        problems.append(f"served TTFT p95 {fmt(ttft_p95, 2)}s (> {fmt(spec.max_ttft)}s): "
                        "queueing latency was not bounded")
    if waited:
        problems.append(f"{len(waited)} requests sent from {settle_text} still had no "
                        f"first token when the load stopped, up to {fmt(max(waited), 1)}s "
                        f"after they were sent (> max_ttft {fmt(spec.max_ttft)}s)")
    if spec.require_retry_after and without_ra:
        problems.append(f"{len(without_ra)} of {len(refused)} refusals had no Retry-After")
    if enough and other_share > spec.max_other_errors:
        problems.append(f"{len(other)} of {len(judged)} judged requests "
                        f"({_percent(other_share)}) failed other than with a refusal "
                        f"({_counts_text(other_by_class)}), over max_other_errors "
                        f"{_percent(spec.max_other_errors)}")
    if problems:
        return result("failed", "; ".join(problems))

    if judged_from >= window.end:
        unknowns.append(f"the settle ({settle_text}) reaches past the phase end: no "
                        "request is judged")
    elif not enough:
        unknowns.append(f"{len(judged)} requests sent from {settle_text} to the phase end "
                        f"ended, need {spec.min_requests}")
    if peak is None:
        watched = ("the target's own metrics" if engines == [TARGET]
                   else ", ".join(engines))
        unknowns.append(f"no sample of {', '.join(spec.waiting_series)} from {watched} "
                        f"between {settle_text} and the phase end: an unwatched queue is "
                        "not a bounded one")
    if enough and ttft_p95 is None:
        unknowns.append(f"none of the {len(judged)} judged requests was served with a "
                        "first token: nothing shows the latency of what was admitted")
    if unknowns:
        return result("inconclusive", "inconclusive: " + "; ".join(unknowns))
    assert peak is not None and ttft_p95 is not None
    if shedding is None:
        return result("inconclusive", "inconclusive: no request was refused and no queue "
                      "built: the load did not exceed what the system serves, so "
                      "backpressure was not shown")

    by_status = _counts_text(observed["refused_by_status"])
    if not without_ra:
        retry = ", all with Retry-After"
    else:
        retry = f", {len(without_ra)} without Retry-After"
    summary = (f"shed {len(refused)} of {len(answered)} requests ({by_status}{retry}) from "
               f"{fmt(shedding - t0, 1)}s after {since}; "
               f"queue peak {fmt(peak.value)} ({_shown(peak.engine)}); served TTFT "
               f"p95 {fmt(ttft_p95, 2)}s (<= {fmt(spec.max_ttft)}s)")
    if other:
        summary += (f"; {len(other)} of {len(judged)} judged requests failed otherwise "
                    f"({_counts_text(other_by_class)}; max "
                    f"{_percent(spec.max_other_errors)})")
    return result("passed", summary + gateway_text)


def _references(spec: BackpressureCheck, scenario: Any, location: Location) -> list[Problem]:
    problems = refs.unknown_fault(scenario, spec.fault, (*location, "fault"))
    for i, engine in enumerate(spec.engines or []):
        problems += refs.unknown_engine(scenario, engine, (*location, "engines", i))
    if spec.gateway_queue is not None:
        problems += refs.unknown_engine(scenario, spec.gateway_queue.engine,
                                        (*location, "gateway_queue", "engine"))
    if spec.engines is None and not scenario.target.engines:
        problems += refs.needs_metrics_url(scenario, KIND, location)
    return problems


BACKPRESSURE = CheckKind(
    spec=BackpressureCheck,
    evaluate=evaluate_backpressure,
    references=_references,
    description="When capacity goes away under load, excess requests are refused with "
                "Retry-After while queues and served latency stay bounded.",
    runbook=(
        "Capacity went away under load and the system queued the excess instead of "
        "refusing it, refused without Retry-After, or failed requests some other way. "
        "Bound what reaches each replica at the gateway (HAProxy: `maxconn` on each "
        "`server`, so the excess waits in the backend queue, with `timeout queue` short "
        "enough that it is answered 503 instead of waiting on) and in vLLM itself "
        "(`--max-num-seqs`; watch vllm:num_requests_waiting on the replica charts). A "
        "gateway rate or concurrency limit answers 429 (`http-request deny deny_status "
        "429`). Neither carries Retry-After by default: add it, e.g. `http-after-response "
        "set-header Retry-After 2 if { status 429 503 }`. Timeouts and resets rather than "
        "refusals mean the client gave up before the gateway did: the gateway's queue "
        "timeout must be shorter than the clients'."
    ),
)
