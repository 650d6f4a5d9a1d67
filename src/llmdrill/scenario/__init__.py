"""Scenario files: loading with line numbers, typed models, JSON Schema.

The names below are imported on first use, so that `llmdrill.scenario.fields` and
`llmdrill.scenario.units` (what fault and check specs are built from) load without the
scenario model, which itself assembles those specs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmdrill.scenario.errors import ScenarioError, ScenarioIssue
    from llmdrill.scenario.loader import load_scenario, load_scenarios
    from llmdrill.scenario.models import Scenario

__all__ = ["Scenario", "ScenarioError", "ScenarioIssue", "load_scenario", "load_scenarios"]

_HOMES = {"Scenario": "models", "ScenarioError": "errors", "ScenarioIssue": "errors",
          "load_scenario": "loader", "load_scenarios": "loader"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'llmdrill.scenario' has no attribute '{name}'")
    import importlib

    return getattr(importlib.import_module(f"llmdrill.scenario.{home}"), name)
