"""What the kinds' `references` share: the problems a spec's references to the rest of the
scenario (phases, faults, the target's metrics URL) can have, worded one way everywhere.

Duck-typed on the scenario (its `phases`, `faults`, `target`), so the fault and check
modules can use it without importing the scenario model their specs are part of.
"""

from __future__ import annotations

from typing import Any

from llmdrill.plugin import Location, Problem


def unknown_phase(scenario: Any, phase: str | None, location: Location) -> list[Problem]:
    names = [p.name for p in scenario.phases]
    if phase is None or phase in names:
        return []
    return [(location, f"unknown phase '{phase}' (phases: {', '.join(names)})")]


def unknown_fault(scenario: Any, fault: str | None, location: Location) -> list[Problem]:
    if not fault or fault in scenario.faults:
        return []
    return [(location, f"unknown fault '{fault}' (defined: {', '.join(sorted(scenario.faults))})")]


def needs_metrics_url(scenario: Any, kind: str, location: Location) -> list[Problem]:
    if scenario.target.metrics_url:
        return []
    return [(location, f"a {kind} check needs target.metrics_url")]


def unknown_engine(scenario: Any, engine: str, location: Location) -> list[Problem]:
    """A check's replica must be one of target.engines."""
    engines = scenario.target.engines
    if engine in engines:
        return []
    known = ", ".join(sorted(engines)) or "none is defined"
    return [(location, f"unknown engine '{engine}' (target.engines: {known})")]
