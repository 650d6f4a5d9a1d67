"""deploy/kubernetes/ is what a platform team applies with `kubectl apply -k`: its RBAC
grants exactly what the backend asks for, its alert rules are the ones the drills expect,
its CronJob cleans up before it drills and runs hardened, and its game-day scenarios are
valid and use only what a pod can do through the API. (The server-side dry run of every
manifest against a real API server is an integration test.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from llmdrill.faults.kubernetes import every_permission
from llmdrill.monitoring.rules import render_prometheus_rule
from llmdrill.scenario.loader import load_scenario

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def by_kind(kind: str) -> list[dict[str, Any]]:
    found = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        found += [d for d in documents(path.name) if d.get("kind") == kind]
    return found


def granted(rules: list[dict[str, Any]], namespaced: bool) -> set[tuple[str, str, str, str,
                                                                        bool]]:
    out = set()
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                base, _, sub = resource.partition("/")
                for verb in rule["verbs"]:
                    out.add((verb, group, base, sub, namespaced))
    return out


def test_rbac_grants_exactly_what_the_backend_asks_for() -> None:
    (role,) = by_kind("Role")
    (cluster_role,) = by_kind("ClusterRole")
    grants = granted(role["rules"], True) | granted(cluster_role["rules"], False)
    needed = every_permission()
    assert grants - needed == set(), "granted but never asked for"
    assert needed - grants == set(), "asked for but not granted"


def test_the_roles_are_bound_to_the_harness_service_account() -> None:
    (account,) = by_kind("ServiceAccount")
    subject = {"kind": "ServiceAccount", "name": account["metadata"]["name"],
               "namespace": account["metadata"]["namespace"]}
    (role,) = by_kind("Role")
    (binding,) = by_kind("RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]
    assert subject in binding["subjects"]
    (cluster_binding,) = by_kind("ClusterRoleBinding")
    assert cluster_binding["roleRef"]["name"] == by_kind("ClusterRole")[0]["metadata"]["name"]
    assert subject in cluster_binding["subjects"]


def test_the_harness_namespace_enforces_the_restricted_pod_security_standard() -> None:
    (namespace,) = by_kind("Namespace")
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_prometheus_rule_is_the_rendered_one() -> None:
    assert (DEPLOY / "prometheusrule.yaml").read_text() == render_prometheus_rule(), (
        "regenerate: llmdrill alert-rules --format prometheus-rule "
        "--out deploy/kubernetes/prometheusrule.yaml")
    (rule,) = by_kind("PrometheusRule")
    alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert "LlmTargetDown" in alerts and len(alerts) == len(set(alerts))


def test_kustomization_takes_every_manifest_and_every_game_day_scenario() -> None:
    kustomization = documents("kustomization.yaml")[0]
    manifests = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests
    (generator,) = kustomization["configMapGenerator"]
    shipped = {f"gameday/{p.name}" for p in (DEPLOY / "gameday").glob("*.yaml")}
    assert set(generator["files"]) == shipped
    (cronjob,) = by_kind("CronJob")
    volumes = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "scenarios", "configMap": {"name": generator["name"]}} in volumes


def test_the_cronjob_cleans_up_first_and_runs_hardened() -> None:
    (cronjob,) = by_kind("CronJob")
    spec = cronjob["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0
    pod = job["template"]["spec"]
    assert pod["serviceAccountName"] == by_kind("ServiceAccount")[0]["metadata"]["name"]
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (init,) = pod["initContainers"]
    (main,) = pod["containers"]
    assert init["command"] == ["llmdrill", "cleanup"]
    for container in (init, main):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        # One journal for both: what the run journaled, cleanup finds.
        assert env["LLMDRILL_STATE_DIR"] == "/reports/.state"
        assert {"name": "reports", "mountPath": "/reports"} in container["volumeMounts"]
    assert main["args"][:2] == ["run", "/scenarios"]
    assert "--junit" in main["args"] and "--out" in main["args"]


@pytest.mark.parametrize("path", sorted((DEPLOY / "gameday").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_game_day_scenarios_are_valid_and_need_no_node_access(path: Path) -> None:
    scenario = load_scenario(path, env={"LLMDRILL_TARGET_URL": "http://vllm.llm.svc:8000"})
    assert "gameday" in scenario.metadata.tags
    assert scenario.checks, "a game day with no check is never a pass"
    for name, fault in scenario.faults.items():
        dumped = fault.model_dump()
        kube = dumped.get("kubernetes")
        assert kube is not None, f"{name}: only Kubernetes API faults run from the pod"
        assert kube["action"] in ("pod_kill", "scale", "rollout_restart", "drain", "memory")
        assert kube.get("kubeconfig") is None  # the pod's own ServiceAccount
