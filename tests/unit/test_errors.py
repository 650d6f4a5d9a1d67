"""One error tree: every error a user can meet is an LlmdrillError with an exit code, and
the command line turns one into a message, not a traceback."""

from __future__ import annotations

import pytest

from llmdrill import cli
from llmdrill.errors import LlmdrillError
from llmdrill.faults.base import EnvironmentProblem
from llmdrill.harness.secrets import SecretMissing
from llmdrill.monitoring.prometheus import MonitoringError
from llmdrill.plugin import PluginError
from llmdrill.scenario.errors import ScenarioError
from llmdrill.stack import StackError
from llmdrill.stack.docker_stack import DockerStackError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("error", [ScenarioError, EnvironmentProblem, SecretMissing,
                                   PluginError, StackError, DockerStackError,
                                   MonitoringError])
def test_user_facing_errors_share_one_base_and_exit_2(error: type[Exception]) -> None:
    assert issubclass(error, LlmdrillError)
    assert error.exit_code == 2  # type: ignore[attr-defined]


def test_main_prints_an_llmdrill_error_without_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def broken() -> None:
        raise PluginError("plugin 'x' (y:Z) cannot be loaded: ImportError: nope")

    monkeypatch.setattr(cli, "app", broken)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    text = capsys.readouterr().err
    assert "PluginError: plugin 'x' (y:Z) cannot be loaded" in text
    assert "Traceback" not in text


def test_alert_rules_command_prints_the_rendered_rules() -> None:
    from typer.testing import CliRunner

    from llmdrill.monitoring.rules import render

    result = CliRunner().invoke(cli.app, ["alert-rules", "--set", "kv_cache_usage=0.8"])
    assert result.exit_code == 0
    assert result.output == render({"kv_cache_usage": "0.8"})
    bad = CliRunner().invoke(cli.app, ["alert-rules", "--set", "nope=1"])
    assert bad.exit_code == 2 and "unknown parameter 'nope'" in bad.output


def test_alert_rules_as_a_prometheus_rule_object() -> None:
    import yaml
    from typer.testing import CliRunner

    from llmdrill.monitoring.rules import render

    result = CliRunner().invoke(cli.app, [
        "alert-rules", "--format", "prometheus-rule", "--namespace", "obs",
        "--label", "release=kps", "--set", "kv_cache_usage=0.8"])
    assert result.exit_code == 0, result.output
    rule = yaml.safe_load(result.output)
    assert rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["namespace"] == "obs"
    assert rule["metadata"]["labels"] == {"release": "kps"}
    # The same groups, thresholds changed the same way, as the plain rule file.
    assert rule["spec"]["groups"] == yaml.safe_load(render({"kv_cache_usage": "0.8"}))["groups"]
    assert "kv_cache_usage=0.8" in result.output.splitlines()[1]
    for bad in (["--format", "helm"], ["--format", "prometheus-rule", "--label", "x"]):
        refused = CliRunner().invoke(cli.app, ["alert-rules", *bad])
        assert refused.exit_code == 2 and "Traceback" not in refused.output
