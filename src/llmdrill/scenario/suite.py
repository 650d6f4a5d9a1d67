"""Game-day suites: which scenarios run, in which order, what happens after a failure, the
pause between drills, who owns the day and where its summary goes.

    apiVersion: llmdrill/v1
    kind: Suite
    metadata: {name: weekly-gameday, owner: platform-oncall}
    scenarios: [timeout-spike.yaml, caps.yaml, kubernetes/*.yaml]
    stop_on_failure: true
    cooldown: 30s
    notify:
      - webhook: ${GAMEDAY_WEBHOOK_URL}

A suite is run only when named (`llmdrill run gameday.yaml`); a folder walk skips it, so
`llmdrill run scenarios/` never runs its scenarios twice.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator

from llmdrill.scenario.errors import ScenarioError, ScenarioIssue
from llmdrill.scenario.fields import Strict
from llmdrill.scenario.units import Duration


class SuiteMetadata(Strict):
    name: str = Field(description="The game day's name, shown in the summary and the index.")
    owner: str = Field(default="", description="Who owns it (a team, an on-call rotation).")
    description: str = Field(default="", description="What the day is for, in a sentence.")


class Notify(Strict):
    webhook: str = Field(description="URL that receives the suite's summary as a JSON POST "
                         "(counts, verdicts and report paths; no prompts, no outputs).")

    @field_validator("webhook")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http(s) URL, got '{value}'")
        return value


class Suite(Strict):
    apiVersion: Literal["llmdrill/v1"] = Field(description="Always llmdrill/v1.")
    kind: Literal["Suite"] = Field(description="Always Suite.")
    metadata: SuiteMetadata
    scenarios: list[str] = Field(
        min_length=1, description="Scenario files or globs, relative to the suite file, run "
        "in this order (a glob's matches sorted).")
    stop_on_failure: bool = Field(
        default=False, description="Stop after the first drill that is not a pass (the rest "
        "are reported as not run).")
    cooldown: Duration = Field(
        default=0.0, description="Pause between two drills, so one's aftermath (a replica "
        "still warming up) is not the next one's baseline.")
    notify: list[Notify] = Field(default_factory=list,
                                 description="Where the suite's summary is sent at the end.")


@dataclass(frozen=True)
class LoadedSuite:
    path: Path
    suite: Suite
    scenario_paths: list[Path]


def is_suite_file(path: Path) -> bool:
    """A YAML file that declares `kind: Suite` (read cheaply; a broken file is not one)."""
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return False
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(document, dict) and document.get("kind") == "Suite"


def load_suite(path: str | Path, env: Mapping[str, str] | None = None) -> LoadedSuite:
    """Parse and validate a suite; its scenario entries must each name at least one file.
    Raises ScenarioError with every problem at file:line:col."""
    from llmdrill.scenario.loader import _mark_for, read_document, validate_document

    env = os.environ if env is None else env
    data, marks, shown = read_document(path, env)
    if not isinstance(data, dict):
        raise ScenarioError([ScenarioIssue(shown, 1, 1, "", "a suite is a mapping "
                                           "(apiVersion, kind, metadata, scenarios, ...)")])
    suite = validate_document(Suite, data, marks, shown)
    folder = Path(path).parent
    found: list[Path] = []
    issues = []
    for i, entry in enumerate(suite.scenarios):
        matches = _expand(folder, entry)
        if not matches:
            line, col = _mark_for(("scenarios", i), marks)
            issues.append(ScenarioIssue(shown, line, col, f"scenarios.{i}",
                                        f"no scenario file matches '{entry}' (relative to "
                                        f"{folder})"))
        found += [m for m in matches if m not in found]
    if issues:
        raise ScenarioError(issues)
    return LoadedSuite(Path(path), suite, found)


def _expand(folder: Path, entry: str) -> list[Path]:
    pattern = entry if Path(entry).is_absolute() else str(folder / entry)
    if glob.has_magic(pattern):
        return sorted(Path(p) for p in glob.glob(pattern, recursive=True)
                      if Path(p).is_file() and not is_suite_file(Path(p)))
    return [Path(pattern)] if Path(pattern).is_file() else []


def suite_summary(loaded: LoadedSuite, runs: list[dict[str, Any]],
                  not_run: list[str], verdict: str) -> dict[str, Any]:
    """What the notification carries: names, verdicts, timings and report paths only."""
    meta = loaded.suite.metadata
    return {"suite": meta.name, "owner": meta.owner, "file": str(loaded.path),
            "verdict": verdict, "runs": runs, "not_run": not_run}
