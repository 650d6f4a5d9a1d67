"""caps_enforced: requests over the limits are refused with a helpful 4xx, never a 5xx or
a hang, and the server still serves afterwards.

An active check. Its probe sends the cases (`probes/caps_cases.py`) `rounds` times over
the phase, each round followed by one small normal completion, and records one
`caps_probe` event per case and one `caps_health` event per round: statuses, timings and
verdicts on the body, never the body itself. The evaluator judges those events.

Least evidence: every case answered (a probe event) in each of the `rounds` rounds, and
one normal request after each round. Less, without a bad answer, is inconclusive.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import Field

from llmdrill.checks.base import fmt, make_result
from llmdrill.model.events import EventKind
from llmdrill.model.records import Evidence
from llmdrill.model.result import CheckResult, Window
from llmdrill.plugin import CheckKind
from llmdrill.probes.caps_cases import (
    CapCase,
    ErrorSchema,
    ProbeRequest,
    build_request,
    cases_of,
    excerpt,
    expected_statuses,
    health_answer_ok,
    health_request,
    judge_body,
    message_ok,
    message_pattern,
    status_ok,
    status_text,
)
from llmdrill.scenario.fields import (
    Strict,
)
from llmdrill.scenario.units import Duration, PositiveInt

if TYPE_CHECKING:
    from llmdrill.model.context import RunContext


# --- the spec: the YAML under this key ----------------------------------------






class CapsEnforcedCheck(Strict):
    """Requests over the limits are refused with a helpful 4xx, never a 5xx or a hang, and
    the server still serves afterwards. The probes run while the phase runs."""

    context_length: PositiveInt = Field(description="The engine's max context, in tokens.")
    max_output_tokens: PositiveInt | None = Field(
        default=None, description="Output cap per request, if lower than context_length."
    )
    cases: list[CapCase] | None = Field(
        default=None, description="Cases to probe; default every built-in kind."
    )
    error_schema: ErrorSchema = Field(default_factory=ErrorSchema)
    deadline: Duration = Field(default=10.0, description="Each probe must answer within this.")
    rounds: PositiveInt = Field(default=1, description="Times the cases run over the phase.")


KIND = "caps_enforced"
BODY_CAP = 64 * 1024  # an error answer is small; a hostile one must not fill memory


# --- probe ----------------------------------------------------------------------------


@dataclass
class Answer:
    """What one request got: a status and a capped body, or the class of its failure."""

    start: float
    elapsed: float
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error_class: str | None = None


def _error_class(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect"
    if isinstance(exc, httpx.ReadError | httpx.WriteError):
        return "reset"
    return "protocol"


def send(client: httpx.Client, req: ProbeRequest, deadline: float) -> Answer:
    """POST one request; never raises for transport trouble, never waits much past the
    deadline (httpx's timeouts bound each wait, the loop bounds the whole body read)."""
    start, t0 = time.time(), time.monotonic()
    answer = Answer(start=start, elapsed=0.0)
    try:
        with client.stream("POST", req.path, content=req.body,
                           headers={"content-type": "application/json"}) as resp:
            answer.status = resp.status_code
            answer.headers = {k.lower(): v for k, v in resp.headers.items()}
            chunks: list[bytes] = []
            size = 0
            for chunk in resp.iter_bytes():
                chunks.append(chunk[: BODY_CAP - size])
                size += len(chunks[-1])
                if size >= BODY_CAP:
                    break
                if time.monotonic() - t0 > deadline:
                    answer.error_class = "timeout"
                    break
            answer.body = b"".join(chunks)
    except httpx.HTTPError as exc:
        answer.error_class = _error_class(exc)
    answer.elapsed = time.monotonic() - t0
    if answer.error_class is None and answer.elapsed > deadline:
        answer.error_class = "timeout"
    return answer


def probe_event(check: str, case: CapCase, spec: CapsEnforcedCheck, answer: Answer,
                round_no: int) -> dict[str, Any]:
    """The `caps_probe` event of one answer: verdicts and a short message excerpt only."""
    verdict = judge_body(answer.body, answer.headers, spec.error_schema)
    answered = answer.status is not None
    return {
        "check": check,
        "case": case.name,
        "kind": case.kind,
        "round": round_no,
        "status": answer.status,
        "elapsed_s": round(answer.elapsed, 4),
        "error_class": answer.error_class,
        "body_ok": answered and not verdict.problems,
        "schema_problems": verdict.problems if answered else [],
        "message_ok": message_ok(verdict.message, message_pattern(case, spec)),
        "message_excerpt": excerpt(verdict.message),
        "request_id": verdict.request_id,
    }


def health_ok(answer: Answer) -> bool:
    # The same judge as every other completion: a 200 that generated nothing is not health.
    return health_answer_ok(answer.status, answer.error_class, answer.body)


def _phase_duration(ctx: RunContext, check_name: str) -> float:
    for i, check in enumerate(ctx.scenario.checks):
        if check.display_name(i) == check_name:
            phase = next((p for p in ctx.scenario.phases if p.name == check.phase), None)
            return phase.duration if phase is not None else 0.0
    return 0.0


def probe_caps(ctx: RunContext, check_name: str, spec: CapsEnforcedCheck,
               stop: threading.Event) -> None:
    store = ctx.store
    if store is None:
        return
    model = ctx.scenario.target.model
    cases = [(case, build_request(case, spec, model)) for case in cases_of(spec)]
    interval = _phase_duration(ctx, check_name) / spec.rounds
    t0 = time.monotonic()
    # No keep-alive: a gateway that closes the connection after an error must not make
    # the next probe fail on a stale connection.
    with httpx.Client(base_url=ctx.base_url, headers=ctx.headers,
                      timeout=httpx.Timeout(spec.deadline), follow_redirects=False,
                      limits=httpx.Limits(max_keepalive_connections=0)) as client:
        for round_no in range(spec.rounds):
            # The first round at once, the others spread evenly over the phase.
            if round_no and stop.wait(max(0.0, t0 + round_no * interval - time.monotonic())):
                return
            for case, req in cases:
                if stop.is_set():
                    return
                answer = send(client, req, spec.deadline)
                store.add_event(answer.start, EventKind.CAPS_PROBE,
                                probe_event(check_name, case, spec, answer, round_no))
            if stop.is_set():
                return
            answer = send(client, health_request(model), spec.deadline)
            store.add_event(answer.start, EventKind.CAPS_HEALTH, {
                "check": check_name, "round": round_no, "status": answer.status,
                "ok": health_ok(answer), "elapsed_s": round(answer.elapsed, 4),
                "error_class": answer.error_class,
            })


# --- evaluator ------------------------------------------------------------------------


def _answer_problems(case: CapCase, event: dict[str, Any], deadline: float) -> list[str]:
    """Everything wrong with one probe's answer, worded for the summary."""
    status = event.get("status")
    cls = event.get("error_class")
    if status is None:
        if cls == "timeout":
            return [f"no answer within {fmt(deadline)}s (timeout)"]
        return [f"no answer ({cls or 'unknown error'})"]
    problems: list[str] = []
    if cls == "timeout":
        problems.append(f"answer took {fmt(float(event.get('elapsed_s') or 0), 1)}s "
                        f"(deadline {fmt(deadline)}s)")
    elif cls is not None:
        problems.append(f"answer cut short ({cls})")
    if not status_ok(case, status):
        problems.append(f"got {status} (expected {status_text(expected_statuses(case))})")
    if not 400 <= int(status) < 500:
        return problems  # not an error answer: its body and message mean nothing here
    schema = list(event.get("schema_problems") or [])
    problems += schema
    if not event.get("message_ok"):
        text = event.get("message_excerpt")
        if text:
            short = text if len(text) <= 80 else text[:79] + "…"
            problems.append(f"message not helpful ('{short}')")
        elif not schema:
            problems.append("error has no message")
    return problems


def _pattern_problem(case: CapCase, spec: CapsEnforcedCheck) -> str | None:
    try:
        re.compile(message_pattern(case, spec))
    except re.error as exc:
        return f"message_matches is not a valid regex ({exc})"
    return None


def _judge_case(case: CapCase, events: list[dict[str, Any]], spec: CapsEnforcedCheck
                ) -> tuple[list[str], dict[str, Any]]:
    """(problems with counts, observed entry) of one case over its probes."""
    counts: Counter[str] = Counter()
    first_bad: dict[str, Any] | None = None
    for event in events:
        found = _answer_problems(case, event, spec.deadline)
        counts.update(dict.fromkeys(found, 1))
        if found and first_bad is None:
            first_bad = event
    problems = [p if n == len(events) else f"{p} in {n}/{len(events)} probes"
                for p, n in counts.items()]
    if (bad_pattern := _pattern_problem(case, spec)) is not None:
        problems.insert(0, bad_pattern)
    shown = first_bad or (events[-1] if events else {})
    observed = {
        "status": shown.get("status"),
        "ok": bool(events) and not problems,
        "problems": problems,
        "probes": len(events),
        "elapsed_s_max": max((float(e.get("elapsed_s") or 0) for e in events), default=None),
        "message_excerpt": shown.get("message_excerpt"),
        "request_id": any(bool(e.get("request_id")) for e in events),
    }
    return problems, observed


def _health_problem(health: list[dict[str, Any]]) -> str | None:
    if not health:
        return "health: no health probe ran after a round (no evidence the server still serves)"
    failed = [h for h in health if not h.get("ok")]
    if not failed:
        return None
    seen = ", ".join(str(h.get("status") or h.get("error_class") or "?") for h in failed)
    return f"health: {len(failed)} of {len(health)} normal requests after a round failed ({seen})"


def evaluate_caps(name: str, phase: str, spec: CapsEnforcedCheck, evidence: Evidence,
                  window: Window) -> CheckResult:
    # Events are stamped at send time; the probe thread starts just before the phase
    # is stamped and may finish its last request a deadline after it: allow for both.
    lo, hi = window.start - 1.0, window.end + spec.deadline + 1.0

    def mine(kind: str) -> list[dict[str, Any]]:
        return [d for _, d in evidence.events_of(kind, lo, hi) if d.get("check") == name]

    probes, health = mine(EventKind.CAPS_PROBE), mine(EventKind.CAPS_HEALTH)
    crashes = mine(EventKind.PROBE_ERROR)
    cases = cases_of(spec)
    expected: dict[str, Any] = {
        "cases": {c.name: {"status": list(expected_statuses(c)),
                           "message_matches": message_pattern(c, spec)} for c in cases},
        "error_schema": spec.error_schema.model_dump(),
        "deadline_s": spec.deadline,
        "health": "every normal request after a round succeeds",
        "rounds": spec.rounds,
    }
    failures: list[str] = []
    thin = [f"probe error: {c.get('error', '?')}" for c in crashes]
    if not probes:
        thin.insert(0, f"no caps probe was sent in the phase, need {spec.rounds} round(s) "
                       "(no evidence)")
        return make_result(name, KIND, phase, "inconclusive",
                           "inconclusive: " + "; ".join(thin), window=window,
                           expected=expected, observed={"probes": 0, "health_probes": len(health),
                                                        "rounds": 0})

    observed_cases: dict[str, Any] = {}
    short: list[str] = []
    for case in cases:
        events = [e for e in probes if e.get("case") == case.name]
        problems, observed_cases[case.name] = _judge_case(case, events, spec)
        if problems:
            failures.append(f"{case.name}: {', '.join(problems)}")
        answered = len({e.get("round") for e in events})
        if answered < spec.rounds:
            short.append(f"{case.name} {answered}/{spec.rounds}")
    if short:
        thin.insert(0, "cases not probed in every round (probed/needed): " + ", ".join(short))
    if health and (health_problem := _health_problem(health)) is not None:
        failures.append(health_problem)
    health_rounds = len({h.get("round") for h in health})
    if health_rounds < spec.rounds:
        thin.append(f"{health_rounds}/{spec.rounds} rounds had a normal request after them "
                    "(no evidence the server still serves)")

    rounds = len({e.get("round") for e in probes})
    observed: dict[str, Any] = {
        "cases": observed_cases,
        "probes": len(probes),
        "rounds": rounds,
        "health_probes": len(health),
        "health_failed": sum(1 for h in health if not h.get("ok")),
    }
    if failures:
        return make_result(name, KIND, phase, "failed", "; ".join(failures + thin),
                           window=window, observed=observed, expected=expected)
    if thin:
        return make_result(name, KIND, phase, "inconclusive", "inconclusive: " + "; ".join(thin),
                           window=window, observed=observed, expected=expected)
    summary = (f"all {len(cases)} cases refused with a helpful 4xx in {len(probes)} probes "
               f"over {rounds} round{'s' * (rounds != 1)}; {len(health)} normal requests "
               f"after them succeeded")
    return make_result(name, KIND, phase, "passed", summary, window=window,
                       observed=observed, expected=expected)


CAPS_ENFORCED = CheckKind(
    spec=CapsEnforcedCheck,
    evaluate=evaluate_caps,
    description="Over-limit requests get a helpful 4xx; server stays up.",
    runbook=(
        "A request over the limits was not refused with a clear 4xx: it got a 5xx, hung, or "
        "was accepted, or the server stopped serving afterwards. Check the engine's limits "
        "(max_model_len, max_tokens caps, request size) and the gateway's "
        "(client_max_body_size, timeouts); the check's evidence names each case and the "
        "status it got."
    ),
    probe=probe_caps,
)
