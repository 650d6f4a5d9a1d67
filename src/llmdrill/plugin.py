"""The extension contract: a new fault backend or check kind is one module and an entry point.

A package adds a fault backend by exposing a `FaultBackend` under the entry-point group
`llmdrill.faults`, and a check kind by exposing a `CheckKind` under `llmdrill.checks`; the
entry point's name is the YAML key (`faults.<name>.<key>: {...}`, `checks[].<key>: {...}`):

```toml
[project.entry-points."llmdrill.faults"]
marker_file = "llmdrill_example:MARKER_FILE"
[project.entry-points."llmdrill.checks"]
requests_at_least = "llmdrill_example:REQUESTS_AT_LEAST"
```

From then on the scenario format accepts the key (with file:line errors from its spec), the
JSON Schema (`llmdrill schema`) describes it, runs apply and revert the fault through the
journal (so SIGTERM, the watchdog and `llmdrill cleanup` in a fresh process revert it), and
the check is judged like the built-in ones. The built-in backends and kinds are listed
under the same groups in llmdrill's own pyproject.toml (as modules that register
themselves when imported).

One rule keeps discovery free of import cycles: the module an entry point names must not
import `llmdrill.scenario.models` at import time (the scenario model loads the specs while
it is being built). Spec models derive from `SpecModel` and may use the units in
`llmdrill.scenario.units`; the injector and evaluator may import anything, lazily.

The fault protocol, in the order a run calls it (see `llmdrill.faults.base.Injector`):
`preflight()` (reachability, changes nothing), `prepare()` (the JSON revert action, written
to the journal before anything changes), `apply()`, `stop()` (live activity), then the
revert action is handed to `revert(action)` (idempotent, in this process or a fresh one),
and after the run `effect(evidence)` says whether the fault reached the traffic or the
target (a fault that left no trace makes the run inconclusive).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from llmdrill.errors import LlmdrillError
from llmdrill.scenario.fields import Strict

if TYPE_CHECKING:
    from llmdrill.model.context import RunContext
    from llmdrill.model.records import Evidence
    from llmdrill.model.result import CheckResult, Window

FAULTS_GROUP = "llmdrill.faults"
CHECKS_GROUP = "llmdrill.checks"
# The distribution whose entry points are the built-in kinds (their specs are part of the
# scenario model itself).
BUILTIN_DIST = "llmdrill"
# "off": load no plugin from other distributions (the generated reference shows only the
# built-in kinds, whatever is installed).
PLUGINS_ENV = "LLMDRILL_PLUGINS"

Location = tuple[str | int, ...]
Problem = tuple[Location, str]
"""A problem found in a scenario: where (a path of keys from the root) and what."""


SpecModel = Strict
"""Base of a spec (built-in or a plugin's): unknown keys are errors, specs are immutable."""


Marker = tuple[float, str]
"""A moment to draw on the report's charts: seconds from the run's start, and a label."""


class RunSetup(Protocol):
    """Run-level preparation a fault backend needs before any fault of the run (e.g. a
    Toxiproxy proxy the scenario asks to create). Journaled and reverted like a fault."""

    name: str

    def exists(self) -> bool: ...
    def describe(self) -> str: ...
    def prepare(self) -> Mapping[str, Any]: ...
    def apply(self) -> None: ...


@dataclass(frozen=True)
class FaultBackend:
    """A fault backend: the YAML key's spec and how to inject and revert it.

    `injector(ctx, fault_name, spec)` returns an object with preflight, prepare, apply,
    describe, stop and effect (the `Injector` protocol); `revert(action)` undoes a prepared
    action, `action["backend"]` being this backend's key. `blast_radius(spec)` is how many
    things the fault touches (for safety.max_blast_radius); `references(spec, scenario,
    location)` returns problems with the spec's references to other parts of the scenario.

    Optional, for backends that need them: `run_setups(scenario)` (what the run prepares
    once before its faults, journaled and reverted like them), `markers(evidence, t0)`
    (moments drawn on the report's charts), `label(spec)` (the fault's kind in results,
    default the key) and `params(spec)` (its parameters in results, default the spec).
    `builtin` is set by discovery: True for llmdrill's own entry points.
    """

    spec: Any  # a pydantic model, or an annotated union of them (Toxiproxy's toxics)
    injector: Callable[[RunContext, str, Any], Any]
    revert: Callable[[dict[str, Any]], None]
    description: str = ""
    blast_radius: Callable[[Any], int] | None = None
    references: Callable[[Any, Any, Location], list[Problem]] | None = None
    run_setups: Callable[[Any], list[RunSetup]] | None = None
    markers: Callable[[Evidence, float], list[Marker]] | None = None
    label: Callable[[Any], str] | None = None
    params: Callable[[Any], dict[str, Any]] | None = None
    builtin: bool = False


@dataclass(frozen=True)
class CheckKind:
    """A check kind: the YAML key's spec and how to judge it.

    `evaluate(name, phase, spec, evidence, window)` returns a CheckResult (see
    `llmdrill.checks.base.make_result`); it must say `inconclusive` when the evidence is
    below what it needs. `probe(ctx, check_name, spec, stop)`, if given, runs in a thread
    for the check's phase and records evidence events. `queries(scenario)`, if given, names
    the PromQL range queries the run reads from Prometheus after the run for this kind (as
    `promql:<name>` series). `runbook` is plain text for the reader of a report, a few
    sentences: what a failure of this kind usually means and where to look (which metric,
    log, gateway or engine setting); the report shows it under every failed, errored or
    inconclusive check of the kind. `builtin` is set by discovery.
    """

    spec: type[BaseModel]
    evaluate: Callable[[str, str, Any, Evidence, Window], CheckResult]
    description: str = ""
    probe: Callable[[RunContext, str, Any, Any], None] | None = None
    references: Callable[[Any, Any, Location], list[Problem]] | None = None
    queries: Callable[[Any], dict[str, str]] | None = None
    runbook: str = ""
    builtin: bool = False


class PluginError(LlmdrillError):
    """An installed plugin cannot be loaded or is not a FaultBackend / CheckKind."""


def _external(ep: EntryPoint) -> bool:
    dist = getattr(ep, "dist", None)
    return dist is None or dist.name != BUILTIN_DIST


def plugin_entry_points(group: str, builtin: bool = True) -> list[EntryPoint]:
    """The entry points of a group: llmdrill's own in their declared order, then external
    ones sorted by name, unless switched off with LLMDRILL_PLUGINS=off."""
    external_on = os.environ.get(PLUGINS_ENV, "on").lower() not in ("off", "0", "false")
    found = list(entry_points(group=group))
    own = [ep for ep in found if builtin and not _external(ep)]
    other = sorted((ep for ep in found if external_on and _external(ep)),
                   key=lambda ep: ep.name)
    return own + other


def load_plugin(ep: EntryPoint) -> FaultBackend | CheckKind:
    """Load one entry point: a FaultBackend or CheckKind object, named."""
    try:
        loaded = ep.load()
    except Exception as exc:  # a broken plugin is named, not a traceback
        raise PluginError(f"plugin '{ep.name}' ({ep.value}) cannot be loaded: "
                          f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(loaded, FaultBackend | CheckKind):
        raise PluginError(f"plugin '{ep.name}' ({ep.value}) is a {type(loaded).__name__}, "
                          "not a FaultBackend or CheckKind")
    return replace(loaded, builtin=not _external(ep))


def _registered(group: str, kind: type[FaultBackend] | type[CheckKind]
                ) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for ep in plugin_entry_points(group):
        if ep.name in found:
            raise PluginError(f"plugin '{ep.name}' ({ep.value}) takes a key llmdrill "
                              "already has")
        loaded = load_plugin(ep)
        if not isinstance(loaded, kind):
            raise PluginError(f"plugin '{ep.name}' ({ep.value}) is listed under {group} "
                              f"but is a {type(loaded).__name__}")
        found[ep.name] = loaded
    if not any(v.builtin for v in found.values()):
        raise PluginError(f"no built-in {group} entry points: llmdrill's package metadata "
                          "is missing; install it (pip install -e .) rather than running "
                          "from a bare source tree")
    return found


@functools.cache
def fault_backends() -> dict[str, FaultBackend]:
    """Every fault backend by YAML key: the built-in ones, then installed plugins'."""
    return _registered(FAULTS_GROUP, FaultBackend)


@functools.cache
def check_kinds() -> dict[str, CheckKind]:
    """Every check kind by YAML key: the built-in ones, then installed plugins'."""
    return _registered(CHECKS_GROUP, CheckKind)
