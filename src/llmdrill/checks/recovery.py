"""stream_recovery and warm_up: what happens to clients when the engine's node dies.

Both look at the moment of the kill (the start of the phase's fault: the Docker action's
own timestamp where there is one) and at their own probe's health polls, which show the
engine going down and coming back. The probe polls the engine's health URL over the
phase and, for warm_up, once the engine has been seen down, sends 1-token completions
until one streams a token: the first token after the kill.

"Down" takes evidence: the container's `die` event after the kill, or `down_polls`
(default 3) consecutive failed health polls; one failed poll is a blip. Without it the
check is inconclusive (the fault shows nothing about recovery), never a pass; so is a
missing fault, no health polls, a crashed probe, and fewer requests than the least
evidence below. Evidence against the claim (a hang, an unclear error, no way back) fails.

stream_recovery passes when
- the engine went down after the fault and was back within `back_within`;
- every request caught by the kill (open at the kill, or sent while the engine was dying
  and failed before it was gone) either succeeded or failed with an allowed, classified
  error within `deadline` of the kill (no hang, no client-side timeout). A kill is not
  instant: the container's `die` event (once every process in it is dead) marks the
  death, else the first failed health poll. At least `min_cut` of them must have been
  cut (ended with an error), or shown drained: completed after the kill on the killed
  engine, which a fault with `when_busy` shows (the engine's own running-requests gauge
  just before the kill). Other requests that completed may have been another replica's;
- of the other requests sent after the kill and before the engine was back (the ones a
  client can retry), at least `retry_success` succeeded: clients that retry get through;
- requests sent after it was back failed at most `after_error_rate`.

warm_up measures, from the kill: the time to healthy (first health poll answered after
the outage), to the first token of a probe request, and until client TTFT p95 (sliding
window over the load's requests sent after it was healthy) is back within tolerance of a
baseline phase. Each is bounded; any that never happened fails the check.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import Field, field_validator

from llmdrill.checks.base import fmt, make_result
from llmdrill.checks.health import poll_once
from llmdrill.checks.recovers import measure_started
from llmdrill.faults.request_flood import ConnectionCutter
from llmdrill.load.sse import StreamTally
from llmdrill.model.events import EventKind
from llmdrill.model.records import Evidence, RequestRecord
from llmdrill.model.result import CheckResult, CheckStatus, Window
from llmdrill.plugin import CheckKind, Location, Problem
from llmdrill.scenario import refs
from llmdrill.scenario.fields import (
    CUT_CLASSES,
    ErrorClass,
    Name,
    Strict,
    http_url,
)
from llmdrill.scenario.units import Duration, Fraction

if TYPE_CHECKING:
    from llmdrill.model.context import RunContext


# --- the spec: the YAML under this key ----------------------------------------


class _AfterNodeFault(Strict):
    """What the node-restart checks share: the fault that marks the kill, and the health
    polls (their own probe, over the phase) that show the engine down and back."""

    fault: Name | None = Field(
        default=None,
        description="The fault whose start is the moment of the kill (default: the first "
        "fault applied in the phase).",
    )
    health_url: str | None = Field(
        default=None, description="Health URL polled; default <metrics_url host>/health."
    )
    poll_interval: Duration = Field(default=0.5, description="Time between two polls.")
    poll_timeout: Duration = Field(
        default=2.0, description="A poll without a 2xx this soon counts as down."
    )
    down_polls: int = Field(
        default=3, ge=1,
        description="Consecutive failed health polls that show the engine down when there "
        "is no `die` event of its container; fewer is a blip, not an outage.",
    )

    @field_validator("health_url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        return None if url is None else http_url(url)


class StreamRecoveryCheck(_AfterNodeFault):
    """The engine was killed or restarted under load: every request in flight ends with a
    clear, classified error within `deadline` (no hang), requests sent while the engine
    was down (a client can retry them) succeed once it is back, and it comes back at all.
    A stream sent after the kill that began and was then cut (a replica died a moment
    later) counts as in flight, not as sent while down."""

    deadline: Duration = Field(
        default=10.0,
        description="A request caught by the kill that fails must have ended this soon "
        "after the kill.",
    )
    allowed_error_classes: list[ErrorClass] = Field(
        default_factory=lambda: list(CUT_CLASSES),
        description="Classes a request cut by the fault may end with; others (timeout: the "
        "client had to give up on a silent stream) fail the check.",
    )
    min_in_flight: int = Field(
        default=1, ge=0,
        description="Fewer requests in flight at the fault is inconclusive (no evidence).",
    )
    min_cut: int = Field(
        default=1, ge=1,
        description="Requests in flight that the kill must actually have cut (ended with an "
        "error) or that the killed engine drained (completed after the kill; shown only "
        "for a fault with `when_busy`, from the requests its engine reported running just "
        "before). Other requests that completed may have been another replica's and show "
        "nothing about recovery. Fewer is inconclusive.",
    )
    retry_success: Fraction = Field(
        default=1.0,
        description="Share of the requests sent while the engine was down (the ones a client "
        "can retry) that must end in success.",
    )
    min_retryable: int = Field(
        default=1, ge=0, description="Fewer retryable requests is inconclusive (no evidence)."
    )
    back_within: Duration = Field(
        default=300.0, description="The engine must answer its health URL again this soon."
    )
    after_error_rate: Fraction = Field(
        default=0.0,
        description="Highest share of failed requests among those sent once it is back.",
    )


class WarmUpCheck(_AfterNodeFault):
    """How long the engine takes to come back after a kill: to healthy, to the first
    token, and until client TTFT p95 is back within tolerance of the baseline."""

    baseline_phase: str = Field(description="Healthy phase whose TTFT p95 is the baseline.")
    healthy_within: Duration = Field(description="Bound on the time from the kill to healthy.")
    first_token_within: Duration = Field(
        description="Bound on the time from the kill to the first token of a probe request."
    )
    ttft_within: Duration = Field(
        description="Bound on the time from the kill until TTFT p95 is back in the band."
    )
    tolerance: Fraction = Field(
        default=0.5, description="Allowed distance of TTFT p95 from baseline, as a share."
    )
    slack: float = Field(
        default=0.0, ge=0, description="Seconds added to the band (for tiny baselines)."
    )
    window: Duration = Field(
        default=5.0, description="Sliding window TTFT p95 is taken over (0.5s steps)."
    )
    probe_timeout: Duration = Field(
        default=10.0, description="Deadline of one token probe (a 1-token completion)."
    )
    probe_url: str | None = Field(
        default=None,
        description="Base URL the token probes go to (default: the target's base_url). "
        "Behind a load balancer, the restarted replica's own address times its warm-up "
        "rather than the other replicas' answers.",
    )

    @field_validator("probe_url")
    @classmethod
    def _probe_url(cls, url: str | None) -> str | None:
        return None if url is None else http_url(url)


POLL_EVENT = EventKind.RECOVERY_POLL
TOKEN_EVENT = EventKind.TOKEN_PROBE
MIN_PAUSE = 0.05
TOKEN_MAX_BYTES = 64 * 1024  # a 1-token answer is a few hundred bytes
STEP_S = 0.5
MAX_EVENTS_SHOWN = 30
# The running-requests gauge is the engine's value as of its last step, a few ms old
# under load; and a fault held by `when_busy` goes within a few ms of the poll that let
# it go. A wait older than this shows nothing about the engine at the kill.
GAUGE_LAG_S = 0.1
GATE_FRESH_S = 2.0
_EPS = 1e-9


# --- the probe -----------------------------------------------------------------------------


@dataclass
class TokenProbe:
    ok: bool
    first_token_at: float | None
    status: int | None
    error: str | None


def token_probe(ctx: RunContext, timeout: float, base_url: str | None = None) -> TokenProbe:
    """One streamed 1-token completion; the time its first token arrived. Bounded by a
    hard deadline (a cutter shuts the socket) and a cap on what is read."""
    body = {"model": ctx.scenario.target.model, "prompt": "Hello", "max_tokens": 4,
            "stream": True}
    cutter = ConnectionCutter()
    timer = threading.Timer(timeout, cutter.cut, args=("deadline",))
    timer.daemon = True
    timer.start()
    tally = StreamTally()
    status: int | None = None
    try:
        with httpx.Client(timeout=timeout, headers=ctx.headers, trust_env=False,
                          follow_redirects=False) as client, \
                client.stream("POST", f"{(base_url or ctx.base_url).rstrip('/')}/v1/completions",
                              json=body,
                              extensions={"trace": cutter.trace}) as resp:
            status = resp.status_code
            if status != 200:
                return TokenProbe(False, None, status, f"status {status}")
            pending = b""
            read = 0
            for chunk in resp.iter_raw():
                read += len(chunk)
                now = time.time()
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    tally.feed_line(line.strip(), now)
                if tally.first_token_at is not None or tally.done or read > TOKEN_MAX_BYTES:
                    break
    except (httpx.HTTPError, OSError) as exc:
        if cutter.reason is not None:
            return TokenProbe(False, None, status, f"no token within {fmt(timeout)}s")
        return TokenProbe(False, None, status, f"{type(exc).__name__}: {exc}"[:200])
    finally:
        timer.cancel()
    if tally.first_token_at is None:
        return TokenProbe(False, None, status, "the stream carried no token")
    return TokenProbe(True, tally.first_token_at, status, None)


def probe_node_recovery(ctx: RunContext, check_name: str,
                        spec: StreamRecoveryCheck | WarmUpCheck,
                        stop: threading.Event) -> None:
    url = spec.health_url or f"{ctx.engine_url}/health"
    tokens = isinstance(spec, WarmUpCheck)
    down_seen = token_done = False
    store = ctx.store
    # No keep-alive: each poll proves the engine accepts connections again.
    with httpx.Client(timeout=spec.poll_timeout, headers=ctx.headers, follow_redirects=False,
                      trust_env=False,
                      limits=httpx.Limits(max_keepalive_connections=0)) as client:
        while not stop.is_set():
            began = time.time()
            ok, status, error = poll_once(client, url, spec.poll_timeout)
            if store is not None:
                store.add_event(began, POLL_EVENT, {"check": check_name, "ok": ok,
                                                   "status": status, "error": error,
                                                   "at": time.time(), "url": url})
            down_seen = down_seen or not ok
            if tokens and down_seen and not token_done:
                assert isinstance(spec, WarmUpCheck)
                sent = time.time()
                result = token_probe(ctx, spec.probe_timeout, spec.probe_url)
                token_done = result.ok
                if store is not None:
                    store.add_event(sent, TOKEN_EVENT, {
                        "check": check_name, "ok": result.ok, "status": result.status,
                        "first_token_at": result.first_token_at, "error": result.error})
            stop.wait(max(MIN_PAUSE, spec.poll_interval - (time.time() - began)))




# --- pure evaluation helpers ------------------------------------------------------------


def kill_time(evidence: Evidence, window: Window, fault: str | None
              ) -> tuple[float, str] | None:
    """When the fault struck, and its name: the earliest of its `docker_action` or
    `kube_action` (taken as the call began) and its `fault_applied` event within the
    window."""
    applied = [(ts, str(d.get("fault"))) for ts, d in
               evidence.events_of(EventKind.FAULT_APPLIED, window.start, window.end)]
    actions = [(ts, str(d.get("fault"))) for kind in (EventKind.DOCKER_ACTION,
                                                      EventKind.KUBE_ACTION)
               for ts, d in evidence.events_of(kind, window.start, window.end)]
    if fault is None:
        candidates = sorted(applied + actions)
        if not candidates:
            return None
        fault = candidates[0][1]
    times = [ts for ts, name in applied + actions if name == fault]
    return (min(times), fault) if times else None


def death_time(evidence: Evidence, fault: str, kill: float, down_at: float | None
               ) -> float | None:
    """When the engine was gone: the container's `die` event (the engine's own timestamp,
    once every process in it is dead) after the kill, else the first failed health poll.
    A kill is not instant: until then the dying server may still accept connections."""
    dies = [ts for ts, d in evidence.events_of(EventKind.DOCKER_EVENT, kill)
            if d.get("action") == "die" and d.get("fault") in (None, fault)]
    return min(dies) if dies else down_at


def die_times(evidence: Evidence, fault: str, kill: float) -> list[float]:
    """The container's `die` events of this fault after the kill."""
    return sorted(ts for ts, d in evidence.events_of(EventKind.DOCKER_EVENT, kill)
                  if d.get("action") == "die" and d.get("fault") in (None, fault))


