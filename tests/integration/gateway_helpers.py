"""What the gateway drills' tests share: running a drill against the gateway stack (the
`gateway_stack` fixture, in conftest.py) and reading its result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from llmdrill.faults.toxiproxy_client import ToxiproxyClient
from llmdrill.stack.gateway import HAPROXY, ROUTER, GatewayStack
from tests.integration.conftest import REPO, llmdrill

BROKEN_PORTS = {HAPROXY: 18042, ROUTER: 18032}
def drill_env(stack: GatewayStack, gateway_url: str, **extra: str) -> dict[str, str]:
    # A replica restart takes 26-31 s here (39 s seen under load): 50 s leaves the
    # gateway room to take it back, and keeps the lane within the CI budget.
    return {**os.environ, "LLMDRILL_GATEWAY_URL": gateway_url,
            "LLMDRILL_STACK_DIR": str(stack.config.stack.root),
            "LLMDRILL_TOXIPROXY_URL": stack.config.stack.toxiproxy_url,
            "RESTART_PHASE": "50s", **extra}


def start_drill(scenario: str, env: dict[str, str], tmp_path: Path
                ) -> subprocess.Popen[bytes]:
    """`llmdrill run` of a scenario text in the background (a session of its own, so a
    test can signal or kill it mid-fault); its reports go to tmp_path/reports."""
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "interrupted.yaml"
    path.write_text(scenario)
    return subprocess.Popen(
        [sys.executable, "-m", "llmdrill.cli", "run", str(path), "--quiet",
         "--out", str(tmp_path / "reports")],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)


def run_drill(scenario: Path, env: dict[str, str], out: Path
              ) -> tuple[int, dict[str, Any], str]:
    proc = llmdrill("run", str(scenario), "--out", str(out), env=env, timeout=900)
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, proc.stdout + proc.stderr
    result = json.loads((runs[0] / "result.json").read_text())
    return proc.returncode, result, proc.stdout + proc.stderr


def checks_by_name(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in result["checks"]}


def left_clean(stack: GatewayStack) -> None:
    """No fault left behind: the replicas' proxies enabled and without toxics, both
    replicas healthy."""
    with ToxiproxyClient(stack.config.stack.toxiproxy_url) as client:
        for name in stack.config.names:
            assert client.toxics(name) == [], name
            proxy = client.get_proxy(name)
            assert proxy is not None and proxy["enabled"], (name, proxy)
    assert all(stack.replica_healthy(i) for i in range(stack.config.replicas))


def only_phases(scenario: Path, phases: list[str], tmp_path: Path) -> Path:
    """A shipped drill cut down to some of its phases (and their checks and faults)."""
    doc = yaml.safe_load(scenario.read_text())
    doc["phases"] = [p for p in doc["phases"] if p["name"] in phases]
    doc["checks"] = [c for c in doc["checks"] if c["phase"] in phases]
    used = {f for p in doc["phases"] for f in p.get("faults", [])}
    doc["faults"] = {k: v for k, v in doc["faults"].items() if k in used}
    path = tmp_path / f"{scenario.stem}-part.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, what
        time.sleep(0.2)


def watchdogs(run_root: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"llmdrill.harness.watchdog {run_root}"],
                         capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def kill_all(proc: subprocess.Popen[bytes], run_root: Path) -> None:
    """The harness and its watchdog killed with -9: only the journal on disk remains."""
    for pid in watchdogs(run_root):
        os.kill(pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
