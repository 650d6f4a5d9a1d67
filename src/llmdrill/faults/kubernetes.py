"""Kubernetes faults: pods killed, containers killed, a node restarted or drained, the
serving Deployment scaled or restarted, its memory squeezed; through the Kubernetes API.

Like every fault, the way back is computed and journaled before the change: a plain JSON
action (`KubernetesRevert`) that `llmdrill cleanup` or the watchdog, in another process
maybe after a kill -9 of the harness, can carry out alone:
- pod_kill, container_kill, rollout_restart -> nothing to undo: the pods' controllers
  (and, for a container, the kubelet) bring them back; that they do is what the drill
  measures. Pods with no controller (which nothing would bring back) and containers of
  pods with `restartPolicy: Never` are refused.
- drain          -> the node uncordoned (unless it was cordoned before the drill); the
                    evicted pods' controllers recreate them.
- node_restart   -> the `start` command run again (it must be idempotent), then the node
                    waited for until Ready.
- scale          -> the replica count read before the change is written back.
- memory         -> each pod's container resources read before are written back through
                    the resize subresource (in-place), or the Deployment's container
                    resources are (a patched Deployment rolls its pods again).

A drain never forces an eviction: evictions go through the Eviction API, which refuses any
that would violate a PodDisruptionBudget; a drain that could not evict anything without
violating one (a budget allowing no disruption of a pod it would evict) is refused before
anything changes, with the budget named. Every API call has a deadline.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Required, TypedDict

from pydantic import Field, model_validator

from llmdrill.faults.base import (
    EnvironmentProblem,
    cut_or_retried,
    fault_window,
    parse_signal,
    share_text,
)
from llmdrill.faults.kube_api import (
    JSON_PATCH,
    KubeApi,
    KubeError,
    deployment_path,
    kubeconfig_path,
    node_path,
    pdbs_path,
    pods_path,
    selector_text,
)
from llmdrill.model.events import EventKind
from llmdrill.model.verdict import FaultEffect
from llmdrill.plugin import FaultBackend
from llmdrill.probes.kube_events import KubeWatcher, matches
from llmdrill.scenario.fields import Strict
from llmdrill.scenario.units import Duration, Fraction, PositiveInt, Size

if TYPE_CHECKING:
    from llmdrill.model.context import RunContext
    from llmdrill.model.records import Evidence, RequestRecord


# --- the spec: the YAML under this key ----------------------------------------

# A DNS-1123 name (namespaces, Deployments, nodes are all at most this).
KubeName = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)]
KubeAction = Literal["pod_kill", "container_kill", "node_restart", "drain", "scale",
                     "rollout_restart", "memory"]


class KubernetesFault(Strict):
    """A change to a Kubernetes workload or node through the API, journaled before it is
    made and reverted after: uncordon, start the node again, write back replicas and
    memory limits (killed pods and containers are brought back by their controllers)."""

    action: KubeAction = Field(
        description="pod_kill (delete pods), container_kill (a signal to a container's main "
        "process: the kubelet restarts it), node_restart (the node's kubelet, maybe its "
        "runtime, stopped then started by your commands), drain (cordon, then evict "
        "through the Eviction API, PodDisruptionBudgets respected), scale (a Deployment's "
        "replicas), rollout_restart (a Deployment's pods replaced) or memory (a "
        "container's memory limit squeezed).",
    )
    namespace: KubeName = Field(default="default", description="Namespace of the targets.")
    selector: dict[str, str] = Field(
        default_factory=dict,
        description="Labels a pod must all carry to be a target (pod_kill, container_kill, "
        "memory; drain: the pods evicted; node_restart/drain: their node is the default).",
    )
    deployment: KubeName | None = Field(
        default=None,
        description="The Deployment: scale, rollout_restart and memory act on it; for the "
        "pod actions its pod selector is used when `selector` is not given.",
    )
    count: PositiveInt | None = Field(
        default=None,
        description="pod_kill, container_kill: how many of the matching pods (default 1).",
    )
    fraction: Fraction | None = Field(
        default=None,
        description="pod_kill, container_kill: a percent of the matching pods, written as a "
        "fraction (0.5: half), rounded up; instead of count.",
    )
    pick: Literal["random", "oldest", "newest"] = Field(
        default="random",
        description="pod_kill, container_kill: which of the matching pods (random: seeded "
        "by the run id, so a run's choice can be replayed).",
    )
    max_pods: PositiveInt = Field(
        default=1,
        description="Blast radius: the fault is refused if it would touch more pods "
        "(killed, evicted, resized, replaced by a scale or a restart, or running on a "
        "restarted node); safety.max_blast_radius lowers it.",
    )
    grace: Duration | None = Field(
        default=None,
        description="pod_kill, drain: the pods' termination grace period (default: each "
        "pod's own terminationGracePeriodSeconds; 0s deletes at once).",
    )
    container: str | None = Field(
        default=None,
        description="container_kill, memory: the container (default: the pod's first).",
    )
    signal: str = Field(default="SIGKILL", description="container_kill: the signal sent.")
    via: Literal["local", "command"] = Field(
        default="local",
        description="container_kill: `local` signals the container's main process from this "
        "host (the harness runs on the node, as with the test cluster); `command` runs "
        "`kill_command` (e.g. ssh to the node). Not `kubectl exec`: a container's own PID 1 "
        "cannot be sent SIGKILL from inside its PID namespace.",
    )
    kill_command: list[str] | None = Field(
        default=None,
        description="container_kill via command: the command run on the harness host; "
        "{node}, {namespace}, {pod}, {container}, {container_id} and {signal} are "
        "replaced, e.g. [ssh, '{node}', sudo, crictl, stop, --timeout, '0', "
        "'{container_id}'].",
    )
    replicas: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="scale: the replica count set during the fault."
    )
    memory: Size | None = Field(
        default=None, description="memory: the squeezed limit (e.g. '2GiB')."
    )
    resize: Literal["auto", "in_place", "deployment"] = Field(
        default="auto",
        description="memory: `in_place` resizes the running pods (the resize "
        "subresource; no restart), `deployment` patches the Deployment (its pods are "
        "replaced), `auto` resizes in place where the cluster allows it (checked with a "
        "dry run), else patches the Deployment.",
    )
    node: KubeName | None = Field(
        default=None,
        description="node_restart, drain: the node (default: the node the selected pods "
        "run on; refused if they run on several).",
    )
    stop: list[str] | None = Field(
        default=None,
        description="node_restart: the command that stops the node's kubelet (and runtime, "
        "or the whole node), run on the harness host; {node} and {python} (this Python) "
        "are replaced. E.g. [ssh, '{node}', sudo, systemctl, stop, kubelet].",
    )
    start: list[str] | None = Field(
        default=None,
        description="node_restart: the command that starts it again; run after `down_for` "
        "and again at revert (also by `llmdrill cleanup`), so it must be idempotent. "
        "Commands run in the harness's working directory.",
    )
    down_for: Duration | None = Field(
        default=None,
        description="node_restart: how long the node stays down before `start` runs "
        "(default: until the fault is reverted at its phase's end).",
    )
    ready_timeout: Duration = Field(
        default=180.0,
        description="node_restart: the revert waits this long for the node to be Ready "
        "again (a node that does not come back is a failed revert).",
    )
    command_timeout: Duration = Field(
        default=120.0, description="Deadline of each command (stop, start, kill_command)."
    )
    drain_all: bool = Field(
        default=False,
        description="drain: evict every pod on the node (all namespaces, DaemonSet and "
        "mirror pods excepted), like kubectl drain; default: only the selected pods.",
    )
    drain_timeout: Duration = Field(
        default=60.0,
        description="drain: how long evictions a PodDisruptionBudget refuses are retried "
        "(as kubectl drain does); then the drain is reported incomplete, never forced.",
    )
    allow_unmanaged: bool = Field(
        default=False,
        description="pod_kill, drain: also delete or evict pods no controller owns (nothing "
        "brings them back; refused by default).",
    )
    kubeconfig: str | None = Field(
        default=None,
        description="Path of the kubeconfig (default: $KUBECONFIG, else ~/.kube/config, "
        "else, in a pod, its ServiceAccount), or `in-cluster` for the pod's ServiceAccount.",
    )
    context: str | None = Field(
        default=None, description="The kubeconfig context (default: its current context)."
    )
    timeout: Duration = Field(default=30.0, description="Deadline of each API call.")

    @model_validator(mode="after")
    def _needs(self) -> KubernetesFault:
        action = self.action
        given = self.model_fields_set
        for name in sorted(given):
            allowed = ACTION_FIELDS.get(name)
            if allowed is not None and action not in allowed:
                raise ValueError(f"{name} does not go with action {action} (it is for "
                                 f"{', '.join(sorted(allowed))})")
        pods = bool(self.selector) or self.deployment is not None
        if action in ("pod_kill", "container_kill") and not pods:
            raise ValueError(f"action {action} needs selector (labels) or deployment")
        if self.count is not None and self.fraction is not None:
            raise ValueError("give count or fraction, not both")
        if self.fraction == 0:
            raise ValueError("fraction must be above 0")
        if action in ("scale", "rollout_restart") and self.deployment is None:
            raise ValueError(f"action {action} needs deployment")
        if action == "scale" and self.replicas is None:
            raise ValueError("action scale needs replicas")
        if action == "memory":
            if self.memory is None:
                raise ValueError("action memory needs memory (e.g. '2GiB')")
            if self.memory < 4 * 1024**2:
                raise ValueError("a memory limit under 4MiB cannot run a container")
            if not pods:
                raise ValueError("action memory needs deployment or selector")
            if self.resize == "deployment" and self.deployment is None:
                raise ValueError("resize: deployment needs deployment")
        if action == "node_restart":
            if not self.stop or not self.start:
                raise ValueError("action node_restart needs stop and start commands")
            if self.node is None and not pods:
                raise ValueError("action node_restart needs node, or selector/deployment "
                                 "(their node)")
        if action == "drain" and not self.drain_all and not pods:
            raise ValueError("action drain needs selector or deployment (the pods to "
                             "evict), or drain_all: true")
        if action == "container_kill" and (self.via == "command") != bool(self.kill_command):
            raise ValueError("via: command needs kill_command, and kill_command needs "
                             "via: command")
        return self


# Optional fields that only some actions read: one given to another action is a mistake.
ACTION_FIELDS: dict[str, set[str]] = {
    "count": {"pod_kill", "container_kill"},
    "fraction": {"pod_kill", "container_kill"},
    "pick": {"pod_kill", "container_kill"},
    "grace": {"pod_kill", "drain"},
    "container": {"container_kill", "memory"},
    "signal": {"container_kill"},
    "via": {"container_kill"},
    "kill_command": {"container_kill"},
    "replicas": {"scale"},
    "memory": {"memory"},
    "resize": {"memory"},
    "node": {"node_restart", "drain"},
    "stop": {"node_restart"},
    "start": {"node_restart"},
    "down_for": {"node_restart"},
    "ready_timeout": {"node_restart"},
    "drain_all": {"drain"},
    "drain_timeout": {"drain"},
    "allow_unmanaged": {"pod_kill", "drain"},
}


BACKEND = "kubernetes"
RevertOp = Literal["none", "uncordon", "start_node", "scale", "resize", "patch_deployment"]


class KubernetesRevert(TypedDict, total=False):
    """The journal's way back from a Kubernetes fault."""

    backend: Required[str]
    op: Required[RevertOp]
    kubeconfig: Required[str]
    context: str | None
    timeout: float
    fault: str
    note: str  # op none: why there is nothing to undo
    namespace: str
    node: str  # uncordon, start_node
    start: list[str]  # start_node: the command, placeholders already replaced
    cwd: str  # start_node: where it runs
    command_timeout: float
    ready_timeout: float
    deployment: str  # scale, patch_deployment
    replicas: int  # scale: the count before
    container: str  # resize, patch_deployment
    index: int  # patch_deployment: the container's index in the template
    resources: dict[str, Any]  # patch_deployment: the container's resources before
    pods: dict[str, dict[str, Any]]  # resize: pod -> {uid, resources before}


