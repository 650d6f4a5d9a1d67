"""A small JSON client of the Kubernetes API, on the official `kubernetes` package.

The package does what is hard to get right: reading kubeconfig files (a `:`-separated
$KUBECONFIG list, contexts, client certificates, bearer tokens, exec credential plugins and
their refresh). Its generated typed API is not used: llmdrill reads and writes plain JSON
objects (the same shapes as `kubectl get -o json`), which the pure logic and its unit tests
can build by hand, and which go into the journal as they are. Every call has a deadline.

`kubernetes` is imported inside functions: the fault registry imports the backend module
at start-up, and the client package takes a noticeable time to import.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from llmdrill.faults.base import EnvironmentProblem

DEFAULT_KUBECONFIG = "~/.kube/config"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


# `kubeconfig: in-cluster`: the pod's own ServiceAccount (its token, the cluster's CA, and
# the API address Kubernetes puts in every pod's environment).
IN_CLUSTER = "in-cluster"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def service_account_dir() -> Path:
    """Where the pod's ServiceAccount token and CA are mounted (movable for tests)."""
    return Path(os.environ.get("LLMDRILL_KUBE_SERVICE_ACCOUNT_DIR") or SERVICE_ACCOUNT_DIR)


def in_a_pod() -> bool:
    """Running in a Kubernetes pod with a ServiceAccount token mounted."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and (
        service_account_dir() / "token").exists()


def kubeconfig_path(configured: str | None = None) -> str:
    """The kubeconfig to use: the spec's, else $KUBECONFIG (maybe a `:` list), else
    ~/.kube/config, else, in a pod with no kubeconfig at all, the pod's ServiceAccount
    (`in-cluster`); with `~` expanded, so a journaled path means the same in any process."""
    if configured == IN_CLUSTER:
        return IN_CLUSTER
    raw = configured or os.environ.get("KUBECONFIG")
    if not raw:
        if not Path(DEFAULT_KUBECONFIG).expanduser().exists() and in_a_pod():
            return IN_CLUSTER
        raw = DEFAULT_KUBECONFIG
    return os.pathsep.join(str(Path(p).expanduser()) for p in raw.split(os.pathsep) if p)


def _in_cluster_client(context: str | None) -> Any:
    """An API client on the pod's ServiceAccount; the token is read again as the kubelet
    rotates it."""
    from kubernetes import client
    from kubernetes.config.incluster_config import InClusterConfigLoader

    if context:
        raise EnvironmentProblem(f"context '{context}' makes no sense with kubeconfig "
                                 f"{IN_CLUSTER}: a pod has one cluster and one account")
    folder = service_account_dir()
    configuration = client.Configuration()
    loader: Any = InClusterConfigLoader  # untyped in the package
    loader(token_filename=str(folder / "token"),
           cert_filename=str(folder / "ca.crt")).load_and_set(configuration)
    return client.ApiClient(configuration=configuration)


class KubeError(EnvironmentProblem):
    """The API answered with an error status (its Status object's message and reason)."""

    def __init__(self, status: int, reason: str, message: str, what: str) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"{what}: HTTP {status} {reason}: {message}".rstrip(": "))


def _status_of(body: bytes) -> tuple[str, str]:
    """(reason, message) of a Status object body, or the raw text."""
    try:
        obj = json.loads(body or b"{}")
    except ValueError:
        return "", body[:300].decode(errors="replace")
    if not isinstance(obj, dict):
        return "", str(obj)[:300]
    return str(obj.get("reason") or ""), str(obj.get("message") or "")


def q(name: str) -> str:
    """A path segment (a name) quoted for a URL."""
    return quote(name, safe="")


