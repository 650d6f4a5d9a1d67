"""The Kubernetes backend's pure logic (spec, selection, revert planning, drain refusal,
quantities), its judge and the replicas_ready / ready_serves checks on synthetic
evidence, the reverter against a fake API, the pod/node summaries the watcher records,
and the test gateway's EndpointSlice logic. No cluster needed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest
from pydantic import ValidationError

from llmdrill.checks import evaluate_check
from llmdrill.faults import kubernetes as kb
from llmdrill.faults.base import EnvironmentProblem
from llmdrill.faults.kube_api import KubeError, kubeconfig_path, selector_text
from llmdrill.faults.kubernetes import KubernetesFault
from llmdrill.model.records import Evidence, FaultEvent, PhaseWindow, RequestRecord
from llmdrill.model.result import CheckResult
from llmdrill.probes.kube_events import node_summary, owner_of, pod_summary, routable_counts
from llmdrill.scenario.errors import ScenarioError
from llmdrill.scenario.loader import load_scenario
from llmdrill.scenario.models import Check, Fault
from llmdrill.stack.kube_gateway import GatewayConfig, haproxy_config, ready_ports, wanted_states

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0
REPO = Path(__file__).resolve().parents[2]


def spec(**kw: Any) -> KubernetesFault:
    return KubernetesFault.model_validate(kw)


# --- the scenario format -----------------------------------------------------------------


def test_a_kubernetes_fault_is_a_fault_backend() -> None:
    f = Fault.model_validate({"kubernetes": {"action": "pod_kill", "selector": {"a": "b"}}})
    assert f.backend == "kubernetes"
    assert isinstance(f.spec, KubernetesFault)
    assert f.kind.label is not None and f.kind.label(f.spec) == "kubernetes pod_kill"


@pytest.mark.parametrize(("body", "message"), [
    ({"action": "pod_kill"}, "action pod_kill needs selector (labels) or deployment"),
    ({"action": "container_kill", "namespace": "x"}, "needs selector"),
    ({"action": "pod_kill", "selector": {"a": "b"}, "count": 2, "fraction": 0.5},
     "give count or fraction, not both"),
    ({"action": "pod_kill", "selector": {"a": "b"}, "fraction": 0}, "fraction must be above 0"),
    ({"action": "scale", "replicas": 1}, "action scale needs deployment"),
    ({"action": "scale", "deployment": "d"}, "action scale needs replicas"),
    ({"action": "rollout_restart"}, "action rollout_restart needs deployment"),
    ({"action": "memory", "deployment": "d"}, "action memory needs memory"),
    ({"action": "memory", "deployment": "d", "memory": "1MiB"}, "under 4MiB"),
    ({"action": "memory", "selector": {"a": "b"}, "memory": "1GiB", "resize": "deployment"},
     "resize: deployment needs deployment"),
    ({"action": "node_restart", "node": "n", "stop": ["x"]}, "needs stop and start"),
    ({"action": "node_restart", "stop": ["x"], "start": ["y"]}, "needs node, or selector"),
    ({"action": "drain", "node": "n"}, "needs selector or deployment"),
    ({"action": "container_kill", "selector": {"a": "b"}, "via": "command"},
     "via: command needs kill_command"),
    ({"action": "scale", "deployment": "d", "replicas": 1, "memory": "1GiB"},
     "memory does not go with action scale"),
    ({"action": "pod_kill", "selector": {"a": "b"}, "stop": ["x"]},
     "stop does not go with action pod_kill"),
    ({"action": "drain", "selector": {"a": "b"}, "count": 1},
     "count does not go with action drain"),
    ({"action": "pod_kill", "selector": {"a": "b"}, "grace": 5}, "needs a unit"),
    ({"action": "pod_kill", "selector": {"a": "b"}, "namespace": "Bad_Name"}, "pattern"),
    ({"action": "explode", "selector": {"a": "b"}}, "action"),
    ({"action": "scale", "deployment": "d", "replicas": -1}, "greater than or equal to 0"),
])
def test_invalid_kubernetes_faults_are_refused(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        KubernetesFault.model_validate(body)


BASE = """\
apiVersion: llmdrill/v1
kind: Scenario
metadata:
  name: drill
target:
  base_url: http://127.0.0.1:8000
  model: tiny
phases:
  - {name: p, duration: 10s, faults: [f]}
faults:
  f:
    kubernetes:
