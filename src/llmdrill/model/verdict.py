"""The run verdict: one place that decides a run's status from its checks and faults, ranks
statuses, and maps them to exit codes.

A run passes only when every enabled check passed on enough evidence AND every fault it
applied left a trace on the traffic or the target. Anything short of that is not a pass:
a fault that missed, a run with no enabled check, or a check with too little evidence
makes the run `inconclusive` (exit code 4), whatever the other checks say.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from llmdrill.model.result import CheckResult, FaultResult, RunStatus

# Worst last. A suite's status, its HTML index and its exit code all use this one order.
RUN_SEVERITY: dict[str, int] = {
    "passed": 0, "inconclusive": 1, "failed": 2, "error": 3, "aborted": 4,
}

EXIT_CODES: dict[str, int] = {
    "passed": 0, "failed": 1, "error": 2, "aborted": 3, "inconclusive": 4,
}


def worst_status(statuses: Iterable[str]) -> str | None:
    """The most severe of several run statuses (None for none)."""
    return max(statuses, key=lambda s: RUN_SEVERITY.get(s, RUN_SEVERITY["error"]),
               default=None)


def exit_code(statuses: Iterable[str]) -> int:
    """The exit code of a suite: that of its worst run; 0 when nothing ran is not possible
    (the caller refuses an empty selection before running)."""
    worst = worst_status(statuses)
    return EXIT_CODES.get(worst or "error", EXIT_CODES["error"])


@dataclass(frozen=True, slots=True)
class FaultEffect:
    """Whether a fault reached the traffic or the target, and the evidence for it.

    `landed` is True when the evidence shows the fault's effect, False when the evidence
    that should show it is there and does not, and None when there is no evidence either
    way (both are not a pass).
    """

    landed: bool | None
    detail: str

    @property
    def label(self) -> str:
        return {True: "seen", False: "missed", None: "unknown"}[self.landed]


def decide_run_status(error: str | None, abort_reason: str | None,
                      checks: Sequence[CheckResult], faults: Sequence[FaultResult]
                      ) -> tuple[RunStatus, str | None]:
    """The run's status and, when it is not a pass, the one-line reason for it."""
    if error:
        return "error", error
    if abort_reason:
        return "aborted", abort_reason
    bad = [c for c in checks if c.status in ("failed", "error")]
    if bad:
        return "failed", None
    judged = [c for c in checks if c.status != "skipped"]
    if not judged:
        why = ("no enabled check in the scenario" if not checks
               else "every check was skipped")
        return "inconclusive", f"{why}: a run with nothing judged is not a pass"
    reasons: list[str] = []
    for fault in faults:
        # An applied fault whose effect was never judged (None) is as unknown as "unknown".
        if fault.applied_at is None or fault.effect == "seen":
            continue
        what = ("had no observable effect" if fault.effect == "missed"
                else "left no evidence that it landed")
        reasons.append(f"fault '{fault.name}' {what} ({fault.effect_detail or 'no detail'})")
    unsure = [c for c in checks if c.status == "inconclusive"]
    if unsure:
        reasons.append("too little evidence for " + ", ".join(c.name for c in unsure))
    if reasons:
        return "inconclusive", "; ".join(reasons)
    return "passed", None
