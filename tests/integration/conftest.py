"""The real local stack (vLLM on CPU + Toxiproxy), started once per test session.

If it is already running (a developer ran `llmdrill up`), it is reused and left running;
otherwise it is started here and stopped at the end of the session.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llmdrill.faults.base import EnvironmentProblem
from llmdrill.faults.toxiproxy_client import ToxiproxyClient
from llmdrill.stack.gateway import HAPROXY, ROUTER, SHUTDOWN_TIMEOUT_ENV, GatewayStack
from llmdrill.stack.local import LocalStack

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    vllm_url: str
    proxy_url: str
    toxiproxy_url: str
    metrics_url: str

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "LLMDRILL_TARGET_URL": self.proxy_url,
            "LLMDRILL_METRICS_URL": self.metrics_url,
            "LLMDRILL_TOXIPROXY_URL": self.toxiproxy_url,
            **extra,
        }

    def toxics(self, proxy: str = "vllm") -> list[dict[str, object]]:
        with ToxiproxyClient(self.toxiproxy_url) as client:
            return client.toxics(proxy)

    def proxy_enabled(self, proxy: str = "vllm") -> bool:
        with ToxiproxyClient(self.toxiproxy_url) as client:
            info = client.get_proxy(proxy)
        return bool(info and info.get("enabled"))


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    local = LocalStack()
    already = local.vllm_healthy() and local.toxiproxy_healthy()
    if not already:
        local.up(install=True)
    local.ensure_proxy()
    cfg = local.config
    yield Stack(cfg.vllm_url, cfg.proxy_url, cfg.toxiproxy_url, f"{cfg.vllm_url}/metrics")
    if not already:
        local.down()


@pytest.fixture
def clean_proxy(stack: Stack) -> Iterator[Stack]:
    """Every test starts with the proxy enabled and free of toxics. A Toxiproxy wedged by
    an earlier test (Shopify/toxiproxy#558) is restarted, so one failure stays one."""
    try:
        with ToxiproxyClient(stack.toxiproxy_url, timeout=10) as client:
            for toxic in client.toxics("vllm"):
                client.remove_toxic("vllm", str(toxic["name"]))
            client.set_enabled("vllm", True)
    except EnvironmentProblem:
        local = LocalStack()
        local.stop("toxiproxy")
        subprocess.run(["pkill", "-f", "toxiproxy-server"], check=False)
        local.start_toxiproxy()
        local.ensure_proxy()
    yield stack


def llmdrill(*args: str, env: dict[str, str], timeout: float = 300,
             cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmdrill.cli", *args], env=env, cwd=cwd, capture_output=True,
        text=True, timeout=timeout,
    )


def start_run(path: Path, out: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """`llmdrill run` in the background (a session of its own, so a test can kill it
    whole), keeping the samples files for the test to count."""
    return subprocess.Popen(
        [sys.executable, "-m", "llmdrill.cli", "run", str(path), "--out", str(out),
         "--no-history", "--keep-samples"], env=env, cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)


def samples_sent(samples: Path) -> int:
    """The requests (not control records) in one load process's samples file."""
    return sum(1 for line in samples.read_text().splitlines() if '"start"' in line)


def evidence_requests(run: Path) -> int:
    """The requests in a run folder's evidence.db."""
    with sqlite3.connect(run / "evidence.db") as db:
        return int(db.execute("SELECT count(*) FROM requests").fetchone()[0])


# --- Docker (marker `docker`) ------------------------------------------------------------------

DOCKER_VLLM_PORT = 18100
DOCKER_VLLM_NAME = "llmdrill-test-vllm"
# Restarts after a crash (exit 137) and after an OOM (vLLM exits 0 then, which
# `on-failure` would not restart): one engine container serves every Docker drill test.
DOCKER_VLLM_POLICY = "unless-stopped"


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A client of the local Docker Engine, started here (and stopped at the end) if it
    was not running; the busybox base image built."""
    from tests.integration.dockerbox import docker_engine

    with docker_engine() as client:
        yield client


@pytest.fixture(scope="session")
def docker_vllm(docker_client: Any) -> Iterator[Any]:
    """The real vLLM in a container of its own (127.0.0.1:18100, the other core), started
    once for the session: starting it takes 25-50 s."""
    from llmdrill.stack.docker_stack import DockerStack, DockerStackConfig

    config = DockerStackConfig.from_env()
    config.vllm_port, config.container = DOCKER_VLLM_PORT, DOCKER_VLLM_NAME
    config.restart = DOCKER_VLLM_POLICY
    vllm = DockerStack(config)
    if vllm.vllm_healthy():
        pytest.fail(f"something already serves 127.0.0.1:{DOCKER_VLLM_PORT}; stop it first "
                    "(python -m llmdrill.stack.docker_stack down)")
    vllm.start_vllm()
    yield vllm
    vllm.remove_vllm()


# --- Kubernetes (marker `kubernetes`) -----------------------------------------------------------


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[Any]:
    """The test cluster (make kube-stack builds it once per machine), started here if it
    was not running and then stopped at the end of the session."""
    from llmdrill.stack.kube_cluster import KubeCluster

    cluster = KubeCluster()
    started = not cluster.apiserver_healthy()
    if started:
        cluster.up()
    yield cluster
    if started:
        cluster.down()


# Replica 0 drains its streams for up to 30 s at SIGTERM (what the gateway stack sets up);
# replica 1 keeps vLLM's default, 0, which aborts them: the drain drill's failing variant.
# Set for the whole session, so the drills' restart commands (`llmdrill up`) keep it.
GATEWAY_SHUTDOWN_TIMEOUTS = "30,0"
KEEP_GATEWAY_STACK_ENV = "LLMDRILL_KEEP_GATEWAY_STACK"


@pytest.fixture(scope="session")
def gateway_stack() -> Iterator[GatewayStack]:
    """Both replicas, their proxies and both gateways; started here if they were not
    running (or restarted with other settings), and then stopped at the end."""
    os.environ[SHUTDOWN_TIMEOUT_ENV] = GATEWAY_SHUTDOWN_TIMEOUTS
    stack = GatewayStack()
    started = not all(stack.replica_healthy(i) for i in range(stack.config.replicas))
    toxiproxy_started = not stack.local.toxiproxy_healthy()
    stack.up([HAPROXY, ROUTER], install=True)
    yield stack
    # scripts/run_integration.py runs the gateway tests in two sessions on one stack, and
    # stops it itself.
    if started and not os.environ.get(KEEP_GATEWAY_STACK_ENV):
        stack.down()
    if toxiproxy_started:
        stack.local.stop("toxiproxy")