ACTION_EVENT = EventKind.KUBE_ACTION
POD_EVENT = EventKind.KUBE_POD
NODE_EVENT = EventKind.KUBE_NODE
EVICT_RETRY_S = 2.0  # pause between two tries of an eviction a budget refused
NODE_POLL_S = 1.0
WATCH_LISTED_S = 5.0  # the longest the fault waits for its watch's first list
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"  # what `kubectl rollout restart` sets


# --- pure planning (unit-tested) ------------------------------------------------------------


_QUANTITY = re.compile(r"^([0-9.]+)([A-Za-z]*)$")
_FACTORS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}


def parse_quantity(text: Any) -> int | None:
    """Bytes from a Kubernetes quantity ('6Gi', '512M', '1073741824'); None if unreadable."""
    match = _QUANTITY.match(str(text or "").strip())
    if not match or match.group(2) not in _FACTORS:
        return None
    try:
        return int(float(match.group(1)) * _FACTORS[match.group(2)])
    except ValueError:
        return None


def quantity(n: int) -> str:
    """Bytes as the shortest exact binary quantity ('2Gi', '1536Mi', '1000')."""
    for unit in ("Ti", "Gi", "Mi", "Ki"):
        if n >= _FACTORS[unit] and n % _FACTORS[unit] == 0:
            return f"{n // _FACTORS[unit]}{unit}"
    return str(n)


def how_many(spec: KubernetesFault, matching: int) -> int:
    """How many of `matching` pods a pod_kill or container_kill takes."""
    if spec.fraction is not None:
        return min(matching, max(1, math.ceil(spec.fraction * matching - 1e-9)))
    return min(matching, spec.count or 1)


