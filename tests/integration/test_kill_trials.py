"""The harness killed with SIGKILL at random moments: after `llmdrill cleanup` nothing it
injected is left behind. Also: a frozen harness (SIGSTOP) has its faults reverted by the
watchdog when their lifetime runs out; a killed harness has them reverted by the watchdog
at once; and cleanup handles the case where the watchdog died too."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from llmdrill.faults.toxiproxy_client import ToxiproxyClient
from tests.conftest import count
from tests.integration.conftest import REPO, Stack, llmdrill

pytestmark = pytest.mark.integration

TRIALS = int(os.environ.get("LLMDRILL_KILL_TRIALS", "20"))

SCENARIO = """
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: kill-trial}
target:
  base_url: ${LLMDRILL_TARGET_URL}
  model: tiny
toxiproxy: {default: {url: "${LLMDRILL_TOXIPROXY_URL}"}}
faults:
  slow: {toxiproxy: {proxy: vllm, toxic: latency, stream: upstream, latency: 300ms}}
  down: {toxiproxy: {proxy: vllm, toxic: down}}
  cut:
    toxiproxy: {proxy: vllm, toxic: limit_data, bytes: 64KiB}
    max_lifetime: ${LIFETIME:-1h}
load:
  users: ${USERS:-2}
  spawn_rate: 10
  requests: [{api: completions, prompt_tokens: 16, max_tokens: 8}]
  timeouts: {read: 5s, total: 10s}
phases:
  - {name: a, duration: 1500ms, faults: [slow]}
  - {name: b, duration: 1500ms, faults: [slow, down]}
  - {name: c, duration: "${C_DURATION:-1500ms}", faults: [cut]}
  - {name: d, duration: 1s}
"""


def _start(stack: Stack, tmp_path: Path, **env: str) -> subprocess.Popen[bytes]:
    path = tmp_path / "trial.yaml"
    path.write_text(SCENARIO)
    return subprocess.Popen(
        [sys.executable, "-m", "llmdrill.cli", "run", str(path), "--quiet",
         "--out", str(tmp_path / "reports")],
        env=stack.env(**env), cwd=REPO, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )


def _watchdog_pids(run_root: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"llmdrill.harness.watchdog {run_root}"],
                         capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _residue(stack: Stack) -> list[str]:
    left = [str(t["name"]) for t in stack.toxics()]
    if not stack.proxy_enabled():
        left.append("proxy disabled")
    return left


def test_sigkill_at_random_moments_then_cleanup_leaves_nothing(
    clean_proxy: Stack, tmp_path: Path
) -> None:
    rng = random.Random(int(os.environ.get("LLMDRILL_KILL_SEED", "0")) or None)
    residues_before_cleanup = 0
    for trial in range(TRIALS):
        trial_dir = tmp_path / f"trial-{trial}"
        trial_dir.mkdir()
        proc = _start(clean_proxy, trial_dir, USERS=str(rng.choice([0, 2])))
        time.sleep(rng.uniform(0.2, 6.0))
        # Kill the harness and its watchdog together: the worst case, a whole machine's
        # processes gone. Only the journal on disk remains.
        for pid in _watchdog_pids(trial_dir / "reports"):
            os.kill(pid, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        if _residue(clean_proxy):
            residues_before_cleanup += 1
        done = llmdrill("cleanup", env=clean_proxy.env())
        assert done.returncode == 0, done.stdout + done.stderr
        assert _residue(clean_proxy) == [], f"trial {trial}: left behind after cleanup"
        count("kill -9 trials")
    print(f"\nkill -9 trials: {TRIALS}, with faults in place at the kill: "
          f"{residues_before_cleanup}, left after cleanup: 0")
    # The trials prove something only if the kills landed while faults were in place.
    assert residues_before_cleanup >= TRIALS // 4


def test_watchdog_reverts_at_once_when_the_harness_is_killed(
    clean_proxy: Stack, tmp_path: Path
) -> None:
    proc = _start(clean_proxy, tmp_path, USERS="0", C_DURATION="30s")
    deadline = time.time() + 30
    while time.time() < deadline and "limit_data" not in json.dumps(clean_proxy.toxics()):
        time.sleep(0.1)
    assert clean_proxy.toxics(), "the fault was never applied"
    os.kill(proc.pid, signal.SIGKILL)  # the harness only; its watchdog lives on
    proc.wait(timeout=30)
    deadline = time.time() + 15
    while time.time() < deadline and _residue(clean_proxy):
        time.sleep(0.2)
    assert _residue(clean_proxy) == []
    journal = next((tmp_path / "reports").glob("*/journal.jsonl")).read_text()
    assert '"harness is gone"' in journal


def test_watchdog_reverts_a_frozen_harness_fault_when_its_lifetime_ends(
    clean_proxy: Stack, tmp_path: Path
) -> None:
    proc = _start(clean_proxy, tmp_path, USERS="0", C_DURATION="30s", LIFETIME="4s")
    deadline = time.time() + 30
    while time.time() < deadline and "limit_data" not in json.dumps(clean_proxy.toxics()):
        time.sleep(0.1)
    assert clean_proxy.toxics(), "the fault was never applied"
    applied = time.time()
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        deadline = time.time() + 30
        while time.time() < deadline and _residue(clean_proxy):
            time.sleep(0.2)
        assert _residue(clean_proxy) == [], "the watchdog did not revert the frozen fault"
        assert time.time() - applied < 20
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    os.killpg(proc.pid, signal.SIGTERM)  # no need to wait out the 30s phase
    proc.wait(timeout=60)
    run = next(p for p in (tmp_path / "reports").iterdir() if p.is_dir())
    journal = (run / "journal.jsonl").read_text()
    assert '"lifetime exceeded"' in journal
    result = json.loads((run / "result.json").read_text())
    cut = next(f for f in result["faults"] if f["name"] == "cut")
    assert cut["reverted_by"] == "watchdog"


# --- Docker faults in the trials -------------------------------------------------------------

DOCKER_TRIALS = int(os.environ.get("LLMDRILL_DOCKER_KILL_TRIALS", "6"))

# Toxiproxy and Docker faults together, on two busybox containers: paused, squeezed,
# stopped, a hog with raised OOM scores (its start takes a second). Every phase boundary
# reverts some faults and applies others. The toxic goes on a proxy the run creates for
# itself (journaled, deleted at its end), not the shared `vllm` one: `make integration`
# runs these tests beside the others, which drill that proxy at the same time.
DOCKER_SCENARIO = """
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: docker-kill-trial}
target: {base_url: "${LLMDRILL_TARGET_URL}", model: tiny}
toxiproxy: {default: {url: "${LLMDRILL_TOXIPROXY_URL}"}}
faults:
  slow:
    toxiproxy: {proxy: docker-trial, listen: "${TRIAL_LISTEN}", upstream: "${TRIAL_UPSTREAM}",
                toxic: latency, stream: upstream, latency: 300ms}
  freeze: {docker: {action: pause, target: {name: "${BOX0}"}}}
  squeeze: {docker: {action: memory, memory: 32MiB, target: {name: "${BOX1}"}}}
  hog:
    docker: {action: hog, memory: 8MiB, oom_score_adj: 500, target: {name: "${BOX1}"},
             hog_command: HOG_COMMAND}
  halt: {docker: {action: stop, grace: 1s, target: {name: "${BOX0}"}}}
