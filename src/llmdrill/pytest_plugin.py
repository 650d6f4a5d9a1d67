"""pytest integration: scenario files as test items, and a fixture to run drills.

- Files named `drill_*.yaml` under the test paths are collected; each check of the
  scenario becomes one test item (the scenario runs once, at its first item).
- With `--llmdrill-scenarios`, every scenario file (`kind: Scenario`) under the given
  paths is collected too, whatever its name: `pytest scenarios/ --llmdrill-scenarios` runs
  the shipped drills. `--llmdrill-tag T` (repeatable) keeps the scenarios tagged T.
- The `llmdrill_run` fixture runs a scenario file and returns its RunResult, for tests
  that assert on the result in Python.
Reports go to `--llmdrill-out` (default: reports/pytest).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmdrill.model.result import RunResult
from llmdrill.scenario.errors import ScenarioError


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmdrill")
    group.addoption("--llmdrill-out", default="reports/pytest",
                    help="folder for the reports of drills run by pytest")
    group.addoption("--llmdrill-scenarios", action="store_true", default=False,
                    help="collect every scenario file (kind: Scenario), not only drill_*.yaml")
    group.addoption("--llmdrill-tag", action="append", default=[], metavar="TAG",
                    help="collect only the scenarios with this tag (repeatable: any of them)")


def _run(path: Path, out: Path) -> RunResult:
    from llmdrill.harness.runner import RunOptions, run_scenario
    from llmdrill.scenario.loader import load_scenario

    return run_scenario(path, load_scenario(path), RunOptions(out_dir=out.resolve()))


@pytest.fixture
def llmdrill_run(request: pytest.FixtureRequest) -> Callable[[str | Path], RunResult]:
    out = Path(request.config.getoption("--llmdrill-out"))

    def runner(path: str | Path) -> RunResult:
        return _run(Path(path), out)

    return runner


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    if file_path.name.startswith("drill_") or (
            parent.config.getoption("--llmdrill-scenarios") and _is_scenario(file_path)):
        return DrillFile.from_parent(parent, path=file_path)
    return None


def _is_scenario(path: Path) -> bool:
    """A file that declares itself a scenario (other YAML beside it, such as a suite, a
    Compose file or a manifest, is not collected; a broken scenario is, to say why)."""
    import yaml

    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError):
        return False
    except yaml.YAMLError:
        return True  # meant as a scenario or not, say where it is broken
    return (isinstance(document, dict) and document.get("kind") == "Scenario"
            and str(document.get("apiVersion", "")).startswith("llmdrill/"))


class DrillFile(pytest.File):
    result: RunResult | None = None

    def collect(self) -> Iterator[pytest.Item]:
        from llmdrill.scenario.loader import load_scenario

        try:
            scenario = load_scenario(self.path)
        except ScenarioError as exc:  # the user's file:line:field, not a traceback
            raise self.CollectError("\n".join(str(i) for i in exc.issues)) from None
        tags = self.config.getoption("--llmdrill-tag")
        if tags and not set(tags) & set(scenario.metadata.tags):
            return
        enabled = [check.display_name(i) for i, check in enumerate(scenario.checks)
                   if check.enabled]  # opt-in checks left off are not part of the run
        # No enabled check: one item for the run, which is inconclusive, so never a pass.
        for name in enabled or [RUN_ITEM]:
            yield DrillCheck.from_parent(self, name=name)

    def run_once(self) -> RunResult:
        if self.result is None:
            self.result = _run(self.path, Path(self.config.getoption("--llmdrill-out")))
        return self.result


RUN_ITEM = "run"


class DrillFailed(Exception):
    pass


class DrillCheck(pytest.Item):
    def runtest(self) -> None:
        parent = self.parent
        assert isinstance(parent, DrillFile)
        result = parent.run_once()
        if self.name == RUN_ITEM and not result.checks:
            if result.status != "passed":
                raise DrillFailed(f"run {result.status}: {result.abort_reason}")
            return
        check = next((c for c in result.checks if c.name == self.name), None)
        if check is None or check.status != "passed":
            summary = check.summary if check else f"run {result.status}: {result.abort_reason}"
            raise DrillFailed(f"{self.name}: {summary}")
        # A passed check in a run with no verdict (a fault that missed, an abort) is not a
        # pass; beside another check that failed, it is.
        if result.status not in ("passed", "failed"):
            raise DrillFailed(f"{self.name}: passed, but the run is {result.status}: "
                              f"{result.abort_reason}")

    def repr_failure(self, excinfo: Any, style: Any = None) -> str:
        if isinstance(excinfo.value, DrillFailed):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"drill check {self.name}"