def created(pod: dict[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("creationTimestamp") or "")


def name_of(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name"))


def pick_pods(pods: list[dict[str, Any]], n: int, how: str, seed: str) -> list[dict[str, Any]]:
    """`n` of `pods` (already filtered to live ones): random (seeded), oldest or newest."""
    ordered = sorted(pods, key=lambda p: (created(p), name_of(p)))
    if how == "oldest":
        return ordered[:n]
    if how == "newest":
        return ordered[::-1][:n]
    return random.Random(seed).sample(sorted(pods, key=name_of), n)


def live(pod: dict[str, Any]) -> bool:
    """Running and not being deleted: a pod a kill can still reach."""
    return ((pod.get("status") or {}).get("phase") == "Running"
            and not (pod.get("metadata") or {}).get("deletionTimestamp"))


def controller_of(pod: dict[str, Any]) -> dict[str, Any] | None:
    refs = (pod.get("metadata") or {}).get("ownerReferences") or []
    return next((r for r in refs if r.get("controller")), None)


def mirror_or_daemon(pod: dict[str, Any]) -> bool:
    """Pods a drain leaves alone: static (mirror) pods and DaemonSet pods."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    owner = controller_of(pod) or {}
    return "kubernetes.io/config.mirror" in annotations or owner.get("kind") == "DaemonSet"


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels + matchExpressions) against labels; an empty selector
    matches everything (as a PodDisruptionBudget's does)."""
    if not matches(labels, dict(selector.get("matchLabels") or {})):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op = str(expr.get("key")), str(expr.get("operator"))
        values = [str(v) for v in expr.get("values") or []]
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def budget_rule(pdb: dict[str, Any]) -> str:
    spec = pdb.get("spec") or {}
    if "minAvailable" in spec:
        return f"minAvailable {spec['minAvailable']}"
    if "maxUnavailable" in spec:
        return f"maxUnavailable {spec['maxUnavailable']}"
    return "no rule"


def drain_refusal(node: str, evict: list[dict[str, Any]], pdbs: list[dict[str, Any]]
                  ) -> str | None:
    """Why a drain would have to violate a PodDisruptionBudget to evict anything, or None.

    A pod covered by a budget that allows no disruption now cannot be evicted without
    violating it; a pod covered by two budgets cannot be evicted at all (the API refuses).
    A budget that allows some disruptions lets the drain progress: evictions beyond what
    it allows are refused by the API one by one and retried, never forced."""
    for pod in evict:
        meta = pod.get("metadata") or {}
        ns, labels = meta.get("namespace"), dict(meta.get("labels") or {})
        covering = [b for b in pdbs if (b.get("metadata") or {}).get("namespace") == ns
                    and selector_matches((b.get("spec") or {}).get("selector") or {}, labels)]
        where = f"pod {ns}/{name_of(pod)}"
        if len(covering) > 1:
            names = ", ".join(f"{ns}/{name_of(b)}" for b in covering)
            return (f"drain of node '{node}' refused: {where} is covered by several "
                    f"PodDisruptionBudgets ({names}), which the Eviction API refuses to "
                    "evict; llmdrill never forces an eviction")
        for pdb in covering:
            status = pdb.get("status") or {}
            if int(status.get("disruptionsAllowed") or 0) <= 0:
                return (f"drain of node '{node}' refused: evicting {where} would violate "
                        f"PodDisruptionBudget {ns}/{name_of(pdb)} ({budget_rule(pdb)}: "
                        f"{status.get('currentHealthy', '?')} of "
                        f"{status.get('expectedPods', '?')} pods healthy, "
                        f"{status.get('desiredHealthy', '?')} required, 0 disruptions "
                        "allowed); llmdrill never forces an eviction past a disruption "
                        "budget (kubectl drain would wait for it, then time out). Scale "
                        "the workload up, relax the budget, or drain another node")
    return None


def replace_placeholders(argv: list[str], values: dict[str, str]) -> list[str]:
    out = []
    for part in argv:
        for key, value in values.items():
            part = part.replace("{" + key + "}", value)
        out.append(part)
    return out


def container_index(spec: dict[str, Any], container: str | None) -> tuple[int, dict[str, Any]]:
    """The container (by name, default the first) in a pod spec: (index, its spec)."""
    containers = list(spec.get("containers") or [])
    if not containers:
        raise EnvironmentProblem("the pod template has no containers")
    if container is None:
        return 0, containers[0]
    for i, c in enumerate(containers):
        if c.get("name") == container:
            return i, c
    names = ", ".join(str(c.get("name")) for c in containers)
    raise EnvironmentProblem(f"no container '{container}' (containers: {names})")


def squeezed_resources(resources: dict[str, Any], memory: int) -> dict[str, Any]:
    """The container's resources with the memory limit set to `memory`, its request
    lowered to it if it was higher (a request above the limit is invalid)."""
    limits = dict(resources.get("limits") or {})
    requests = dict(resources.get("requests") or {})
    limits["memory"] = quantity(memory)
    asked = parse_quantity(requests.get("memory"))
    if asked is not None and asked > memory:
        requests["memory"] = quantity(memory)
    out: dict[str, Any] = {"limits": limits}
    if requests:
        out["requests"] = requests
    return out


def revert_action(spec: KubernetesFault, kubeconfig: str, **facts: Any) -> KubernetesRevert:
    """The journal's way back for `spec`, from the facts read before the change:
    was_unschedulable (drain), start/cwd (node_restart), replicas (scale), pods or
    index+resources (memory)."""
    action = KubernetesRevert(backend=BACKEND, op="none", kubeconfig=kubeconfig,
                              context=spec.context, timeout=spec.timeout,
                              fault=str(facts.get("fault", "")), namespace=spec.namespace)
    kind = spec.action
    if kind in ("pod_kill", "container_kill", "rollout_restart"):
        action["note"] = {
            "pod_kill": "deleted pods are replaced by their controllers",
            "container_kill": "the kubelet restarts a killed container",
            "rollout_restart": "the restarted pods run the same template",
        }[kind]
    elif kind == "drain":
        action["node"] = str(facts["node"])
        if facts.get("was_unschedulable"):
            action["note"] = "the node was cordoned before the drill: it stays so"
        else:
            action["op"] = "uncordon"
    elif kind == "node_restart":
        action["op"] = "start_node"
        action["node"] = str(facts["node"])
        action["start"] = list(facts["start"])
        action["cwd"] = str(facts.get("cwd") or os.getcwd())
        action["command_timeout"] = spec.command_timeout
        action["ready_timeout"] = spec.ready_timeout
    elif kind == "scale":
        action["op"] = "scale"
        action["deployment"] = str(spec.deployment)
        action["replicas"] = int(facts["replicas"])
    elif facts.get("mode") == "deployment":
        action["op"] = "patch_deployment"
        action["deployment"] = str(spec.deployment)
        action["container"] = str(facts["container"])
        action["index"] = int(facts["index"])
        action["resources"] = dict(facts["resources"])
    else:
        action["op"] = "resize"
        action["container"] = str(facts["container"])
        action["pods"] = dict(facts["pods"])
    return action


# --- the host's view of a container's main process ------------------------------------------


def container_id(pod: dict[str, Any], container: str) -> str | None:
    """The runtime's id of a running container ("containerd://<id>" -> "<id>")."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container and "running" in (status.get("state") or {}):
            raw = str(status.get("containerID") or "")
            return raw.split("://", 1)[-1] or None
    return None


def _cgroups(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return ""


def main_pid(cid: str, proc: Path = Path("/proc")) -> int | None:
    """The container's main process as this host sees it: of the processes whose cgroup
    names the container, the one whose parent's does not (its parent is the runtime's
    shim). None when none is visible (the harness is not on the node)."""
    if not cid:
        return None
    inside: dict[int, int] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if cid not in (entry / "cgroup").read_text():
                continue
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        inside[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tops = sorted(pid for pid, ppid in inside.items() if ppid not in inside)
    return tops[0] if len(tops) == 1 else None


# --- running commands -------------------------------------------------------------------------


def run_command(argv: list[str], timeout: float, what: str, cwd: str | None = None) -> str:
    """Runs one of the spec's commands; its output, or EnvironmentProblem saying why not."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              cwd=cwd, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise EnvironmentProblem(f"{what}: command not found: {argv[0]}") from None
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem(f"{what}: `{' '.join(argv)}` did not finish within "
                                 f"{timeout:g}s") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-600:]
        raise EnvironmentProblem(f"{what}: `{' '.join(argv)}` exited {done.returncode}: "
                                 f"{tail}")
    return done.stdout


# --- the injector -----------------------------------------------------------------------------

# What each action needs the kubeconfig's user to be allowed: (verb, group, resource,
# subresource, namespaced). Pods are always read and watched (targets, evidence).
READ_PODS = [("get", "", "pods", "", True), ("list", "", "pods", "", True),
             ("watch", "", "pods", "", True)]
NODES = [("get", "", "nodes", "", False), ("list", "", "nodes", "", False),
         ("watch", "", "nodes", "", False)]
PERMISSIONS: dict[str, list[tuple[str, str, str, str, bool]]] = {
    "pod_kill": [("delete", "", "pods", "", True)],
    "container_kill": [],
    "node_restart": [*NODES, ("list", "", "pods", "", False)],
    "drain": [*NODES, ("patch", "", "nodes", "", False),
              ("create", "", "pods", "eviction", True),
              ("list", "policy", "poddisruptionbudgets", "", True)],
    "scale": [("get", "apps", "deployments", "", True),
              ("patch", "apps", "deployments", "scale", True)],
    "rollout_restart": [("get", "apps", "deployments", "", True),
                        ("patch", "apps", "deployments", "", True)],
    "memory": [("get", "apps", "deployments", "", True)],
}
# Asked for beside the table by some settings (see `preflight`): an in-place memory squeeze,
# a squeeze through the Deployment, a drain of every pod on the node.
MEMORY_IN_PLACE = [("patch", "", "pods", "resize", True)]
MEMORY_THROUGH_DEPLOYMENT = [("patch", "apps", "deployments", "", True)]
DRAIN_ALL = [("list", "", "pods", "", False), ("list", "policy", "poddisruptionbudgets", "", False)]


