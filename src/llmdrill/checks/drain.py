"""drain: a replica taken out gracefully (drained at the gateway, or sent SIGTERM) lets the
streams it serves finish and takes no new request.

The fault (a HAProxy `state drain`, a SIGTERM to a replica that shuts down gracefully, a
Kubernetes pod deletion with a preStop hook) hits while clients stream. Judged from two
sides:

- the clients: every request in flight when the fault was applied (started before it, not
  ended by then) completes at its first attempt: no error, a finish, tokens generated;
  at most `max_cut` may not. With `allow_clear_errors`, one that ended with a clear error
  (an HTTP error status, or an error event inside the stream) is not counted as cut: only
  streams dropped on the wire, stalled or left incomplete are. Optionally, the last of them
  ended within `drained_within` of the fault;
- the replica's own counter: `vllm:prompt_tokens_total` does not grow from `stop_within`
  after the fault until its revert began (no new request reached it). A replica that
  exited (its scrapes fail) counts as receiving nothing from then on, and the summary
  says so.

How long the drain took is reported: when the last in-flight stream ended, and when the
replica's running + waiting requests first read 0 after the fault.

Fail closed: a fault that never applied in the phase, fewer than `min_in_flight` requests in
flight at the fault (nothing shows how in-flight streams end), no series of the replica at
all, or no scrape of it after the fault are inconclusive, never a pass.
"""

from __future__ import annotations

import builtins
from collections import Counter
from typing import Any, Literal

from pydantic import Field

from llmdrill.checks.base import FaultSpan, fault_span, fmt, make_result
from llmdrill.checks.counters import first_growth, increase
from llmdrill.model.records import Evidence, RequestRecord
from llmdrill.model.result import CheckResult, CheckStatus, Window
from llmdrill.plugin import CheckKind, Location, Problem
from llmdrill.scenario import refs
from llmdrill.scenario.fields import Strict
from llmdrill.scenario.units import Duration

KIND = "drain"
ARRIVALS = ("vllm:prompt_tokens_total",)
RUNNING = ("vllm:num_requests_running",)
WAITING = ("vllm:num_requests_waiting",)

# An answer with an error status: the server or the gateway said clearly what happened.
HTTP_ERRORS = frozenset({"http_4xx", "http_429", "http_5xx"})
# The error types of an incomplete stream that broke on the wire (besides Python's own
# exception names): the clients' HTTP libraries' and the load generator's own. Any other
# type is the `type` of an error event the server sent inside the stream.
WIRE_ERROR_TYPES = frozenset({
    "no_done_event", "closed_before_abort", "HTTPConnectionClosed", "HTTPParseError",
    "RemoteProtocolError", "ReadError", "WriteError", "ReadTimeout", "IncompleteReadError",
    "LineTooLong", "line_too_long"})

Ending = Literal["cut", "clear"]


class DrainCheck(Strict):
    """A replica taken out gracefully (drained, or sent SIGTERM) lets the requests in
    flight finish, and no new request reaches it after `stop_within`."""

    fault: str = Field(description="The fault that drains the replica (in this phase).")
    engine: str = Field(description="The replica it drains: its label in target.engines.")
    stop_within: Duration = Field(
        default=2.0,
        description="From the fault to the moment no new request reaches the replica (read "
        "from its own vllm:prompt_tokens_total, until the revert began).")
    max_cut: int = Field(
        default=0, ge=0,
        description="Requests in flight at the fault that may fail or need a retry.")
    allow_clear_errors: bool = Field(
        default=False,
        description="A request in flight that ended with a clear error (an HTTP error "
        "status, or an error event inside the stream) is not counted as cut; streams "
        "dropped, stalled or left incomplete still are.")
    drained_within: Duration | None = Field(
        default=None,
        description="The last request in flight at the fault ended within this; unset: "
        "not judged (the time is reported anyway).")
    min_in_flight: int = Field(
        default=1, ge=1,
        description="Fewer requests in flight when the fault was applied is inconclusive.")


def _wire_error(error_type: str | None) -> bool:
    if error_type is None or error_type in WIRE_ERROR_TYPES:
        return True
    found = getattr(builtins, error_type, None)
    return isinstance(found, type) and issubclass(found, BaseException)


