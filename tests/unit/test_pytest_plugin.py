"""The pytest plugin: drill files become one item per enabled check, and an item passes only
when its check passed in a run that is a pass. The run itself is replaced by a canned
result (the plugin's mapping is what is under test; drills run for real elsewhere)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmdrill import pytest_plugin
from llmdrill.model.result import CheckResult, RunResult, ScenarioInfo, TargetInfo

pytestmark = pytest.mark.unit
pytest_plugins = ["pytester"]

DRILL = """\
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: drill}
target: {base_url: "http://127.0.0.1:9", model: tiny}
phases: [{name: p, duration: 5s}]
checks:
"""
ON = "  - {name: %s, phase: p, slo: {error_rate: {max: 0.1}}}\n"
OFF = "  - {name: %s, phase: p, enabled: false, slo: {error_rate: {max: 0.1}}}\n"


def result(status: str, **checks: str) -> RunResult:
    return RunResult(
        run_id="r", scenario=ScenarioInfo(name="drill", file="drill_x.yaml"),
        status=status, abort_reason=None if status == "passed" else f"why {status}",  # type: ignore[arg-type]
        started_at=0, ended_at=1, target=TargetInfo(base_url="http://127.0.0.1:9", model="t"),
        checks=[CheckResult(name=n, kind="slo", phase="p", status=s, summary=f"{n} {s}")  # type: ignore[arg-type]
                for n, s in checks.items()])


def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, checks: str,
        canned: RunResult) -> pytest.RunResult:
    pytester.makefile(".yaml", drill_x=DRILL + checks if checks else DRILL.replace(
        "checks:\n", ""))
    runs: list[Path] = []

    def fake_run(path: Path, out: Path) -> RunResult:
        runs.append(path)
        return canned

    monkeypatch.setattr(pytest_plugin, "_run", fake_run)
    outcome = pytester.runpytest_inprocess("-q", "-p", "no:locust", "-p", "no:hypothesispytest")
    assert len(runs) <= 1  # the scenario runs once, at its first item
    return outcome


def test_one_item_per_enabled_check_disabled_ones_not_collected(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    out = run(pytester, monkeypatch, ON % "a" + OFF % "disabled" + ON % "b",
              result("failed", a="passed", b="failed"))
    out.assert_outcomes(passed=1, failed=1)
    assert "disabled" not in out.stdout.str()
    out.stdout.fnmatch_lines(["*b: b failed*"])


def test_a_passed_check_in_an_inconclusive_run_fails(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    out = run(pytester, monkeypatch, ON % "a", result("inconclusive", a="passed"))
    out.assert_outcomes(failed=1)
    out.stdout.fnmatch_lines(["*passed, but the run is inconclusive: why inconclusive*"])


def test_an_inconclusive_check_fails(pytester: pytest.Pytester,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    run(pytester, monkeypatch, ON % "a", result("inconclusive", a="inconclusive")
        ).assert_outcomes(failed=1)


def test_no_enabled_check_is_one_failing_item_not_an_empty_pass(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    out = run(pytester, monkeypatch, OFF % "disabled", result("inconclusive"))
    out.assert_outcomes(failed=1)
    out.stdout.fnmatch_lines(["*run inconclusive: why inconclusive*"])


def test_all_passed_in_a_passed_run_passes(pytester: pytest.Pytester,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    run(pytester, monkeypatch, ON % "a" + ON % "b", result("passed", a="passed", b="passed")
        ).assert_outcomes(passed=2)


def test_a_check_missing_from_the_result_fails(pytester: pytest.Pytester,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    run(pytester, monkeypatch, ON % "a", result("aborted")).assert_outcomes(failed=1)


def test_an_invalid_drill_file_is_a_collection_error_naming_file_line_and_field(
        pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", drill_bad=DRILL.replace("tiny", "tiny, nope: 1") + ON % "a")
    out = pytester.runpytest_inprocess("-q", "-p", "no:locust", "-p", "no:hypothesispytest")
    out.stdout.fnmatch_lines(["*drill_bad.yaml:4:*target.nope*"])
    assert "Traceback" not in out.stdout.str()
    assert out.ret != 0


def _collect(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_inprocess("--collect-only", "-q", "-p", "no:locust",
                                        "-p", "no:hypothesispytest", *args)


def test_shipped_scenario_names_are_collected_only_with_the_flag(
        pytester: pytest.Pytester) -> None:
    """`pytest scenarios/ --llmdrill-scenarios` takes timeout-spike.yaml and the like; a
    suite, a Compose file or a manifest beside them is not a scenario."""
    pytester.makefile(".yaml", **{"timeout-spike": DRILL + ON % "a" + OFF % "dormant"})
    pytester.makefile(".yaml", gameday="kind: Suite\nscenarios: [timeout-spike.yaml]\n")
    pytester.makefile(".yml", compose="services: {vllm: {image: x}}\n")
    pytester.makefile(".yaml", manifest="apiVersion: v1\nkind: Namespace\n")
    assert "timeout-spike" not in _collect(pytester).stdout.str()
    out = _collect(pytester, "--llmdrill-scenarios")
    out.stdout.fnmatch_lines(["*timeout-spike.yaml::a*"])
    text = out.stdout.str()
    assert "::dormant" not in text  # enabled: false is not collected
    assert "gameday" not in text and "compose" not in text and "manifest" not in text
    assert "1 test collected" in text


def test_tags_select_the_scenarios(pytester: pytest.Pytester) -> None:
    tagged = DRILL.replace("metadata: {name: drill}",
                           "metadata: {name: drill, tags: [quickstart]}")
    pytester.makefile(".yaml", quick=tagged + ON % "q", slow=DRILL + ON % "s")
    text = _collect(pytester, "--llmdrill-scenarios", "--llmdrill-tag", "quickstart"
                    ).stdout.str()
    assert "quick.yaml::q" in text and "slow.yaml" not in text
    text = _collect(pytester, "--llmdrill-scenarios", "--llmdrill-tag", "nothing"
                    ).stdout.str()
    assert "quick.yaml" not in text and "slow.yaml" not in text


def test_a_broken_yaml_is_collected_with_the_flag_to_say_where(
        pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", broken="kind: Scenario\nmetadata: [unclosed\n")
    out = _collect(pytester, "--llmdrill-scenarios")
    assert "broken.yaml" in out.stdout.str()
    assert "Traceback" not in out.stdout.str()
    assert out.ret != 0
