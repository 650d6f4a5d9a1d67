"""Which injector handles which fault type. A new backend registers a factory here and a
reverter in drills.base; the runner needs no change."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from llmdrill.faults.base import Injector, register_reverter
from llmdrill.plugin import FAULTS_GROUP, FaultBackend, load_plugin, plugin_entry_points

if TYPE_CHECKING:
    from llmdrill.model.context import RunContext
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


_LOADED = False


def load_backends() -> None:
    """Every fault backend listed under the entry points `llmdrill.faults`: the built-in
    modules (importing one registers its factory and reverter) and plugins' FaultBackend
    objects, so a fresh process (`llmdrill cleanup`) can revert any of them."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True  # first: importing a backend module calls back into the registry
    builtin = False
    for ep in plugin_entry_points(FAULTS_GROUP):
        loaded = load_plugin(ep)
        if isinstance(loaded, FaultBackend):
            _FACTORIES[ep.name] = loaded.injector
            register_reverter(ep.name)(loaded.revert)
        else:
            builtin = True
    if not builtin:  # run from a source tree without installed metadata
        from llmdrill.faults import (  # noqa: F401
            cancel_storm,
            client,
            docker_backend,
            request_flood,
            toxiproxy,
        )


def blast_radius(fault: Fault) -> int:
    """How many things one fault touches, for safety.max_blast_radius."""
    from llmdrill.scenario.models import FAULT_PLUGINS

    plugin = FAULT_PLUGINS.get(fault.backend)
    if plugin is not None:
        return plugin.blast_radius(fault.spec) if plugin.blast_radius else 1
    spec = fault.spec
    for attr in ("streams", "concurrency"):
        value = getattr(spec, attr, None)
        if isinstance(value, int):
            return value
    return 1  # one proxy