class KubeApi:
    """One connection to one cluster (kubeconfig + context); `timeout` bounds each call."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None,
                 timeout: float = 30.0) -> None:
        from kubernetes import config
        from kubernetes.config.config_exception import ConfigException

        self.kubeconfig = kubeconfig_path(kubeconfig)
        self.context = context
        self.timeout = timeout
        try:
            if self.kubeconfig == IN_CLUSTER:
                self.client: Any = _in_cluster_client(context)
            else:
                make: Any = config.new_client_from_config  # untyped in the package
                self.client = make(config_file=self.kubeconfig, context=context,
                                   persist_config=False)
        except (ConfigException, OSError, ValueError, TypeError) as exc:
            where = f"context '{context}' of " if context else ""
            raise EnvironmentProblem(f"cannot use {where}kubeconfig {self.kubeconfig}: "
                                     f"{exc}") from None
        self.host = str(self.client.configuration.host)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> KubeApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests -------------------------------------------------------------------------

    def _send(self, method: str, path: str, query: dict[str, Any] | None, body: Any,
              content_type: str | None, timeout: float | tuple[float, float] | None,
              ) -> Any:
        from urllib3.exceptions import HTTPError

        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        params = [(k, str(v).lower() if isinstance(v, bool) else v)
                  for k, v in (query or {}).items() if v is not None]
        try:
            method, url, headers, body, _ = self.client.param_serialize(
                method, path, query_params=params, header_params=headers, body=body,
                auth_settings=["BearerToken"])
            return self.client.call_api(method, url, headers, body,
                                        _request_timeout=timeout or self.timeout)
        except (HTTPError, OSError) as exc:
            raise EnvironmentProblem(f"the Kubernetes API at {self.host} is unreachable "
                                     f"({type(exc).__name__}: {exc})") from None

    def request(self, method: str, path: str, query: dict[str, Any] | None = None,
                body: Any = None, content_type: str | None = None,
                timeout: float | None = None) -> dict[str, Any]:
        """One call; the decoded JSON answer, or KubeError for an error status."""
        response = self._send(method, path, query, body, content_type, timeout)
        data = response.read()
        if not 200 <= response.status < 300:
            reason, message = _status_of(data)
            raise KubeError(response.status, reason or str(response.reason or ""), message,
                            f"{method} {path}")
        try:
            decoded = json.loads(data or b"{}")
        except ValueError:
            raise EnvironmentProblem(f"{method} {path}: the API answered something that is "
                                     "not JSON") from None
        return decoded if isinstance(decoded, dict) else {"items": decoded}

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        return self.request("GET", path, query)

    def patch(self, path: str, body: Any, content_type: str = MERGE_PATCH,
              **query: Any) -> dict[str, Any]:
        return self.request("PATCH", path, query, body, content_type)

    def post(self, path: str, body: Any, **query: Any) -> dict[str, Any]:
        return self.request("POST", path, query, body)

    def delete(self, path: str, body: Any = None, **query: Any) -> dict[str, Any]:
        return self.request("DELETE", path, query, body)

    @contextmanager
    def watch(self, path: str, **query: Any) -> Iterator[tuple[Any, Iterator[dict[str, Any]]]]:
        """A watch: (the raw response, an iterator of its events as dicts). The response's
        `shutdown()` ends a read blocked in another thread. `timeoutSeconds` in the query
        bounds it on the server's side; the read deadline is a little longer."""
        server = float(query.get("timeoutSeconds") or 60)
        response = self._send("GET", path, {**query, "watch": True}, None, None,
                              (min(self.timeout, 10.0), server + 15.0))
        raw = response.response
        try:
            if not 200 <= response.status < 300:
                reason, message = _status_of(response.read())
                raise KubeError(response.status, reason, message, f"watch {path}")
            yield raw, _lines(raw)
        finally:
            raw.release_conn()


def _lines(raw: Any) -> Iterator[dict[str, Any]]:
    """The watch's newline-delimited JSON events."""
    pending = b""
    for chunk in raw.stream(64 * 1024, decode_content=True):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                event = json.loads(line)
                if isinstance(event, dict):
                    yield event
    if pending.strip():
        event = json.loads(pending)
        if isinstance(event, dict):
            yield event


# --- paths ------------------------------------------------------------------------------------


def pods_path(namespace: str, name: str | None = None, sub: str | None = None) -> str:
    path = f"/api/v1/namespaces/{q(namespace)}/pods"
    if name:
        path += f"/{q(name)}"
    if sub:
        path += f"/{sub}"
    return path


def deployment_path(namespace: str, name: str, sub: str | None = None) -> str:
    path = f"/apis/apps/v1/namespaces/{q(namespace)}/deployments/{q(name)}"
    return f"{path}/{sub}" if sub else path


def node_path(name: str | None = None) -> str:
    return "/api/v1/nodes" + (f"/{q(name)}" if name else "")


def pdbs_path(namespace: str) -> str:
    return f"/apis/policy/v1/namespaces/{q(namespace)}/poddisruptionbudgets"


def selector_text(labels: dict[str, str]) -> str:
    """A label selector (`a=b,c=d`) from match labels, sorted so it reads the same each time."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
