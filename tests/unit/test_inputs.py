"""Bad input at load time: URLs that cannot be used, loads one process cannot drive, and
paths anchored once where they enter."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmdrill.cli import app
from llmdrill.harness.runner import helper_died, log_tail
from llmdrill.scenario.errors import ScenarioError
from llmdrill.scenario.fields import http_url
from llmdrill.scenario.loader import load_scenario
from llmdrill.scenario.models import MAX_USERS_PER_PROCESS

pytestmark = pytest.mark.unit

BASE = """\
apiVersion: llmdrill/v1
kind: Scenario
metadata:
  name: drill
target:
  base_url: {url}
  model: tiny
load:
  users: {users}
phases:
  - {{name: baseline, duration: 10s}}
checks:
  - {{phase: baseline, slo: {{error_rate: {{max: 0.01}}}}}}
"""


def _write(tmp_path: Path, url: str = "http://127.0.0.1:8000", users: int = 2) -> Path:
    path = tmp_path / "drill.yaml"
    path.write_text(BASE.format(url=f'"{url}"', users=users))
    return path


@pytest.mark.parametrize("url", ["http://[::1", "http://a b", "http://", "http://host:port",
                                 "http://host:0", "http://h\\tost", "ftp://host"])
def test_unusable_urls_are_refused_with_file_line_and_field(tmp_path: Path, url: str) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario(_write(tmp_path, url=url))
    text = str(info.value.issues[0])
    assert text.startswith(f"{tmp_path / 'drill.yaml'}:6:")
    assert "target.base_url" in text


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "https://api.example.com/v1",
                                 "http://[::1]:8000", "http://localhost"])
def test_usable_urls_pass(url: str) -> None:
    assert http_url(url) == url


@pytest.mark.parametrize("url", ["http://[::1", "http://a b"])
def test_validate_and_plan_exit_2_on_an_unusable_url(tmp_path: Path, url: str) -> None:
    path = _write(tmp_path, url=url)
    for command in (["validate", str(path)], ["plan", str(path)]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2, result.output
        assert "target.base_url" in result.output
        assert "Traceback" not in result.output


def test_a_load_beyond_one_process_is_refused_saying_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario(_write(tmp_path, users=1_000_000_000))
    text = str(info.value.issues[0])
    assert "load.users" in text and str(MAX_USERS_PER_PROCESS) in text
    assert "raise `load.processes`" in text
    load_scenario(_write(tmp_path, users=MAX_USERS_PER_PROCESS))  # the limit itself is fine


def test_relative_key_file_is_anchored_at_the_scenario_folder(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    path = _write(tmp_path)
    path.write_text(path.read_text().replace("  model: tiny\n",
                                             "  model: tiny\n  api_key_file: secrets/key\n"))
    monkeypatch.chdir("/")
    scenario = load_scenario(path)
    assert scenario.target.api_key_file == str(tmp_path / "secrets" / "key")
    absolute = "/etc/llm/key"
    path.write_text(path.read_text().replace("secrets/key", absolute))
    assert load_scenario(path).target.api_key_file == absolute


def test_log_tail_gives_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "locust.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)) + "FileNotFoundError: key\n")
    tail = log_tail(log, lines=3)
    assert tail.splitlines() == ["line 98", "line 99", "FileNotFoundError: key"]
    assert "cannot read" in log_tail(tmp_path / "missing.log")
    (tmp_path / "empty.log").write_text("")
    assert log_tail(tmp_path / "empty.log") == "(the log is empty)"


def test_helper_died_names_the_helper_its_log_and_what_to_do(tmp_path: Path) -> None:
    log = tmp_path / "watchdog.log"
    log.write_text("Traceback ...\nOSError: journal gone\n")
    text = helper_died("the fault watchdog", 1, log, "run `llmdrill cleanup`")
    assert "the fault watchdog exited early (exit code 1)" in text
    assert "OSError: journal gone" in text
    assert "What to do: run `llmdrill cleanup`" in text and str(log) in text
