"""The shipped Prometheus and Alertmanager configuration, checked by their own tools:
promtool's config and rule checks and the rules' unit tests, amtool's config check.
Needs the real binaries (`make system-deps`); takes about a second."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.no_engine]

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "deploy" / "prometheus"


def _tool(name: str, *args: str) -> str:
    binary = shutil.which(name)
    assert binary, f"{name} is not installed (make system-deps installs it)"
    proc = subprocess.run([binary, *args], capture_output=True, text=True, timeout=60,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_prometheus_config_and_rules_are_valid() -> None:
    _tool("promtool", "check", "config", str(PROM / "prometheus.yml"))
    out = _tool("promtool", "check", "rules", *map(str, (PROM / "rules").glob("*.yml")))
    assert "SUCCESS: 11 rules found" in out


def test_every_alert_rule_passes_its_unit_tests() -> None:
    out = _tool("promtool", "test", "rules", *map(str, (PROM / "tests").glob("*.test.yml")))
    assert "SUCCESS" in out


def test_alertmanager_config_is_valid() -> None:
    _tool("amtool", "check-config", str(REPO / "deploy" / "alertmanager" / "alertmanager.yml"))


def test_the_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The rule tests have teeth: a threshold changed in the rules fails them."""
    rules = (PROM / "rules" / "llm-serving.rules.yml").read_text()
    broken = rules.replace("> 0.9", "> 0.99")  # KV-cache headroom threshold
    assert broken != rules
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "llm-serving.rules.yml").write_text(broken)
    (tmp_path / "tests").mkdir()
    test = tmp_path / "tests" / "llm-serving.test.yml"
    test.write_text((PROM / "tests" / "llm-serving.test.yml").read_text())
    proc = subprocess.run(["promtool", "test", "rules", str(test)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0
    assert "LlmKvCacheHeadroomLow" in proc.stdout + proc.stderr
