"""Checks that cannot fail: bounds a scenario's own settings already guarantee.

A check whose limit the load can never reach passes whatever the system does, and a
green verdict from it is a lie. `find_toothless_checks` reads a loaded scenario and
returns one warning per such limit, pointing at the line of the field in the file (the
loader's own line positions), for `llmdrill validate` and `llmdrill plan` to print
(`--strict` makes them errors). What it knows:

- `no_hung_requests`: a deadline at or above the client's own ceiling (every attempt's
  `timeouts.total` plus the longest backoffs between them; flood requests: their `total`,
  never retried), or at or above the time from the phase's start to the end of the run
  (no request can be seen older than that);
- time limits (`recovers.within` + window, `warm_up`, `stream_recovery.back_within`,
  `oom_observed.within`, `alert_fires`/`alert_resolves.within`, `kv_cache_cleanup.within`
  from the phase start, `replicas_ready.within`) at or above 90 % of their phase: "too
  slow" would be the phase ending, not the check failing;
- bounds the load can never reach: an error rate max of 1 (or a min of 0), a TTFT max at
  or above the client's ceiling, every error class allowed, a 0-1 KV-cache usage max of
  1 or more, a waiting/running bound at or above all the requests the scenario can have
  in flight, a counter increase min of 0, more health-poll failures allowed than polls;
- request-based checks (`slo`, `no_hung_requests`, `recovers`) on a phase without any
  traffic they could judge (no users, no request flood of the shapes asked for).

Disabled checks (`enabled: false`) are not part of a run and are not linted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import get_args

from llmdrill.checks.alerts import AlertFiresCheck, AlertResolvesCheck
from llmdrill.checks.health import EngineHealthyCheck
from llmdrill.checks.hung import NoHungRequestsCheck
from llmdrill.checks.kube import ReplicasReadyCheck
from llmdrill.checks.kv_cleanup import KvCacheCleanupCheck
from llmdrill.checks.metric import MetricCheck
from llmdrill.checks.oom import OomObservedCheck
from llmdrill.checks.queue import QueueBoundedCheck
from llmdrill.checks.recovers import RecoversCheck
from llmdrill.checks.recovery import StreamRecoveryCheck, WarmUpCheck
from llmdrill.checks.slo import SloCheck
from llmdrill.faults.cancel_storm import CancelStormFault
from llmdrill.faults.request_flood import RequestFloodFault
from llmdrill.scenario.errors import ScenarioError, ScenarioIssue
from llmdrill.scenario.fields import ErrorClass, Timeouts
from llmdrill.scenario.loader import Loc, Marks, _dotted, _mark_for, _parse
from llmdrill.scenario.models import Check, Load, Phase, Scenario

# A time limit at or above this share of its phase nearly fills it.
FILL_SHARE = 0.9

_KV_USAGE = ("kv_cache_usage", "gpu_cache_usage", "cache_usage_perc")
_QUEUE = ("num_requests_waiting", "num_requests_running")
# Requests the harness's own probes may add to the engine's queue while a phase runs.
_PROBES_IN_FLIGHT = 1


def request_ceiling(load: Load) -> float:
    """The longest one load request can take: every attempt up to `timeouts.total`, with
    the longest backoff between two attempts (the load generator waits a random share of
    min(max_backoff, backoff * 2^(n-1)) after attempt n)."""
    retries = load.retries
    attempts = retries.max_attempts if retries.on else 1
    backoffs = sum(min(retries.max_backoff, retries.backoff * 2 ** k)
                   for k in range(attempts - 1))
    return float(attempts * load.timeouts.total + backoffs)


def _flood_ceiling(timeouts: Timeouts) -> float:
    return timeouts.total  # flood requests are never retried


def format_warning(issue: ScenarioIssue) -> str:
    """`file:line:col: warning: field: message`."""
    where = issue.path
    if issue.line is not None:
        where += f":{issue.line}"
        if issue.column is not None:
            where += f":{issue.column}"
    field = f" {issue.field}:" if issue.field else ""
    return f"{where}: warning:{field} {issue.message}"


def _marks(source: str | Path | None, env: Mapping[str, str] | None) -> Marks:
    if source is None:
        return {}
    try:
        text = Path(source).read_text(encoding="utf-8")
        _, marks = _parse(text, str(source), os.environ if env is None else env)
    except (OSError, UnicodeDecodeError, ScenarioError):
        return {}
    return marks


def _s(seconds: float) -> str:
    return f"{seconds:.3g}s" if seconds < 100 else f"{seconds:.0f}s"


class _Linter:
    def __init__(self, scenario: Scenario, path: str, marks: Marks) -> None:
        self.scenario = scenario
        self.path = path
        self.marks = marks
        self.issues: list[ScenarioIssue] = []
        self.phases = {p.name: p for p in scenario.phases}
        starts: dict[str, float] = {}
        t = 0.0
        for phase in scenario.phases:
            starts[phase.name] = t
            t += phase.duration
        self.starts = starts
        self.total = t

    def warn(self, loc: Loc, message: str) -> None:
        line, col = _mark_for(loc, self.marks)
        self.issues.append(ScenarioIssue(self.path, line, col, _dotted(loc), message))

    # --- what a phase's traffic can be ------------------------------------------------

    def _floods(self, phase: Phase) -> list[tuple[str, float, int]]:
        """(shape name, ceiling, concurrency) of the request floods applied in the phase."""
        out = []
        for name in phase.faults:
            fault = self.scenario.faults.get(name)
            flood = fault.spec_as(RequestFloodFault) if fault is not None else None
            if flood is not None:
                out.append((flood.name, _flood_ceiling(flood.timeouts), flood.concurrency))
        return out

    def _storm_streams(self, phase: Phase) -> int:
        total = 0
        for name in phase.faults:
            fault = self.scenario.faults.get(name)
            storm = fault.spec_as(CancelStormFault) if fault is not None else None
            if storm is not None:
                total += storm.streams
        return total

    def _sources(self, phase: Phase, shapes: list[str] | None) -> list[tuple[str, float]]:
        """Who sends the requests a request-based check of the phase judges, with the
        longest each request can take."""
        load = self.scenario.load
        sources: list[tuple[str, float]] = []
        names = {s.name for s in load.requests}
        if load.users > 0 and (shapes is None or names & set(shapes)):
            sources.append(("load", request_ceiling(load)))
        for name, ceiling, _ in self._floods(phase):
            if shapes is None or name in shapes:
                sources.append((f"request flood '{name}'", ceiling))
        return sources

    def _in_flight(self, phase: Phase) -> int:
        return (self.scenario.load.users + sum(c for _, _, c in self._floods(phase))
                + self._storm_streams(phase) + _PROBES_IN_FLIGHT)

    # --- the rules ----------------------------------------------------------------------

    def run(self) -> list[ScenarioIssue]:
        for i, check in enumerate(self.scenario.checks):
            phase = self.phases.get(check.phase)
            if not check.enabled or phase is None:
                continue
            base: Loc = ("checks", i, check.kind)
            kind = check.kind
            if kind in ("slo", "no_hung_requests", "recovers"):
                slo = check.spec_as(SloCheck)
                shapes = slo.shapes if slo else None
                if not self._sources(phase, shapes):
                    self.warn(base, f"phase '{phase.name}' has no traffic this check could "
                              "judge (load.users is 0 and no request flood"
                              f"{' of those shapes' if shapes else ''} is applied in it)")
                    continue
            getattr(self, f"_{kind}", lambda *a: None)(check, phase, base)
        return self.issues

    def _limit(self, loc: Loc, what: str, limit: float, phase: Phase,
               extra: float = 0.0, extra_what: str = "") -> None:
        length = phase.duration
        needed = limit + extra
        plus = f" + {extra_what} {_s(extra)}" if extra else ""
        if needed >= length:
            self.warn(loc, f"{what} {_s(limit)}{plus} is not shorter than phase "
                      f"'{phase.name}' ({_s(length)}): too slow can never fail this check, "
                      "the phase ends first; make the limit well under the phase, or the "
                      "phase longer")
        elif needed >= FILL_SHARE * length:
            self.warn(loc, f"{what} {_s(limit)}{plus} fills {needed / length:.0%} of phase "
                      f"'{phase.name}' ({_s(length)}): a slow outcome is cut by the phase's "
                      f"end rather than judged; leave the phase at least "
                      f"{1 - FILL_SHARE:.0%} longer than the limit")

    def _no_hung_requests(self, check: Check, phase: Phase, base: Loc) -> None:
        spec = check.spec_as(NoHungRequestsCheck)
        assert spec is not None
        deadline = spec.deadline
        loc = (*base, "deadline")
        sources = self._sources(phase, None)
        ceiling = max(c for _, c in sources)
        if deadline >= ceiling:
            who = ", ".join(f"{n} {_s(c)}" for n, c in sources)
            self.warn(loc, f"deadline {_s(deadline)} is not below the longest a request can "
                      f"take ({who}: every attempt's timeouts.total plus backoffs): the "
                      "client gives up first, so no request can ever hang past it; lower "
                      "the deadline (with a margin) or raise the client's timeouts")
            return
        visible = self.total - self.starts[phase.name]
        if deadline >= visible:
            self.warn(loc, f"deadline {_s(deadline)} is not below the time from the start of "
                      f"phase '{phase.name}' to the end of the run ({_s(visible)}): no request "
                      "of the phase can be seen that old; lower the deadline or add a phase "
                      "after it")

    def _slo(self, check: Check, phase: Phase, base: Loc) -> None:
        slo = check.spec_as(SloCheck)
        assert slo is not None
        if slo.error_rate is not None:
            self._fraction((*base, "error_rate"), "error_rate", slo.error_rate.min,
                           slo.error_rate.max)
        for cls, bound in slo.error_rate_by_class.items():
            self._fraction((*base, "error_rate_by_class", cls), f"error_rate of {cls}",
                           bound.min, bound.max)
        if slo.allowed_error_classes is not None and set(get_args(ErrorClass)) <= set(
                slo.allowed_error_classes):
            self.warn((*base, "allowed_error_classes"),
                      "every error class is allowed: this can never fail; list only the "
                      "classes a healthy system may show")
        ceiling = max(c for _, c in self._sources(phase, slo.shapes))
        for name in ("ttft_p50", "ttft_p95", "ttft_p99"):
            bound = getattr(slo, name)
            if bound is not None and bound.max is not None and bound.max >= ceiling:
                self.warn((*base, name, "max"),
                          f"{name} max {_s(bound.max)} is not below the longest a request "
                          f"can take ({_s(ceiling)}): no successful request can have a TTFT "
                          "over it")
        for name in ("tokens_per_s", "request_tokens_per_s_p50"):
            bound = getattr(slo, name)
            if bound is not None and bound.max is None and bound.min is not None \
                    and bound.min <= 0:
                self.warn((*base, name, "min"), f"{name} min {bound.min:g} is no bound: "
                          "throughput is never negative")

    def _fraction(self, loc: Loc, what: str, low: float | None, high: float | None) -> None:
        if high is not None and high >= 1 and (low is None or low <= 0):
            self.warn((*loc, "max"), f"{what} max {high:g} is no bound: a share of requests "
                      "is at most 1, so this can never fail")
        elif low is not None and low <= 0 and high is None:
            self.warn((*loc, "min"), f"{what} min {low:g} is no bound: a share of requests "
                      "is never below 0")

    def _recovers(self, check: Check, phase: Phase, base: Loc) -> None:
        spec = check.spec_as(RecoversCheck)
        assert spec is not None
        self._limit((*base, "within"), "recovers.within", spec.within, phase,
                    spec.window, "window")

    def _warm_up(self, check: Check, phase: Phase, base: Loc) -> None:
        spec = check.spec_as(WarmUpCheck)
        assert spec is not None
        self._limit((*base, "healthy_within"), "healthy_within", spec.healthy_within, phase)
        self._limit((*base, "first_token_within"), "first_token_within",
                    spec.first_token_within, phase)
        self._limit((*base, "ttft_within"), "ttft_within", spec.ttft_within, phase,
                    spec.window, "window")

    def _stream_recovery(self, check: Check, phase: Phase, base: Loc) -> None:
        spec = check.spec_as(StreamRecoveryCheck)
        assert spec is not None
        self._limit((*base, "back_within"), "back_within", spec.back_within, phase)
        ceiling = request_ceiling(self.scenario.load)
        if self.scenario.load.users > 0 and spec.deadline >= ceiling:
            self.warn((*base, "deadline"), f"deadline {_s(spec.deadline)} is not below the "
                      f"longest a load request can take ({_s(ceiling)}): every request cut "
                      "by the kill has ended by then anyway")

    def _replicas_ready(self, check: Check, phase: Phase, base: Loc) -> None:
        spec = check.spec_as(ReplicasReadyCheck)
        assert spec is not None
        self._limit((*base, "within"), "replicas_ready.within", spec.within, phase)

    def _oom_observed(self, check: Check, phase: Phase, base: Loc) -> None:
        spec = check.spec_as(OomObservedCheck)
        assert spec is not None
        if spec.within is not None:
            self._limit((*base, "within"), "oom_observed.within", spec.within, phase)

    def _alert_fires(self, check: Check, phase: Phase, base: Loc) -> None:
        spec = check.spec_as(AlertFiresCheck)
        assert spec is not None
        self._limit((*base, "within"), "alert_fires.within", spec.within, phase)

    def _alert_resolves(self, check: Check, phase: Phase, base: Loc) -> None:
        spec = check.spec_as(AlertResolvesCheck)
        assert spec is not None
        self._limit((*base, "within"), "alert_resolves.within", spec.within, phase)

    def _kv_cache_cleanup(self, check: Check, phase: Phase, base: Loc) -> None:
        spec = check.spec_as(KvCacheCleanupCheck)
        assert spec is not None
        if spec.after == "phase_start" or spec.within >= phase.duration:
            # per wave, only a deadline past the phase itself is sure to be toothless
            self._limit((*base, "within"), "kv_cache_cleanup.within", spec.within, phase)
        if spec.kv_tolerance >= 1:
            self.warn((*base, "kv_tolerance"), f"kv_tolerance {spec.kv_tolerance:g} is no "
                      "bound: KV-cache usage is a share between 0 and 1")

    def _queue_bounded(self, check: Check, phase: Phase, base: Loc) -> None:
        spec = check.spec_as(QueueBoundedCheck)
        assert spec is not None
        most = self._in_flight(phase)
        if spec.max_waiting >= most:
            self.warn((*base, "max_waiting"), self._queue_message(
                f"max_waiting {spec.max_waiting:g}", most, phase))

    def _queue_message(self, what: str, most: int, phase: Phase) -> str:
        return (f"{what} is not below the most requests this scenario can have in flight "
                f"in phase '{phase.name}' ({most}: load users, request floods, cancel-storm "
                "streams and a probe): its own load can never break it; bound it below that")

    def _metric(self, check: Check, phase: Phase, base: Loc) -> None:
        spec = check.spec_as(MetricCheck)
        assert spec is not None
        series = " ".join(spec.series)
        if spec.aggregate == "increase" and spec.max is None and spec.min is not None \
                and spec.min <= 0:
            self.warn((*base, "min"), f"increase min {spec.min:g} is no bound: a counter's "
                      "increase is never negative")
            return
        if any(name in series for name in _KV_USAGE) and spec.aggregate != "increase":
            if spec.max is not None and spec.max >= 1 and (spec.min is None or spec.min <= 0):
                self.warn((*base, "max"), f"max {spec.max:g} is no bound on KV-cache usage, "
                          "a share between 0 and 1: this can never fail")
            elif spec.min is not None and spec.min <= 0 and spec.max is None:
                self.warn((*base, "min"), f"min {spec.min:g} is no bound on KV-cache usage, "
                          "never below 0")
        if any(name in series for name in _QUEUE) and spec.aggregate != "increase" \
                and spec.max is not None and (spec.min is None or spec.min <= 0):
            most = self._in_flight(phase)
            if spec.max >= most:
                self.warn((*base, "max"), self._queue_message(f"max {spec.max:g}", most, phase))

    def _engine_healthy(self, check: Check, phase: Phase, base: Loc) -> None:
        spec = check.spec_as(EngineHealthyCheck)
        assert spec is not None
        polls = int(phase.duration // spec.interval) + 1
        if spec.max_failures >= polls:
            self.warn((*base, "max_failures"), f"max_failures {spec.max_failures} is not below "
                      f"the polls phase '{phase.name}' has room for (about {polls}, one every "
                      f"{_s(spec.interval)}): an engine down all through still passes")


def find_toothless_checks(scenario: Scenario, source: str | Path | None = None,
                          env: Mapping[str, str] | None = None) -> list[ScenarioIssue]:
    """Warnings, one per check limit that the scenario's own settings keep from ever
    failing; `source` is the scenario's file (for line numbers), read with `env` (default
    the process environment) as the loader read it."""
    path = str(source) if source is not None else scenario.metadata.name
    return _Linter(scenario, path, _marks(source, env)).run()
