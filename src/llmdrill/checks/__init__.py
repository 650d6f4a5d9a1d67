"""Checks: verdicts over a run's evidence, one module per check kind.

Each module defines its spec and a `CheckKind` listed under the entry points
`llmdrill.checks`; `evaluate_check` is what the runner calls.
"""

from llmdrill.checks.base import (
    BoundCheck,
    Evaluator,
    WindowCheck,
    evaluate_check,
    evaluator_for,
    registered_kinds,
    runbook_for,
)

__all__ = [
    "BoundCheck",
    "Evaluator",
    "WindowCheck",
    "evaluate_check",
    "evaluator_for",
    "registered_kinds",
    "runbook_for",
]