def every_permission() -> set[tuple[str, str, str, str, bool]]:
    """Everything the backend may ask for, whatever the action and settings: what the
    shipped RBAC (deploy/kubernetes/rbac.yaml) grants, no more."""
    found = set(READ_PODS) | set(MEMORY_IN_PLACE) | set(MEMORY_THROUGH_DEPLOYMENT) | set(
        DRAIN_ALL)
    for needed in PERMISSIONS.values():
        found |= set(needed)
    return found


class KubernetesInjector:
    backend = BACKEND

    def __init__(self, ctx: RunContext, fault_name: str, spec: KubernetesFault) -> None:
        self.ctx = ctx
        self.fault_name = fault_name
        self.spec = spec
        self.kubeconfig = kubeconfig_path(spec.kubeconfig)
        radius = ctx.scenario.safety.max_blast_radius
        self.limit = min(spec.max_pods, radius) if radius else spec.max_pods
        self._plan: dict[str, Any] = {}
        self._watcher: KubeWatcher | None = None
        self._worker: threading.Thread | None = None
        self._halt = threading.Event()
        self.mode: str | None = None  # memory: in_place or deployment, once decided

    # -- helpers ----------------------------------------------------------------------------

    def api(self) -> KubeApi:
        return KubeApi(self.spec.kubeconfig, self.spec.context, self.spec.timeout)

    def _event(self, step: str, **detail: Any) -> None:
        store = self.ctx.store
        if store is not None:
            store.add_event(time.time(), ACTION_EVENT, {
                "fault": self.fault_name, "action": self.spec.action, "step": step, **detail})

    def _target_text(self) -> str:
        spec = self.spec
        labels = selector_text(spec.selector)
        if spec.deployment and not labels:
            return f"deployment {spec.namespace}/{spec.deployment}"
        what = f"pods {spec.namespace}/{labels}" if labels else f"{spec.namespace}/?"
        return what + (f" of deployment {spec.deployment}" if spec.deployment else "")

    def describe(self) -> str:
        spec = self.spec
        who = self._target_text()
        n = (f"{spec.fraction:.0%} of the" if spec.fraction is not None
             else f"{spec.count or 1} of the")
        grace = f", grace {spec.grace:g}s" if spec.grace is not None else ""
        node = f"node {spec.node}" if spec.node else "the node of the selected pods"
        text = {
            "pod_kill": f"delete {n} {who}{grace} (at most {self.limit})",
            "container_kill": f"send {spec.signal} to the main process of "
                              f"{spec.container or 'the first container'} in {n} {who} "
                              f"({spec.via}); the kubelet restarts it",
            "node_restart": f"restart {node}: `{' '.join(spec.stop or [])}`, then "
                            + (f"after {spec.down_for:g}s " if spec.down_for is not None
                               else "at the revert ")
                            + f"`{' '.join(spec.start or [])}`",
            "drain": f"cordon {node} and evict "
                     + ("every pod on it" if spec.drain_all else who)
                     + f"{grace} (PodDisruptionBudgets respected, retried "
                       f"{spec.drain_timeout:g}s; uncordon at revert)",
            "scale": f"scale deployment {spec.namespace}/{spec.deployment} to "
                     f"{spec.replicas} replicas (restored at revert)",
            "rollout_restart": f"rollout restart deployment {spec.namespace}/{spec.deployment}",
            "memory": f"squeeze the memory limit of {spec.container or 'the first container'}"
                      f" of {who} to {quantity(spec.memory or 0)} ({spec.resize}; restored "
                      "at revert)",
        }[spec.action]
        where = f"context {spec.context}" if spec.context else self.kubeconfig
        return f"{text} [kubernetes {where}]"

    def _selector(self, api: KubeApi) -> dict[str, str]:
        """The pod selector: the spec's labels, else the Deployment's matchLabels."""
        if self.spec.selector:
            return dict(self.spec.selector)
        if self.spec.deployment is None:
            return {}
        dep = self._deployment(api)
        labels = dict(((dep.get("spec") or {}).get("selector") or {}).get("matchLabels") or {})
        if not labels:
            raise EnvironmentProblem(f"deployment {self.spec.namespace}/{self.spec.deployment}"
                                     " selects its pods with expressions only; give selector")
        return labels

    def _deployment(self, api: KubeApi) -> dict[str, Any]:
        spec = self.spec
        assert spec.deployment is not None
        try:
            return api.get(deployment_path(spec.namespace, spec.deployment))
        except KubeError as exc:
            if exc.status == 404:
                raise EnvironmentProblem(f"no deployment {spec.namespace}/{spec.deployment}"
                                         ) from None
            raise

    def _pods(self, api: KubeApi, selector: dict[str, str]) -> list[dict[str, Any]]:
        found = api.get(pods_path(self.spec.namespace),
                        labelSelector=selector_text(selector) or None)
        return list(found.get("items") or [])

    def _refuse_over_radius(self, touched: list[str], what: str) -> None:
        if len(touched) > self.limit:
            names = ", ".join(sorted(touched)[:10])
            raise EnvironmentProblem(
                f"fault '{self.fault_name}' would {what} {len(touched)} pods ({names}), over "
                f"its blast radius of {self.limit} (max_pods / safety.max_blast_radius)")

    def _check_permissions(self, api: KubeApi) -> None:
        """SelfSubjectAccessReviews for every verb the action needs: a user the cluster's
        RBAC does not allow is told what is missing before anything changes."""
        spec = self.spec
        needed = list(READ_PODS) + PERMISSIONS[spec.action]
        if spec.action == "memory":
            needed += ((MEMORY_IN_PLACE if spec.resize != "deployment" else [])
                       + (MEMORY_THROUGH_DEPLOYMENT if spec.resize != "in_place" else []))
        if spec.action == "drain" and spec.drain_all:
            needed += DRAIN_ALL
        denied = []
        for verb, group, resource, sub, namespaced in needed:
            attrs: dict[str, Any] = {"verb": verb, "group": group, "resource": resource}
            if sub:
                attrs["subresource"] = sub
            if namespaced:
                attrs["namespace"] = spec.namespace
            review = api.post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", {
                "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attrs}})
            if not (review.get("status") or {}).get("allowed"):
                scope = f" in namespace {spec.namespace}" if namespaced else " (cluster-wide)"
                denied.append(f"{verb} {resource}{'/' + sub if sub else ''}"
                              f"{' (' + group + ')' if group else ''}{scope}")
        if denied:
            raise EnvironmentProblem(
                f"RBAC: the kubeconfig's user may not {'; '.join(denied)}; grant them (see "
                "docs/kubernetes.md, RBAC) or use another context")

    # -- targets ----------------------------------------------------------------------------

    def _kill_targets(self, api: KubeApi) -> list[dict[str, Any]]:
        spec = self.spec
        selector = self._selector(api)
        pods = [p for p in self._pods(api, selector) if live(p)]
        if not pods:
            raise EnvironmentProblem(f"no running pod matches {self._target_text()}")
        n = how_many(spec, len(pods))
        chosen = pick_pods(pods, n, spec.pick, f"{self.ctx.run_id}/{self.fault_name}")
        self._refuse_over_radius([name_of(p) for p in chosen],
                                 "kill" if spec.action == "pod_kill" else "signal")
        for pod in chosen:
            if spec.action == "pod_kill" and controller_of(pod) is None \
                    and not spec.allow_unmanaged:
                raise EnvironmentProblem(
                    f"pod {spec.namespace}/{name_of(pod)} has no controller: nothing would "
                    "bring it back; set allow_unmanaged: true to delete it anyway")
            if spec.action == "container_kill":
                self._check_container(pod)
        return chosen

    def _check_container(self, pod: dict[str, Any]) -> None:
        spec = self.spec
        podspec = pod.get("spec") or {}
        if podspec.get("restartPolicy") == "Never":
            raise EnvironmentProblem(f"pod {spec.namespace}/{name_of(pod)} has restartPolicy "
                                     "Never: the kubelet would not restart a killed container")
        _, container = container_index(podspec, spec.container)
        cname = str(container.get("name"))
        cid = container_id(pod, cname)
        if cid is None:
            raise EnvironmentProblem(f"container {cname} of pod {name_of(pod)} is not running")
        try:
            parse_signal(spec.signal)
        except ValueError as exc:
            raise EnvironmentProblem(str(exc)) from None
        if spec.via == "local" and main_pid(cid) is None:
            raise EnvironmentProblem(
                f"cannot see the main process of container {cname} of pod {name_of(pod)} "
                "from this host (llmdrill is not running on its node); use via: command "
                "with a kill_command that reaches the node")

    def _node_of(self, api: KubeApi) -> str:
        spec = self.spec
        if spec.node is not None:
            try:
                api.get(node_path(spec.node))
            except KubeError as exc:
                if exc.status == 404:
                    raise EnvironmentProblem(f"no node named '{spec.node}'") from None
                raise
            return spec.node
        pods = [p for p in self._pods(api, self._selector(api))
                if (p.get("spec") or {}).get("nodeName")]
        nodes = sorted({str((p.get("spec") or {}).get("nodeName")) for p in pods})
        if not nodes:
            raise EnvironmentProblem(f"no scheduled pod matches {self._target_text()}: "
                                     "name the node with `node`")
        if len(nodes) > 1:
            raise EnvironmentProblem(f"the selected pods run on {len(nodes)} nodes "
                                     f"({', '.join(nodes)}): name the one with `node`")
        return nodes[0]

    def _pods_on(self, api: KubeApi, node: str, everywhere: bool) -> list[dict[str, Any]]:
        path = "/api/v1/pods" if everywhere else pods_path(self.spec.namespace)
        found = api.get(path, fieldSelector=f"spec.nodeName={node}")
        return [p for p in found.get("items") or []
                if not (p.get("metadata") or {}).get("deletionTimestamp")]

    def _drain_plan(self, api: KubeApi, node: str) -> list[dict[str, Any]]:
        spec = self.spec
        on_node = self._pods_on(api, node, spec.drain_all)
        if spec.drain_all:
            evict = [p for p in on_node if not mirror_or_daemon(p)]
        else:
            selector = self._selector(api)
            evict = [p for p in on_node if matches((p.get("metadata") or {}).get("labels")
                                                  or {}, selector)]
        evict = [p for p in evict if (p.get("status") or {}).get("phase") not in
                 ("Succeeded", "Failed")]
        if not evict:
            which = "pod" if spec.drain_all else "selected pod"
            raise EnvironmentProblem(f"nothing to drain: no {which} runs on node {node}")
        self._refuse_over_radius([name_of(p) for p in evict], "evict")
        for pod in evict:
            if controller_of(pod) is None and not spec.allow_unmanaged:
                raise EnvironmentProblem(
                    f"pod {(pod.get('metadata') or {}).get('namespace')}/{name_of(pod)} on "
                    f"node {node} has no controller: evicting it loses it (kubectl drain "
                    "refuses it too); set allow_unmanaged: true to evict it anyway")
        pdb_path = "/apis/policy/v1/poddisruptionbudgets" if spec.drain_all \
            else pdbs_path(spec.namespace)
        pdbs = list(api.get(pdb_path).get("items") or [])
        refusal = drain_refusal(node, evict, pdbs)
        if refusal:
            raise EnvironmentProblem(refusal)
        return evict

    def _memory_plan(self, api: KubeApi) -> dict[str, Any]:
        """In place (per pod, by dry run) or through the Deployment, and what to restore."""
        spec = self.spec
        assert spec.memory is not None
        mode = spec.resize
        pods: list[dict[str, Any]] = []
        if mode != "deployment":
            pods = [p for p in self._pods(api, self._selector(api)) if live(p)]
            if not pods and mode == "in_place":
                raise EnvironmentProblem(f"no running pod matches {self._target_text()}")
        if mode == "auto":
            mode = "in_place" if pods and self._resize_allowed(api, pods[0]) else "deployment"
            if mode == "deployment" and spec.deployment is None:
                raise EnvironmentProblem("this cluster cannot resize the pods in place (the "
                                         "dry run was refused) and no deployment is given "
                                         "to patch instead")
        elif mode == "in_place" and not self._resize_allowed(api, pods[0], explain=True):
            raise EnvironmentProblem("unreachable")  # _resize_allowed raised with the reason
        if mode == "in_place":
            self._refuse_over_radius([name_of(p) for p in pods], "resize")
            saved = {}
            cname = ""
            for pod in pods:
                _, container = container_index(pod.get("spec") or {}, spec.container)
                cname = str(container.get("name"))
                saved[name_of(pod)] = {"uid": (pod.get("metadata") or {}).get("uid"),
                                       "resources": dict(container.get("resources") or {})}
            return {"mode": mode, "pods": saved, "container": cname}
        dep = self._deployment(api)
        template = ((dep.get("spec") or {}).get("template") or {}).get("spec") or {}
        index, container = container_index(template, spec.container)
        replicas = int((dep.get("spec") or {}).get("replicas") or 0)
        self._refuse_over_radius([f"{spec.deployment} replica {i}" for i in range(replicas)],
                                 "replace")
        return {"mode": mode, "index": index, "container": str(container.get("name")),
                "resources": dict(container.get("resources") or {})}

    def _resize_allowed(self, api: KubeApi, pod: dict[str, Any], explain: bool = False
                        ) -> bool:
        spec = self.spec
        assert spec.memory is not None
        _, container = container_index(pod.get("spec") or {}, spec.container)
        if "memory" not in ((container.get("resources") or {}).get("limits") or {}):
            if explain:
                raise EnvironmentProblem(
                    f"container {container.get('name')} of pod {name_of(pod)} has no memory "
                    "limit, which an in-place resize cannot remove again; use resize: "
                    "deployment")
            return False
        body = {"spec": {"containers": [{"name": container.get("name"), "resources":
                                         squeezed_resources(container.get("resources") or {},
                                                            spec.memory)}]}}
        try:
            api.patch(pods_path(spec.namespace, name_of(pod), "resize"), body,
                      "application/strategic-merge-patch+json", dryRun="All")
        except KubeError as exc:
            if explain:
                raise EnvironmentProblem(f"the cluster refuses to resize pod {name_of(pod)} "
                                         f"in place: {exc.message or exc}") from None
            return False
        return True

    # -- the protocol -------------------------------------------------------------------------

    def _plan_now(self, api: KubeApi) -> dict[str, Any]:
        """Everything the action needs, read and checked; nothing changed."""
        spec = self.spec
        plan: dict[str, Any] = {"fault": self.fault_name}
        if spec.action in ("pod_kill", "container_kill"):
            plan["targets"] = self._kill_targets(api)
        elif spec.action == "drain":
            node = self._node_of(api)
            info = api.get(node_path(node))
            plan.update(node=node, evict=self._drain_plan(api, node),
                        was_unschedulable=bool((info.get("spec") or {}).get("unschedulable")))
        elif spec.action == "node_restart":
            node = self._node_of(api)
            self._refuse_over_radius([name_of(p) for p in self._pods_on(api, node, True)],
                                     "restart the node of")
            values = {"node": node, "python": sys.executable}
            plan.update(node=node, stop=replace_placeholders(list(spec.stop or []), values),
                        start=replace_placeholders(list(spec.start or []), values),
                        cwd=os.getcwd())
        elif spec.action == "scale":
            dep = self._deployment(api)
            now = int((dep.get("spec") or {}).get("replicas") or 0)
            assert spec.replicas is not None
            self._refuse_over_radius([f"{spec.deployment} replica {i}"
                                      for i in range(abs(now - spec.replicas))], "scale away")
            plan["replicas"] = now
        elif spec.action == "rollout_restart":
            dep = self._deployment(api)
            replicas = int((dep.get("spec") or {}).get("replicas") or 0)
            self._refuse_over_radius([f"{spec.deployment} replica {i}"
                                      for i in range(replicas)], "replace")
        else:
            plan.update(self._memory_plan(api))
        return plan

    def preflight(self) -> list[str]:
        with self.api() as api:
            version = api.get("/version").get("gitVersion", "?")
            self._check_permissions(api)
            plan = self._plan_now(api)
        lines = [f"Kubernetes {version} at {api.host}: {self.describe()}"]
        for pod in plan.get("targets", []) + plan.get("evict", []):
            lines.append(f"  target pod {(pod.get('metadata') or {}).get('namespace')}/"
                         f"{name_of(pod)} on {(pod.get('spec') or {}).get('nodeName')}")
        if "node" in plan:
            lines.append(f"  node {plan['node']}")
        if plan.get("mode"):
            lines.append(f"  memory: {plan['mode'].replace('_', ' ')}")
        return lines

    def prepare(self) -> KubernetesRevert:
        # Read again: what preflight saw may have changed since.
        with self.api() as api:
            self._plan = self._plan_now(api)
        self.mode = self._plan.get("mode")
        return revert_action(self.spec, self.kubeconfig, **self._plan)

    def _watch(self, pods: bool = True, nodes: tuple[str, ...] = ()) -> None:
        store = self.ctx.store
        if store is None:
            return
        selector = dict(self.spec.selector)
        if not selector and self.spec.deployment is not None:
            with self.api() as api:
                selector = self._selector(api)
        self._watcher = KubeWatcher(self.api, self.spec.namespace, selector, store.add_event,
                                    {"fault": self.fault_name, "source": "fault"},
                                    nodes=nodes, pods=pods)
        self._watcher.start()

    def apply(self) -> None:
        spec = self.spec
        plan = self._plan
        node = plan.get("node")
        self._watch(nodes=(str(node),) if node else ())
        # The watch's first list is the state before the change: wait for it (no longer
        # than a slow API server takes; a watch that cannot list records why itself).
        if self._watcher is not None:
            self._watcher.wait_listed(WATCH_LISTED_S)
        with self.api() as api:
            if spec.action == "pod_kill":
                self._kill_pods(api, plan["targets"])
            elif spec.action == "container_kill":
                self._kill_containers(plan["targets"])
            elif spec.action == "drain":
                self._cordon(api, str(node))
                self._worker = threading.Thread(target=self._evict_all,
                                                args=(list(plan["evict"]),), daemon=True,
                                                name="kube-drain")
                self._worker.start()
            elif spec.action == "node_restart":
                self._event("stop", node=node, command=plan["stop"])
                run_command(plan["stop"], spec.command_timeout, f"stopping node {node}",
                            plan["cwd"])
                self._event("stopped", node=node)
                if spec.down_for is not None:
                    self._worker = threading.Thread(target=self._start_later, daemon=True,
                                                    name="kube-node-start")
                    self._worker.start()
            elif spec.action == "scale":
                self._event("scale", deployment=spec.deployment, replicas=spec.replicas,
                            before=plan["replicas"])
                api.patch(deployment_path(spec.namespace, str(spec.deployment), "scale"),
                          {"spec": {"replicas": spec.replicas}})
            elif spec.action == "rollout_restart":
                stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                self._event("restart", deployment=spec.deployment, at=stamp)
                api.patch(deployment_path(spec.namespace, str(spec.deployment)),
                          {"spec": {"template": {"metadata": {"annotations": {
                              RESTARTED_AT: stamp}}}}})
            else:
                self._squeeze(api, plan)

    def _kill_pods(self, api: KubeApi, targets: list[dict[str, Any]]) -> None:
        spec = self.spec
        names = [name_of(p) for p in targets]
        self._event("delete", pods=names, grace=spec.grace)
        query: dict[str, Any] = {}
        if spec.grace is not None:
            query["gracePeriodSeconds"] = round(spec.grace)
        for name in names:
            with contextlib.suppress(KubeError):  # gone already: killed all the same
                api.delete(pods_path(spec.namespace, name), **query)

    def _kill_containers(self, targets: list[dict[str, Any]]) -> None:
        spec = self.spec
        sig = parse_signal(spec.signal)
        for pod in targets:
            _, container = container_index(pod.get("spec") or {}, spec.container)
            cname = str(container.get("name"))
            cid = container_id(pod, cname) or ""
            restarts = next((int(s.get("restartCount") or 0) for s in
                             (pod.get("status") or {}).get("containerStatuses") or []
                             if s.get("name") == cname), 0)
            self._event("signal", pod=name_of(pod), container=cname, signal=sig.name,
                        restarts_before=restarts)
            if spec.via == "command":
                argv = replace_placeholders(list(spec.kill_command or []), {
                    "node": str((pod.get("spec") or {}).get("nodeName")),
                    "namespace": spec.namespace, "pod": name_of(pod), "container": cname,
                    "container_id": cid, "signal": sig.name.removeprefix("SIG")})
                run_command(argv, spec.command_timeout, f"killing container {cname}")
                continue
            pid = main_pid(cid)
            if pid is None:
                raise EnvironmentProblem(f"the main process of container {cname} of pod "
                                         f"{name_of(pod)} is gone or not visible here")
            os.kill(pid, sig)

    def _cordon(self, api: KubeApi, node: str) -> None:
        self._event("cordon", node=node)
        api.patch(node_path(node), {"spec": {"unschedulable": True}})

    def _evict_all(self, pods: list[dict[str, Any]]) -> None:
        """Evicts each pod through the Eviction API; a refusal (429: a disruption budget)
        is retried until drain_timeout, then the drain is reported incomplete. Never
        a delete: nothing is forced past a budget."""
        spec = self.spec
        deadline = time.time() + spec.drain_timeout
        left = [((p.get("metadata") or {}).get("namespace"), name_of(p)) for p in pods]
        refused: dict[str, str] = {}
        try:
            with self.api() as api:
                while left and not self._halt.is_set():
                    for ns, name in list(left):
                        body: dict[str, Any] = {
                            "apiVersion": "policy/v1", "kind": "Eviction",
                            "metadata": {"name": name, "namespace": ns}}
                        if spec.grace is not None:
                            body["deleteOptions"] = {"gracePeriodSeconds": round(spec.grace)}
                        try:
                            api.post(pods_path(str(ns), name, "eviction"), body)
                        except KubeError as exc:
                            if exc.status == 404:
                                left.remove((ns, name))
                                continue
                            if exc.status != 429:
                                raise
                            if name not in refused:
                                self._event("evict_refused", pod=name, namespace=ns,
                                            reason=exc.message)
                            refused[name] = exc.message
                            continue
                        left.remove((ns, name))
                        self._event("evict", pod=name, namespace=ns)
                    if not left or time.time() >= deadline:
                        break
                    self._halt.wait(EVICT_RETRY_S)
        except Exception as exc:  # a broken drain is evidence, and the revert still runs
            self._event("error", error=f"{type(exc).__name__}: {exc}"[:300])
            return
        if left:
            self._event("drain_incomplete", pods=[n for _, n in left],
                        reason=next(iter(refused.values()), "stopped before the end"),
                        after_s=round(spec.drain_timeout, 3))
        else:
            self._event("drain_done", node=self._plan.get("node"))

    def _start_later(self) -> None:
        spec = self.spec
        plan = self._plan
        assert spec.down_for is not None
        if self._halt.wait(spec.down_for):
            return  # stopped first: the revert starts it
        self._event("start", node=plan["node"], command=plan["start"])
        try:
            run_command(plan["start"], spec.command_timeout, f"starting node {plan['node']}",
                        plan["cwd"])
        except EnvironmentProblem as exc:
            self._event("error", error=str(exc)[:300])
            return
        self._event("started", node=plan["node"])

    def _squeeze(self, api: KubeApi, plan: dict[str, Any]) -> None:
        spec = self.spec
        assert spec.memory is not None
        if plan["mode"] == "in_place":
            for name, saved in plan["pods"].items():
                body = {"spec": {"containers": [{
                    "name": plan["container"],
                    "resources": squeezed_resources(saved["resources"], spec.memory)}]}}
                self._event("resize", pod=name, container=plan["container"],
                            memory=quantity(spec.memory))
                api.patch(pods_path(spec.namespace, name, "resize"), body,
                          "application/strategic-merge-patch+json")
            return
        index = int(plan["index"])
        prefix = f"/spec/template/spec/containers/{index}"
        self._event("patch", deployment=spec.deployment, container=plan["container"],
                    memory=quantity(spec.memory))
        api.patch(deployment_path(spec.namespace, str(spec.deployment)), [
            {"op": "test", "path": f"{prefix}/name", "value": plan["container"]},
            {"op": "add", "path": f"{prefix}/resources",
             "value": squeezed_resources(plan["resources"], spec.memory)}], JSON_PATCH)

    def stop(self, timeout: float = 30.0) -> None:
        """The change is the journal's to revert; the drain's evictions, the node's delayed
        start and the watch end here."""
        self._halt.set()
        if self._worker is not None:
            self._worker.join(min(timeout, self.spec.command_timeout))
            self._worker = None
        if self._watcher is not None:
            self._watcher.stop(min(timeout, 5.0))
            for error in self._watcher.errors[:1]:
                self._event("error", error=f"watch: {error}")
            self._watcher = None

    def effect(self, evidence: Evidence) -> FaultEffect:
        return judge_kubernetes(self.spec, self.fault_name, evidence)


