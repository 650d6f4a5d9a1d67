"""Scenario files: loading with line numbers, typed models, JSON Schema."""

from llmdrill.scenario.errors import ScenarioError, ScenarioIssue
from llmdrill.scenario.loader import load_scenario, load_scenarios
from llmdrill.scenario.models import Scenario

__all__ = ["Scenario", "ScenarioError", "ScenarioIssue", "load_scenario", "load_scenarios"]
