"""Game-day suites: the file format (errors at file:line), the scenarios they name, and what
`llmdrill run` does with them: order, cool-down, stop on failure, the summary sent to the
suite's webhooks. Runs are canned here (the runner is tested on the real stack)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmdrill import cli
from llmdrill.model.result import CheckResult, RunResult, ScenarioInfo, TargetInfo
from llmdrill.scenario.errors import ScenarioError
from llmdrill.scenario.loader import scenario_files
from llmdrill.scenario.suite import is_suite_file, load_suite

pytestmark = pytest.mark.unit

SCENARIO = """\
apiVersion: llmdrill/v1
kind: Scenario
metadata: {{name: {name}, tags: [gameday]}}
target: {{base_url: "http://127.0.0.1:9", model: tiny}}
phases: [{{name: p, duration: 1s}}]
checks:
  - {{name: c, phase: p, slo: {{error_rate: {{max: 0.1}}}}}}
"""


def suite_text(body: str) -> str:
    return ("apiVersion: llmdrill/v1\nkind: Suite\n"
            "metadata: {name: weekly, owner: platform-oncall}\n" + body)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name in ("alpha", "beta", "gamma"):
        (tmp_path / f"{name}.yaml").write_text(SCENARIO.format(name=name))
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "delta.yaml").write_text(SCENARIO.format(name="delta"))
    return tmp_path


def test_a_suite_names_its_scenarios_in_order_globs_sorted(folder: Path) -> None:
    (folder / "day.yaml").write_text(suite_text(
        "scenarios: [gamma.yaml, 'more/*.yaml', alpha.yaml, gamma.yaml]\ncooldown: 2s\n"))
    loaded = load_suite(folder / "day.yaml")
    assert [p.stem for p in loaded.scenario_paths] == ["gamma", "delta", "alpha"]
    assert loaded.suite.cooldown == 2.0
    assert loaded.suite.stop_on_failure is False
    assert loaded.suite.metadata.owner == "platform-oncall"


@pytest.mark.parametrize(("body", "where", "says"), [
    ("scenarios: [alpha.yaml, nope.yaml]\n", ":4:25:", "no scenario file matches 'nope.yaml'"),
    ("scenarios: [alpha.yaml]\ncooldown: 30\n", ":5:", "cooldown"),
    ("scenarios: [alpha.yaml]\nstop_on_fail: true\n", ":5:", "stop_on_fail"),
    ("scenarios: []\n", ":4:", "scenarios"),
    ("scenarios: [alpha.yaml]\nnotify: [{webhook: 'ftp://x'}]\n", ":5:", "http"),
])
def test_a_broken_suite_is_refused_at_file_line_and_field(folder: Path, body: str, where: str,
                                                         says: str) -> None:
    (folder / "day.yaml").write_text(suite_text(body))
    with pytest.raises(ScenarioError) as caught:
        load_suite(folder / "day.yaml")
    text = "\n".join(str(i) for i in caught.value.issues)
    assert "day.yaml" + where in text and says in text, text


def test_folder_walks_skip_suites_so_nothing_runs_twice(folder: Path) -> None:
    (folder / "day.yaml").write_text(suite_text("scenarios: [alpha.yaml]\n"))
    assert is_suite_file(folder / "day.yaml")
    assert not is_suite_file(folder / "alpha.yaml")
    assert folder / "day.yaml" not in scenario_files([folder])
    assert folder / "alpha.yaml" in scenario_files([folder])


def test_the_shipped_suite_is_valid() -> None:
    shipped = Path(__file__).resolve().parents[2] / "scenarios" / "gameday.yaml"
    result = CliRunner().invoke(cli.app, ["validate", str(shipped)])
    assert result.exit_code == 0, result.output
    assert "suite local-gameday" in result.output


def test_validate_reports_a_broken_suite_and_its_broken_scenario(folder: Path) -> None:
    (folder / "alpha.yaml").write_text(SCENARIO.format(name="alpha").replace("tiny", "[x"))
    (folder / "day.yaml").write_text(suite_text("scenarios: [alpha.yaml, nope.yaml]\n"))
    result = CliRunner().invoke(cli.app, ["validate", str(folder / "day.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml" in result.output
    assert "Traceback" not in result.output


def test_plan_shows_a_suite_in_order_with_its_cooldowns_and_total(folder: Path) -> None:
    (folder / "day.yaml").write_text(suite_text(
        "scenarios: [gamma.yaml, alpha.yaml]\ncooldown: 5s\nstop_on_failure: true\n"))
    result = CliRunner().invoke(cli.app, ["plan", str(folder / "day.yaml")],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = result.output
    assert "suite weekly, owner platform-oncall: 2 scenario(s), cooldown 5s" in text
    assert "total about 7s" in text  # 1s + 5s + 1s
    assert text.index("1/2") < text.index("gamma") < text.index("cooldown 5s\n") \
        < text.index("2/2") < text.index("alpha")
    assert text.count("check c") == 2


def test_plan_refuses_a_folder_and_a_broken_suite_without_a_traceback(folder: Path) -> None:
    result = CliRunner().invoke(cli.app, ["plan", str(folder)])
    assert result.exit_code == 2 and "one scenario file or one suite" in result.output
    (folder / "day.yaml").write_text(suite_text("scenarios: [nope.yaml]\n"))
    result = CliRunner().invoke(cli.app, ["plan", str(folder / "day.yaml")])
    assert result.exit_code == 2 and "nope.yaml" in result.output
    assert "Traceback" not in result.output


# --- running a suite (canned runs) ---------------------------------------------------------


class Runs:
    def __init__(self, statuses: dict[str, str]) -> None:
        self.statuses = statuses
        self.order: list[str] = []

    def __call__(self, path: Path, scenario: Any, options: Any, progress: Any = None
                 ) -> RunResult:
        name = scenario.metadata.name
        self.order.append(name)
        status = self.statuses.get(name, "passed")
        return RunResult(
            run_id=f"r-{name}", scenario=ScenarioInfo(name=name, file=str(path)),
            status=status,  # type: ignore[arg-type]
            started_at=0, ended_at=3, target=TargetInfo(base_url="http://127.0.0.1:9",
                                                        model="tiny"),
            checks=[CheckResult(name="c", kind="slo", phase="p", status=status,  # type: ignore[arg-type]
                                summary="s")])


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook on 127.0.0.1 that records what it is sent."""
    got: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            got.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook?token=secret", got
    server.shutdown()


