"""Locust's distributed mode against the real engine, with workers forked on this machine
(`load.processes`) and with workers started apart as on other machines
(`load.remote_workers`, `llmdrill load-worker`): every worker's requests reach the run's
evidence, and a worker killed mid-run aborts the run, naming it, with the requests
recorded until then still written."""

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

from llmdrill.load.runner import free_port
from tests.integration.conftest import (
    REPO,
    Stack,
    evidence_requests,
    llmdrill,
    samples_sent,
    start_run,
)

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
phases: [{name: steady, duration: "${PHASE:-4s}"}]
checks:
  - {name: served, phase: steady, slo: {error_rate: {max: 0.0}, min_requests: 10}}
"""


def _run_dir(out: Path) -> Path:
    return next(out.glob("*/result.json")).parent


def _events(run: Path, kind: str) -> list[dict[str, Any]]:
    with sqlite3.connect(run / "evidence.db") as db:
        rows = db.execute("SELECT detail FROM events WHERE kind = ?", (kind,)).fetchall()
    return [json.loads(detail) for (detail,) in rows]


def _both_sending(out: Path, run: subprocess.Popen[str]) -> list[Path]:
    """The two workers' samples files, once both hold requests (while the run lasts)."""
    deadline = time.time() + 120
    while time.time() < deadline and run.poll() is None:
        time.sleep(0.5)
        sending = [w for w in out.glob("*/samples-w*.jsonl") if samples_sent(w)]
        if len(sending) == 2:
            return sending
    raise AssertionError("the two workers never both sent requests while the run lasted")


def _stop_all(*procs: subprocess.Popen[str]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_two_load_processes_both_send_and_both_are_recorded(clean_proxy: Stack,
                                                            tmp_path: Path) -> None:
    path = tmp_path / "distributed.yaml"
    path.write_text(SCENARIO)
    out = tmp_path / "reports"
    proc = llmdrill("run", str(path), "--out", str(out), "--no-history", "--keep-samples",
                    env=clean_proxy.env(), timeout=300)
    run = _run_dir(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    workers = sorted(run.glob("samples-w*.jsonl"))
    assert len(workers) == 2, workers
    sent = [samples_sent(w) for w in workers]
    assert all(n > 0 for n in sent), sent  # each worker drove the engine
    assert evidence_requests(run) == sum(sent)  # and every request it recorded is evidence
    result = json.loads((run / "result.json").read_text())
    assert result["checks"][0]["status"] == "passed"


def test_a_worker_killed_mid_run_aborts_it_and_is_named(clean_proxy: Stack,
                                                        tmp_path: Path) -> None:
    path = tmp_path / "distributed.yaml"
    path.write_text(SCENARIO)
    out = tmp_path / "reports"
    proc = start_run(path, out, clean_proxy.env(PHASE="120s"))
    try:
        victim = int(_both_sending(out, proc)[0].stem.rsplit("-w", 1)[1])
        os.kill(victim, signal.SIGKILL)
        output, _ = proc.communicate(timeout=120)
    finally:
        _stop_all(proc)
    run = _run_dir(out)
    assert proc.returncode != 0, output[-3000:]
    result = json.loads((run / "result.json").read_text())
    reason = result["abort_reason"] or ""
    assert f"pid {victim}" in reason and "stopped reporting" in reason, reason
    assert [e["pid"] for e in _events(run, "load_worker_lost")] == [victim]
    assert evidence_requests(run) > 0  # what both workers recorded before the kill is kept
    assert result["checks"][0]["status"] != "passed"


REMOTE = SCENARIO.replace("  processes: 2\n",
                          "  remote_workers: 2\n  master: {port: PORT, wait: WAIT}\n")


def _remote_scenario(tmp_path: Path, wait: str) -> tuple[Path, int]:
    port = free_port()
    path = tmp_path / "remote.yaml"
    path.write_text(REMOTE.replace("PORT", str(port)).replace("WAIT", wait))
    return path, port


def _workers(port: int) -> list[subprocess.Popen[str]]:
    """Two `llmdrill load-worker`s, as on other machines: they know only the master's
    address (no scenario, no target, no load configuration in their environment)."""
    bare = {k: v for k, v in os.environ.items() if not k.startswith("LLMDRILL_")}
    return [subprocess.Popen(
        [sys.executable, "-m", "llmdrill.cli", "load-worker", "--master", f"127.0.0.1:{port}"],
        env=bare, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True) for _ in range(2)]


def test_remote_workers_get_the_load_from_the_run_and_report_every_request(
        clean_proxy: Stack, tmp_path: Path) -> None:
    path, port = _remote_scenario(tmp_path, "60s")
    out = tmp_path / "reports"
    run = start_run(path, out, clean_proxy.env())
    workers = _workers(port)
    try:
        output, _ = run.communicate(timeout=240)
        for worker in workers:
            worker.wait(timeout=90)  # a worker stops when its run ends
    finally:
        _stop_all(run, *workers)
    assert run.returncode == 0, output[-3000:]
    folder = _run_dir(out)
    files = sorted(folder.glob("samples-w*.jsonl"))
    assert len(files) == 2, files
    sent = [samples_sent(f) for f in files]
    assert all(n > 0 for n in sent), sent
    assert evidence_requests(folder) == sum(sent)


def test_a_run_whose_remote_workers_never_come_stops_with_an_error(clean_proxy: Stack,
                                                                   tmp_path: Path) -> None:
    path, _port = _remote_scenario(tmp_path, "3s")
    proc = llmdrill("run", str(path), "--out", str(tmp_path / "reports"), "--no-history",
                    env=clean_proxy.env(), timeout=180)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "llmdrill load-worker --master" in text and "Traceback" not in text, text[-3000:]


def test_a_remote_worker_killed_mid_run_aborts_it(clean_proxy: Stack, tmp_path: Path) -> None:
    path, port = _remote_scenario(tmp_path, "60s")
    out = tmp_path / "reports"
    run = start_run(path, out, clean_proxy.env(PHASE="120s"))
    workers = _workers(port)
    try:
        _both_sending(out, run)
        os.killpg(workers[0].pid, signal.SIGKILL)
        output, _ = run.communicate(timeout=120)
    finally:
        _stop_all(run, *workers)
    assert run.returncode != 0, output[-3000:]
    result = json.loads((_run_dir(out) / "result.json").read_text())
    assert "stopped reporting" in (result["abort_reason"] or ""), result["abort_reason"]
    assert len(_events(_run_dir(out), "load_worker_lost")) == 1
