"""engine_healthy: the engine keeps answering its health endpoint all through a phase.

A probe polls the health URL (default: the engine's own `/health`, next to its metrics)
every `interval` with a short deadline (`timeout`, 2s by default) and records each poll as
a `health_poll` event. The evaluator counts failed polls plus the metric scrapes that
failed in the window (the engine vanished from under the scraper too).

Health needs polls all through the phase: at least `min_polls`, the first and last near
the phase's edges and no gap between two longer than `interval + timeout + 5.5s`. Fewer
or patchier polls (and a crashed probe) without failures are inconclusive: an engine
nobody watched for a while was not shown healthy for that while.
"""

from __future__ import annotations

import threading
import time
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import Field, field_validator

from llmdrill.checks.base import fmt, make_result
from llmdrill.faults.request_flood import ConnectionCutter
from llmdrill.model.events import EventKind
from llmdrill.model.records import Evidence
from llmdrill.model.result import CheckResult, CheckStatus, Window
from llmdrill.plugin import CheckKind
from llmdrill.scenario.fields import (
    Strict,
    http_url,
)
from llmdrill.scenario.units import Duration

if TYPE_CHECKING:
    from llmdrill.model.context import RunContext


# --- the spec: the YAML under this key ----------------------------------------


class EngineHealthyCheck(Strict):
    """The engine answers its health endpoint all through the phase (polled)."""

    url: str | None = Field(
        default=None, description="Health URL; default <metrics_url host>/health."
    )
    interval: Duration = Field(default=1.0, description="Time between two polls.")
    timeout: Duration = Field(
        default=2.0, description="A poll without an answer this soon has failed."
    )
    max_failures: int = Field(
        default=0, ge=0,
        description="Failed polls (no 2xx within `timeout`) plus failed metric scrapes "
        "allowed.",
    )
    min_polls: int = Field(
        default=3, ge=1,
        description="Fewer polls in the phase is inconclusive; polls must also cover the "
        "whole phase (no gap longer than interval + timeout + 5.5s).",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        return None if url is None else http_url(url)


KIND = "engine_healthy"
# Added to `timeout` for the hard deadline of one poll: the timeout bounds connect and
# each read, and a server that drips its headers byte by byte would otherwise stretch a
# poll far beyond it.
HARD_DEADLINE_SLACK = 0.5
MAX_ERROR_CHARS = 200
MIN_PAUSE = 0.05  # between polls, even with interval 0: a probe must not spin
# Scheduling slack on top of interval + timeout between two polls: a harness running a
# request flood on a busy 2-core machine was seen to hold a poll back 3.4 s beyond it.
GAP_SLACK_S = 5.0
EDGE_S = 1.0  # polls stamped this far outside the phase still belong to it


def longest_gap(times: list[float], start: float, end: float) -> tuple[float, float, float]:
    """The longest stretch of [start, end] without a poll: (length, from, to)."""
    edges = [start, *sorted(t for t in times if start <= t <= end), end]
    gap, lo, hi = 0.0, start, start
    for a, b in pairwise(edges):
        if b - a > gap:
            gap, lo, hi = b - a, a, b
    return gap, lo, hi


def health_url(ctx: RunContext, spec: EngineHealthyCheck) -> str:
    return spec.url or f"{ctx.engine_url}/health"


def poll_once(client: httpx.Client, url: str, timeout: float
              ) -> tuple[bool, int | None, str | None]:
    """One poll: (ok, status, error). Any 2xx is healthy; the body is not read. The
    client's own timeout should be `timeout`; this adds the hard deadline."""
    cutter = ConnectionCutter()
    deadline = timeout + HARD_DEADLINE_SLACK
    timer = threading.Timer(deadline, cutter.cut, args=("deadline",))
    timer.daemon = True
    timer.start()
    try:
        with client.stream("GET", url, extensions={"trace": cutter.trace}) as resp:
            status = resp.status_code
    except httpx.TimeoutException as exc:
        return False, None, f"no answer within {fmt(timeout)}s ({type(exc).__name__})"
    except (httpx.HTTPError, OSError) as exc:
        if cutter.reason is not None:
            return False, None, f"no answer within {fmt(deadline)}s (cut)"
        return False, None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
    finally:
        timer.cancel()
    ok = 200 <= status < 300
    return ok, status, None if ok else f"status {status}"


def probe_engine_health(ctx: RunContext, check_name: str, spec: EngineHealthyCheck,
                        stop: threading.Event) -> None:
    url = health_url(ctx, spec)
    # No keep-alive: each poll proves the engine still accepts connections.
    with httpx.Client(timeout=spec.timeout, headers=ctx.headers, follow_redirects=False,
                      trust_env=False,
                      limits=httpx.Limits(max_keepalive_connections=0)) as client:
        while not stop.is_set():
            began = time.time()
            ok, status, error = poll_once(client, url, spec.timeout)
            elapsed = time.time() - began
            if ctx.store is not None:
                ctx.store.add_event(began, EventKind.HEALTH_POLL, {
                    "check": check_name, "ok": ok, "status": status,
                    "elapsed_s": round(elapsed, 4), "error": error, "url": url,
                })
            stop.wait(max(MIN_PAUSE, spec.interval - elapsed))


def evaluate_engine_healthy(
    name: str, phase: str, spec: EngineHealthyCheck, evidence: Evidence, window: Window
) -> CheckResult:
    # Polls are this check's own (by name); the probe ran exactly over the phase.
    polls = [(ts, d) for ts, d in evidence.events_of(EventKind.HEALTH_POLL, window.start - EDGE_S,
                                                      window.end + EDGE_S)
             if d.get("check") == name]
    crashes = [d for _, d in evidence.events_of(EventKind.PROBE_ERROR) if d.get("check") == name]
    scrapes = evidence.events_of(EventKind.SCRAPE_FAILED, window.start, window.end)
    failed = [(ts, d) for ts, d in polls if not d.get("ok")]
    slowest = max((float(d.get("elapsed_s") or 0.0) for _, d in polls), default=None)
    url = polls[0][1].get("url") if polls else spec.url
    observed: dict[str, Any] = {
        "url": url,
        "polls": len(polls),
        "failed_polls": len(failed),
        "scrape_failures": len(scrapes),
        "failures": len(failed) + len(scrapes),
        "slowest_poll_ms": None if slowest is None else round(slowest * 1000, 1),
        "first_failure": None,
    }
    max_gap = spec.interval + spec.timeout + HARD_DEADLINE_SLACK + GAP_SLACK_S
    gap, gap_from, gap_to = longest_gap([ts for ts, _ in polls], window.start, window.end)
    observed["longest_gap_s"] = round(gap, 3)
    expected: dict[str, Any] = {"max_failures": spec.max_failures, "min_polls": spec.min_polls,
                                "max_gap_s": round(max_gap, 3), "timeout_s": spec.timeout}
    if failed:
        ts, detail = failed[0]
        observed["first_failure"] = {"at_s": round(ts - window.start, 3),
                                     "status": detail.get("status"),
                                     "error": detail.get("error")}
    if crashes:
        observed["probe_error"] = crashes[0].get("error")

    problems: list[str] = []
    thin: list[str] = []  # too little evidence: inconclusive unless something failed
    if len(polls) < spec.min_polls:
        thin.append(f"{len(polls)} health polls in the phase, need {spec.min_polls} "
                    "(too little evidence the engine was healthy)")
    elif gap > max_gap:
        thin.append(f"no health poll for {fmt(gap, 1)}s (from +{fmt(gap_from - window.start, 1)}s "
                    f"to +{fmt(gap_to - window.start, 1)}s; allowed {fmt(max_gap, 1)}s): "
                    "the engine was not watched all through the phase")
    if crashes:
        thin.append(f"the health probe crashed: {crashes[0].get('error')}")
    failures = len(failed) + len(scrapes)
    if polls and failures > spec.max_failures:
        parts = [f"{len(failed)}/{len(polls)} health polls of {url} failed"]
        if failed:
            first = observed["first_failure"]
            parts[0] += f" (first at +{first['at_s']:.1f}s: {first['error']})"
        parts.append(f"{len(scrapes)} metric scrapes failed")
        problems.append(f"{failures} failures > allowed {spec.max_failures}: "
                        + "; ".join(parts))
    status: CheckStatus = "failed" if problems else "inconclusive" if thin else "passed"
    if problems or thin:
        summary = "; ".join(problems + thin)
        if not problems:
            summary = "inconclusive: " + summary
    else:
        shown = "" if slowest is None else f", slowest {fmt(slowest * 1000, 1)} ms"
        summary = (f"health answered {len(polls) - len(failed)}/{len(polls)} polls of {url}"
                   f"{shown}; {len(scrapes)} metric scrapes failed; "
                   f"{failures} failures (allowed {spec.max_failures})")
    return make_result(name, KIND, phase, status, summary, window=window, observed=observed,
                       expected=expected)


ENGINE_HEALTHY = CheckKind(
    spec=EngineHealthyCheck,
    evaluate=evaluate_engine_healthy,
    description="The engine's health endpoint answers all through.",
    runbook=(
        "The engine's health endpoint failed or went unanswered during the phase (or was "
        "polled too rarely, for inconclusive). Look at the engine's log for restarts, crashes "
        "or CUDA/CPU out-of-memory around the failed polls, and at metric scrapes that failed "
        "at the same times; a health URL behind a busy API server may only be slow, so "
        "compare with the poll timeout."
    ),
    probe=probe_engine_health,
)
