"""Locust's distributed mode (`load.processes`) against the real engine: every worker's
requests reach the run's evidence, and a worker killed mid-run aborts the run, naming it,
with the requests recorded until then still written."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import REPO, Stack, llmdrill

pytestmark = pytest.mark.integration

SCENARIO = """
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: distributed-load}
target: {base_url: "${LLMDRILL_TARGET_URL}", model: tiny}
load:
  users: 4
  processes: 2
  requests: [{api: completions, stream: true, prompt_tokens: 8, max_tokens: 4}]
  retries: {max_attempts: 1}
phases: [{name: steady, duration: "${PHASE:-6s}"}]
checks:
  - {name: served, phase: steady, slo: {error_rate: {max: 0.0}, min_requests: 10}}
"""


def _run_dir(out: Path) -> Path:
    return next(out.glob("*/result.json")).parent


def _requests(run: Path) -> int:
    with sqlite3.connect(run / "evidence.db") as db:
        return int(db.execute("SELECT count(*) FROM requests").fetchone()[0])


def _events(run: Path, kind: str) -> list[dict[str, Any]]:
    with sqlite3.connect(run / "evidence.db") as db:
        rows = db.execute("SELECT detail FROM events WHERE kind = ?", (kind,)).fetchall()
    return [json.loads(detail) for (detail,) in rows]


def test_two_load_processes_both_send_and_both_are_recorded(clean_proxy: Stack,
                                                            tmp_path: Path) -> None:
    path = tmp_path / "distributed.yaml"
    path.write_text(SCENARIO)
    out = tmp_path / "reports"
    proc = llmdrill("run", str(path), "--out", str(out), "--no-history",
                    env=clean_proxy.env(), timeout=300)
    run = _run_dir(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    workers = sorted(run.glob("samples-w*.jsonl"))
    assert len(workers) == 2, workers
    sent = [sum(1 for line in w.read_text().splitlines() if '"start"' in line)
            for w in workers]
    assert all(n > 0 for n in sent), sent  # each worker drove the engine
    assert _requests(run) == sum(sent)  # and every request it recorded is evidence
    result = json.loads((run / "result.json").read_text())
    assert result["checks"][0]["status"] == "passed"


def test_a_worker_killed_mid_run_aborts_it_and_is_named(clean_proxy: Stack,
                                                        tmp_path: Path) -> None:
    path = tmp_path / "distributed.yaml"
    path.write_text(SCENARIO)
    out = tmp_path / "reports"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmdrill.cli", "run", str(path), "--out", str(out),
         "--no-history"], env=clean_proxy.env(PHASE="120s"), cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = None
    try:
        deadline = time.time() + 120
        while victim is None and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            sending = [w for w in out.glob("*/samples-w*.jsonl") if '"start"' in w.read_text()]
            if len(sending) == 2:
                victim = int(sending[0].stem.rsplit("-w", 1)[1])
        assert victim is not None, "the two workers never both sent requests"
        os.kill(victim, signal.SIGKILL)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run = _run_dir(out)
    assert proc.returncode != 0, output[-3000:]
    result = json.loads((run / "result.json").read_text())
    reason = result["abort_reason"] or ""
    assert f"pid {victim}" in reason and "stopped reporting" in reason, reason
    assert [e["pid"] for e in _events(run, "load_worker_lost")] == [victim]
    assert _requests(run) > 0  # what both workers recorded before the kill is kept
    assert result["checks"][0]["status"] != "passed"
