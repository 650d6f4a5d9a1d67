"""Pods and nodes as the Kubernetes API's watch reports them, recorded as evidence.

While a Kubernetes fault is applied (and while a check that needs them runs), a thread
lists, then watches, the pods of a namespace and label selector, and another the nodes of
interest. Each time what matters of one changes (Ready, routable, phase, restart count, a
container's waiting or terminated reason such as OOMKilled or CrashLoopBackOff, its exit
code, its memory limit; a node's Ready condition and schedulability) one `kube_pod` or
`kube_node` event goes into the evidence store, timed when the harness received it. The
first list records the state the watch starts from, so a check knows how things stood.

"Routable" is what a Service routes to: the pod is Ready and not terminating (the
EndpointSlice controller marks a terminating pod's endpoint not ready at once).

A watch that breaks (the API restarting, a network blip, a `410 Gone` for a resource
version too old) is listed again and resumed; the failure is recorded (`error` in the
detail), so a check can tell a quiet pod from a blind watch.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from llmdrill.faults.kube_api import KubeApi, node_path, pods_path, selector_text
from llmdrill.model.events import EventKind

Sink = Callable[[float, str, dict[str, Any]], None]
ApiFactory = Callable[[], KubeApi]

POD = EventKind.KUBE_POD
NODE = EventKind.KUBE_NODE
WATCH_SECONDS = 60  # one watch request's server-side lifetime; it is then resumed
RETRY_S = 1.0  # pause after a failed list or watch


# --- pure: what of a pod or node is worth recording (unit-tested) --------------------------


def _condition(obj: dict[str, Any], kind: str) -> str | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return str(cond.get("status"))
    return None


def owner_of(pod: dict[str, Any]) -> tuple[str | None, str | None]:
    """The pod's controller ("Kind/name") and, for a ReplicaSet made by a Deployment, the
    Deployment's name (the ReplicaSet's name without its pod-template-hash suffix)."""
    meta = pod.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            kind, name = str(ref.get("kind")), str(ref.get("name"))
            digest = (meta.get("labels") or {}).get("pod-template-hash")
            deployment = None
            if kind == "ReplicaSet" and digest and name.endswith(f"-{digest}"):
                deployment = name[: -len(digest) - 1]
            return f"{kind}/{name}", deployment
    return None, None


def _container(status: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    state = status.get("state") or {}
    last = (status.get("lastState") or {}).get("terminated") or {}
    current = next(iter(state), None)
    detail: dict[str, Any] = {
        "ready": bool(status.get("ready")),
        "restarts": int(status.get("restartCount") or 0),
        "state": current,
    }
    reason = (state.get(current) or {}).get("reason") if current else None
    if reason:
        detail["reason"] = reason
    if last:
        detail["last_reason"] = last.get("reason")
        detail["last_exit_code"] = last.get("exitCode")
    # The limit the kubelet reports as applied (in-place resize), else the spec's.
    limits = ((status.get("resources") or {}).get("limits")
              or (spec.get("resources") or {}).get("limits") or {})
    if "memory" in limits:
        detail["memory_limit"] = str(limits["memory"])
    return detail


def pod_summary(pod: dict[str, Any], deleted: bool = False) -> dict[str, Any]:
    """What a check reads of a pod: who it is, where, and how it stands."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    specs = {str(c.get("name")): c for c in (pod.get("spec") or {}).get("containers") or []}
    owner, deployment = owner_of(pod)
    ready = _condition(pod, "Ready") == "True"
    terminating = bool(meta.get("deletionTimestamp"))
    containers = {str(s.get("name")): _container(s, specs.get(str(s.get("name")), {}))
                  for s in status.get("containerStatuses") or []}
    return {
        "pod": str(meta.get("name")),
        "namespace": str(meta.get("namespace")),
        "uid": str(meta.get("uid", "")),
        "labels": dict(meta.get("labels") or {}),
        "owner": owner,
        "deployment": deployment,
        "node": (pod.get("spec") or {}).get("nodeName"),
        "phase": status.get("phase"),
        "ready": ready and not deleted,
        "routable": ready and not terminating and not deleted,
        "terminating": terminating,
        "deleted": deleted,
        "restarts": sum(c["restarts"] for c in containers.values()),
        "containers": containers,
    }


def node_summary(node: dict[str, Any], deleted: bool = False) -> dict[str, Any]:
    meta = node.get("metadata") or {}
    reason = next((str(c.get("reason") or "") for c in (node.get("status") or {}).get(
        "conditions") or [] if c.get("type") == "Ready"), "")
    return {
        "node": str(meta.get("name")),
        "ready": _condition(node, "Ready") or "Unknown",
        "reason": reason,
        "unschedulable": bool((node.get("spec") or {}).get("unschedulable")),
        "taints": sorted(str(t.get("key")) for t in (node.get("spec") or {}).get("taints")
                         or []),
        "deleted": deleted,
    }


