"""The Kubernetes drills against the real test cluster (make kube-up): the real vLLM as two
Deployments (one replica each, readiness probe on /health) behind a Service, the test
gateway following its EndpointSlices, and the harness run as a user runs it.

Shown here:
- pod kill, container kill, node restart and drain pass on the healthy engine (2 replicas,
  readiness probe; a PodDisruptionBudget for the drain), and their recovery phase ends
  once both replicas serve again (`end_early`), not at its planned end; the kills wait
  until the killed replica serves streams (`when_busy`), so each one catches some;
- pod kill and container kill FAIL when the engine has no readiness probe (the Service
  sends traffic to a pod that is still loading the model), and the drain FAILS with a
  single replica and no budget (requests lost);
- a drain that would violate a budget is refused with a clear message, nothing changed;
- the load from two `llmdrill load-worker` pods (Locust's distributed mode): both send,
  and every request they record reaches the run's evidence;
- SIGTERM to the harness mid-drill, and kill -9 at random moments then `llmdrill cleanup`,
  leave the cluster as it was (node uncordoned, replicas and memory limits restored).

The cluster, the engine and the gateway are started here when they are not running, and
stopped at the end (only what was started here). The tests run in file order: the broken
engine shapes come last, so the healthy one is deployed once.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmdrill.load.runner import free_port
from llmdrill.stack import kube_gateway, processes
from llmdrill.stack.kube_cluster import (
    ENGINE_IMAGE,
    ENGINE_SELECTOR,
    NODE_NAME,
    KubeCluster,
    engine_manifests,
)
from tests.conftest import count
from tests.integration.conftest import (
    REPO,
    evidence_requests,
    llmdrill,
    samples_sent,
    start_run,
)

pytestmark = [pytest.mark.integration, pytest.mark.kubernetes]

SCENARIOS = REPO / "scenarios" / "kubernetes"
TRIALS = int(os.environ.get("LLMDRILL_KUBE_KILL_TRIALS", "6"))
TRIAL_NAMESPACE = "llmdrill-trial"
PDB_NAME = "vllm"

# Shorter than the scenarios' defaults, with room for a replacement pod here (it loads the
# model in 35-55s on an idle machine; 44-47s in CI's full run, a node restart's two pods
# 56s): the Kubernetes tests must fit the CI budget.
PHASES = {"BASELINE_PHASE": "10s", "SETTLE_PHASE": "5s", "KILL_PHASE": "80s",
          "READY_WITHIN": "70s", "TTFT_WITHIN": "75s", "RESTART_PHASE": "95s",
          "DRAIN_PHASE": "25s", "DRAIN_TIMEOUT": "15s", "RECOVERY_PHASE": "80s",
          "END_EARLY_AFTER": "12s"}
# Both replicas restart at once after a node restart, sharing the two cores.
NODE_RESTART_READY_WITHIN = "80s"


@dataclass
class Kube:
    cluster: KubeCluster
    gateway_url: str

    @property
    def namespace(self) -> str:
        return self.cluster.config.namespace

    def env(self, **extra: str) -> dict[str, str]:
        cfg = self.cluster.config
        return {**os.environ, "KUBECONFIG": str(cfg.kubeconfig),
                "LLMDRILL_STACK_DIR": str(cfg.root),
                "LLMDRILL_KUBE_TARGET_URL": self.gateway_url,
                "LLMDRILL_KUBE_NAMESPACE": cfg.namespace, **extra}

    def kubectl(self, *args: str, input: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, input=input, check=check)

    def get(self, *args: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.kubectl("get", *args, "-o", "json").stdout)
        return out


def _wait(what: str, ready: Callable[[], bool], timeout: float = 420) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ready():
            return
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout:.0f}s")


def _serves(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def shape(kube: Kube, *, probe: bool = True, replicas: int = 2) -> None:
    """Brings the engine to a shape (readiness probe or not, replica 1 there or not) and
    waits until exactly those replicas serve and the gateway routes to them."""
    cluster = kube.cluster
    cfg = cluster.config
    manifests = engine_manifests(cfg, processes.python_home(cfg.venv), readiness_probe=probe,
                                 replicas={i: 0 for i in range(replicas, cfg.replicas)})
    kube.kubectl("apply", "-f", "-", input=json.dumps(manifests))
    ports = cfg.engine_ports()[:replicas]
    selector = ",".join(f"{k}={v}" for k, v in ENGINE_SELECTOR.items())

    def settled() -> bool:
        pods = kube.get("pods", "-n", kube.namespace, "-l", selector)["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        probes = {bool(c.get("readinessProbe")) for p in live for c in p["spec"]["containers"]}
        if len(pods) != replicas or len(live) != replicas or probes != {probe}:
            return False
        if not all(_serves(p) for p in ports):
            return False
        state = kube_gateway.state(kube_gateway.GatewayConfig.from_env()) or {}
        routed = {int(p) for p, s in (state.get("servers") or {}).items() if s == "ready"}
        return routed == set(ports)

    _wait(f"engine shape probe={probe} replicas={replicas}", settled)


@pytest.fixture(scope="module")
def kube(kube_cluster: KubeCluster) -> Iterator[Kube]:
    cluster = kube_cluster
    gateway_cfg = kube_gateway.GatewayConfig.from_env()
    gateway_started = not kube_gateway.healthy(gateway_cfg)
    if gateway_started:
        kube_gateway.up(gateway_cfg)
    here = Kube(cluster, gateway_cfg.url)
    try:
        uncordon(here)
        shape(here)
        yield here
    finally:
        if gateway_started:
            kube_gateway.down(gateway_cfg)
        # The healthy engine again (not waited for; cluster.down removes it if the session
        # started the cluster).
        uncordon(here)
        cfg = cluster.config
        here.kubectl("apply", "-f", "-", input=json.dumps(
            engine_manifests(cfg, processes.python_home(cfg.venv))), check=False)


def uncordon(kube: Kube) -> None:
    kube.kubectl("uncordon", NODE_NAME, check=False)


def budget(kube: Kube, min_available: int) -> None:
    pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
           "metadata": {"name": PDB_NAME, "namespace": kube.namespace},
           "spec": {"minAvailable": min_available,
                    "selector": {"matchLabels": dict(ENGINE_SELECTOR)}}}
    kube.kubectl("apply", "-f", "-", input=json.dumps(pdb))

    def counted() -> bool:
        status = kube.get("pdb", "-n", kube.namespace, PDB_NAME).get("status") or {}
        return status.get("observedGeneration") is not None and "disruptionsAllowed" in status

    _wait("PodDisruptionBudget status", counted, timeout=60)


def no_budget(kube: Kube) -> None:
    kube.kubectl("delete", "pdb", "-n", kube.namespace, PDB_NAME, "--ignore-not-found")


def drill(kube: Kube, scenario: str, tmp_path: Path, **env: str) -> dict[str, Any]:
    run = llmdrill("run", str(SCENARIOS / scenario), "--quiet", "--out",
                   str(tmp_path / "reports"), env=kube.env(**{**PHASES, **env}), timeout=900)
    results = list((tmp_path / "reports").glob("*/result.json"))
    assert results, run.stdout + run.stderr
    result: dict[str, Any] = json.loads(results[0].read_text())
    result["_exit"] = run.returncode
    result["_output"] = run.stdout + run.stderr
    return result


def checks_of(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in result["checks"]}


def summary_of(result: dict[str, Any]) -> str:
    return json.dumps({c["name"]: [c["status"], c["summary"]] for c in result["checks"]},
                      indent=1)


def assert_passed(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    assert result["status"] == "passed" and result["_exit"] == 0, summary_of(result)
    return checks_of(result)


def ended_early(result: dict[str, Any], name: str) -> float:
    """The phase `name` ended once the replicas were back (`end_early`), before its planned
    end: how long it lasted."""
    phase = next(p for p in result["phases"] if p["name"] == name)
    assert phase["completed"] and phase["ended_early"], phase
    assert phase["end"] < phase["planned_end"] - 1, phase
    return float(phase["end"] - phase["start"])


# --- the drills pass on the healthy engine ------------------------------------------------


def busy_at_kill(result: dict[str, Any]) -> float:
    """The kill waited (`when_busy`) until the killed replica served streams: how many."""
    busy = next(f for f in result["faults"] if f["name"] == "kill")["busy"]
    assert busy and busy["met"], busy
    return float(busy["running"])


def test_pod_kill_passes_on_two_ready_replicas(kube: Kube, tmp_path: Path) -> None:
    result = drill(kube, "pod-kill.yaml", tmp_path)
    checks = assert_passed(result)
    assert busy_at_kill(result) >= 3
    recovery = checks["stream-recovery"]["observed"]
    # The killed replica's streams were cut at once or finished in its grace period; the
    # check saw one or the other on it (a completed stream elsewhere shows nothing).
    assert recovery["in_flight_cut"] + recovery.get("in_flight_drained", 0) >= 1, recovery
    lasted = ended_early(result, "kill")  # once the replacement served, not at 80s
    print(f"\nk8s pod kill: {checks['stream-recovery']['summary']}; "
          f"{checks['replicas-back']['summary']}; kill phase {lasted:.0f}s")


def test_container_kill_passes_on_two_ready_replicas(kube: Kube, tmp_path: Path) -> None:
    shape(kube)
    result = drill(kube, "container-kill.yaml", tmp_path)
    checks = assert_passed(result)
    assert busy_at_kill(result) >= 1
    recovery = checks["stream-recovery"]["observed"]
    assert recovery["in_flight_cut"] >= 1, recovery  # a SIGKILL lets no stream finish
    lasted = ended_early(result, "kill")
    print(f"\nk8s container kill: {checks['replicas-back']['summary']}; kill phase "
          f"{lasted:.0f}s")


def test_drain_passes_with_a_disruption_budget(kube: Kube, tmp_path: Path) -> None:
    shape(kube)
    budget(kube, 1)
    try:
        result = drill(kube, "drain.yaml", tmp_path)
        checks = assert_passed(result)
    finally:
        no_budget(kube)
        uncordon(kube)
    assert not kube.get("node", NODE_NAME)["spec"].get("unschedulable")
    lasted = ended_early(result, "recovery")
    print(f"\nk8s drain: {checks['replicas-back']['summary']}; recovery phase {lasted:.0f}s")


def test_node_restart_passes_with_retrying_clients(kube: Kube, tmp_path: Path) -> None:
    shape(kube)
    result = drill(kube, "node-restart.yaml", tmp_path, READY_WITHIN=NODE_RESTART_READY_WITHIN)
    checks = assert_passed(result)
    lasted = ended_early(result, "restart")
    print(f"\nk8s node restart: {checks['replicas-back']['summary']}; restart phase "
          f"{lasted:.0f}s")


def test_a_drain_that_would_violate_a_budget_is_refused(kube: Kube, tmp_path: Path) -> None:
    shape(kube)
    budget(kube, 2)  # both replicas required: no eviction is allowed
    before = {p["metadata"]["name"] for p in kube.get(
        "pods", "-n", kube.namespace, "-l", "app.kubernetes.io/name=vllm")["items"]}
    try:
        result = drill(kube, "drain.yaml", tmp_path, BASELINE_PHASE="3s", SETTLE_PHASE="1s",
                       RECOVERY_PHASE="2s", READY_WITHIN="1s")
    finally:
        no_budget(kube)
    assert result["_exit"] != 0 and result["status"] != "passed", summary_of(result)
    text = json.dumps(result) + result["_output"]
    assert "refused" in text and "would violate PodDisruptionBudget" in text, text[-3000:]
    assert "never forces an eviction" in text
    # Nothing changed: the node schedulable, the same pods.
    assert not kube.get("node", NODE_NAME)["spec"].get("unschedulable")
    after = {p["metadata"]["name"] for p in kube.get(
        "pods", "-n", kube.namespace, "-l", "app.kubernetes.io/name=vllm")["items"]}
    assert after == before


# --- the load from pods: Locust's distributed mode with workers as Kubernetes pods --------

WORKERS_NAME = "llmdrill-load-workers"
WORKERS_SCENARIO = """
apiVersion: llmdrill/v1
kind: Scenario
metadata: {{name: k8s-pod-workers}}
target: {{base_url: "${{LLMDRILL_KUBE_TARGET_URL}}", model: tiny}}
load:
  users: 4
  remote_workers: 2
  master: {{port: {port}, wait: 120s}}
  requests: [{{api: completions, stream: true, prompt_tokens: 8, max_tokens: 4}}]
  retries: {{max_attempts: 1}}