def make_kubernetes_fault(ctx: RunContext, name: str, spec: KubernetesFault
                          ) -> KubernetesInjector:
    return KubernetesInjector(ctx, name, spec)


# --- did the fault land? ---------------------------------------------------------------------

# In-flight requests that must exist before "none of them was cut" says a kill missed.
UNTOUCHED_MIN_REQUESTS = 3
WRONG_TARGET = "wrong selector? (the clients may be served by other pods)"


def _in_flight(evidence: Evidence, start: float, end: float
               ) -> tuple[list[RequestRecord], list[RequestRecord]]:
    inside = list(evidence.requests_overlapping(start, end))
    return inside, [r for r in inside if cut_or_retried(r)]


def _traffic(evidence: Evidence, start: float, end: float) -> tuple[str, bool]:
    """A note of the requests the fault cut, and whether the traffic was untouched (enough
    requests in flight and not one failed on the network or was retried)."""
    inside, cut = _in_flight(evidence, start, end)
    if not inside:
        return "; no client request was in flight to show its effect", False
    note = f"; {share_text(len(cut), len(inside))} in flight meanwhile failed or were retried"
    return note, len(inside) >= UNTOUCHED_MIN_REQUESTS and not cut


def judge_kubernetes(spec: KubernetesFault, fault: str, evidence: Evidence) -> FaultEffect:
    """Whether the evidence the backend recorded shows the fault took effect:

    pod_kill: the targeted pods seen terminating or deleted after the delete (and requests
    in flight cut or retried, when there were enough to tell); container_kill: the
    container's restart count rose or its last termination was recorded; node_restart: the
    node's Ready condition left True; drain: at least one pod evicted; scale: the routable
    pods reached the new count; rollout_restart: new pods replaced the old ones; memory:
    the squeezed limit read back on a pod (or an OOMKilled). No pod or node record at all
    (the watch failed): unknown, never a pass.
    """
    window = fault_window(evidence, fault)
    if window is None:
        return FaultEffect(None, "the fault has no apply time in the evidence")
    actions = [(ts, d) for ts, d in evidence.events_of(ACTION_EVENT) if d.get("fault") == fault]
    pods = [(ts, d) for ts, d in evidence.events_of(POD_EVENT)
            if d.get("fault") == fault and "error" not in d]
    nodes = [(ts, d) for ts, d in evidence.events_of(NODE_EVENT)
             if d.get("fault") == fault and "error" not in d]
    if not actions:
        return FaultEffect(None, "no record of the action itself (apply recorded nothing)")
    began = min(ts for ts, _ in actions)
    traffic, untouched = _traffic(evidence, window.start, window.end)
    kind = spec.action
    if kind == "node_restart":
        return _judge_node(nodes, actions, began, traffic)
    if kind == "drain":
        evicted = [d for _, d in actions if d.get("step") == "evict"]
        refused = [d for _, d in actions if d.get("step") == "evict_refused"]
        held = next((d for _, d in actions if d.get("step") == "drain_incomplete"), None)
        if not evicted:
            why = (f"; {len(refused)} refused: {refused[0].get('reason')}" if refused
                   else "")
            return FaultEffect(False, f"the node was cordoned but no pod was evicted{why}")
        tail = ""
        if held is not None:
            tail = (f"; {len(held.get('pods') or [])} held by a disruption budget until the "
                    f"drain timeout ({held.get('reason')})")
        return FaultEffect(True, f"node cordoned, {len(evicted)} pod(s) evicted "
                                 f"({', '.join(str(d.get('pod')) for d in evicted)}){tail}"
                                 f"{traffic}")
    if not pods:
        return FaultEffect(None, "the pod watch recorded nothing for the fault (the watch "
                                 "failed, or no pod matches): no evidence either way")
    before = {str(d.get("pod")) for ts, d in pods if ts <= began}
    after = [(ts, d) for ts, d in pods if ts > began]
    if kind == "pod_kill":
        targets = next((list(d.get("pods") or []) for _, d in actions
                        if d.get("step") == "delete"), [])
        gone = sorted({str(d.get("pod")) for _, d in after
                       if d.get("pod") in targets and (d.get("terminating") or d.get("deleted"))})
        if not gone:
            return FaultEffect(False, f"pods {', '.join(targets) or '?'} were never seen "
                                      "terminating or deleted after the delete")
        if untouched:
            return FaultEffect(False, f"{', '.join(gone)} went, but{traffic[1:]}: the "
                                      f"clients do not go through them; {WRONG_TARGET}")
        new = sorted({str(d.get("pod")) for _, d in after} - before)
        return FaultEffect(True, f"{', '.join(gone)} deleted"
                                 + (f", replaced by {', '.join(new)}" if new else "")
                                 + traffic)
    if kind == "container_kill":
        signals = {str(d.get("pod")): int(d.get("restarts_before") or 0)
                   for _, d in actions if d.get("step") == "signal"}
        rose = sorted({str(d.get("pod")) for _, d in after if d.get("pod") in signals
                       and int(d.get("restarts") or 0) > signals[str(d.get("pod"))]})
        if not rose:
            return FaultEffect(False, f"the restart count of {', '.join(signals) or '?'} "
                                      "never rose after the signal: it was ignored or caught")
        if untouched:
            return FaultEffect(False, f"{', '.join(rose)} restarted, but{traffic[1:]}: the "
                                      f"clients do not go through them; {WRONG_TARGET}")
        return FaultEffect(True, f"the kubelet restarted the killed container of "
                                 f"{', '.join(rose)}{traffic}")
    if kind == "scale":
        want = spec.replicas
        live_now: dict[str, bool] = {}
        reached = None
        for ts, d in sorted(pods, key=lambda e: e[0]):
            live_now[str(d.get("pod"))] = not d.get("deleted") and not d.get("terminating")
            if ts > began and sum(live_now.values()) == want and reached is None:
                reached = ts
        if reached is None:
            return FaultEffect(False, f"the deployment's pods never numbered {want} while the "
                                      "fault was on")
        return FaultEffect(True, f"{want} pods {reached - began:.1f}s after the scale{traffic}")
    if kind == "rollout_restart":
        new = sorted({str(d.get("pod")) for _, d in after} - before)
        old_gone = sorted({str(d.get("pod")) for _, d in after if d.get("pod") in before
                           and (d.get("terminating") or d.get("deleted"))})
        if not new and not old_gone:
            return FaultEffect(False, "no pod was replaced after the restart")
        return FaultEffect(True, f"{len(old_gone)} pod(s) replaced by {len(new)} new{traffic}")
    assert spec.memory is not None
    oom = sorted({str(d.get("pod")) for _, d in after for c in (d.get("containers") or {})
                  .values() if "OOMKilled" in (c.get("reason"), c.get("last_reason"))})
    if oom:
        return FaultEffect(True, f"OOMKilled in {', '.join(oom)} while squeezed{traffic}")
    squeezed = sorted({str(d.get("pod")) for _, d in after
                       for c in (d.get("containers") or {}).values()
                       if parse_quantity(c.get("memory_limit")) == spec.memory})
    if squeezed:
        return FaultEffect(True, f"memory limit {quantity(spec.memory)} read back on "
                                 f"{', '.join(squeezed)}; no OOM followed")
    return FaultEffect(False, f"no pod read back a memory limit of {quantity(spec.memory)} "
                              "(the kubelet deferred or refused the resize?)")