def run_suite(monkeypatch: pytest.MonkeyPatch, folder: Path, body: str, runs: Runs,
              sleeps: list[float] | None = None) -> Any:
    import time

    from llmdrill.harness import runner

    monkeypatch.setattr(runner, "run_scenario", runs)
    monkeypatch.setattr(time, "sleep", lambda s: (sleeps if sleeps is not None else []).append(s))
    (folder / "day.yaml").write_text(suite_text(body))
    return CliRunner().invoke(cli.app, ["run", str(folder / "day.yaml"), "--quiet",
                                        "--out", str(folder / "reports")])


def test_a_suite_runs_in_order_with_cool_downs_and_the_worst_verdict(
        monkeypatch: pytest.MonkeyPatch, folder: Path,
        receiver: tuple[str, list[dict[str, Any]]]) -> None:
    url, got = receiver
    runs = Runs({"beta": "failed"})
    sleeps: list[float] = []
    result = run_suite(monkeypatch, folder, "scenarios: [gamma.yaml, beta.yaml, alpha.yaml]\n"
                       f"cooldown: 5s\nnotify: [{{webhook: '{url}'}}]\n", runs, sleeps)
    assert runs.order == ["gamma", "beta", "alpha"]  # stop_on_failure is off by default
    assert sleeps.count(5.0) == 2  # between drills, not before the first nor after the last
    assert result.exit_code == 1, result.output
    (summary,) = got
    assert summary["suite"] == "weekly" and summary["owner"] == "platform-oncall"
    assert summary["verdict"] == "failed"
    assert [r["status"] for r in summary["runs"]] == ["passed", "failed", "passed"]
    assert summary["not_run"] == []
    assert "secret" not in result.output  # the webhook's token is never printed


def test_stop_on_failure_stops_after_the_first_drill_that_is_not_a_pass(
        monkeypatch: pytest.MonkeyPatch, folder: Path,
        receiver: tuple[str, list[dict[str, Any]]]) -> None:
    url, got = receiver
    runs = Runs({"beta": "inconclusive"})
    result = run_suite(monkeypatch, folder, "scenarios: [gamma.yaml, beta.yaml, alpha.yaml]\n"
                       f"stop_on_failure: true\nnotify: [{{webhook: '{url}'}}]\n", runs)
    assert runs.order == ["gamma", "beta"]
    assert result.exit_code == 4
    assert "stop_on_failure" in result.output
    assert got[0]["not_run"] == ["alpha"]
    assert got[0]["verdict"] == "inconclusive"


def test_a_notification_that_fails_warns_and_keeps_the_exit_code(
        monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    runs = Runs({})
    result = run_suite(monkeypatch, folder, "scenarios: [alpha.yaml]\n"
                       "notify: [{webhook: 'http://127.0.0.1:9/hook?token=secret'}]\n", runs)
    assert result.exit_code == 0, result.output
    assert "notification to 127.0.0.1 failed" in result.output
    assert "secret" not in result.output
