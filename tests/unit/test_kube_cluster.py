"""The Kubernetes cluster scripts' pure logic: the wrapper go.mod made from kubernetes' own,
the version stamp, the rendered configs and manifests, the image archives. No cluster."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tomllib
from pathlib import Path

import pytest

from llmdrill.stack.kube_cluster import (
    COMPONENTS,
    ENGINE_IMAGE,
    KUBELET_SYSCTLS,
    PAUSE_IMAGE,
    KubeClusterConfig,
    StackError,
    busybox_layer,
    cert_extensions,
    cert_specs,
    cni_config,
    containerd_config,
    docker_archive,
    engine_manifests,
    kubeconfig,
    kubelet_config,
    mountpoints,
    parse_go_mod,
    shim_pids,
    sysctl_standins,
    version_ldflags,
    wrapper_go_mod,
)

pytestmark = pytest.mark.unit

# Shaped like kubernetes' own go.mod: comments, a `godebug` line, require blocks, and the
# staging replaces in a block (plus one line-form replace and one that is not staging).
KUBE_GO_MOD = """\
// This is a generated file. Do not edit directly.

module k8s.io/kubernetes

go 1.24.0

godebug default=go1.24

require (
\tgithub.com/spf13/cobra v1.9.1
\tk8s.io/api v0.0.0
\tk8s.io/client-go v0.0.0 // indirect
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go // the client
\tgithub.com/example/fork => github.com/example/fork v1.2.3
)