def _judge_node(nodes: list[tuple[float, dict[str, Any]]],
                actions: list[tuple[float, dict[str, Any]]], began: float,
                traffic: str) -> FaultEffect:
    stopped = next((ts for ts, d in actions if d.get("step") == "stop"), None)
    started = next((ts for ts, d in actions if d.get("step") in ("start", "started")), None)
    if not nodes:
        return FaultEffect(None, "the node watch recorded nothing: no evidence either way")
    if stopped is None:
        return FaultEffect(False, "the stop command never ran")
    down = next((ts for ts, d in nodes if ts >= stopped and d.get("ready") != "True"), None)
    if down is None:
        return FaultEffect(False, "the node never went NotReady after the stop (was it down "
                                  "for less than the cluster's node-monitor-grace-period?)")
    back = next((ts for ts, d in nodes if ts > down and d.get("ready") == "True"), None)
    text = f"node NotReady {down - stopped:.1f}s after the stop"
    if back is not None:
        text += f", Ready again {back - (started or back):.1f}s after the start"
    return FaultEffect(True, text + traffic)


def markers(evidence: Evidence, t0: float) -> list[tuple[float, str]]:
    """The moments worth a line on the charts: what the backend did, and a node's Ready."""
    shown = {"delete": "kill {pods}", "signal": "{signal} {pod}", "cordon": "cordon {node}",
             "stop": "stop {node}", "start": "start {node}", "scale": "scale to {replicas}",
             "restart": "rollout restart", "resize": "squeeze {pod}",
             "patch": "squeeze {deployment}", "drain_incomplete": "drain held"}
    out = []
    for ts, d in evidence.events_of(ACTION_EVENT):
        template = shown.get(str(d.get("step")))
        if template is not None:
            values = {k: (",".join(v) if isinstance(v, list) else v) for k, v in d.items()}
            with contextlib.suppress(KeyError, IndexError):
                out.append((round(ts - t0, 3), template.format(**values)))
    last: dict[str, str] = {}
    for ts, d in evidence.events_of(NODE_EVENT):
        name, ready = str(d.get("node")), str(d.get("ready"))
        if "error" in d or last.get(name) == ready:
            continue
        if name in last:
            state = "Ready" if ready == "True" else "NotReady"
            out.append((round(ts - t0, 3), f"node {name} {state}"))
        last[name] = ready
    return out


