"""no_hung_requests: every request that started in the window ended within a deadline.

"Ended" includes failing: a fast error is fine here, only a request that outlives the
deadline (finished or still open) is hung. A request still in flight when the load
stopped is only given the benefit of the doubt while it was younger than the deadline
at the stop; one that was already older had hung, stop or not.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from llmdrill.checks.base import fmt, make_result
from llmdrill.model.records import Evidence, RequestRecord
from llmdrill.model.result import CheckResult, Window
from llmdrill.plugin import CheckKind
from llmdrill.scenario.fields import (
    Strict,
)
from llmdrill.scenario.units import Duration

# --- the spec: the YAML under this key ----------------------------------------


class NoHungRequestsCheck(Strict):
    deadline: Duration = Field(description="Every request finishes or fails within this.")
    min_requests: int = Field(
        default=1, ge=1,
        description="Fewer requests started in the window is inconclusive (too little "
        "evidence).",
    )


KIND = "no_hung_requests"
WORST_SHOWN = 10


@dataclass(frozen=True, slots=True)
class _Seen:
    record: RequestRecord
    duration: float  # how long it had been open when it ended or the load stopped
    hung: bool


def _judge(record: RequestRecord, deadline: float, run_end: float | None) -> _Seen:
    if record.finished:
        duration = record.duration
    else:
        # Cut by the stop: its age at the stop is all we know (end is the stop time too,
        # but run_end is the authoritative one when the store has it).
        duration = (run_end if run_end is not None else record.end) - record.start
    return _Seen(record, duration, duration > deadline)


def evaluate_no_hung(
    name: str, phase: str, spec: NoHungRequestsCheck, evidence: Evidence, window: Window
) -> CheckResult:
    deadline = spec.deadline
    seen = [
        _judge(r, deadline, evidence.run_end)
        for r in evidence.requests_started_in(window.start, window.end)
    ]
    hung = [s for s in seen if s.hung]
    worst = sorted(seen, key=lambda s: s.duration, reverse=True)[:WORST_SHOWN]
    longest = worst[0].duration if worst else None
    observed = {
        "checked": len(seen),
        "hung": len(hung),
        "interrupted": sum(1 for s in seen if not s.record.finished),
        "max_duration_s": None if longest is None else round(longest, 3),
        "worst": [
            {
                "start_offset_s": round(s.record.start - window.start, 3),
                "duration_s": round(s.duration, 3),
                "error_class": s.record.error_class,
                "finished": s.record.finished,
                "hung": s.hung,
            }
            for s in worst
        ],
    }
    expected = {"deadline_s": deadline, "min_requests": spec.min_requests}
    limit = f"{fmt(deadline)}s"
    if not hung and len(seen) < spec.min_requests:
        # A hung request is evidence enough to fail; too few that ended show nothing.
        return make_result(
            name,
            KIND,
            phase,
            "inconclusive",
            f"inconclusive: {len(seen)} requests started in the window, need "
            f"{spec.min_requests}: too little shows requests end within {limit}",
            window=window,
            observed=observed,
            expected=expected,
        )
    assert longest is not None
    if hung:
        return make_result(
            name,
            KIND,
            phase,
            "failed",
            f"{len(hung)} of {len(seen)} requests hung past the {limit} deadline "
            f"(longest {fmt(longest, 1)}s)",
            window=window,
            observed=observed,
            expected=expected,
        )
    return make_result(
        name,
        KIND,
        phase,
        "passed",
        f"all {len(seen)} requests finished or failed within {limit} (longest {fmt(longest, 1)}s)",
        window=window,
        observed=observed,
        expected=expected,
    )


NO_HUNG_REQUESTS = CheckKind(
    spec=NoHungRequestsCheck,
    evaluate=evaluate_no_hung,
    description="Every request finishes or fails in time.",
    runbook=(
        "Some requests neither finished nor failed before the deadline: a client would hang. "
        "Look for a missing client or gateway read timeout (proxy_read_timeout, the client's "
        "timeout), streams the engine stopped feeding without closing "
        "(vllm:num_requests_running stuck above zero), or a proxy that holds connections open "
        "after the upstream is gone."
    ),
    probe=None,
)