def ending(r: RequestRecord) -> tuple[str, Ending] | None:
    """How a request in flight at the fault ended: None when it completed at its first
    attempt (no error, a finish, tokens), else its name (the error class) and whether that
    was a clear error or a cut."""
    if r.ok and r.finished and r.attempts == 1 and r.output_tokens > 0:
        return None
    if r.attempts > 1:
        return "retried", "cut"  # its first attempt failed, however the last one ended
    if r.ok:
        return ("no_tokens" if r.finished else "unfinished"), "cut"
    cls = str(r.error_class)
    if cls in HTTP_ERRORS:
        return cls, "clear"
    if cls == "incomplete_stream" and str(r.error_type).startswith("finish_reason_"):
        # The server ended the stream itself, saying why (vLLM aborting at shutdown).
        return f"ended with {r.error_type}", "clear"
    if cls == "incomplete_stream" and not _wire_error(r.error_type):
        return f"error event {r.error_type}", "clear"
    return cls, "cut"


def _endings_text(endings: list[tuple[str, Ending]]) -> str:
    counts = Counter(endings)
    return ", ".join(f"{n} {name} ({'clear error' if kind == 'clear' else 'cut'})"
                     for (name, kind), n in sorted(counts.items()))


def _idle_after(evidence: Evidence, engine: str, applied: float, until: float
                ) -> float | None:
    """Seconds from the fault to the first scrape of the replica after it, before its
    revert, with no request running or waiting; None when no scrape shows that (a replica
    that exited is not scraped: a restarted one's idle start is not its drain)."""
    waiting = dict(evidence.engine_series(engine, WAITING))
    for ts, running in evidence.engine_series(engine, RUNNING):
        if applied < ts <= until and running + waiting.get(ts, 0.0) <= 0:
            return ts - applied
    return None


def _judge_arrivals(evidence: Evidence, spec: DrainCheck, times: FaultSpan,
                    observed: dict[str, Any]) -> tuple[CheckStatus, str]:
    """Whether new requests still reached the replica after `stop_within`, by its own
    counter; a replica whose scrapes failed (it exited) receives nothing from then on."""
    engine, applied = spec.engine, times.applied
    arrivals = evidence.engine_series(engine, ARRIVALS)
    if not arrivals:
        return "inconclusive", (f"no {ARRIVALS[0]} series of {engine} at all (is "
                                f"target.engines.{engine}.metrics_url that replica's "
                                "/metrics?)")
    stop_at = applied + spec.stop_within
    if times.until <= stop_at:
        return "inconclusive", (f"the fault's revert began {fmt(times.until - applied, 1)}s "
                                f"after it, before stop_within ({fmt(spec.stop_within)}s) "
                                "passed")
    failed = [ts for ts in evidence.engine_scrape_failures(engine)
              if applied < ts <= times.until]
    gone_at = failed[0] if failed else None
    seen = [ts for ts, _ in arrivals if stop_at < ts <= times.until]
    if not seen and gone_at is None:
        return "inconclusive", (f"no scrape of {engine} between {fmt(spec.stop_within)}s "
                                "after the fault and its revert")
    grew = increase(arrivals, stop_at, times.until)
    observed["arrivals_after_stop"] = grew
    if gone_at is not None:
        observed["scrapes_failed_from_s"] = round(gone_at - applied, 3)
    if grew > 0:
        first = first_growth(arrivals, stop_at)
        when = "" if first is None else f", first seen {fmt(first - applied, 1)}s after it"
        return "failed", (f"{engine} still received new requests more than "
                          f"{fmt(spec.stop_within)}s after the fault ({fmt(grew)} prompt "
                          f"tokens by its own counter{when})")
    text = (f"{engine} received no new request from {fmt(spec.stop_within)}s after the "
            "fault to its revert")
    if gone_at is not None and (not seen or seen[-1] < gone_at):
        text += (f" (its scrapes failed from {fmt(gone_at - applied, 1)}s after the fault: "
                 "it exited, and counts as receiving nothing since)")
    return "passed", text