"""


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, env={})
    return [str(issue).replace(str(tmp_path) + "/", "") for issue in info.value.issues]


def test_bad_input_is_reported_with_file_line_and_column(tmp_path: Path) -> None:
    text = BASE + "      action: scale\n      deployment: vllm-0\n"
    assert problems(tmp_path, text) == [
        "scenario.yaml:12:5: faults.f.kubernetes: action scale needs replicas"]
    text = BASE + "      action: pod_kill\n      selector: {a: b}\n      grace: 10\n"
    assert problems(tmp_path, text) == [
        "scenario.yaml:15:7: faults.f.kubernetes.grace: a duration needs a unit: write "
        "'10s' or '10ms' (units: ms, s, m, h)"]
    text = (BASE + "      action: pod_kill\n      selector: {a: b}\n"
            "checks:\n  - {phase: p, replicas_ready: {fault: g, within: 10s}}\n"
            "  - {phase: p, ready_serves: {fault: f, urls: {d: 'ftp://x'}}}\n")
    found = problems(tmp_path, text)
    assert "scenario.yaml:17:41: checks.1.ready_serves.urls: must start with http:// or " \
           "https://, got 'ftp://x'" in found


def test_check_references_must_name_a_kubernetes_fault(tmp_path: Path) -> None:
    text = (BASE + "      action: pod_kill\n      selector: {a: b}\n"
            "  t: {toxiproxy: {proxy: x, toxic: down}}\n"
            "checks:\n  - {phase: p, replicas_ready: {fault: g, within: 10s}}\n"
            "  - {phase: p, replicas_ready: {fault: t, within: 10s}}\n")
    found = problems(tmp_path, text)
    assert any("checks.0.replicas_ready.fault: unknown fault 'g'" in f for f in found), found
    assert any("checks.1.replicas_ready.fault: fault 't' is not a kubernetes fault" in f
               for f in found), found


def test_the_shipped_kubernetes_scenarios_load_and_are_not_quickstart() -> None:
    files = sorted((REPO / "scenarios" / "kubernetes").glob("*.yaml"))
    assert [f.stem for f in files] == ["container-kill", "drain", "node-restart", "pod-kill"]
    for path in files:
        scenario = load_scenario(path, env={})
        assert "kubernetes" in scenario.metadata.tags
        assert "quickstart" not in scenario.metadata.tags
        assert {f.backend for f in scenario.faults.values()} == {"kubernetes"}
        kinds = {c.kind for c in scenario.checks}
        assert {"replicas_ready", "ready_serves"} <= kinds, path


# --- pure planning -----------------------------------------------------------------------


def pod(name: str, *, created: str = "2026-01-01T00:00:00Z", phase: str = "Running",
        labels: dict[str, str] | None = None, ns: str = "ns", owner: str | None = "rs-abc",
        deleting: bool = False, node: str = "n1", ready: bool = True, restarts: int = 0,
        **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "uid": f"uid-{name}",
                            "creationTimestamp": created,
                            "labels": {"app": "e", "pod-template-hash": "abc",
                                       **(labels or {})}}
    if owner:
        meta["ownerReferences"] = [{"kind": "ReplicaSet", "name": owner, "controller": True}]
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    return {"metadata": meta,
            "spec": {"nodeName": node, "containers": [
                {"name": "engine", "resources": {"limits": {"memory": "6Gi"},
                                                 "requests": {"memory": "2Gi"}}}]},
            "status": {"phase": phase,
                       "conditions": [{"type": "Ready", "status": str(ready)}],
                       "containerStatuses": [{"name": "engine", "ready": ready,
                                              "restartCount": restarts,
                                              "containerID": "containerd://c0ffee",
                                              "state": {"running": {}}, **extra}]}}


def test_count_and_fraction_select_how_many() -> None:
    assert kb.how_many(spec(action="pod_kill", selector={"a": "b"}), 5) == 1
    assert kb.how_many(spec(action="pod_kill", selector={"a": "b"}, count=3), 5) == 3
    assert kb.how_many(spec(action="pod_kill", selector={"a": "b"}, count=9), 5) == 5
    assert kb.how_many(spec(action="pod_kill", selector={"a": "b"}, fraction=0.5), 5) == 3
    assert kb.how_many(spec(action="pod_kill", selector={"a": "b"}, fraction=0.4), 5) == 2
    assert kb.how_many(spec(action="pod_kill", selector={"a": "b"}, fraction=0.01), 5) == 1
    assert kb.how_many(spec(action="pod_kill", selector={"a": "b"}, fraction=1.0), 5) == 5


def test_pick_is_seeded_random_oldest_or_newest() -> None:
    pods = [pod(f"p{i}", created=f"2026-01-01T00:00:0{i}Z") for i in range(5)]
    first = [kb.name_of(p) for p in kb.pick_pods(pods, 2, "random", "run/f")]
    again = [kb.name_of(p) for p in kb.pick_pods(list(reversed(pods)), 2, "random", "run/f")]
    assert first == again  # the run id replays the choice, whatever the list order
    assert len(set(first)) == 2
    assert [kb.name_of(p) for p in kb.pick_pods(pods, 2, "oldest", "")] == ["p0", "p1"]
    assert [kb.name_of(p) for p in kb.pick_pods(pods, 2, "newest", "")] == ["p4", "p3"]
    assert kb.live(pods[0]) and not kb.live(pod("x", deleting=True))
    assert not kb.live(pod("x", phase="Pending"))


def pdb(name: str, allowed: int, selector: dict[str, Any], ns: str = "ns",
        **rule: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns},
            "spec": {"selector": selector, **(rule or {"minAvailable": 1})},
            "status": {"disruptionsAllowed": allowed, "currentHealthy": 2,
                       "desiredHealthy": 2, "expectedPods": 2}}


def test_a_drain_that_would_have_to_violate_a_budget_is_refused() -> None:
    evict = [pod("a"), pod("b")]
    strict = pdb("vllm", 0, {"matchLabels": {"app": "e"}}, minAvailable=2)
    message = kb.drain_refusal("n1", evict, [strict])
    assert message is not None
    assert message.startswith("drain of node 'n1' refused: evicting pod ns/a would violate "
                              "PodDisruptionBudget ns/vllm (minAvailable 2: 2 of 2 pods "
                              "healthy, 2 required, 0 disruptions allowed)")
    assert "never forces" in message
    # A budget that allows a disruption lets the drain progress (the API refuses the rest).
    assert kb.drain_refusal("n1", evict, [pdb("vllm", 1, {"matchLabels": {"app": "e"}})]) is None
    # Budgets of other namespaces, or selecting other pods, do not count.
    assert kb.drain_refusal("n1", evict, [pdb("x", 0, {"matchLabels": {"app": "e"}}, ns="o"),
                                          pdb("y", 0, {"matchLabels": {"app": "z"}})]) is None
    two = kb.drain_refusal("n1", evict, [pdb("p", 1, {}), pdb("q", 1, {"matchLabels": {}})])
    assert two is not None and "several PodDisruptionBudgets (ns/p, ns/q)" in two


def test_label_selectors_with_expressions() -> None:
    labels = {"app": "e", "tier": "serving"}
    assert kb.selector_matches({}, labels)
    assert kb.selector_matches({"matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["serving", "x"]},
        {"key": "app", "operator": "Exists"},
        {"key": "gone", "operator": "DoesNotExist"},
        {"key": "tier", "operator": "NotIn", "values": ["batch"]}]}, labels)
    assert not kb.selector_matches({"matchExpressions": [
        {"key": "tier", "operator": "NotIn", "values": ["serving"]}]}, labels)
    assert not kb.selector_matches({"matchLabels": {"app": "other"}}, labels)


def test_quantities_and_the_squeezed_resources() -> None:
    assert kb.parse_quantity("6Gi") == 6 * 2**30
    assert kb.parse_quantity("512M") == 512 * 10**6
    assert kb.parse_quantity("1073741824") == 2**30
    assert kb.parse_quantity("1.5Gi") == 3 * 2**29
    assert kb.parse_quantity("lots") is None and kb.parse_quantity(None) is None
    assert kb.quantity(2 * 2**30) == "2Gi" and kb.quantity(1536 * 2**20) == "1536Mi"
    assert kb.quantity(1000) == "1000"
    before = {"limits": {"memory": "6Gi", "cpu": "2"}, "requests": {"memory": "2Gi"}}
    assert kb.squeezed_resources(before, 3 * 2**30) == {
        "limits": {"memory": "3Gi", "cpu": "2"}, "requests": {"memory": "2Gi"}}
    # A request above the new limit is lowered with it (the API refuses it otherwise).
    assert kb.squeezed_resources(before, 2**30) == {
        "limits": {"memory": "1Gi", "cpu": "2"}, "requests": {"memory": "1Gi"}}
    assert kb.squeezed_resources({}, 2**30) == {"limits": {"memory": "1Gi"}}


@pytest.mark.parametrize(("body", "facts", "expected"), [
    ({"action": "pod_kill", "selector": {"a": "b"}}, {}, {"op": "none"}),
    ({"action": "container_kill", "selector": {"a": "b"}}, {}, {"op": "none"}),
    ({"action": "rollout_restart", "deployment": "d"}, {}, {"op": "none"}),
    ({"action": "drain", "selector": {"a": "b"}}, {"node": "n1", "was_unschedulable": False},
     {"op": "uncordon", "node": "n1"}),
    ({"action": "drain", "selector": {"a": "b"}}, {"node": "n1", "was_unschedulable": True},
     {"op": "none", "node": "n1"}),
    ({"action": "node_restart", "node": "n1", "stop": ["s"], "start": ["go", "{node}"]},
     {"node": "n1", "start": ["go", "n1"], "cwd": "/w"},
     {"op": "start_node", "node": "n1", "start": ["go", "n1"], "cwd": "/w",
      "ready_timeout": 180.0, "command_timeout": 120.0}),
    ({"action": "scale", "deployment": "d", "replicas": 0}, {"replicas": 3},
     {"op": "scale", "deployment": "d", "replicas": 3}),
    ({"action": "memory", "deployment": "d", "memory": "1GiB"},
     {"mode": "in_place", "container": "engine",
      "pods": {"p": {"uid": "u", "resources": {"limits": {"memory": "6Gi"}}}}},
     {"op": "resize", "container": "engine",
      "pods": {"p": {"uid": "u", "resources": {"limits": {"memory": "6Gi"}}}}}),
    ({"action": "memory", "deployment": "d", "memory": "1GiB"},
     {"mode": "deployment", "container": "engine", "index": 0, "resources": {}},
     {"op": "patch_deployment", "deployment": "d", "container": "engine", "index": 0,
      "resources": {}}),
])
def test_every_action_has_a_plain_json_way_back(body: dict[str, Any], facts: dict[str, Any],
                                                expected: dict[str, Any]) -> None:
    action = kb.revert_action(spec(namespace="ns", context="ctx", **body), "/k/config",
                              fault="f", **facts)
    assert json.loads(json.dumps(action)) == action  # what the journal keeps
    assert action["backend"] == "kubernetes" and action["kubeconfig"] == "/k/config"
    assert action["context"] == "ctx" and action["namespace"] == "ns"
    assert expected.items() <= dict(action).items(), action


def test_placeholders_signals_and_kubeconfig(monkeypatch: pytest.MonkeyPatch) -> None:
    assert kb.replace_placeholders(["ssh", "{node}", "kill -{signal} x{pod}"],
                                   {"node": "n1", "signal": "KILL", "pod": "p"}) == [
        "ssh", "n1", "kill -KILL xp"]
    assert kb.parse_signal("kill").name == "SIGKILL" and kb.parse_signal("15").name == "SIGTERM"
    with pytest.raises(ValueError, match="unknown signal"):
        kb.parse_signal("SIGNOPE")
    monkeypatch.setenv("KUBECONFIG", "~/a:/b")
    assert kubeconfig_path() == f"{Path.home()}/a:/b"
    assert kubeconfig_path("/c") == "/c"
    assert selector_text({"b": "2", "a": "1"}) == "a=1,b=2"


def test_container_index_and_the_main_pid(tmp_path: Path) -> None:
    podspec = {"containers": [{"name": "sidecar"}, {"name": "engine"}]}
    assert kb.container_index(podspec, None)[0] == 0
    assert kb.container_index(podspec, "engine")[0] == 1
    with pytest.raises(EnvironmentProblem,
                       match=re.escape("no container 'x' (containers: sidecar, engine)")):
        kb.container_index(podspec, "x")
    assert kb.container_id(pod("p"), "engine") == "c0ffee"
    assert kb.container_id(pod("p", state={"waiting": {}}), "engine") is None
    # A fake /proc: the shim (10), the container's main process (11) and its child (12).
    for pid, ppid, cgroup in ((10, 1, "/system"), (11, 10, "/kubepods/pod1/c0ffee"),
                              (12, 11, "/kubepods/pod1/c0ffee"), (13, 1, "/other")):
        folder = tmp_path / str(pid)
        folder.mkdir()
        (folder / "cgroup").write_text(f"4:memory:{cgroup}\n")
        (folder / "stat").write_text(f"{pid} (proc name) S {ppid} 0 0")
    assert kb.main_pid("c0ffee", tmp_path) == 11
    assert kb.main_pid("deadbeef", tmp_path) is None
    assert kb.main_pid("", tmp_path) is None


# --- what the watcher records -----------------------------------------------------------------


def test_pod_and_node_summaries() -> None:
    p = pod("vllm-0-abc-x1", owner="vllm-0-abc", restarts=2,
            lastState={"terminated": {"reason": "OOMKilled", "exitCode": 137}},
            resources={"limits": {"memory": "5Gi"}})
    s = pod_summary(p)
    assert owner_of(p) == ("ReplicaSet/vllm-0-abc", "vllm-0")
    assert (s["pod"], s["deployment"], s["node"], s["ready"], s["routable"]) == (
        "vllm-0-abc-x1", "vllm-0", "n1", True, True)
    assert s["restarts"] == 2
    assert s["containers"]["engine"] == {"ready": True, "restarts": 2, "state": "running",
                                         "last_reason": "OOMKilled", "last_exit_code": 137,
                                         "memory_limit": "5Gi"}
    # Terminating: still Ready, no longer routable (its endpoint is not ready).
    t = pod_summary(pod("p", deleting=True))
    assert t["ready"] and not t["routable"] and t["terminating"]
    assert not pod_summary(pod("p"), deleted=True)["routable"]
    assert owner_of(pod("p", owner=None)) == (None, None)
    node = {"metadata": {"name": "n1"}, "spec": {"unschedulable": True, "taints": [
        {"key": "node.kubernetes.io/unschedulable"}]},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown",
                                       "reason": "NodeStatusUnknown"}]}}
    assert node_summary(node) == {"node": "n1", "ready": "Unknown",
                                  "reason": "NodeStatusUnknown", "unschedulable": True,
                                  "taints": ["node.kubernetes.io/unschedulable"],
                                  "deleted": False}


# --- the judge ----------------------------------------------------------------------------------


def rec(start: float, duration: float = 1.0, *, error: str | None = None,
        attempts: int = 1) -> RequestRecord:
    return RequestRecord(start=T0 + start, end=T0 + start + duration,
                         ttft=None if error else 0.2, error_class=error, attempts=attempts,
                         output_tokens=16)


def state(t: float, name: str, *, routable: bool = True, fault: str | None = "f",
          check: str | None = None, deployment: str = "vllm-0", **kw: Any
          ) -> tuple[float, str, dict[str, Any]]:
    detail: dict[str, Any] = {"pod": name, "namespace": "ns", "labels": {"app": "e"},
                              "deployment": deployment, "routable": routable,
                              "ready": routable, "terminating": False, "deleted": False,
                              "restarts": 0, "containers": {}, **kw}
    if fault:
        detail["fault"] = fault
    if check:
        detail["check"] = check
    return (T0 + t, "kube_pod", detail)


def action(t: float, step: str, **kw: Any) -> tuple[float, str, dict[str, Any]]:
    return (T0 + t, "kube_action", {"fault": "f", "step": step, **kw})


def evidence(events: list[tuple[float, str, dict[str, Any]]],
             requests: list[RequestRecord] | None = None, applied: float = 10.0,
             reverted: float | None = 60.0, phases: list[PhaseWindow] | None = None
             ) -> Evidence:
    events = [*events, (T0 + applied, "fault_applied", {"fault": "f"})]
    if reverted is not None:
        events.append((T0 + reverted, "fault_reverted", {"fault": "f"}))
    return Evidence(requests=requests or [], events=sorted(events, key=lambda e: e[0]),
                    faults=[FaultEvent("f", T0 + applied,
                                       None if reverted is None else T0 + reverted)],
                    phases=phases or [PhaseWindow("p", T0 + 9.9, T0 + 60.0, ("f",))],
                    run_end=T0 + 70)


KILL_SPEC = {"action": "pod_kill", "selector": {"app": "e"}}


def judged(body: dict[str, Any], ev: Evidence) -> tuple[bool | None, str]:
    effect = kb.judge_kubernetes(spec(**body), "f", ev)
    return effect.landed, effect.detail


def test_a_pod_kill_landed_when_the_pod_went_and_traffic_felt_it() -> None:
    events = [state(9.8, "a"), state(9.8, "b"), action(10.0, "delete", pods=["a"]),
              state(10.05, "a", routable=False, terminating=True), state(10.1, "c",
                                                                          routable=False)]
    cut = [rec(9.0, 2.0, error="incomplete_stream"), rec(9.5), rec(10.5)]
    landed, detail = judged(KILL_SPEC, evidence(events, cut))
    assert landed is True, detail
    assert detail == "a deleted, replaced by c; 1 of 3 requests in flight meanwhile failed " \
                     "or were retried"
    # Gone, but not one of the requests in flight felt it: the clients go elsewhere.
    landed, detail = judged(KILL_SPEC, evidence(events, [rec(9.0, 2.0), rec(9.5), rec(10.5)]))
    assert landed is False and "wrong selector?" in detail
    # Never seen going.
    landed, detail = judged(KILL_SPEC, evidence(events[:3]))
    assert landed is False and "never seen terminating or deleted" in detail
    # The watch recorded nothing: no evidence either way.
    landed, detail = judged(KILL_SPEC, evidence([action(10.0, "delete", pods=["a"])]))
    assert landed is None and "recorded nothing" in detail
    landed, _ = judged(KILL_SPEC, evidence([]))
    assert landed is None


def test_a_container_kill_landed_when_the_restart_count_rose() -> None:
    body = {"action": "container_kill", "selector": {"app": "e"}}
    before = [state(9.8, "a"), action(10.0, "signal", pod="a", restarts_before=0)]
    landed, detail = judged(body, evidence([*before, state(12.0, "a", restarts=1)],
                                           [rec(9.0, 2.0, error="incomplete_stream")]))
    assert landed is True and "restarted the killed container of a" in detail
    landed, detail = judged(body, evidence([*before, state(12.0, "a", routable=False)]))
    assert landed is False and "never rose" in detail


def test_a_node_restart_landed_when_the_node_went_not_ready() -> None:
    body = {"action": "node_restart", "node": "n1", "stop": ["s"], "start": ["t"]}
    node = [(T0 + 9.8, "kube_node", {"fault": "f", "node": "n1", "ready": "True"})]
    stop = [action(10.0, "stop", node="n1"), action(25.0, "start", node="n1")]
    down = [(T0 + 21.0, "kube_node", {"fault": "f", "node": "n1", "ready": "Unknown"}),
            (T0 + 27.0, "kube_node", {"fault": "f", "node": "n1", "ready": "True"})]
    landed, detail = judged(body, evidence(node + stop + down))
    assert landed is True
    assert detail.startswith("node NotReady 11.0s after the stop, Ready again 2.0s after the "
                             "start")
    landed, detail = judged(body, evidence(node + stop))
    assert landed is False and "never went NotReady" in detail
    landed, _ = judged(body, evidence(stop))
    assert landed is None


def test_a_drain_landed_when_a_pod_was_evicted() -> None:
    body = {"action": "drain", "selector": {"app": "e"}}
    base = [action(10.0, "cordon", node="n1")]
    evicted = [action(10.1, "evict", pod="a"),
               action(10.1, "evict_refused", pod="b", reason="Cannot evict pod"),
               action(30.1, "drain_incomplete", pods=["b"], reason="Cannot evict pod")]
    landed, detail = judged(body, evidence(base + evicted))
    assert landed is True
    assert detail.startswith("node cordoned, 1 pod(s) evicted (a); 1 held by a disruption "
                             "budget until the drain timeout (Cannot evict pod)")
    landed, detail = judged(body, evidence(base + evicted[1:2]))
    assert landed is False and "no pod was evicted; 1 refused: Cannot evict pod" in detail


def test_scale_restart_and_memory_judgements() -> None:
    scale = {"action": "scale", "deployment": "d", "replicas": 1}
    two = [state(9.8, "a"), state(9.8, "b"), action(10.0, "scale", replicas=1)]
    landed, detail = judged(scale, evidence([*two, state(10.5, "b", routable=False,
                                                         terminating=True)]))
    assert landed is True and detail.startswith("1 pods 0.5s after the scale")
    landed, _ = judged(scale, evidence(two))
    assert landed is False
    restart = {"action": "rollout_restart", "deployment": "d"}
    landed, detail = judged(restart, evidence([*two, state(11.0, "c", routable=False)]))
    assert landed is True and "replaced by 1 new" in detail
    memory = {"action": "memory", "deployment": "d", "memory": "1GiB"}
    squeezed = state(10.5, "a", containers={"engine": {"memory_limit": "1Gi"}})
    landed, detail = judged(memory, evidence([*two, squeezed]))
    assert landed is True and detail.startswith("memory limit 1Gi read back on a")
    oom = state(12.0, "a", containers={"engine": {"last_reason": "OOMKilled"}})
    landed, detail = judged(memory, evidence([*two, squeezed, oom]))
    assert landed is True and detail.startswith("OOMKilled in a")
    landed, detail = judged(memory, evidence(two))
    assert landed is False and "deferred or refused" in detail


def test_markers_name_the_actions_and_node_transitions() -> None:
    ev = evidence([action(10.0, "delete", pods=["a", "b"]), action(11.0, "cordon", node="n1"),
                   (T0 + 12, "kube_node", {"node": "n1", "ready": "True"}),
                   (T0 + 20, "kube_node", {"node": "n1", "ready": "Unknown"}),
                   (T0 + 21, "kube_node", {"node": "n1", "ready": "Unknown"}),
                   (T0 + 30, "kube_node", {"node": "n1", "ready": "True"})])
    assert kb.markers(ev, T0) == [(10.0, "kill a,b"), (11.0, "cordon n1"),
                                  (20.0, "node n1 NotReady"), (30.0, "node n1 Ready")]


# --- the reverter, against a fake API -----------------------------------------------------------


class FakeApi:
    """Records calls; `objects` answers GETs by path; a path missing is a 404."""

    calls: ClassVar[list[tuple[str, str, Any]]] = []
    objects: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, kubeconfig: str | None = None, context: str | None = None,
                 timeout: float = 30.0) -> None:
        self.kubeconfig, self.context = kubeconfig, context

    def __enter__(self) -> FakeApi:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        FakeApi.calls.append(("GET", path, None))
        if path not in FakeApi.objects:
            raise KubeError(404, "NotFound", "gone", path)
        return FakeApi.objects[path]

    def patch(self, path: str, body: Any, content_type: str = "", **query: Any
              ) -> dict[str, Any]:
        FakeApi.calls.append(("PATCH", path, body))
        if path.endswith("/missing") or "/missing/" in path:
            raise KubeError(404, "NotFound", "gone", path)
        return {}


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch) -> type[FakeApi]:
    FakeApi.calls, FakeApi.objects = [], {}
    monkeypatch.setattr(kb, "KubeApi", FakeApi)
    return FakeApi


def revert_of(**kw: Any) -> kb.KubernetesRevert:
    return cast(kb.KubernetesRevert, {"backend": "kubernetes", "kubeconfig": "/k",
                                      "namespace": "ns", **kw})


def test_uncordon_scale_and_deployment_patch_are_written_back(fake_api: type[FakeApi]) -> None:
    kb.revert_kubernetes(revert_of(op="uncordon", node="n1"))
    kb.revert_kubernetes(revert_of(op="scale", deployment="d", replicas=2))
    kb.revert_kubernetes(revert_of(op="patch_deployment", deployment="d", container="engine",
                                   index=1, resources={"limits": {"memory": "6Gi"}}))
    assert fake_api.calls == [
        ("PATCH", "/api/v1/nodes/n1", {"spec": {"unschedulable": None}}),
        ("PATCH", "/apis/apps/v1/namespaces/ns/deployments/d/scale",
         {"spec": {"replicas": 2}}),
        ("PATCH", "/apis/apps/v1/namespaces/ns/deployments/d", [
            {"op": "test", "path": "/spec/template/spec/containers/1/name", "value": "engine"},
            {"op": "add", "path": "/spec/template/spec/containers/1/resources",
             "value": {"limits": {"memory": "6Gi"}}}])]
    # Gone since: nothing of ours is left on it.
    kb.revert_kubernetes(revert_of(op="scale", deployment="missing", replicas=2))
    kb.revert_kubernetes(revert_of(op="none", note="nothing"))
    with pytest.raises(ValueError, match="unknown Kubernetes revert op"):
        kb.revert_kubernetes(revert_of(op="explode"))


def test_resize_restores_only_the_pods_it_squeezed(fake_api: type[FakeApi]) -> None:
    fake_api.objects = {"/api/v1/namespaces/ns/pods/same": {"metadata": {"uid": "u1"}},
                        "/api/v1/namespaces/ns/pods/renewed": {"metadata": {"uid": "new"}}}
    saved = {"limits": {"memory": "6Gi"}}
    kb.revert_kubernetes(revert_of(op="resize", container="engine", pods={
        "same": {"uid": "u1", "resources": saved},
        "renewed": {"uid": "u2", "resources": saved},  # a new pod: the template's limits
        "gone": {"uid": "u3", "resources": saved}}))
    patches = [c for c in fake_api.calls if c[0] == "PATCH"]
    assert patches == [("PATCH", "/api/v1/namespaces/ns/pods/same/resize",
                        {"spec": {"containers": [{"name": "engine", "resources": saved}]}})]


def test_a_node_restart_is_reverted_by_its_start_command_then_waits_for_ready(
        fake_api: type[FakeApi], tmp_path: Path) -> None:
    marker = tmp_path / "started"
    fake_api.objects = {"/api/v1/nodes/n1": {"status": {"conditions": [
        {"type": "Ready", "status": "True"}]}}}
    kb.revert_kubernetes(revert_of(op="start_node", node="n1", cwd=str(tmp_path),
                                   start=["touch", "started"], ready_timeout=5.0))
    assert marker.exists()  # run in the journaled working directory
    with pytest.raises(EnvironmentProblem, match="exited 1"):
        kb.revert_kubernetes(revert_of(op="start_node", node="n1", start=["false"]))
    fake_api.objects = {"/api/v1/nodes/n1": {"status": {"conditions": [
        {"type": "Ready", "status": "Unknown"}]}}}
    with pytest.raises(EnvironmentProblem, match=re.escape(
            "not Ready 0.5s after its start command (Ready: Unknown)")):
        kb.revert_kubernetes(revert_of(op="start_node", node="n1", start=["true"],
                                       ready_timeout=0.5))


# --- replicas_ready -------------------------------------------------------------------------------

PHASES = [PhaseWindow("baseline", T0, T0 + 10), PhaseWindow("p", T0 + 10, T0 + 100, ("f",)),
          PhaseWindow("after", T0 + 100, T0 + 200)]


def check(body: dict[str, Any], ev: Evidence, phase: str = "p") -> CheckResult:
    spec_ = Check.model_validate({"name": "c", "phase": phase, **body})
    return evaluate_check(spec_, 0, ev)


def kill_world(back: float | None = 50.0, *, flap: bool = False) -> list[Any]:
    events = [state(10.1, "a"), state(10.1, "b"), action(10.5, "delete", pods=["a"]),
              state(10.6, "a", routable=False, terminating=True),
              state(10.7, "c", routable=False)]
    if back is not None:
        events.append(state(back, "c", check="c", fault=None))
    if flap:
        events += [state(back or 0 + 5, "c", routable=False), state((back or 0) + 8, "c")]
    return events


RR = {"replicas_ready": {"fault": "f", "replicas": 2, "within": "60s"}}


def test_replicas_ready_times_the_way_back() -> None:
    result = check(RR, evidence(kill_world(50.0), applied=10.5, reverted=100, phases=PHASES))
    assert result.status == "passed", result.summary
    assert result.observed["ready_after_s"] == pytest.approx(39.5)
    assert result.observed["fewest_after"] == 1 and result.observed["ready_before"] == 2
    assert result.summary.startswith("2 replicas routable again 39.5s after the fault applied")
    slow = check(RR, evidence(kill_world(80.0), applied=10.5, reverted=100, phases=PHASES))
    assert slow.status == "failed" and "only 69.5s after the fault" in slow.summary
    never = check(RR, evidence(kill_world(None), applied=10.5, reverted=100, phases=PHASES))
    assert never.status == "failed"
    assert never.summary.startswith("1 of 2 replicas routable at the end of the phase")


def test_replicas_ready_defaults_to_the_count_before_and_passes_if_it_never_fell() -> None:
    body = {"replicas_ready": {"fault": "f", "within": "60s"}}
    steady = [state(10.1, "a"), state(10.1, "b"), action(10.5, "scale", replicas=3)]
    result = check(body, evidence(steady, applied=10.5, reverted=100, phases=PHASES))
    assert result.status == "passed" and "never fewer" in result.summary
    assert result.expected["replicas"] == 2


def test_replicas_ready_since_the_revert_in_a_later_phase() -> None:
    body = {"replicas_ready": {"fault": "f", "replicas": 2, "within": "60s",
                               "since": "reverted"}}
    events = [state(10.1, "a"), state(10.1, "b"), action(10.5, "evict", pod="a"),
              state(10.6, "a", routable=False, terminating=True),
              state(101.0, "c", routable=False, check="c", fault=None),
              state(140.0, "c", check="c", fault=None)]
    result = check(body, evidence(events, applied=10.5, reverted=100, phases=PHASES),
                   phase="after")
    assert result.status == "passed", result.summary
    assert result.observed["ready_after_s"] == pytest.approx(40.0)


def test_replicas_ready_is_inconclusive_without_evidence() -> None:
    nothing = check(RR, evidence([action(10.5, "delete", pods=["a"])], applied=10.5,
                                 phases=PHASES))
    assert nothing.status == "inconclusive" and "no pod state was recorded" in nothing.summary
    unapplied = Evidence(phases=PHASES, events=[state(10.1, "a")])
    assert check(RR, unapplied).status == "inconclusive"
    blind = [*kill_world(None), (T0 + 20, "kube_pod", {"fault": "f", "error": "watch broke"})]
    result = check(RR, evidence(blind, applied=10.5, reverted=100, phases=PHASES))
    assert result.status == "inconclusive" and "did not resume" in result.summary
    crashed = evidence([*kill_world(50.0), (T0 + 11, "probe_error", {"check": "c",
                                                                     "error": "boom"})],
                       applied=10.5, reverted=100, phases=PHASES)
    assert check(RR, crashed).status == "inconclusive"


def test_routable_counts_follow_each_pod() -> None:
    states = [(ts, d) for ts, _, d in (state(1, "a"), state(1, "b"),
                                      state(2, "a", routable=False), state(3, "c"))]
    assert routable_counts(states) == [(T0 + 1, 1), (T0 + 1, 2), (T0 + 2, 1), (T0 + 3, 2)]


# --- ready_serves -------------------------------------------------------------------------------

RS = {"ready_serves": {"fault": "f", "urls": {"vllm-0": "http://127.0.0.1:18200/health"},
                       "grace": "5s"}}


def serving(t0: float, t1: float, *, down: tuple[float, float] | None = None,
            deployment: str = "vllm-0") -> list[tuple[float, str, dict[str, Any]]]:
    out, t = [], t0
    while t < t1:
        ok = down is None or not down[0] <= t < down[1]
        out.append((T0 + t, "kube_serving", {"check": "c", "deployment": deployment,
                                             "ok": ok, "at": T0 + t + 0.01}))
        t += 0.5
    return out


def test_a_pod_ready_before_it_serves_fails_ready_serves() -> None:
    # Killed at 10.5, Ready again at 14 (no readiness probe), serving only from 45.
    events = [state(10.1, "a"), action(10.5, "delete", pods=["a"]),
              state(10.6, "a", routable=False, terminating=True), state(14.0, "c"),
              *serving(10.0, 99.0, down=(10.6, 45.0))]
    result = check(RS, evidence(events, applied=10.5, reverted=100, phases=PHASES))
    assert result.status == "failed", result.summary
    assert result.summary.startswith("vllm-0 (c) was Ready for 31s (from +4s into the phase) "
                                     "while http://127.0.0.1:18200/health failed")
    assert result.observed["deployments"]["vllm-0"]["longest_s"] == pytest.approx(31.01)


def test_ready_serves_passes_when_ready_waits_for_serving_and_forgives_the_kill() -> None:
    # Ready at 45.2, after the URL answered at 45; the kill itself left the pod routable
    # 1.5s while its URL failed (a container kill: the kubelet needs a moment).
    events = [state(10.1, "a"), action(10.5, "signal", pod="a"),
              state(12.0, "a", routable=False), state(45.2, "a"),
              *serving(10.0, 99.0, down=(10.5, 45.0))]
    result = check(RS, evidence(events, applied=10.5, reverted=100, phases=PHASES))
    assert result.status == "passed", result.summary
    assert result.observed["deployments"]["vllm-0"]["longest_s"] == pytest.approx(1.5)


def test_ready_serves_leaves_out_a_restarted_nodes_down_time() -> None:
    # Power cut at 10.5: the pods stay "Ready" until the node controller notices (21).
    events = [state(10.1, "a"), action(10.5, "stop", node="n1", action="node_restart"),
              state(21.0, "a", routable=False), action(25.5, "start", node="n1",
                                                       action="node_restart"),
              (T0 + 27.0, "kube_node", {"node": "n1", "ready": "True"}),
              state(60.0, "a"), *serving(10.0, 99.0, down=(10.6, 59.0))]
    result = check(RS, evidence(events, applied=10.5, reverted=100, phases=PHASES))
    assert result.status == "passed", result.summary
    assert result.observed["excluded_node_down"] == [(0.5, 22.0)]
    # Without a readiness probe the pod is Ready again long before it serves: fails from
    # the end of the node's down time (Ready at 27, + 5s grace) to serving (59).
    early = [*events[:5], state(30.0, "a"), *serving(10.0, 99.0, down=(10.6, 59.0))]
    result = check(RS, evidence(early, applied=10.5, reverted=100, phases=PHASES))
    assert result.status == "failed" and "was Ready for 27s" in result.summary


def test_ready_serves_is_inconclusive_without_polls_pods_or_ready_time() -> None:
    no_polls = check(RS, evidence([state(10.1, "a")], applied=10.5, phases=PHASES))
    assert no_polls.status == "inconclusive" and "no health poll" in no_polls.summary
    no_pods = check(RS, evidence(serving(10, 50), applied=10.5, phases=PHASES))
    assert no_pods.status == "inconclusive" and "no pod state" in no_pods.summary
    never_ready = check(RS, evidence([state(10.1, "a", routable=False), *serving(10, 50)],
                                     applied=10.5, phases=PHASES))
    assert never_ready.status == "inconclusive"


# --- the test gateway ---------------------------------------------------------------------------


def slice_(port: int, *ready: bool | None) -> dict[str, Any]:
    endpoints = [{"conditions": {} if r is None else {"ready": r}} for r in ready]
    return {"ports": [{"name": "http", "port": port}], "endpoints": endpoints}


def test_the_gateway_follows_ready_endpoints_and_checks_nothing_itself(tmp_path: Path) -> None:
    assert ready_ports([slice_(18200, True), slice_(18201, False)]) == {18200}
    assert ready_ports([slice_(18200, False, True)]) == {18200}
    assert ready_ports([slice_(18200, None)]) == {18200}  # unset means ready
    assert ready_ports([slice_(18200)]) == set()
    assert wanted_states([18200, 18201], {18201}) == {18200: "maint", 18201: "ready"}
    cfg = GatewayConfig(folder=tmp_path, kubeconfig=tmp_path / "k", namespace="ns",
                        service="vllm", port=18230, engine_ports=[18200, 18201])
    text = haproxy_config(cfg)
    assert "bind 127.0.0.1:18230" in text
    assert "server p18200 127.0.0.1:18200 disabled" in text
    assert "server p18201 127.0.0.1:18201 disabled" in text
    assert " check" not in text and "redispatch" not in text
    assert "retries 0" in text
