"""The injector interface and the registry of revert actions.

A fault is applied in two steps so the journal can hold the way back *before* anything
changes: `prepare()` returns a JSON-serialisable revert action, the runner journals it,
then `apply()` makes the change. Reverting needs only that action (no live object), which
is what lets `llmdrill cleanup` undo a fault after the harness was killed with -9.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from llmdrill.harness.records import Evidence
    from llmdrill.harness.verdict import FaultEffect

RevertAction = dict[str, Any]
"""Must carry "backend": the key of the function that reverts it."""

_REVERTERS: dict[str, Callable[[RevertAction], None]] = {}


class EnvironmentProblem(Exception):
    """A backend is unreachable or refuses us; the run cannot start (exit code 2)."""


class Injector(Protocol):
    backend: str

    def preflight(self) -> list[str]:
        """Check reachability and permissions; return what would be done. Changes nothing."""
        ...

    def prepare(self) -> RevertAction:
        """The action that undoes apply(); computed before anything changes."""
        ...

    def apply(self) -> None: ...

    def describe(self) -> str: ...

    def stop(self, timeout: float = 30.0) -> None:
        """Stop live activity the fault runs in this process (client-side faults)."""
        ...


class JudgesEffect(Protocol):
    """An injector that can tell, from the run's evidence, whether its fault landed."""

    def effect(self, evidence: Evidence) -> FaultEffect:
        """Whether the run's evidence shows this fault reached the traffic or the target.

        Called after the run with everything it observed; a fault that left no trace makes
        the run inconclusive, never a pass."""
        ...


def register_reverter(backend: str) -> Callable[[Callable[[RevertAction], None]], Callable[
    [RevertAction], None]]:
    def decorator(func: Callable[[RevertAction], None]) -> Callable[[RevertAction], None]:
        _REVERTERS[backend] = func
        return func

    return decorator


def revert(action: RevertAction) -> None:
    """Undo one action. Idempotent: reverting what is already gone is not an error."""
    _load_backends()
    backend = action.get("backend")
    func = _REVERTERS.get(str(backend))
    if func is None:
        raise ValueError(f"no reverter for backend '{backend}'")
    func(action)


def _load_backends() -> None:
    from llmdrill.drills.registry import load_backends

    load_backends()
