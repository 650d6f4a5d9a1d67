"""The timeout-spike drill end to end on the real vLLM through a real Toxiproxy."""

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

SCENARIO = str(REPO / "scenarios" / "timeout-spike.yaml")


def _only_run(out: Path) -> Path:
    runs = [p for p in (out / "reports").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


# The drill passing on the healthy stack is checked on `make demo`'s own run of this
# scenario (scripts/check_demo.py, part of `make test`): the same scenario on the same
# stack, run once. The baseline is shortened here: what these tests look at is the spike.
SHORT_BASELINE = "8s"


def test_client_deadline_shorter_than_spike_fails_naming_the_check(
    clean_proxy: Stack, tmp_path: Path
) -> None:
    env = clean_proxy.env(CLIENT_READ_TIMEOUT="700ms", SPIKE_LATENCY="2s",
                          BASELINE_PHASE=SHORT_BASELINE)
    proc = llmdrill("run", SCENARIO, "--out", str(tmp_path / "reports"), env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    result = json.loads((_only_run(tmp_path) / "result.json").read_text())
    failed = {c["name"]: c for c in result["checks"] if c["status"] == "failed"}
    assert "spike-succeed-or-clear-timeout" in failed
    assert "error_rate" in failed["spike-succeed-or-clear-timeout"]["summary"]
    assert "spike-succeed-or-clear-timeout" in proc.stderr
    # The failures are the clear kind: client timeouts, not hangs.
    assert set(result["stats"]["spike"]["errors_by_class"]) == {"timeout"}
    assert clean_proxy.toxics() == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_fault_reverts_and_writes_partial_report(
    clean_proxy: Stack, tmp_path: Path, sig: signal.Signals
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmdrill.cli", "run", SCENARIO, "--out", str(tmp_path / "reports")],
        env=clean_proxy.env(BASELINE_PHASE=SHORT_BASELINE), cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not clean_proxy.toxics():
        time.sleep(0.2)
    assert clean_proxy.toxics(), "the spike was never applied"
    time.sleep(2)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, output
    assert clean_proxy.toxics() == []
    run = _only_run(tmp_path)
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "aborted"
    assert sig.name in result["abort_reason"]
    assert (run / "report.html").exists()
    phases = {p["name"]: p for p in result["phases"]}
    assert phases["baseline"]["completed"] and not phases["spike"]["completed"]
    checks = {c["name"]: c["status"] for c in result["checks"]}
    assert checks["baseline-healthy"] == "passed"
    assert checks["recover-ttft-back"] == "skipped"
    journal = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
    assert [e["event"] for e in journal if e.get("id") == "1"] == ["intent", "applied",
                                                                    "reverted"]


def test_cleanup_reverts_after_kill_9(clean_proxy: Stack, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmdrill.cli", "run", SCENARIO, "--out", str(tmp_path / "reports")],
        env=clean_proxy.env(BASELINE_PHASE=SHORT_BASELINE), cwd=REPO, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not clean_proxy.toxics():
        time.sleep(0.2)
    # The harness and its watchdog together (a whole machine's processes gone): the
    # watchdog alone would revert the fault by itself, and cleanup would find nothing to do.
    watchdogs = subprocess.run(
        ["pgrep", "-f", f"llmdrill.harness.watchdog {tmp_path / 'reports'}"],
        capture_output=True, text=True).stdout.split()
    for pid in watchdogs:
        os.kill(int(pid), signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    try:
        assert clean_proxy.toxics(), "a kill -9 cannot revert: the toxic must still be there"
        done = llmdrill("cleanup", env=clean_proxy.env())
        assert done.returncode == 0, done.stdout + done.stderr
        assert "1 change(s) reverted" in done.stderr
        assert clean_proxy.toxics() == []
        again = llmdrill("cleanup", env=clean_proxy.env())
        assert again.returncode == 0 and "0 change(s) reverted" in again.stderr
    finally:
        _stop_orphan_load(tmp_path)


def _stop_orphan_load(out: Path) -> None:
    """The killed harness could not stop its Locust process; do it for the next tests."""
    subprocess.run(["pkill", "-f", f"--csv {out}"], check=False)