def matches(labels: dict[str, Any], selector: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- the watcher ------------------------------------------------------------------------------


class KubeWatcher:
    """Records the pods of `namespace` matching `selector`, and the nodes in `nodes`
    (none if empty), from start() until stop(). `tag` goes into every detail (e.g.
    {"fault": name} or {"check": name}) to say who recorded it."""

    def __init__(self, api_factory: ApiFactory, namespace: str, selector: dict[str, str],
                 sink: Sink, tag: dict[str, Any], nodes: Iterable[str] = (),
                 pods: bool = True) -> None:
        self.api_factory = api_factory
        self.namespace = namespace
        self.selector = dict(selector)
        self.sink = sink
        self.tag = dict(tag)
        self.nodes = set(nodes)
        self.errors: list[str] = []
        self.count = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._open: set[Any] = set()
        self._listed: dict[str, threading.Event] = {}
        self._threads = []
        for what, wanted in (("pods", pods), ("nodes", bool(self.nodes))):
            if wanted:
                self._listed[what] = threading.Event()
                self._threads.append(threading.Thread(target=self._run, args=(what,),
                                                      name=f"kube-{what}", daemon=True))

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def wait_listed(self, timeout: float) -> bool:
        """Until every resource was listed once (its state before what comes next is
        recorded, and the watch carries on from there), or `timeout`: False then."""
        deadline = time.time() + timeout
        return all(done.wait(max(0.0, deadline - time.time()))
                   for done in self._listed.values())

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            responses = list(self._open)
        for raw in responses:  # unblocks a read waiting for the next event
            with contextlib.suppress(Exception):
                raw.shutdown()
        deadline = time.time() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.time()))

    # -- one resource -------------------------------------------------------------------

    def _record(self, kind: str, detail: dict[str, Any]) -> None:
        self.sink(time.time(), kind, {**detail, **self.tag})
        self.count += 1

    def _run(self, what: str) -> None:
        api: KubeApi | None = None
        seen: dict[str, dict[str, Any]] = {}  # name -> last recorded summary
        kind = POD if what == "pods" else NODE
        while not self._stop.is_set():
            try:
                if api is None:
                    api = self.api_factory()
                version: str | None = self._list(api, what, seen)
                self._listed[what].set()
                while version is not None and not self._stop.is_set():
                    version = self._watch(api, what, seen, version)  # None: 410, list again
            except Exception as exc:  # a blind spot is recorded, then the watch resumes
                if self._stop.is_set():
                    break
                text = f"{type(exc).__name__}: {exc}"[:300]
                self.errors.append(text)
                self._record(kind, {"error": text, "watch": what})
                self._stop.wait(RETRY_S)
        if api is not None:
            api.close()

    def _path_and_query(self, what: str) -> tuple[str, dict[str, Any]]:
        if what == "pods":
            return pods_path(self.namespace), {"labelSelector": selector_text(self.selector)
                                               or None}
        return node_path(), {}

    def _summary(self, what: str, obj: dict[str, Any], deleted: bool = False
                 ) -> dict[str, Any] | None:
        if what == "pods":
            return pod_summary(obj, deleted)
        summary = node_summary(obj, deleted)
        return summary if summary["node"] in self.nodes else None

    def _note(self, what: str, seen: dict[str, dict[str, Any]], obj: dict[str, Any],
              deleted: bool = False) -> None:
        summary = self._summary(what, obj, deleted)
        if summary is None:
            return
        key = summary["pod"] if what == "pods" else summary["node"]
        if seen.get(key) != summary:
            seen[key] = summary
            self._record(POD if what == "pods" else NODE, summary)
        if deleted:
            seen.pop(key, None)

    def _list(self, api: KubeApi, what: str, seen: dict[str, dict[str, Any]]) -> str:
        path, query = self._path_and_query(what)
        listed = api.get(path, **query)
        present = set()
        for obj in listed.get("items") or []:
            self._note(what, seen, obj)
            present.add(str((obj.get("metadata") or {}).get("name")))
        for name in [n for n in seen if n not in present]:  # gone while we were not looking
            gone = seen[name]
            stub = {"metadata": {"name": name, "namespace": gone.get("namespace"),
                                 "labels": gone.get("labels")}}
            self._note(what, seen, stub, deleted=True)
        return str((listed.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, api: KubeApi, what: str, seen: dict[str, dict[str, Any]],
               since: str) -> str | None:
        version = since
        path, query = self._path_and_query(what)
        with api.watch(path, resourceVersion=version, allowWatchBookmarks=True,
                       timeoutSeconds=WATCH_SECONDS, **query) as (raw, events):
            with self._lock:
                self._open.add(raw)
            try:
                for event in events:
                    obj = event.get("object") or {}
                    kind = event.get("type")
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            return None
                        raise RuntimeError(f"watch error: {obj.get('message')}")
                    version = str((obj.get("metadata") or {}).get("resourceVersion")
                                  or version)
                    if kind in ("ADDED", "MODIFIED"):
                        self._note(what, seen, obj)
                    elif kind == "DELETED":
                        self._note(what, seen, obj, deleted=True)
                    if self._stop.is_set():
                        break
            finally:
                with self._lock:
                    self._open.discard(raw)
        return version


# --- reading the recorded events back (for checks and judges) -------------------------------


def pod_states(events: Iterable[tuple[float, dict[str, Any]]], namespace: str,
               selector: dict[str, str]) -> list[tuple[float, dict[str, Any]]]:
    """The recorded pod summaries of one namespace and selector, in time order (watch
    errors left out)."""
    return sorted(((ts, d) for ts, d in events
                   if "error" not in d and d.get("namespace") == namespace
                   and matches(d.get("labels") or {}, selector)), key=lambda e: e[0])


def routable_counts(states: list[tuple[float, dict[str, Any]]]
                    ) -> list[tuple[float, int]]:
    """How many pods were routable after each recorded change: (time, count)."""
    current: dict[str, bool] = {}
    counts: list[tuple[float, int]] = []
    for ts, d in states:
        current[str(d.get("pod"))] = bool(d.get("routable"))
        counts.append((ts, sum(current.values())))
    return counts