phases: [{{name: steady, duration: 8s}}]
checks:
  - {{name: served, phase: steady, slo: {{error_rate: {{max: 0.0}}, min_requests: 10}}}}
"""


def load_workers(namespace: str, master_port: int, replicas: int) -> dict[str, Any]:
    """A Deployment of `llmdrill load-worker` pods, as docs/operations.md has it for a real
    cluster, but from this machine's venv and source (mounted read-only from the node, as
    the engine's pods mount theirs) instead of the llmdrill image. On the host network,
    so the master on 127.0.0.1 is in reach and the traffic stays on the loopback."""
    venv = Path(sys.prefix)
    host_ro = ["/usr", "/lib", "/lib64", "/etc", str(processes.python_home(venv)), str(venv),
               str(REPO)]
    labels = {"app": WORKERS_NAME}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": WORKERS_NAME, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "hostNetwork": True, "dnsPolicy": "Default",
                    "enableServiceLinks": False, "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "worker", "image": ENGINE_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": [str(venv / "bin" / "llmdrill"), "load-worker",
                                    "--master", f"127.0.0.1:{master_port}"],
                        "env": [{"name": "HOME", "value": "/tmp"},
                                {"name": "PATH", "value": f"{venv / 'bin'}:/usr/bin:/bin"}],
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                        "volumeMounts": [
                            *({"name": f"host-{i}", "mountPath": path, "readOnly": True}
                              for i, path in enumerate(host_ro)),
                            {"name": "tmp", "mountPath": "/tmp"}],
                    }],
                    "volumes": [
                        *({"name": f"host-{i}", "hostPath": {"path": path}}
                          for i, path in enumerate(host_ro)),
                        {"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def test_load_workers_as_pods_send_the_load_and_every_request_is_evidence(
        kube: Kube, tmp_path: Path) -> None:
    shape(kube)
    port = free_port()
    path = tmp_path / "pod-workers.yaml"
    path.write_text(WORKERS_SCENARIO.format(port=port))
    out = tmp_path / "reports"
    run = start_run(path, out, kube.env())
    pods: set[str] = set()
    try:
        kube.kubectl("apply", "-f", "-", input=json.dumps(
            load_workers(kube.namespace, port, 2)))
        deadline = time.time() + 300
        while run.poll() is None and time.time() < deadline:
            listed = kube.get("pods", "-n", kube.namespace, "-l", f"app={WORKERS_NAME}")
            pods |= {p["metadata"]["name"] for p in listed["items"]
                     if p.get("status", {}).get("phase") == "Running"}
            time.sleep(1)
        output, _ = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        kube.kubectl("delete", "deployment", "-n", kube.namespace, WORKERS_NAME,
                     "--ignore-not-found", "--wait=true", "--timeout=60s", check=False)
    assert run.returncode == 0, output[-3000:]
    assert len(pods) == 2, pods  # the load came from two pods
    folder = next(out.glob("*/result.json")).parent
    files = sorted(folder.glob("samples-w*.jsonl"))
    assert len(files) == 2, files
    sent = [samples_sent(f) for f in files]
    assert all(n > 0 for n in sent), sent  # each pod drove the engine
    assert evidence_requests(folder) == sum(sent)  # and every request a pod recorded is evidence
    print(f"\nk8s pod workers: {sent} requests from pods {sorted(pods)}")


# --- SIGTERM and kill -9: the cluster as it was ---------------------------------------------

# Faults on two busybox Deployments of a namespace of their own (their pods start in a
# second): the node cordoned and their pods evicted, one scaled down, the other's memory
# limit lowered, a rollout restart. Every phase boundary reverts some and applies others.
TRIAL_SCENARIO = f"""
apiVersion: llmdrill/v1
kind: Scenario
metadata: {{name: kube-kill-trial}}
target: {{base_url: "${{LLMDRILL_KUBE_TARGET_URL}}", model: tiny}}
faults:
  drain:
    kubernetes: {{action: drain, namespace: {TRIAL_NAMESPACE}, selector: {{app: box-a}},
                 max_pods: 2, drain_timeout: 2s}}
  shrink:
    kubernetes: {{action: scale, namespace: {TRIAL_NAMESPACE}, deployment: box-b, replicas: 0,
                 max_pods: 2}}
  squeeze:
    kubernetes: {{action: memory, namespace: {TRIAL_NAMESPACE}, deployment: box-a,
                 selector: {{app: box-a}}, memory: 48MiB, max_pods: 2}}
  restart:
    kubernetes: {{action: rollout_restart, namespace: {TRIAL_NAMESPACE}, deployment: box-b,
                 max_pods: 2}}