@dataclass(frozen=True)
class Outage:
    down_at: float | None  # the first failed poll of the outage (or the die, if earlier)
    back_at: float | None  # the answer to the first good poll after that
    polls: int
    failed: int
    longest_run: int = 0  # most consecutive failed polls after the kill
    died: bool = False  # a `die` event showed the outage


def outage(polls: Sequence[tuple[float, dict[str, Any]]], kill: float,
           down_polls: int = 1, died_at: float | None = None) -> Outage:
    """The outage after the kill. Down is shown by a `die` at `died_at`, or by
    `down_polls` consecutive failed polls (its first one is `down_at`); back is the first
    good poll after that."""
    after = sorted((ts, d) for ts, d in polls if ts >= kill)
    down_at = back_at = None
    failed = longest = run = 0
    run_start: float | None = None
    for ts, detail in after:
        if not detail.get("ok"):
            failed += 1
            run += 1
            if run_start is None:
                run_start = ts
            longest = max(longest, run)
            if down_at is None and run >= down_polls:
                down_at = run_start
            continue
        run, run_start = 0, None
        if died_at is not None and down_at is None and ts >= died_at:
            # It died but no poll caught it down (a fast restart): down at the die.
            down_at = died_at
        if down_at is not None and back_at is None and ts >= down_at:
            back_at = float(detail.get("at") or ts)
    if died_at is not None and (down_at is None or died_at < down_at):
        down_at = died_at
    return Outage(down_at, back_at, len(after), failed, longest, died_at is not None)


