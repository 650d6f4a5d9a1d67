"""The timeout-spike drill end to end on the real vLLM through a real Toxiproxy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, Stack, llmdrill

pytestmark = pytest.mark.integration

SCENARIO = str(REPO / "scenarios" / "timeout-spike.yaml")


def _only_run(out: Path) -> Path:
    runs = [p for p in (out / "reports").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def test_timeout_spike_passes_on_healthy_stack(clean_proxy: Stack, tmp_path: Path) -> None:
    proc = llmdrill("run", SCENARIO, "--out", str(tmp_path / "reports"), "--junit",
                    str(tmp_path / "suite.xml"), env=clean_proxy.env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = _only_run(tmp_path)
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "passed"
    assert result["schema"] == "llmdrill.result/v1"
    assert result["versions"]["engine"]
    assert {c["status"] for c in result["checks"]} == {"passed"}
    # The spike really happened: TTFT during the spike is well above the baseline.
    assert result["stats"]["spike"]["ttft_p95_s"] > result["stats"]["baseline"]["ttft_p95_s"] + 1
    assert result["stats"]["baseline"]["requests"] > 20
    fault = result["faults"][0]
    assert fault["applied_at"] and fault["reverted_at"] and not fault["revert_error"]
    assert result["series"]["engine"]["kv_cache_usage"]
    for name in ("report.html", "junit.xml", "summary.md", "evidence.db", "journal.jsonl"):
        assert (run / name).exists(), name
    suite = ET.parse(tmp_path / "suite.xml").getroot()
    assert len(suite.findall(".//testcase")) == len(result["checks"])
    assert clean_proxy.toxics() == []


def test_client_deadline_shorter_than_spike_fails_naming_the_check(
    clean_proxy: Stack, tmp_path: Path
) -> None:
    env = clean_proxy.env(CLIENT_READ_TIMEOUT="700ms", SPIKE_LATENCY="2s")
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
        env=clean_proxy.env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
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
        env=clean_proxy.env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
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