load: {users: 0}
phases:
  - {name: a, duration: 1500ms, faults: [slow, freeze, squeeze]}
  - {name: b, duration: 2500ms, faults: [squeeze, halt, hog]}
  - {name: c, duration: 1s}
"""


def _trial_proxy_residue(stack: Stack) -> list[str]:
    with ToxiproxyClient(stack.toxiproxy_url) as client:
        return ["trial proxy left"] if client.get_proxy(TRIAL_PROXY) is not None else []


TRIAL_PROXY = "docker-trial"


@pytest.mark.docker
def test_sigkill_with_docker_faults_then_cleanup_leaves_no_container_changed(
    stack: Stack, docker_client: Any, tmp_path: Path
) -> None:
    from tests.integration.dockerbox import boxes, hog_command, residue

    rng = random.Random(int(os.environ.get("LLMDRILL_KILL_SEED", "0")) or None)
    text = DOCKER_SCENARIO.replace("HOG_COMMAND", json.dumps(hog_command()))
    with boxes(docker_client) as made:
        with socket.socket() as probe:  # a free port for the trial's own proxy
            probe.bind(("127.0.0.1", 0))
            listen = f"127.0.0.1:{probe.getsockname()[1]}"
        env = {"BOX0": made[0].name, "BOX1": made[1].name, "TRIAL_LISTEN": listen,
               # the engine itself, not through the shared proxy
               "TRIAL_UPSTREAM": stack.metrics_url.removeprefix("http://").split("/")[0],
               "LLMDRILL_TARGET_URL": f"http://{listen}"}

        def left() -> list[str]:
            return _trial_proxy_residue(stack) + residue(made)

        with_faults = 0
        kinds: set[str] = set()
        for trial in range(DOCKER_TRIALS):
            trial_dir = tmp_path / f"trial-{trial}"
            trial_dir.mkdir()
            (trial_dir / "trial.yaml").write_text(text)
            proc = subprocess.Popen(
                [sys.executable, "-m", "llmdrill.cli", "run", str(trial_dir / "trial.yaml"),
                 "--quiet", "--out", str(trial_dir / "reports")],
                env=stack.env(**env), cwd=REPO, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True)
            # Spread over the run (start-up, each phase, the reverts): one slot each.
            time.sleep(0.5 + 5.5 * (trial + rng.random()) / DOCKER_TRIALS)
            for pid in _watchdog_pids(trial_dir / "reports"):
                os.kill(pid, signal.SIGKILL)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            found = left()
            if found:
                with_faults += 1
                kinds.update(w for item in found for w in item.split()
                             if w in ("paused", "exited", "memory", "hog", "oom_score_adj"))
            done = llmdrill("cleanup", env=stack.env())
            assert done.returncode == 0, done.stdout + done.stderr
            assert left() == [], f"trial {trial}: left behind after cleanup"
            count("kill -9 trials with Docker faults")
        print(f"\nkill -9 trials with Docker faults: {DOCKER_TRIALS}, with faults in place at "
              f"the kill: {with_faults} ({', '.join(sorted(kinds)) or 'none'}), left after "
              "cleanup: 0")
        assert with_faults >= DOCKER_TRIALS // 3