@dataclass
class InFlight:
    total: int = 0
    survived: int = 0  # ended well: finished before the kill bit, or retried through
    cut_cleanly: int = 0
    hung: int = 0  # never ended, or ended later than the deadline
    unclear: int = 0  # ended with a class that is not allowed (a timeout, protocol...)
    by_class: dict[str, int] | None = None
    slowest_end_s: float | None = None
    examples: list[str] | None = None


def caught_by_kill(r: RequestRecord, kill: float, died: float,
                   back: float | None = None) -> bool:
    """Open at the kill; or sent while the engine was dying and failed before it was gone
    (a dying server may still accept a connection, then close it unanswered); or sent
    after the kill, before the engine was back, and cut mid-stream.

    The last: a stream that began was answered by a live engine, so it was in flight at a
    death, not sent while the engine was down (no client can retry a stream that carried
    tokens). Without a `die` event the death is known only to a poll's precision, and one
    URL may front several replicas dying a moment apart (a node restart: the first dead
    one fails the poll, the second's streams are cut 0.1s later). It is still judged as
    in flight: ended within the deadline of the kill, with an allowed class."""
    if r.start < kill:
        return r.end > kill or not r.finished
    if r.start < died and r.finished and not r.ok and r.end <= died:
        return True
    return back is not None and r.start < back and r.error_class == "incomplete_stream"


