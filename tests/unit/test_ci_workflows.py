"""The shipped game-day pipelines (GitHub Actions and GitLab CI) do what docs/operations.md
says: scheduled and on demand, the target from secrets and never printed, reports and JUnit
kept whatever happened, every non-zero exit code a failed job with its reason. (`make
lint` also runs actionlint, with shellcheck, on the GitHub workflow.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def load(path: str) -> dict[Any, Any]:
    document = yaml.safe_load((REPO / path).read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def github() -> dict[Any, Any]:
    return load(".github/workflows/gameday.yml")


@pytest.fixture(scope="module")
def gitlab() -> dict[Any, Any]:
    return load(".gitlab-ci.yml")


def steps(github: dict[Any, Any]) -> list[dict[str, Any]]:
    return list(github["jobs"]["gameday"]["steps"])


def step(github: dict[Any, Any], name: str) -> dict[str, Any]:
    return next(s for s in steps(github) if s.get("name") == name)


def test_github_runs_on_a_schedule_and_on_demand_with_tag_and_target(
        github: dict[Any, Any]) -> None:
    triggers = github.get("on", github.get(True))  # YAML 1.1 reads a bare `on` as true
    assert triggers["schedule"][0]["cron"]
    inputs = triggers["workflow_dispatch"]["inputs"]
    assert {"tag", "target"} <= set(inputs)
    job = github["jobs"]["gameday"]
    assert "inputs.target" in job["environment"]  # the target's secrets by environment
    assert "inputs.tag" in job["env"]["TAG"]


def test_github_takes_the_target_from_secrets_and_never_prints_them(
        github: dict[Any, Any]) -> None:
    run = step(github, "Run the drills")
    assert run["env"]["LLMDRILL_TARGET_URL"] == "${{ secrets.LLMDRILL_TARGET_URL }}"
    assert run["env"]["LLMDRILL_API_KEY"] == "${{ secrets.LLMDRILL_API_KEY }}"
    for each in steps(github):
        script = str(each.get("run", ""))
        assert "secrets." not in script, f"{each.get('name')}: a secret inlined in a script"
        assert not re.search(r"echo[^\n]*(API_KEY|TARGET_URL)", script), each.get("name")
    assert "--tag \"$TAG\"" in run["run"] and "--junit reports/junit.xml" in run["run"]


def test_github_keeps_reports_and_junit_whatever_happened(github: dict[Any, Any]) -> None:
    names = [s.get("name") for s in steps(github)]
    for name in ("Revert anything left behind", "Job summary", "Upload the reports",
                 "Publish JUnit", "Verdict"):
        assert step(github, name)["if"] == "always()", name
        assert names.index(name) > names.index("Run the drills")
    assert "GITHUB_STEP_SUMMARY" in step(github, "Job summary")["run"]
    assert "summary.md" in step(github, "Job summary")["run"]
    assert step(github, "Upload the reports")["uses"].startswith("actions/upload-artifact@")
    junit = step(github, "Publish JUnit")
    assert junit["with"]["report_paths"] == "reports/junit.xml"
    assert step(github, "Revert anything left behind")["run"] == "llmdrill cleanup"


def verdict_cases(script: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"^\s*(\d|\*)\)\s*(.*)$", script,
                                                        re.M)}


@pytest.mark.parametrize("code", ["1", "2", "3", "4", "*"])
def test_every_non_zero_exit_code_fails_the_job_with_a_reason(
        github: dict[Any, Any], gitlab: dict[Any, Any], code: str) -> None:
    github_cases = verdict_cases(step(github, "Verdict")["run"])
    assert "::error::" in github_cases[code] and "exit 1" in github_cases[code]
    gitlab_script = next(s for s in gitlab["gameday"]["script"] if "case" in s)
    gitlab_cases = verdict_cases(gitlab_script)
    assert "exit 1" in gitlab_cases[code]
    assert "exit" not in github_cases["0"] and "exit" not in gitlab_cases["0"]


def test_the_drills_exit_code_reaches_the_verdict(github: dict[Any, Any]) -> None:
    run = step(github, "Run the drills")
    assert "set +e" in run["run"] and 'exit_code=$?' in run["run"]
    assert step(github, "Verdict")["env"]["CODE"] == "${{ steps.drills.outputs.exit_code }}"
    assert run["id"] == "drills"


def test_github_game_days_never_overlap_and_are_opt_in(github: dict[Any, Any]) -> None:
    assert github["concurrency"]["cancel-in-progress"] is False
    job = github["jobs"]["gameday"]
    assert "vars.LLMDRILL_GAMEDAY" in job["if"]  # a fork's schedule does nothing
    assert job["timeout-minutes"] > 0
    assert github["permissions"]["contents"] == "read"


def test_gitlab_runs_from_a_schedule_and_keeps_reports(gitlab: dict[Any, Any]) -> None:
    job = gitlab["gameday"]
    sources = " ".join(rule["if"] for rule in job["rules"])
    assert '"schedule"' in sources
    assert job["resource_group"]  # never two at once
    assert job["artifacts"]["when"] == "always"
    assert job["artifacts"]["reports"]["junit"] == "reports/junit.xml"
    assert "reports/" in job["artifacts"]["paths"]
    assert any("llmdrill cleanup" in line for line in job["after_script"])
    run = next(s for s in job["script"] if s.lstrip().startswith("code=0"))
    assert '--tag "$GAMEDAY_TAG"' in run and "|| code=$?" in run
    assert not any("echo $LLMDRILL" in s for s in job["script"])