load: {{users: 0}}
phases:
  - {{name: a, duration: "${{PHASE_A:-2s}}", faults: [squeeze, shrink]}}
  - {{name: b, duration: "${{PHASE_B:-3s}}", faults: [drain, shrink]}}
  - {{name: c, duration: 1s, faults: [restart]}}
  - {{name: d, duration: 1s}}
"""

BOX_MEMORY = "64Mi"


def boxes(kube: Kube) -> None:
    """Two busybox Deployments (box-a: 2 replicas, box-b: 1) with a 64Mi memory limit."""
    kube.kubectl("wait", "--for=delete", f"namespace/{TRIAL_NAMESPACE}", "--timeout=120s",
                 check=False)  # a namespace still terminating takes no new object
    items: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": TRIAL_NAMESPACE}}]
    for name, replicas in (("box-a", 2), ("box-b", 1)):
        items.append({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": TRIAL_NAMESPACE},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {
                         # The test node's CNI is loopback only: host network, as
                         # the engine's pods.
                         "hostNetwork": True, "dnsPolicy": "Default",
                         "terminationGracePeriodSeconds": 0,
                         "automountServiceAccountToken": False,
                         "enableServiceLinks": False,
                         "containers": [{
                             "name": "box", "image": ENGINE_IMAGE,
                             "imagePullPolicy": "Never",
                             "command": ["sleep", "100000"],
                             "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                                           "limits": {"memory": BOX_MEMORY}}}]}}}})
    kube.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                        "items": items}))
    _wait("busybox boxes", lambda: trial_residue(kube) == [], timeout=120)


def trial_residue(kube: Kube) -> list[str]:
    """What a trial left changed: the node cordoned, a replica count, a memory limit
    (Deployment template or running pod), a box pod not running."""
    found = []
    if kube.get("node", NODE_NAME)["spec"].get("unschedulable"):
        found.append("node cordoned")
    for name, replicas in (("box-a", 2), ("box-b", 1)):
        dep = kube.get("deployment", "-n", TRIAL_NAMESPACE, name)
        if dep["spec"]["replicas"] != replicas:
            found.append(f"{name} replicas {dep['spec']['replicas']}")
        limit = dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        if limit.get("memory") != BOX_MEMORY:
            found.append(f"{name} template memory {limit.get('memory')}")
        pods = [p for p in kube.get("pods", "-n", TRIAL_NAMESPACE, "-l", f"app={name}")["items"]
                if not p["metadata"].get("deletionTimestamp")]
        running = [p for p in pods if p.get("status", {}).get("phase") == "Running"]
        if len(running) != replicas:
            found.append(f"{name} {len(running)}/{replicas} pods running")
        for pod in pods:
            got = pod["spec"]["containers"][0]["resources"]["limits"].get("memory")
            if got != BOX_MEMORY:
                found.append(f"pod {pod['metadata']['name']} memory {got}")
    return found


@pytest.fixture
def trial_boxes(kube: Kube) -> Iterator[Kube]:
    boxes(kube)
    try:
        yield kube
    finally:
        uncordon(kube)
        kube.kubectl("delete", "namespace", TRIAL_NAMESPACE, "--ignore-not-found",
                     "--timeout=120s", check=False)


def _watchdog_pids(run_root: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"llmdrill.harness.watchdog {run_root}"],
                         capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _start_trial(kube: Kube, folder: Path, **env: str) -> subprocess.Popen[bytes]:
    folder.mkdir()
    (folder / "trial.yaml").write_text(TRIAL_SCENARIO)
    with (folder / "run.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "llmdrill.cli", "run", str(folder / "trial.yaml"),
             "--quiet", "--out", str(folder / "reports")],
            env=kube.env(**env), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)


def test_sigterm_mid_drill_leaves_the_cluster_as_it_was(trial_boxes: Kube,
                                                        tmp_path: Path) -> None:
    kube = trial_boxes
    proc = _start_trial(kube, tmp_path / "run", PHASE_A="60s", PHASE_B="60s")
    squeezed_deadline = time.time() + 60
    while time.time() < squeezed_deadline:  # the squeeze and the scale-down in place
        found = trial_residue(kube)
        if any(" memory " in f for f in found) and any("box-b replicas 0" in f
                                                          for f in found):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the faults never showed: {trial_residue(kube)}; the run said:\n"
                    f"{(tmp_path / 'run' / 'run.log').read_text()[-3000:]}")
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) != 0
    _wait("boxes as they were", lambda: trial_residue(kube) == [], timeout=120)
    result = json.loads(next((tmp_path / "run" / "reports").glob("*/result.json")).read_text())
    assert result["status"] == "aborted"
    assert {f["name"] for f in result["faults"] if f.get("reverted_at")} >= {"squeeze", "shrink"}


def test_sigkill_at_random_moments_then_cleanup_leaves_the_cluster_as_it_was(
        trial_boxes: Kube, tmp_path: Path) -> None:
    kube = trial_boxes
    rng = random.Random(int(os.environ.get("LLMDRILL_KILL_SEED", "0")) or None)
    with_faults = 0
    kinds: set[str] = set()
    for trial in range(TRIALS):
        folder = tmp_path / f"trial-{trial}"
        proc = _start_trial(kube, folder)
        # Spread over the run (start-up, each phase, the reverts): one slot each.
        time.sleep(1.0 + 7.0 * (trial + rng.random()) / TRIALS)
        for pid in _watchdog_pids(folder / "reports"):
            os.kill(pid, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        found = trial_residue(kube)
        if found:
            with_faults += 1
            kinds.update(" ".join(f.split()[1:3]) for f in found)
        done = llmdrill("cleanup", env=kube.env())
        assert done.returncode == 0, done.stdout + done.stderr
        _wait(f"trial {trial}: the boxes as they were after cleanup (left: {found})",
              lambda: trial_residue(kube) == [], timeout=120)
        count("kill -9 trials with Kubernetes faults")
    print(f"\nkill -9 trials with Kubernetes faults: {TRIALS}, with faults in place at the "
          f"kill: {with_faults} ({'; '.join(sorted(kinds)) or 'none'}), left after cleanup: 0")
    assert with_faults >= TRIALS // 3


# --- and fail on broken engines ---------------------------------------------------------------


def failed_checks(result: dict[str, Any]) -> set[str]:
    assert result["status"] == "failed" and result["_exit"] == 1, summary_of(result)
    checks = checks_of(result)
    assert checks["baseline-healthy"]["status"] == "passed", summary_of(result)
    return {name for name, c in checks.items() if c["status"] == "failed"}


def test_pod_kill_fails_without_a_readiness_probe(kube: Kube, tmp_path: Path) -> None:
    shape(kube, probe=False)
    failed = failed_checks(drill(kube, "pod-kill.yaml", tmp_path, KILL_PHASE="45s",
                                 READY_WITHIN="40s", TTFT_WITHIN="40s"))
    # Kubernetes called the loading pod Ready; the Service sent it requests.
    assert {"ready-serves", "requests-lost"} <= failed, failed


def test_container_kill_fails_without_a_readiness_probe(kube: Kube, tmp_path: Path) -> None:
    shape(kube, probe=False)
    failed = failed_checks(drill(kube, "container-kill.yaml", tmp_path, KILL_PHASE="45s",
                                 READY_WITHIN="40s", TTFT_WITHIN="40s"))
    assert {"ready-serves", "requests-lost"} <= failed, failed


def test_drain_fails_with_one_replica_and_no_budget(kube: Kube, tmp_path: Path) -> None:
    shape(kube, replicas=1)
    no_budget(kube)
    try:
        failed = failed_checks(drill(kube, "drain.yaml", tmp_path, RECOVERY_PHASE="10s",
                                     READY_WITHIN="8s"))
    finally:
        uncordon(kube)
    assert "drain-requests-lost" in failed, failed