def judge_in_flight(requests: Sequence[RequestRecord], kill: float, died: float,
                    deadline: float, allowed: Sequence[str],
                    back: float | None = None) -> InFlight:
    """Requests caught by the kill. A failed one must end within `deadline` of the kill,
    with an allowed class: a server that stops streaming at SIGTERM but holds the
    connections until its SIGKILL hangs its clients for that long, and fails here."""
    found = InFlight(by_class={}, examples=[])
    assert found.by_class is not None and found.examples is not None
    for r in requests:
        if not caught_by_kill(r, kill, died, back):
            continue
        found.total += 1
        if r.ok:
            found.survived += 1
            continue
        cls = str(r.error_class)
        found.by_class[cls] = found.by_class.get(cls, 0) + 1
        after = r.end - kill
        found.slowest_end_s = max(found.slowest_end_s or 0.0, after)
        if not r.finished or cls == "interrupted":
            found.hung += 1
            problem = "still open when the load stopped"
        elif after > deadline + _EPS:
            found.hung += 1
            problem = f"ended {fmt(after)}s after the kill ({cls})"
        elif cls not in allowed:
            found.unclear += 1
            problem = f"ended with {cls} ({r.error_type})"
        else:
            found.cut_cleanly += 1
            continue
        if len(found.examples) < 5:
            when = (f"{fmt(kill - r.start)}s before" if r.start < kill
                    else f"{fmt(r.start - kill)}s after")
            found.examples.append(f"request sent {when} the kill: {problem}")
    return found


@dataclass(frozen=True)
class Drained:
    """What a `when_busy` fault's metrics show about the killed engine's own streams."""

    running: float  # its requests running at the poll that let the fault go
    ended_in_gap: int  # requests (any replica's) that ended between that poll and the kill
    drained: int  # of its streams at the kill, at least this many completed after it


