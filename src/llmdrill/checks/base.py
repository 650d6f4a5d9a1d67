"""What every check kind shares, and the one entry point the runner calls:
`evaluate_check`.

A check kind is a `llmdrill.plugin.CheckKind` (spec, evaluator, optional probe) listed
under the entry points `llmdrill.checks`; the built-in ones are in this package, one module
each. Evaluators may raise: `evaluate_check` turns any exception into an "error" result,
because one broken check must not take the whole run's verdict with it.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from llmdrill.model.records import Evidence
from llmdrill.model.result import CheckResult, CheckStatus, Window
from llmdrill.plugin import PluginError, check_kinds

if TYPE_CHECKING:
    from llmdrill.scenario.models import Check

# The spec is typed Any here so each evaluator can name its own spec model
# (SloCheck, MetricCheck, ...) and still fit the one contract.
Evaluator = Callable[[str, str, Any, Evidence, Window], CheckResult]


def evaluator_for(kind: str) -> Evaluator | None:
    found = check_kinds().get(kind)
    return found.evaluate if found is not None else None


def registered_kinds() -> tuple[str, ...]:
    return tuple(sorted(check_kinds()))


def runbook_for(kind: str) -> str:
    """The kind's hint for a reader of a failed check: what it usually means, where to look.

    Empty for a kind nobody registered (a result read where its plugin is not installed)
    and when the plugins cannot be loaded: a report is still written without the hints.
    """
    try:
        found = check_kinds().get(kind)
    except PluginError:
        return ""
    return found.runbook.strip() if found is not None else ""


class WindowCheck(Protocol):
    """Anything that can judge the evidence of one window."""

    def evaluate(self, evidence: Evidence, window: Window) -> CheckResult: ...


@dataclass(frozen=True, slots=True)
class BoundCheck:
    """A scenario check bound to its evaluator: the `WindowCheck` the runner can hold."""

    name: str
    kind: str
    phase: str
    spec: BaseModel
    evaluator: Evaluator

    def evaluate(self, evidence: Evidence, window: Window) -> CheckResult:
        return self.evaluator(self.name, self.phase, self.spec, evidence, window)


def make_result(
    name: str,
    kind: str,
    phase: str,
    status: CheckStatus,
    summary: str,
    window: Window | None = None,
    observed: dict[str, Any] | None = None,
    expected: dict[str, Any] | None = None,
    evidence: dict[str, Any] | None = None,
) -> CheckResult:
    """Shorthand so evaluators read as their verdicts, not as constructor calls."""
    return CheckResult(
        name=name,
        kind=kind,
        phase=phase,
        status=status,
        summary=summary,
        window=window,
        observed=observed or {},
        expected=expected or {},
        evidence=evidence or {},
    )


def fmt(value: float, decimals: int = 3) -> str:
    """A number for a summary: rounded, no trailing zeros, never exponent notation."""
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


@dataclass(frozen=True, slots=True)
class FaultSpan:
    """A fault's first application in a check's window: when it was applied, when its
    revert began (or the load ended, when it stayed on) and when it was reverted."""

    applied: float
    until: float
    reverted: float | None


def fault_span(evidence: Evidence, fault: str, window: Window) -> FaultSpan | None:
    """The first application of `fault` in the window (a second before its start included:
    a fault applied at a phase boundary); None when it never applied there."""
    events = sorted((f for f in evidence.faults if f.fault == fault
                     and window.start - 1.0 <= f.applied_at <= window.end),
                    key=lambda f: f.applied_at)
    if not events:
        return None
    first = events[0]
    until = first.revert_began
    if until is None:
        until = evidence.run_end if evidence.run_end is not None else window.end
    return FaultSpan(first.applied_at, until, first.reverted_at)


def phase_window(evidence: Evidence, phase: str) -> Window | str:
    """The window of a phase that ran to its end, or why there is none."""
    found = evidence.phase(phase)
    if found is None:
        return f"phase '{phase}' did not run"
    if not found.completed:
        return f"phase '{phase}' did not complete (stopped after {found.end - found.start:.1f}s)"
    return Window(phase=phase, start=found.start, end=found.end)


def evaluate_check(check: Check, index: int, evidence: Evidence) -> CheckResult:
    """Judge one scenario check against the run's evidence. Never raises."""
    name = check.display_name(index)
    kind = check.kind
    if not check.enabled:
        return make_result(name, kind, check.phase, "skipped",
                           "skipped: not enabled in the scenario (enabled: false)")
    window_or_reason = phase_window(evidence, check.phase)
    if isinstance(window_or_reason, str):
        return make_result(name, kind, check.phase, "skipped", f"skipped: {window_or_reason}")
    window = window_or_reason
    evaluator = evaluator_for(kind)
    if evaluator is None:
        return make_result(
            name,
            kind,
            check.phase,
            "error",
            f"no evaluator for check kind '{kind}' "
            f"(registered: {', '.join(registered_kinds()) or 'none'})",
            window=window,
        )
    bound = BoundCheck(
        name=name, kind=kind, phase=check.phase, spec=check.spec, evaluator=evaluator
    )
    try:
        result = bound.evaluate(evidence, window)
    except Exception as exc:  # any bug in one evaluator becomes that check's "error"
        return make_result(
            name,
            kind,
            check.phase,
            "error",
            f"{kind} check failed to evaluate: {type(exc).__name__}: {exc}",
            window=window,
            evidence={"traceback": traceback.format_exc(limit=8)},
        )
    if result.window is None:
        result = result.model_copy(update={"window": window})
    return result
