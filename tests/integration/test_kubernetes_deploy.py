"""deploy/kubernetes/ against the real API server of the test cluster: every manifest
passes a server-side dry run with strict validation and no Pod Security warning; broken
variants fail it; the shipped RBAC grants the ServiceAccount exactly what the Kubernetes
backend asks for (`kubectl auth can-i` as the ServiceAccount)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from llmdrill.faults.kubernetes import every_permission
from llmdrill.stack.kube_cluster import KubeCluster

pytestmark = [pytest.mark.integration, pytest.mark.kubernetes]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "kubernetes"
CRD = Path(__file__).parent / "manifests" / "prometheusrule-crd.yaml"
SERVICE_ACCOUNT = "system:serviceaccount:llmdrill:llmdrill"


@pytest.fixture(scope="module")
def cluster(kube_cluster: KubeCluster) -> Iterator[KubeCluster]:
    """The API server of the test cluster (make kube-up), with the namespaces, the
    ServiceAccount and its roles applied for real (a dry run does not create a namespace
    the others need), and the stand-in PrometheusRule CRD."""
    kube = kube_cluster
    kube.kubectl("apply", "-f", str(CRD))
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                 "crd/prometheusrules.monitoring.coreos.com")
    kube.kubectl("create", "namespace", "llm", check=False)
    kube.kubectl("create", "namespace", "monitoring", check=False)
    kube.kubectl("apply", "-f", str(DEPLOY / "namespace.yaml"), "-f", str(DEPLOY / "rbac.yaml"))
    yield kube
    kube.kubectl("delete", "-f", str(DEPLOY / "rbac.yaml"), "--ignore-not-found", check=False)
    for namespace in ("llm", "monitoring", "llmdrill"):
        kube.kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=false",
                     check=False)
    kube.kubectl("delete", "-f", str(CRD), "--ignore-not-found", check=False)


def dry_run(cluster: KubeCluster, manifests: str) -> tuple[int, str]:
    out = cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-",
                          input=manifests, check=False)
    return out.returncode, out.stdout + out.stderr


def test_every_shipped_manifest_passes_a_strict_server_side_dry_run(
        cluster: KubeCluster) -> None:
    rendered = cluster.kubectl("kustomize", str(DEPLOY)).stdout
    kinds = {d["kind"] for d in yaml.safe_load_all(rendered) if d}
    assert {"Namespace", "ServiceAccount", "Role", "ClusterRole", "CronJob",
            "PersistentVolumeClaim", "ConfigMap", "PrometheusRule"} <= kinds
    code, text = dry_run(cluster, rendered)
    assert code == 0, text
    assert "would violate PodSecurity" not in text, text
    assert "unknown field" not in text, text


@pytest.mark.parametrize(("what", "break_it", "says"), [
    ("a schedule cron cannot parse",
     lambda d: d["spec"].__setitem__("schedule", "every morning"), "schedule"),
    ("a misspelt rule field",
     lambda d: d["spec"]["groups"][0]["rules"][0].__setitem__("fro", "5m"), "fro"),
    ("the node's filesystem mounted in the game day",
     lambda d: d["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"].append(
         {"name": "host", "hostPath": {"path": "/"}}), "PodSecurity"),
])
def test_a_broken_manifest_fails_the_dry_run(cluster: KubeCluster, what: str,
                                             break_it: object, says: str) -> None:
    kind = "PrometheusRule" if "rule" in what else "CronJob"
    document = next(d for path in sorted(DEPLOY.glob("*.yaml"))
                    for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == kind)
    assert callable(break_it)
    break_it(document)
    code, text = dry_run(cluster, yaml.safe_dump(document))
    if says == "PodSecurity":
        # Pod Security checks a CronJob's pod template with a warning; the pods it would
        # start are refused. Both must show.
        assert "would violate PodSecurity" in text, text
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "gameday-privileged", "namespace": "llmdrill"},
               "spec": document["spec"]["jobTemplate"]["spec"]["template"]["spec"]}
        code, text = dry_run(cluster, json.dumps(pod))
    assert code != 0, f"{what}: the dry run accepted it:\n{text}"
    assert says in text, text


def can_i(cluster: KubeCluster, verb: str, group: str, resource: str, sub: str,
          namespaced: bool) -> bool:
    target = f"{resource}.{group}" if group else resource
    args = ["auth", "can-i", verb, target, f"--as={SERVICE_ACCOUNT}"]
    if sub:
        args.append(f"--subresource={sub}")
    args += ["--namespace=llm"] if namespaced else ["--all-namespaces"]
    out = cluster.kubectl(*args, check=False)
    return out.stdout.strip() == "yes"


def test_the_service_account_may_do_exactly_what_the_backend_asks(
        cluster: KubeCluster) -> None:
    needed = sorted(every_permission())
    refused = [p for p in needed if not can_i(cluster, *p)]
    assert refused == [], f"the shipped roles do not grant: {refused}"
    # Nothing beyond it: neither secrets, nor another namespace, nor writing nodes' pods.
    for verb, group, resource, sub, namespaced in [
            ("get", "", "secrets", "", True), ("delete", "", "pods", "", False),
            ("create", "apps", "deployments", "", True), ("delete", "", "nodes", "", False),
            ("patch", "", "pods", "", True), ("create", "", "pods", "exec", True)]:
        assert not can_i(cluster, verb, group, resource, sub, namespaced), (
            f"{verb} {resource}/{sub} is granted")
    other = cluster.kubectl("auth", "can-i", "delete", "pods", f"--as={SERVICE_ACCOUNT}",
                            "--namespace=default", check=False)
    assert other.stdout.strip() == "no"
