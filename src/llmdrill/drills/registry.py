"""Which injector handles which fault type. A new backend registers a factory here and a
reverter in drills.base; the runner needs no change."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from llmdrill.drills.base import Injector

if TYPE_CHECKING:
    from llmdrill.harness.context import RunContext
    from llmdrill.scenario.models import Fault

Factory = Callable[["RunContext", str, Any], Injector]
_FACTORIES: dict[str, Factory] = {}


def register_injector(backend: str) -> Callable[[Factory], Factory]:
    def decorator(factory: Factory) -> Factory:
        _FACTORIES[backend] = factory
        return factory

    return decorator


def make_injector(ctx: RunContext, name: str, fault: Fault) -> Injector:
    load_backends()
    backend = fault.backend
    factory = _FACTORIES.get(backend)
    if factory is None:
        raise ValueError(f"no injector for fault type '{backend}'")
    return factory(ctx, name, fault.spec)


def load_backends() -> None:
    # Importing a backend module registers its factory and reverter.
    from llmdrill.drills import (  # noqa: F401
        cancel_storm,
        client,
        docker_backend,
        request_flood,
        toxiproxy,
    )


def blast_radius(fault: Fault) -> int:
    """How many things one fault touches, for safety.max_blast_radius."""
    spec = fault.spec
    for attr in ("streams", "concurrency"):
        value = getattr(spec, attr, None)
        if isinstance(value, int):
            return value
    return 1  # one proxy
