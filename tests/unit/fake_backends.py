"""Fault backends and check kinds that exist only in a unit test, registered the way an
installed plugin's are found (in the registry `llmdrill.plugin` builds from entry points)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmdrill.plugin import CheckKind, FaultBackend, SpecModel, check_kinds, fault_backends


class NoSpec(SpecModel):
    pass


def _no_injector(ctx: Any, name: str, spec: Any) -> Any:
    raise AssertionError("a test-only backend has no injector")


def register_reverter(key: str) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """A test backend `key` whose revert is the decorated function."""
    def decorate(func: Callable[[Any], None]) -> Callable[[Any], None]:
        fault_backends()[key] = FaultBackend(spec=NoSpec, injector=_no_injector, revert=func)
        return func

    return decorate


def register_check(key: str, evaluate: Callable[..., Any]) -> None:
    """A test check kind `key` (evaluation only; the scenario model does not know it)."""
    check_kinds()[key] = CheckKind(spec=NoSpec, evaluate=evaluate)


def unregister_check(key: str) -> None:
    check_kinds().pop(key, None)