# --- the reverter ----------------------------------------------------------------------------


def revert_kubernetes(action: KubernetesRevert) -> None:
    """Idempotent: a node already schedulable, a Deployment already at its count or gone,
    a pod replaced since (its new instance has the template's resources) is left alone."""
    op = str(action["op"])
    if op not in ("none", "uncordon", "start_node", "scale", "resize", "patch_deployment"):
        raise ValueError(f"unknown Kubernetes revert op '{op}'")
    if op == "none":
        return
    if op == "start_node":
        run_command(list(action["start"]), float(action.get("command_timeout", 120.0)),
                    f"starting node {action['node']}", action.get("cwd"))
    timeout = float(action.get("timeout", 30.0))
    with KubeApi(action["kubeconfig"], action.get("context"), timeout) as api:
        if op == "start_node":
            _wait_ready(api, str(action["node"]), float(action.get("ready_timeout", 180.0)))
        elif op == "uncordon":
            with _unless_gone():
                api.patch(node_path(str(action["node"])), {"spec": {"unschedulable": None}})
        elif op == "scale":
            with _unless_gone():
                api.patch(deployment_path(str(action["namespace"]), str(action["deployment"]),
                                          "scale"), {"spec": {"replicas": action["replicas"]}})
        elif op == "patch_deployment":
            prefix = f"/spec/template/spec/containers/{int(action['index'])}"
            with _unless_gone():
                api.patch(deployment_path(str(action["namespace"]), str(action["deployment"])),
                          [{"op": "test", "path": f"{prefix}/name", "value": action["container"]},
                           {"op": "add", "path": f"{prefix}/resources",
                            "value": action["resources"]}], JSON_PATCH)
        else:
            _restore_pods(api, action)


