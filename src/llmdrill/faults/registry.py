"""Which backend handles a fault: the `FaultBackend` registered under its YAML key (entry
points `llmdrill.faults`). The runner and `llmdrill cleanup` go through here only."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmdrill.faults.base import Injector
from llmdrill.plugin import FaultBackend, fault_backends

if TYPE_CHECKING:
    from llmdrill.model.context import RunContext
    from llmdrill.scenario.models import Fault


def backend_of(key: str) -> FaultBackend:
    backend = fault_backends().get(key)
    if backend is None:
        raise ValueError(f"no fault backend '{key}' (installed: "
                         f"{', '.join(fault_backends())}); is its plugin installed?")
    return backend


def make_injector(ctx: RunContext, name: str, fault: Fault) -> Injector:
    injector: Injector = backend_of(fault.backend).injector(ctx, name, fault.spec)
    return injector


def blast_radius(fault: Fault) -> int:
    """How many things one fault touches, for safety.max_blast_radius (1 unless its
    backend says)."""
    measure = backend_of(fault.backend).blast_radius
    return measure(fault.spec) if measure is not None else 1