def drained_on_killed(evidence: Evidence, fault: str, kill: float, survived: int,
                      cut: int) -> Drained | None:
    """A lower bound on the streams the killed engine was serving at the kill that then
    completed normally (a graceful stop lets them finish), from the `fault_busy` event of
    a fault with `when_busy`: the requests it reported running, minus every request that
    ended between that poll (less the gauge's lag) and the kill, whichever replica served
    it, minus the `cut` ones (they were the killed engine's too); at most the requests in
    flight that survived. None without a met wait just before the kill: a completed
    request in flight is then no evidence about the killed engine."""
    busy = [d for _, d in evidence.events_of(EventKind.FAULT_BUSY)
            if d.get("fault") == fault and d.get("met")]
    if not busy:
        return None
    detail = busy[-1]
    polled_at, running = detail.get("polled_at"), detail.get("running")
    if not isinstance(polled_at, int | float) or not isinstance(running, int | float):
        return None
    if not 0 <= kill - polled_at <= GATE_FRESH_S:
        return None
    since = polled_at - GAUGE_LAG_S
    gap = sum(1 for r in evidence.requests if r.finished and since <= r.end <= kill)
    drained = max(0, min(int(running) - gap - cut, survived))
    return Drained(float(running), gap, drained)


def docker_timeline(evidence: Evidence, window: Window, kill: float) -> list[dict[str, Any]]:
    """The engine's container events in the window, relative to the kill, for reports."""
    shown = []
    events = evidence.events_of(EventKind.DOCKER_EVENT, window.start, window.end)
    for ts, d in events[:MAX_EVENTS_SHOWN]:
        item = {"at_s": round(ts - kill, 3), "action": d.get("action"),
                "container": d.get("container")}
        for key in ("exit_code", "signal", "health"):
            if key in d:
                item[key] = d[key]
        shown.append(item)
    return shown


def _polls(evidence: Evidence, name: str) -> list[tuple[float, dict[str, Any]]]:
    return [(ts, d) for ts, d in evidence.events_of(POLL_EVENT) if d.get("check") == name]


def _probe_crash(evidence: Evidence, name: str) -> str | None:
    crashes = [d for _, d in evidence.events_of(EventKind.PROBE_ERROR) if d.get("check") == name]
    return str(crashes[0].get("error")) if crashes else None


def _common(name: str, kind: str, phase: str, spec: StreamRecoveryCheck | WarmUpCheck,
            evidence: Evidence, window: Window, expected: dict[str, Any]
            ) -> tuple[float, str, Outage, dict[str, Any]] | CheckResult:
    """The kill and the outage, or the failed result that says why there is none."""
    observed: dict[str, Any] = {}
    expected["down_polls"] = spec.down_polls

    def failed(summary: str) -> CheckResult:
        return make_result(name, kind, phase, "failed", summary, window=window,
                           observed=observed, expected=expected)

    def inconclusive(summary: str) -> CheckResult:
        return make_result(name, kind, phase, "inconclusive", f"inconclusive: {summary}",
                           window=window, observed=observed, expected=expected)

    found = kill_time(evidence, window, spec.fault)
    if found is None:
        which = f"fault '{spec.fault}'" if spec.fault else "any fault"
        return inconclusive(f"no evidence of a kill: {which} was not applied in phase "
                            f"'{phase}'")
    kill, fault = found
    polls = _polls(evidence, name)
    observed.update({"fault": fault, "kill_at_s": round(kill - window.start, 3),
                     "health_polls": len(polls),
                     "docker_events": docker_timeline(evidence, window, kill)})
    crash = _probe_crash(evidence, name)
    if crash:
        return inconclusive(f"the health probe crashed: {crash}")
    if not polls:
        return inconclusive("no health polls were made: nothing shows the engine down or "
                            "back")
    dies = die_times(evidence, fault, kill)
    seen = outage(polls, kill, spec.down_polls, dies[0] if dies else None)
    observed.update({"polls_after_kill": seen.polls, "failed_polls": seen.failed,
                     "most_failed_polls_in_a_row": seen.longest_run, "died": seen.died})
    if seen.down_at is None:
        return inconclusive(
            f"no evidence the engine went down after fault '{fault}': no `die` event and "
            f"at most {seen.longest_run} failed health polls in a row (need "
            f"{spec.down_polls}) of {seen.polls} after it: the fault shows nothing about "
            "recovery")
    observed["down_after_s"] = round(seen.down_at - kill, 3)
    if seen.back_at is None:
        return failed(f"the engine did not come back: its health URL failed from "
                      f"{fmt(seen.down_at - kill)}s after the kill to the end of the phase "
                      f"({fmt(window.end - kill)}s); is there a restart policy?")
    observed["healthy_after_s"] = round(seen.back_at - kill, 3)
    return kill, fault, seen, observed