@contextlib.contextmanager
def _unless_gone() -> Any:
    """A 404: the object is gone, and with it what the fault changed."""
    try:
        yield
    except KubeError as exc:
        if exc.status != 404:
            raise


def _restore_pods(api: KubeApi, action: KubernetesRevert) -> None:
    ns = str(action["namespace"])
    errors = []
    for name, saved in (action.get("pods") or {}).items():
        try:
            pod = api.get(pods_path(ns, name))
        except KubeError as exc:
            if exc.status == 404:
                continue
            raise
        if (pod.get("metadata") or {}).get("uid") != saved.get("uid"):
            continue  # a new pod of the same name: created from the untouched template
        body = {"spec": {"containers": [{"name": action["container"],
                                         "resources": saved["resources"]}]}}
        try:
            api.patch(pods_path(ns, name, "resize"), body,
                      "application/strategic-merge-patch+json")
        except KubeError as exc:
            if exc.status != 404:
                errors.append(f"{name}: {exc.message or exc}")
    if errors:
        raise EnvironmentProblem("could not write back the memory limits of " +
                                 "; ".join(errors))


def _wait_ready(api: KubeApi, node: str, timeout: float) -> None:
    deadline = time.time() + timeout
    last = "not read"
    while True:
        try:
            info = api.get(node_path(node))
            last = next((str(c.get("status")) for c in (info.get("status") or {}).get(
                "conditions") or [] if c.get("type") == "Ready"), "no Ready condition")
            if last == "True":
                return
        except EnvironmentProblem as exc:  # the API may be restarting with the node
            last = str(exc)
        if time.time() >= deadline:
            raise EnvironmentProblem(f"node {node} was not Ready {timeout:g}s after its "
                                     f"start command (Ready: {last})")
        time.sleep(NODE_POLL_S)


KUBERNETES = FaultBackend(
    spec=KubernetesFault,
    injector=make_kubernetes_fault,
    revert=revert_kubernetes,  # type: ignore[arg-type]
    description="Pods or containers killed, a node restarted or drained, a Deployment "
                "scaled, restarted or squeezed.",
    markers=markers,
    label=lambda spec: f"kubernetes {spec.action}",
    # The pods it touches are counted when they are matched (prepare refuses more than
    # max_pods / safety.max_blast_radius); before that, one fault is one target.
)
