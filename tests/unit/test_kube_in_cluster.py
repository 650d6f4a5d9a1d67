"""A harness in a pod uses the pod's ServiceAccount: `kubeconfig: in-cluster`, or by default
when there is no kubeconfig at all. (The same code path runs against the real API server
with a ServiceAccount token in the Kubernetes integration tests.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from llmdrill.faults.base import EnvironmentProblem
from llmdrill.faults.kube_api import IN_CLUSTER, KubeApi, in_a_pod, kubeconfig_path

pytestmark = pytest.mark.unit


@pytest.fixture
def pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The files and environment Kubernetes gives a pod, with no kubeconfig anywhere."""
    folder = tmp_path / "serviceaccount"
    folder.mkdir()
    (folder / "token").write_text("sa-token-123")
    (folder / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n"
                                   "-----END CERTIFICATE-----\n")
    (folder / "namespace").write_text("llmdrill\n")
    monkeypatch.setenv("LLMDRILL_KUBE_SERVICE_ACCOUNT_DIR", str(folder))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.kube/config
    return folder


def test_in_a_pod_with_no_kubeconfig_the_service_account_is_the_default(pod: Path) -> None:
    assert in_a_pod()
    assert kubeconfig_path(None) == IN_CLUSTER
    assert kubeconfig_path(IN_CLUSTER) == IN_CLUSTER


def test_a_kubeconfig_named_anywhere_wins_over_the_pod(pod: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert kubeconfig_path(str(tmp_path / "kc")) == str(tmp_path / "kc")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "env-kc"))
    assert kubeconfig_path(None) == str(tmp_path / "env-kc")
    monkeypatch.delenv("KUBECONFIG")
    home_config = tmp_path / "home" / ".kube" / "config"
    home_config.parent.mkdir(parents=True)
    home_config.write_text("{}")
    assert kubeconfig_path(None) == str(home_config)


def test_outside_a_pod_the_default_stays_the_home_kubeconfig(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not in_a_pod()
    assert kubeconfig_path(None) == str(tmp_path / ".kube" / "config")


def test_the_client_uses_the_pods_address_and_token(pod: Path) -> None:
    with KubeApi(IN_CLUSTER) as api:
        assert api.host == "https://127.0.0.1:6443"
        settings = api.client.configuration
        assert settings.auth_settings()["BearerToken"]["value"].lower() == "bearer sa-token-123"
        assert settings.ssl_ca_cert == str(pod / "ca.crt")


def test_a_context_with_in_cluster_is_refused(pod: Path) -> None:
    with pytest.raises(EnvironmentProblem, match="in-cluster"):
        KubeApi(IN_CLUSTER, context="staging")


def test_in_cluster_outside_a_pod_is_a_clear_error(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("LLMDRILL_KUBE_SERVICE_ACCOUNT_DIR", str(tmp_path / "none"))
    with pytest.raises(EnvironmentProblem, match="cannot use kubeconfig in-cluster"):
        KubeApi(IN_CLUSTER)