# --- stream_recovery ------------------------------------------------------------------------


def evaluate_stream_recovery(name: str, phase: str, spec: StreamRecoveryCheck,
                             evidence: Evidence, window: Window) -> CheckResult:
    kind = "stream_recovery"
    expected: dict[str, Any] = {
        "deadline_s": spec.deadline, "allowed_error_classes": list(spec.allowed_error_classes),
        "min_in_flight": spec.min_in_flight, "retry_success": spec.retry_success,
        "min_retryable": spec.min_retryable, "back_within_s": spec.back_within,
        "after_error_rate": spec.after_error_rate, "min_cut": spec.min_cut,
    }
    common = _common(name, kind, phase, spec, evidence, window, expected)
    if isinstance(common, CheckResult):
        return common
    kill, fault, seen, observed = common
    assert seen.back_at is not None
    back = seen.back_at
    died = death_time(evidence, fault, kill, seen.down_at) or kill
    observed["died_after_s"] = round(died - kill, 3)
    flight = judge_in_flight(evidence.requests, kill, died, spec.deadline,
                             spec.allowed_error_classes, back)
    retryable = [r for r in evidence.requests
                 if kill <= r.start < back and not caught_by_kill(r, kill, died, back)]
    retried_ok = sum(1 for r in retryable if r.ok)
    after = [r for r in evidence.requests if back <= r.start < window.end and r.finished]
    after_failed = sum(1 for r in after if not r.ok)
    retry_classes: dict[str, int] = {}
    for r in retryable:
        if not r.ok:
            retry_classes[str(r.error_class)] = retry_classes.get(str(r.error_class), 0) + 1
    observed.update({
        "in_flight": flight.total, "in_flight_survived": flight.survived,
        "in_flight_cut_cleanly": flight.cut_cleanly, "in_flight_hung": flight.hung,
        "in_flight_unclear": flight.unclear, "in_flight_by_class": flight.by_class,
        "in_flight_last_end_s": (None if flight.slowest_end_s is None
                                 else round(flight.slowest_end_s, 3)),
        "retryable": len(retryable), "retryable_succeeded": retried_ok,
        "retryable_failed_by_class": retry_classes,
        "retry_success": (retried_ok / len(retryable)) if retryable else None,
        "max_attempts_seen": max((r.attempts for r in retryable), default=None),
        "after_back": len(after), "after_back_failed": after_failed,
    })
    problems: list[str] = []
    thin: list[str] = []  # too little evidence: inconclusive unless something failed
    cut = flight.total - flight.survived
    observed["in_flight_cut"] = cut
    shown = drained_on_killed(evidence, fault, kill, flight.survived, cut)
    drained = shown.drained if shown is not None else 0
    if shown is not None:
        observed.update({"busy_at_kill": shown.running,
                         "ended_between_busy_poll_and_kill": shown.ended_in_gap,
                         "in_flight_drained": drained})
    if back - kill > spec.back_within + _EPS:
        problems.append(f"the engine was back only {fmt(back - kill)}s after the kill "
                        f"(limit {fmt(spec.back_within)}s)")
    if flight.total < spec.min_in_flight:
        thin.append(f"{flight.total} requests were in flight at the kill (need "
                    f"{spec.min_in_flight}): nothing shows how streams end")
    elif cut + drained < spec.min_cut:
        unseen = ("" if shown is not None else
                  "; with `when_busy` on the fault, streams the killed engine finished "
                  "count as drained")
        thin.append(f"{cut} of {flight.total} requests in flight at the kill were cut and "
                    f"{drained} shown drained by the killed engine (need {spec.min_cut}; the "
                    f"others completed, on whichever replica){unseen}: nothing shows how its "
                    "streams end")
    if flight.hung:
        problems.append(f"{flight.hung}/{flight.total} requests in flight hung past "
                        f"{fmt(spec.deadline)}s after the kill")
    if flight.unclear:
        problems.append(f"{flight.unclear}/{flight.total} requests in flight ended with an "
                        f"unclear error (allowed: {', '.join(spec.allowed_error_classes)})")
    if flight.examples and (flight.hung or flight.unclear):
        problems.append("e.g. " + "; ".join(flight.examples[:2]))
    if len(retryable) < spec.min_retryable:
        thin.append(f"{len(retryable)} requests were sent while the engine was down "
                    f"(need {spec.min_retryable}): nothing shows clients get back")
    elif retryable and retried_ok / len(retryable) < spec.retry_success - _EPS:
        classes = ", ".join(f"{k} {v}" for k, v in sorted(retry_classes.items()))
        problems.append(f"only {retried_ok}/{len(retryable)} requests sent while the engine "
                        f"was down succeeded (need {fmt(spec.retry_success * 100, 1)}%; "
                        f"failed: {classes}): clients do not retry through the restart")
    if not after:
        thin.append("no request was sent after the engine was back")
    elif after_failed / len(after) > spec.after_error_rate + _EPS:
        problems.append(f"{after_failed}/{len(after)} requests sent after the engine was "
                        f"back failed (allowed {fmt(spec.after_error_rate * 100, 1)}%)")
    status: CheckStatus = "failed" if problems else "inconclusive" if thin else "passed"
    if problems:
        summary = "; ".join(problems + thin)
    elif thin:
        summary = "inconclusive: " + "; ".join(thin)
    else:
        drain = (f" ({drained} of them on the killed engine, which drained them: it was "
                 f"serving {fmt(shown.running)} just before)" if shown and drained else "")
        summary = (f"{flight.total} requests in flight at the kill: {flight.cut_cleanly} cut "
                   f"with a clear error within {fmt(spec.deadline)}s, {flight.survived} "
                   f"completed{drain}; {retried_ok}/{len(retryable)} sent while the engine "
                   f"was down succeeded on retry; back after {fmt(back - kill)}s; "
                   f"{len(after) - after_failed}/{len(after)} ok after")
    return make_result(name, kind, phase, status, summary, window=window, observed=observed,
                       expected=expected)


