"""Paths given on the command line work relative or absolute, from any working directory.

The first `make demo` on a fresh clone broke because `--out reports` (relative) reached the
Locust process, which runs in the run folder. These runs use a short drill on the real vLLM.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, Stack, llmdrill

pytestmark = pytest.mark.integration

SHORT = """\
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: short}
target:
  base_url: ${LLMDRILL_TARGET_URL}
  model: tiny
  metrics_url: ${LLMDRILL_METRICS_URL}
  api_key_file: key.txt
load:
  users: 2
  spawn_rate: 2
  requests: [{api: chat, stream: true, prompt_tokens: 16, max_tokens: 8}]
phases:
  - {name: steady, duration: 6s}
checks:
  - {phase: steady, slo: {error_rate: {max: 0.01}, min_requests: 5}}
"""

REPORTS = ("report.html", "result.json", "junit.xml", "summary.md")


@pytest.fixture
def scenario_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "drills"
    folder.mkdir()
    (folder / "short.yaml").write_text(SHORT)
    # vLLM without --api-key ignores the header; the key file must still be found from
    # the Locust process, whose working directory is the run folder.
    (folder / "key.txt").write_text("sk-test-paths\n")
    return folder


def _run_folder(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def _passed(run: Path) -> None:
    for name in REPORTS:
        assert (run / name).is_file(), name
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "passed", result["abort_reason"]
    assert result["stats"]["steady"]["requests"] >= 5


def test_relative_out_from_the_repository_root(stack: Stack, scenario_dir: Path,
                                               tmp_path: Path) -> None:
    rel = Path("reports") / f"test-paths-{tmp_path.name}"
    try:
        proc = llmdrill("run", str(scenario_dir / "short.yaml"), "--out", str(rel),
                        "--junit", str(rel / "suite.xml"), env=stack.env(), cwd=REPO)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        _passed(_run_folder(REPO / rel))
        assert (REPO / rel / "suite.xml").is_file()
    finally:
        shutil.rmtree(REPO / rel, ignore_errors=True)


def test_absolute_scenario_relative_out_from_another_folder(stack: Stack, scenario_dir: Path,
                                                            tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = llmdrill("run", str(scenario_dir / "short.yaml"), "--out", "rel",
                    env=stack.env(PYTHONPATH=str(REPO / "src")), cwd=elsewhere)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _passed(_run_folder(elsewhere / "rel"))


def test_scenario_path_relative_to_another_folder(stack: Stack, scenario_dir: Path,
                                                  tmp_path: Path) -> None:
    # From a sibling folder: ../drills/short.yaml, and an output folder given with "..".
    sibling = tmp_path / "sibling"
    sibling.mkdir()
    proc = llmdrill("run", "../drills/short.yaml", "--out", "../out", env=stack.env(),
                    cwd=sibling)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = _run_folder(tmp_path / "out")
    _passed(run)
    # The scenario's own relative path (api_key_file) was taken from its folder.
    config = json.loads((run / "load-config.json").read_text())
    assert config["api_key_file"] == str(scenario_dir / "key.txt")


def test_a_load_generator_that_dies_shows_its_last_lines(stack: Stack, scenario_dir: Path,
                                                         tmp_path: Path) -> None:
    # A key file that disappears after loading: the load user cannot start.
    text = SHORT.replace("api_key_file: key.txt", "api_key_file: gone.txt")
    (scenario_dir / "dies.yaml").write_text(text)
    (scenario_dir / "gone.txt").write_text("sk-x\n")
    env = stack.env(LLMDRILL_TEST_REMOVE=str(scenario_dir / "gone.txt"))
    # Remove it between load and run: the harness reads the key at start, so make the
    # Locust process (started later) the first to miss it, through a tiny wrapper.
    wrapper = tmp_path / "run.py"
    wrapper.write_text(
        "import os, sys\n"
        "from llmdrill.load import runner\n"
        "orig = runner.LocustProcess.start\n"
        "def start(self):\n"
        "    os.remove(os.environ['LLMDRILL_TEST_REMOVE'])\n"
        "    orig(self)\n"
        "runner.LocustProcess.start = start\n"
        "from llmdrill.cli import main\n"
        "sys.argv = ['llmdrill', *sys.argv[1:]]\n"
        "main()\n")
    import subprocess

    proc = subprocess.run([sys.executable, str(wrapper), "run", str(scenario_dir / "dies.yaml"),
                           "--out", str(tmp_path / "out")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "exited early" in proc.stderr and "last lines of" in proc.stderr
    assert "gone.txt" in proc.stderr  # the helper's own error, not only "see locust.log"
    assert "What to do" in proc.stderr
    result = json.loads((_run_folder(tmp_path / "out") / "result.json").read_text())
    assert result["status"] == "aborted" and "gone.txt" in result["abort_reason"]