replace k8s.io/kubectl => ./staging/src/k8s.io/kubectl
"""

RESERVED_PORTS = {18000, 18001, 18474, 18100}


def config(tmp_path: Path) -> KubeClusterConfig:
    return KubeClusterConfig(root=tmp_path / "stack", cache_root=tmp_path / "cache")


def test_parse_go_mod_finds_go_godebug_and_only_the_staging_replaces() -> None:
    mod = parse_go_mod(KUBE_GO_MOD)
    assert mod.go == "1.24.0"
    assert mod.godebug == ["default=go1.24"]
    assert mod.staging == ["k8s.io/api", "k8s.io/client-go", "k8s.io/kubectl"]


def test_parse_go_mod_reads_a_godebug_block() -> None:
    text = KUBE_GO_MOD.replace("godebug default=go1.24",
                               "godebug (\n\tdefault=go1.24\n\twinsymlink=0\n)")
    assert parse_go_mod(text).godebug == ["default=go1.24", "winsymlink=0"]


def test_wrapper_go_mod_requires_kubernetes_and_pins_each_staging_module() -> None:
    text = wrapper_go_mod(KUBE_GO_MOD, "v1.34.4", "v0.34.4", module="example.local/build")
    lines = text.splitlines()
    assert lines[0] == "module example.local/build"
    assert "go 1.24.0" in lines
    assert "godebug default=go1.24" in lines
    assert "require k8s.io/kubernetes v1.34.4" in lines
    for path in ("k8s.io/api", "k8s.io/client-go", "k8s.io/kubectl"):
        assert f"\t{path} => {path} v0.34.4" in lines
    assert "./staging" not in text
    assert "github.com/example/fork" not in text  # a dependency's replaces are not ours
    assert "toolchain" not in text  # a toolchain line would make Go download another Go


def test_wrapper_go_mod_parses_back() -> None:
    # The generated file is itself a go.mod this parser understands (no staging lines).
    text = wrapper_go_mod(KUBE_GO_MOD)
    with pytest.raises(StackError, match="staging"):
        parse_go_mod(text)


def test_parse_go_mod_without_go_line_or_staging_is_an_error() -> None:
    with pytest.raises(StackError, match="`go` line"):
        parse_go_mod("module k8s.io/kubernetes\n")
    with pytest.raises(StackError, match="staging"):
        parse_go_mod("module k8s.io/kubernetes\n\ngo 1.24.0\n")


def test_version_ldflags_strip_and_stamp_both_version_packages() -> None:
    flags = version_ldflags("v1.34.4", "2026-01-02T03:04:05Z").split(" ")
    assert flags[:2] == ["-s", "-w"]
    text = " ".join(flags)
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {package}.gitVersion=v1.34.4" in text
        assert f"-X {package}.gitMajor=1" in text
        assert f"-X {package}.gitMinor=34" in text
        assert f"-X {package}.buildDate=2026-01-02T03:04:05Z" in text
    with pytest.raises(StackError):
        version_ldflags("1.34", "x")


def test_containerd_config_is_all_its_own_and_restricts_oom_score_adj(tmp_path: Path) -> None:
    sock = tmp_path / "c.sock"
    parsed = tomllib.loads(containerd_config(tmp_path / "root", tmp_path / "state", sock,
                                             tmp_path / "net.d"))
    assert parsed["version"] == 2
    assert parsed["root"] == str(tmp_path / "root")
    assert parsed["state"] == str(tmp_path / "state")
    assert parsed["grpc"]["address"] == str(sock)
    assert parsed["ttrpc"]["address"] == f"{sock}.ttrpc"
    cri = parsed["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True
    assert cri["sandbox_image"] == PAUSE_IMAGE
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["options"]["SystemdCgroup"] is False
    assert runc["options"]["Root"].startswith(str(tmp_path / "state"))
    assert cri["cni"]["conf_dir"] == str(tmp_path / "net.d")


def test_cni_config_is_loopback_only() -> None:
    assert [p["type"] for p in cni_config()["plugins"]] == ["loopback"]


def test_kubelet_config_has_the_sandbox_settings(tmp_path: Path) -> None:
    cfg = kubelet_config(tmp_path / "pki", tmp_path / "c.sock", tmp_path / "logs")
    assert cfg["kind"] == "KubeletConfiguration"
    assert cfg["oomScoreAdj"] == 0
    assert cfg["makeIPTablesUtilChains"] is False
    assert cfg["cgroupDriver"] == "cgroupfs"
    assert cfg["failCgroupV1"] is False
    assert cfg["address"] == "127.0.0.1"
    assert cfg["healthzBindAddress"] == "127.0.0.1"
    assert cfg["readOnlyPort"] == 0
    assert cfg["containerRuntimeEndpoint"] == f"unix://{tmp_path / 'c.sock'}"
    assert cfg["authentication"]["anonymous"]["enabled"] is False
    # Renewals come often enough for a 10 s node-monitor grace period.
    assert cfg["nodeLeaseDurationSeconds"] / 4 < 10


def test_kubeconfig_points_at_local_apiserver_with_files(tmp_path: Path) -> None:
    cfg = kubeconfig(tmp_path / "ca.crt", tmp_path / "a.crt", tmp_path / "a.key", "admin")
    cluster = cfg["clusters"][0]["cluster"]
    assert cluster["server"] == "https://127.0.0.1:6443"
    assert cluster["certificate-authority"] == str(tmp_path / "ca.crt")
    assert cfg["users"][0]["user"]["client-key"] == str(tmp_path / "a.key")
    assert cfg["contexts"][0]["context"]["user"] == "admin"


def test_sysctl_standins_hold_the_kubelet_values_for_existing_keys_only() -> None:
    current = {"vm/overcommit_memory": "0", "kernel/panic": "1"}
    assert sysctl_standins(current) == {"vm/overcommit_memory": "1\n", "kernel/panic": "10\n"}
    assert set(sysctl_standins(dict.fromkeys(KUBELET_SYSCTLS, "0"))) == set(KUBELET_SYSCTLS)


def test_certificates_name_the_identities_kubernetes_authorizes() -> None:
    specs = {spec.name: spec for spec in cert_specs()}
    assert specs["kubelet"].subject == "/O=system:nodes/CN=system:node:localhost"
    assert "O=system:masters" in specs["admin"].subject
    assert specs["controller-manager"].subject == "/CN=system:kube-controller-manager"
    assert "IP:127.0.0.1" in specs["apiserver"].sans
    assert "DNS:localhost" in specs["kubelet-serving"].sans
    ext = cert_extensions(specs["apiserver"])
    assert "extendedKeyUsage=serverAuth" in ext
    assert "subjectAltName=DNS:localhost" in ext
    assert "subjectAltName" not in cert_extensions(specs["admin"])


def test_engine_manifests_two_deployments_on_distinct_ports_and_cores(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    cfg = config(tmp_path)
    items = engine_manifests(cfg, Path("/opt/python"))["items"]
    kinds = [i["kind"] for i in items]
    assert kinds == ["Namespace", "Deployment", "Deployment", "Service"]
    assert {i["metadata"].get("namespace", i["metadata"]["name"]) for i in items} == {
        "llmdrill-test"}
    deployments = [i for i in items if i["kind"] == "Deployment"]
    ports, cpus = [], []
    for dep in deployments:
        assert dep["spec"]["replicas"] == 1
        assert dep["spec"]["strategy"]["type"] == "Recreate"
        pod = dep["spec"]["template"]["spec"]
        assert pod["hostNetwork"] is True
        (container,) = pod["containers"]
        assert container["image"] == ENGINE_IMAGE
        assert container["imagePullPolicy"] == "Never"
        port = container["ports"][0]["containerPort"]
        assert container["ports"][0]["hostPort"] == port
        assert container["ports"][0]["name"] == "http"
        probe = container["readinessProbe"]["httpGet"]
        assert probe == {"host": "127.0.0.1", "path": "/health", "port": port}
        args = container["command"]
        assert args[args.index("--port") + 1] == str(port)
        assert args[args.index("--host") + 1] == "127.0.0.1"
        assert "--load-format" in args and "dummy" in args
        env = {e["name"]: e["value"] for e in container["env"]}
        cpus.append(env["VLLM_CPU_OMP_THREADS_BIND"])
        assert args[args.index("/usr/bin/taskset") + 2] == env["VLLM_CPU_OMP_THREADS_BIND"]
        ports.append(port)
        mounts = {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]}
        for path in ("/usr", "/lib", "/lib64", "/etc", "/opt/python", str(cfg.venv),
                     str(cfg.model_dir)):
            assert mounts[path] is True
        assert mounts["/cache"] is False
        # The pod's labels match the Deployment's own selector, and the Service's.
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert ports == [18200, 18201]
    assert not set(ports) & RESERVED_PORTS
    assert cpus == ["0", "1"]
    service = items[-1]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    for dep in deployments:
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()


def test_engine_manifests_grace_period_is_short(tmp_path: Path) -> None:
    # vLLM holds its streams open, silent, from SIGTERM to SIGKILL: a long grace period
    # is how long a deleted pod's clients hang.
    for item in engine_manifests(config(tmp_path), Path("/opt/python"))["items"]:
        if item["kind"] == "Deployment":
            assert item["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] <= 3


def test_engine_manifests_broken_shapes(tmp_path: Path) -> None:
    """No readiness probe, and a replica taken away: the shapes the drills must fail on."""
    items = engine_manifests(config(tmp_path), Path("/opt/python"), readiness_probe=False,
                             replicas={1: 0})["items"]
    deployments = [i for i in items if i["kind"] == "Deployment"]
    assert [d["spec"]["replicas"] for d in deployments] == [1, 0]
    for dep in deployments:
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        assert "readinessProbe" not in container


def test_engine_manifests_are_json_serialisable(tmp_path: Path) -> None:
    json.dumps(engine_manifests(config(tmp_path), Path("/opt/python")))


def _members(data: bytes) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            handle = tar.extractfile(member)
            files[member.name] = handle.read() if handle is not None else b""
    return files


def test_docker_archive_is_what_docker_save_writes() -> None:
    layer = busybox_layer(b"\x7fELF fake busybox")
    archive = docker_archive("docker.io/x/y:1", layer, {"Cmd": ["/bin/sh"]})
    files = _members(archive)
    (manifest,) = json.loads(files["manifest.json"])
    assert manifest["RepoTags"] == ["docker.io/x/y:1"]
    config_bytes = files[manifest["Config"]]
    assert manifest["Config"] == hashlib.sha256(config_bytes).hexdigest() + ".json"
    image = json.loads(config_bytes)
    assert image["os"] == "linux"
    assert image["config"] == {"Cmd": ["/bin/sh"]}
    (layer_name,) = manifest["Layers"]
    assert files[layer_name] == layer
    assert image["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    # Same input, same bytes: re-importing an unchanged image keeps its digest.
    assert docker_archive("docker.io/x/y:1", layer, {"Cmd": ["/bin/sh"]}) == archive


def test_busybox_layer_links_applets_to_busybox() -> None:
    with tarfile.open(fileobj=io.BytesIO(busybox_layer(b"bb"))) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["bin/busybox"].isfile()
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "busybox"
    assert members["tmp"].mode == 0o1777


def test_mountpoints_undo_octal_escapes() -> None:
    info = ("22 27 0:21 / /proc rw,relatime - proc proc rw\n"
            "90 27 254:0 /a /work/my\\040stack/kube/kubelet rw shared:5 - ext4 /dev/vda rw\n")
    assert mountpoints(info) == ["/proc", "/work/my stack/kube/kubelet"]


def test_shim_pids_only_those_of_our_socket() -> None:
    ours = Path("/s/kube/containerd/containerd.sock")
    cmdlines = {
        10: ["/usr/bin/containerd-shim-runc-v2", "-namespace", "k8s.io", "-id", "a",
             "-address", str(ours)],
        11: ["/usr/bin/containerd-shim-runc-v2", "-namespace", "moby", "-id", "b",
             "-address", "/run/containerd/containerd.sock"],
        12: ["/usr/bin/containerd", "--address", str(ours)],
        13: [],
    }
    assert shim_pids(ours, cmdlines) == [10]


def test_all_five_components_are_built() -> None:
    assert set(COMPONENTS) == {"kube-apiserver", "kube-controller-manager", "kube-scheduler",
                               "kubelet", "kubectl"}


def test_kubelet_runs_in_its_own_mount_namespace_over_stand_in_sysctls(tmp_path: Path) -> None:
    from llmdrill.stack.kube_cluster import KubeCluster

    cfg = config(tmp_path)
    cfg.bin_dir.mkdir(parents=True)
    (cfg.bin_dir / "kubelet").write_text("")
    standins = cfg.kube_dir / "sysctl"
    standins.mkdir(parents=True)
    (standins / "kernel.panic").write_text("10\n")
    cmd = KubeCluster(cfg).kubelet_command()
    assert cmd[:5] == ["unshare", "--mount", "--propagation", "unchanged", "--"]
    script = cmd[cmd.index("-c") + 1]
    # /proc stops propagating to the host before anything is mounted over it.
    assert script.index("mount --make-rslave /proc") < script.index("mount --bind")
    assert f"mount --bind {standins / 'kernel.panic'} /proc/sys/kernel/panic" in script
    assert script.endswith('exec "$@"')
    assert str(cfg.bin_dir / "kubelet") in cmd
    assert "--hostname-override=localhost" in cmd
    assert f"--root-dir={cfg.kubelet_dir}" in cmd