# --- warm_up --------------------------------------------------------------------------------


def ttft_back(requests: Sequence[RequestRecord], start: float, end: float, length: float,
              limit: float) -> tuple[float, float] | None:
    """The first window [t, t+length) from `start` whose TTFT p95 is <= limit: (t, p95)."""
    ordered = sorted((r for r in requests if start <= r.start < end), key=lambda r: r.start)
    t = start
    while t + length <= end + _EPS:
        inside = [r for r in ordered if t <= r.start < t + length]
        value = measure_started("ttft_p95", inside)
        if value is not None and value <= limit + _EPS:
            return t, value
        t += STEP_S
    return None


def _baseline_ttft(evidence: Evidence, phase_name: str) -> float | str:
    phase = evidence.phase(phase_name)
    if phase is None:
        return f"baseline phase '{phase_name}' did not run"
    value = measure_started("ttft_p95", evidence.requests_started_in(phase.start, phase.end))
    if value is None:
        return f"no successful request with a TTFT in baseline phase '{phase_name}'"
    return value


def evaluate_warm_up(name: str, phase: str, spec: WarmUpCheck, evidence: Evidence,
                     window: Window) -> CheckResult:
    kind = "warm_up"
    expected: dict[str, Any] = {
        "healthy_within_s": spec.healthy_within, "first_token_within_s": spec.first_token_within,
        "ttft_within_s": spec.ttft_within, "baseline_phase": spec.baseline_phase,
        "tolerance": spec.tolerance, "slack_s": spec.slack, "window_s": spec.window,
    }
    common = _common(name, kind, phase, spec, evidence, window, expected)
    if isinstance(common, CheckResult):
        return common
    kill, _fault, seen, observed = common
    assert seen.back_at is not None
    to_healthy = seen.back_at - kill
    probes = [(ts, d) for ts, d in evidence.events_of(TOKEN_EVENT) if d.get("check") == name]
    first = next((float(d["first_token_at"]) for _, d in sorted(probes, key=lambda p: p[0])
                  if d.get("ok") and d.get("first_token_at") and d["first_token_at"] >= kill),
                 None)
    to_token = None if first is None else first - kill
    observed.update({"token_probes": len(probes),
                     "first_token_after_s": None if to_token is None else round(to_token, 3)})
    problems: list[str] = []
    thin: list[str] = []  # too little evidence: inconclusive unless something failed
    baseline = _baseline_ttft(evidence, spec.baseline_phase)
    to_ttft = None
    after_back = [r for r in evidence.requests if seen.back_at <= r.start < window.end]
    observed["requests_after_healthy"] = len(after_back)
    if isinstance(baseline, str):
        thin.append(f"cannot judge TTFT: {baseline}")
    else:
        limit = baseline * (1 + spec.tolerance) + spec.slack
        observed.update({"baseline_ttft_p95_s": round(baseline, 4), "band_max_s": round(limit, 4)})
        length = min(spec.window, max(window.end - seen.back_at, 0.0))
        found = ttft_back(evidence.requests, seen.back_at, window.end, length, limit) \
            if length > 0 else None
        if found is not None:
            to_ttft = found[0] - kill
            observed["ttft_p95_at_back_s"] = round(found[1], 4)
        observed["ttft_back_after_s"] = None if to_ttft is None else round(to_ttft, 3)
    parts = [f"healthy after {fmt(to_healthy)}s (limit {fmt(spec.healthy_within)}s)"]
    if to_healthy > spec.healthy_within + _EPS:
        problems.append(f"healthy only {fmt(to_healthy)}s after the kill (limit "
                        f"{fmt(spec.healthy_within)}s)")
    if to_token is None and not probes:
        thin.append("no token probe was sent after the kill: nothing shows the first token")
    elif to_token is None:
        problems.append(f"no probe request streamed a token after the kill ({len(probes)} "
                        "sent)")
    else:
        parts.append(f"first token after {fmt(to_token)}s (limit "
                     f"{fmt(spec.first_token_within)}s)")
        if to_token > spec.first_token_within + _EPS:
            problems.append(f"first token only {fmt(to_token)}s after the kill (limit "
                            f"{fmt(spec.first_token_within)}s)")
    if not isinstance(baseline, str):
        band = f"TTFT p95 <= {fmt(baseline * (1 + spec.tolerance) + spec.slack)}s " \
               f"(baseline {fmt(baseline)}s)"
        if to_ttft is None and not any(r.ok and r.ttft is not None for r in after_back):
            thin.append(f"no request sent after the engine was healthy succeeded with a TTFT "
                        f"({len(after_back)} sent): nothing shows TTFT came back")
        elif to_ttft is None:
            problems.append(f"TTFT never came back in the phase: no {fmt(spec.window)}s "
                            f"window after the engine was healthy had {band}")
        else:
            parts.append(f"{band} after {fmt(to_ttft)}s (limit {fmt(spec.ttft_within)}s)")
            if to_ttft > spec.ttft_within + _EPS:
                problems.append(f"{band} only {fmt(to_ttft)}s after the kill (limit "
                                f"{fmt(spec.ttft_within)}s)")
    status: CheckStatus = "failed" if problems else "inconclusive" if thin else "passed"
    if problems:
        summary = "; ".join(problems + thin)
    elif thin:
        summary = "inconclusive: " + "; ".join(thin)
    else:
        summary = "from the kill: " + "; ".join(parts)
    return make_result(name, kind, phase, status, summary, window=window, observed=observed,
                       expected=expected)