def evaluate_drain(name: str, phase: str, spec: DrainCheck, evidence: Evidence,
                   window: Window) -> CheckResult:
    expected: dict[str, Any] = {
        "stop_within_s": spec.stop_within, "max_cut": spec.max_cut,
        "allow_clear_errors": spec.allow_clear_errors,
        "drained_within_s": spec.drained_within, "min_in_flight": spec.min_in_flight}
    observed: dict[str, Any] = {"engine": spec.engine}

    def result(status: CheckStatus, summary: str) -> CheckResult:
        return make_result(name, KIND, phase, status, summary, window=window,
                           observed=observed, expected=expected)

    times = fault_span(evidence, spec.fault, window)
    if times is None:
        return result("inconclusive", f"inconclusive: fault '{spec.fault}' was never applied "
                      f"in phase '{phase}'")
    applied = times.applied

    # The clients' side: the requests in flight at the fault.
    in_flight = [r for r in evidence.requests if r.start < applied < r.end]
    endings = [e for e in map(ending, in_flight) if e is not None]
    cut = [e for e in endings if e[1] == "cut" or not spec.allow_clear_errors]
    ended = [r.end for r in in_flight if r.finished]
    last = max(ended) - applied if ended else None
    idle = _idle_after(evidence, spec.engine, applied, times.until)
    observed.update({
        "in_flight": len(in_flight),
        "completed": len(in_flight) - len(endings),
        "cut": len(cut),
        "clear_errors_allowed": len(endings) - len(cut),
        "endings": {f"{n} ({k})": c for (n, k), c in sorted(Counter(endings).items())},
        "last_in_flight_ended_s": None if last is None else round(last, 3),
        "replica_idle_after_s": None if idle is None else round(idle, 3),
    })

    problems: list[str] = []
    unknowns: list[str] = []
    if len(cut) > spec.max_cut:
        problems.append(f"{len(cut)} of {len(in_flight)} requests in flight at the fault did "
                        f"not complete at their first attempt ({_endings_text(endings)}), "
                        f"over max_cut {spec.max_cut}")
    if spec.drained_within is not None and last is not None and last > spec.drained_within:
        problems.append(f"the last request in flight at the fault ended {fmt(last, 1)}s after "
                        f"it, over drained_within {fmt(spec.drained_within)}s")
    if len(in_flight) < spec.min_in_flight:
        unknowns.append(f"{len(in_flight)} requests were in flight when the fault was "
                        f"applied, need {spec.min_in_flight}: nothing shows how in-flight "
                        "streams end")

    # The replica's side.
    status, arrivals_text = _judge_arrivals(evidence, spec, times, observed)
    if status == "failed":
        problems.append(arrivals_text)
    elif status == "inconclusive":
        unknowns.append(arrivals_text)
    if problems:
        return result("failed", "; ".join(problems))
    if unknowns:
        return result("inconclusive", "inconclusive: " + "; ".join(unknowns))

    summary = (f"all {len(in_flight)} requests in flight at the fault completed"
               if not endings else
               f"{len(in_flight) - len(endings)} of {len(in_flight)} requests in flight at "
               f"the fault completed ({_endings_text(endings)}; max_cut {spec.max_cut})")
    if last is not None:
        summary += f", the last {fmt(last, 1)}s after it"
    summary += f"; {arrivals_text}"
    if idle is not None:
        summary += f"; {spec.engine} idle {fmt(idle, 1)}s after the fault"
    return result("passed", summary)


def _references(spec: DrainCheck, scenario: Any, location: Location) -> list[Problem]:
    return (refs.unknown_fault(scenario, spec.fault, (*location, "fault"))
            + refs.unknown_engine(scenario, spec.engine, (*location, "engine")))


DRAIN = CheckKind(
    spec=DrainCheck,
    evaluate=evaluate_drain,
    references=_references,
    description="A replica drained or shut down gracefully lets its streams finish and "
                "takes no new request.",
    runbook=(
        "Streams in flight were cut when the replica was taken out, or it kept receiving "
        "requests. A SIGTERM to vLLM aborts what it is generating unless it is given time "
        "(vLLM's `--shutdown-timeout`, 0 aborts in-flight requests at once; check the "
        "replica's log for aborted requests). At the gateway, HAProxy's `set server ... "
        "state drain` lets open streams finish while `state maint` takes the server out "
        "at once, and `on-marked-down shutdown-sessions` kills its connections; a server "
        "that keeps getting requests after a drain points at stickiness, another gateway, "
        "or clients that reach the replica directly. Health checks and retries decide how "
        "fast the gateway notices a replica that exits (`inter`, `fall`, `retry-on`, "
        "`option redispatch`). On Kubernetes, the pod needs a preStop hook that waits for "
        "the endpoints to drop it and a terminationGracePeriodSeconds longer than the "
        "longest stream."
    ),
)
