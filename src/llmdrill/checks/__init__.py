"""Checks: verdicts over a run's evidence, one module per check kind.

Importing this package registers the built-in kinds; `evaluate_check` is the entry point.
"""

from llmdrill.checks import (
    alerts,
    caps,
    health,
    hung,
    kv_cleanup,
    metric,
    oom,
    queue,
    recovers,
    recovery,
    slo,
)
from llmdrill.checks.base import (
    BoundCheck,
    Evaluator,
    WindowCheck,
    evaluate_check,
    evaluator_for,
    register,
    registered_kinds,
)

__all__ = [
    "BoundCheck",
    "Evaluator",
    "WindowCheck",
    "alerts",
    "caps",
    "evaluate_check",
    "evaluator_for",
    "health",
    "hung",
    "kv_cleanup",
    "metric",
    "oom",
    "queue",
    "recovers",
    "recovery",
    "register",
    "registered_kinds",
    "slo",
]
