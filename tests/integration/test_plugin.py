"""An out-of-tree plugin (tests/plugins/llmdrill-example) adds a fault backend and a check
kind with no change to llmdrill: installed here into a folder of its own on PYTHONPATH (so
only these runs see it), it validates with file:line errors, shows in the schema, runs in a
drill against the real vLLM, and is reverted on SIGTERM and by `llmdrill cleanup` after a
kill -9 of the harness and its watchdog."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, Stack, llmdrill

pytestmark = pytest.mark.integration

PLUGIN = REPO / "tests" / "plugins" / "llmdrill-example"

SCENARIO = """\
apiVersion: llmdrill/v1
kind: Scenario
metadata: {{name: plugin-drill}}
target:
  base_url: ${{LLMDRILL_TARGET_URL}}
  model: tiny
  metrics_url: ${{LLMDRILL_METRICS_URL}}
faults:
  flag: {{marker_file: {{path: "{path}"}}}}
load:
  users: 2
  spawn_rate: 2
  requests: [{{api: completions, stream: true, prompt_tokens: 16, max_tokens: 8}}]
phases:
  - {{name: before, duration: 2s}}
  - {{name: flagged, duration: "${{FLAGGED:-4s}}", faults: [flag]}}
checks:
  - {{name: traffic-under-flag, phase: flagged, requests_at_least: {{min: 5}}}}
  - {{name: impossible, phase: before, enabled: "${{IMPOSSIBLE:-false}}",
     requests_at_least: {{min: 1000000}}}}
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("plugin-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "--no-deps", "--target", str(target), str(PLUGIN)], check=True,
                   timeout=300)
    return target


def _env(stack: Stack, site: Path, **extra: str) -> dict[str, str]:
    return stack.env(PYTHONPATH=str(site), **extra)


def _scenario(tmp_path: Path, flag: Path) -> Path:
    path = tmp_path / "drill.yaml"
    path.write_text(SCENARIO.format(path=flag))
    return path


def test_plugin_kinds_validate_with_file_line_errors_and_show_in_the_schema(
        stack: Stack, site: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SCENARIO.format(path="relative/flag"))
    proc = llmdrill("validate", str(bad), env=_env(stack, site))
    assert proc.returncode == 2
    assert f"{bad}:9:24: faults.flag.marker_file.path: must be an absolute path" in proc.stderr
    typo = tmp_path / "typo.yaml"
    typo.write_text(SCENARIO.format(path="/tmp/x").replace("min: 5", "min: 5, mni: 1"))
    proc = llmdrill("validate", str(typo), env=_env(stack, site))
    assert proc.returncode == 2
    assert f"{typo}:18:76: checks.0.requests_at_least.mni: unknown key 'mni'" in proc.stderr
    schema = llmdrill("schema", env=_env(stack, site))
    assert '"marker_file"' in schema.stdout and '"requests_at_least"' in schema.stdout
    # Without the plugin installed, the same file names an unknown fault type.
    proc = llmdrill("validate", str(_scenario(tmp_path, tmp_path / "f")), env=stack.env())
    assert proc.returncode == 2 and "unknown fault type 'marker_file'" in proc.stderr


def test_a_drill_with_the_plugin_runs_and_reverts(stack: Stack, site: Path,
                                                  tmp_path: Path) -> None:
    flag = tmp_path / "maintenance.flag"
    proc = llmdrill("run", str(_scenario(tmp_path, flag)), "--out", str(tmp_path / "out"),
                    env=_env(stack, site))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not flag.exists()
    run = next(p for p in (tmp_path / "out").iterdir() if p.is_dir())
    result = json.loads((run / "result.json").read_text())
    fault = result["faults"][0]
    assert fault["backend"] == "marker_file" and fault["effect"] == "seen"
    assert fault["applied_at"] and fault["reverted_at"]
    check = result["checks"][0]
    assert check["kind"] == "requests_at_least" and check["status"] == "passed"


def test_the_plugin_check_can_fail(stack: Stack, site: Path, tmp_path: Path) -> None:
    proc = llmdrill("run", str(_scenario(tmp_path, tmp_path / "f.flag")), "--out",
                    str(tmp_path / "out"), env=_env(stack, site, IMPOSSIBLE="true"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "impossible" in proc.stderr and "need at least 1000000" in proc.stderr


def _start(stack: Stack, site: Path, tmp_path: Path, flag: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "llmdrill.cli", "run", str(_scenario(tmp_path, flag)),
         "--quiet", "--out", str(tmp_path / "out")],
        env=_env(stack, site, FLAGGED="60s"), cwd=REPO, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_for(flag: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not flag.exists():
        assert time.monotonic() < deadline, f"{flag} never appeared: the fault never applied"
        time.sleep(0.2)


def test_sigterm_reverts_the_plugin_fault(stack: Stack, site: Path, tmp_path: Path) -> None:
    flag = tmp_path / "term.flag"
    proc = _start(stack, site, tmp_path, flag)
    _wait_for(flag)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 3
    assert not flag.exists()


def test_cleanup_reverts_the_plugin_fault_after_kill_9(stack: Stack, site: Path,
                                                       tmp_path: Path) -> None:
    flag = tmp_path / "kill.flag"
    proc = _start(stack, site, tmp_path, flag)
    _wait_for(flag)
    watchdogs = subprocess.run(["pgrep", "-f", f"llmdrill.harness.watchdog {tmp_path}"],
                               capture_output=True, text=True).stdout.split()
    for pid in watchdogs:  # the whole machine's processes gone: only the journal remains
        os.kill(int(pid), signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert flag.exists()  # nothing reverted it yet
    done = llmdrill("cleanup", env=_env(stack, site))  # a fresh process finds the reverter
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reverted create" in done.stderr
    assert not flag.exists()