def stream_recovery_references(spec: StreamRecoveryCheck, scenario: Any, location: Location
                               ) -> list[Problem]:
    return refs.unknown_fault(scenario, spec.fault, (*location, "fault"))


def warm_up_references(spec: WarmUpCheck, scenario: Any, location: Location) -> list[Problem]:
    return (refs.unknown_phase(scenario, spec.baseline_phase, (*location, "baseline_phase"))
            + refs.unknown_fault(scenario, spec.fault, (*location, "fault")))


STREAM_RECOVERY = CheckKind(
    references=stream_recovery_references,
    spec=StreamRecoveryCheck,
    evaluate=evaluate_stream_recovery,
    description="Streams cut cleanly by a kill; retrying clients get back.",
    runbook=(
        "When the engine's node died, open streams hung or ended with an unclassified error, "
        "or clients that retried did not get back once it returned. Check the gateway's "
        "behaviour on a dead upstream (proxy_next_upstream, timeouts), the client's retry "
        "policy, and how long the engine took to come back (the health polls in the check's "
        "evidence)."
    ),
    probe=probe_node_recovery,
)


WARM_UP = CheckKind(
    references=warm_up_references,
    spec=WarmUpCheck,
    evaluate=evaluate_warm_up,
    description="Kill to healthy, to first token, to TTFT back: bounded.",
    runbook=(
        "From the kill, the engine took too long to answer health, to stream a first token, "
        "or to bring TTFT back to baseline. Look at the engine's start-up in its log (model "
        "load, compilation, cache warm-up), the container or pod restart policy and readiness "
        "probe, and the TTFT chart after the outage."
    ),
    probe=probe_node_recovery,
)
