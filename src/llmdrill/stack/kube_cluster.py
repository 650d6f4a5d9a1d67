"""A real single-node Kubernetes cluster on 127.0.0.1, idempotently, with no registry.

- install: Debian's etcd-server, containerd, runc, containernetworking-plugins,
           busybox-static and openssl if missing; kube-apiserver, kube-controller-manager,
           kube-scheduler, kubelet and kubectl built from the Go module proxy through a
           wrapper module (kubernetes' own go.mod replaces its staging modules with local
           folders, so `go install k8s.io/kubernetes/cmd/...@v` cannot work); a static
           pause program; two image archives (pause, busybox engine base). Binaries and
           archives live in a per-user cache keyed by version, outside the clone
           (${XDG_CACHE_HOME:-~/.cache}/llmdrill/kubernetes/<version>), so a second install
           on the same machine builds nothing.
- up:      etcd, kube-apiserver (Node,RBAC), controller-manager, scheduler, a containerd of
           its own (own root, state dir and socket: a Docker engine may use the default
           one) and the kubelet with the settings this sandbox needs (see
           ../shared/ENVIRONMENT.md); waits for node `localhost` Ready.
- deploy-engine / undeploy-engine: the real vLLM (CPU, the tiny model of the local stack)
           as two single-replica Deployments on the host network, behind a headless
           Service, in namespace llmdrill-test.
- down:    pods deleted through the API first (the kubelet tears them down cleanly), then
           every process stopped; etcd's data stays, so the next `up` brings the engine back.

Layout under <stack>/kube (LLMDRILL_STACK_DIR, default ./.stack):
  pki/            CA, serving and client certificates, service-account key (made once)
  etcd/           etcd's data
  containerd/     containerd's root, state, config and socket
  kubelet/        the kubelet's root dir (bind-mounted onto itself, rshared)
  run/            pid files and logs of every component
  kubeconfig      admin credentials: `kubectl --kubeconfig <stack>/kube/kubeconfig ...`

`python -m llmdrill.stack.kube_cluster install|up|down|status|deploy-engine|undeploy-engine`
(and `kubectl ARGS...`, the built kubectl with this cluster's kubeconfig). For node-restart
drills: `stop-kubelet`/`start-kubelet` (the kubelet alone: containers keep running) and
`stop-node`/`start-node` (a power cut: kubelet, every container and containerd stopped;
then containerd and the kubelet started, which restart the pods' containers); each start
is idempotent, as the Kubernetes backend's revert needs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from llmdrill.stack import StackError, processes
from llmdrill.stack.apt import apt_install, deb_installed

HERE = Path(__file__).parent
KUBE_DATA = HERE / "kube"

K8S_VERSION = "v1.34.4"
STAGING_VERSION = "v0.34.4"  # the staging modules (k8s.io/api, ...) are tagged v0.<minor>.<patch>
COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl")
WRAPPER_MODULE = "llmdrill.local/kubebuild"
GO = Path(os.environ.get("LLMDRILL_GO", "/usr/local/go/bin/go"))

# Debian packages and why: etcd (3.4 works with kube-apiserver 1.34), the node runtime,
# the CNI loopback plugin (the CRI reports the network ready only with some CNI config),
# the static busybox for the engine image, openssl for the certificates.
DEBS = ("etcd-server", "containerd", "runc", "containernetworking-plugins", "busybox-static",
        "openssl")
BUSYBOX = Path("/bin/busybox")
CNI_BIN_DIR = Path("/usr/lib/cni")

PAUSE_IMAGE = "docker.io/llmdrill/pause:1"
ENGINE_IMAGE = "docker.io/llmdrill/engine:busybox"
APPLETS = ("sh", "sleep", "kill", "cat", "ls", "ps", "echo", "true", "false", "wget", "head",
           "tail", "dd", "pkill", "pgrep", "env", "mkdir", "rm", "tr", "id")

NODE_NAME = "localhost"  # so the apiserver reaches the kubelet (logs, exec) on 127.0.0.1
ETCD_PORT = 2379
ETCD_PEER_PORT = 2380
APISERVER_PORT = 6443
CONTROLLER_MANAGER_PORT = 10257
SCHEDULER_PORT = 10259
KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248
SERVICE_CIDR = "10.96.0.0/24"  # required by the apiserver; nothing routes it (no kube-proxy)
NAMESPACE = "llmdrill-test"
ENGINE_NAME = "vllm"
ENGINE_SELECTOR = {"app.kubernetes.io/name": ENGINE_NAME, "app.kubernetes.io/part-of": "llmdrill"}

# What the kubelet writes machine-wide at start (container_manager_linux.go); it runs in a
# mount namespace of its own where stand-in files sit over these paths.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": 1,
    "vm/panic_on_oom": 0,
    "kernel/panic": 10,
    "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000,
    "kernel/keys/root_maxbytes": 25000000,
}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llmdrill" / "kubernetes"


@dataclass
class KubeClusterConfig:
    root: Path
    cache_root: Path
    version: str = K8S_VERSION
    namespace: str = NAMESPACE
    engine_port: int = 18200  # replica i listens on engine_port + i
    replicas: int = 2
    kv_blocks: int = 16
    engine_memory: str = "6Gi"
    model_name: str = "tiny"
    node_grace: str = "10s"
    # vLLM stops generating at SIGTERM but keeps its open streams (silent) until SIGKILL:
    # the grace period is how long a client of a deleted pod hangs. Measured here: 10s of
    # grace, streams cut 10.06s after the delete. Short, since waiting gains nothing.
    engine_grace: int = 2
    start_timeout: float = 180.0
    engine_timeout: float = 900.0

    @classmethod
    def from_env(cls) -> KubeClusterConfig:
        env = os.environ
        return cls(
            root=Path(env.get("LLMDRILL_STACK_DIR", ".stack")).resolve(),
            cache_root=Path(env.get("LLMDRILL_KUBE_CACHE", str(default_cache_dir()))),
            engine_port=int(env.get("LLMDRILL_KUBE_VLLM_PORT", "18200")),
        )

    @property
    def cache(self) -> Path:
        return self.cache_root / self.version

    @property
    def bin_dir(self) -> Path:
        return self.cache / "bin"

    @property
    def kube_dir(self) -> Path:
        return self.root / "kube"

    @property
    def run_dir(self) -> Path:
        return self.kube_dir / "run"

    @property
    def pki(self) -> Path:
        return self.kube_dir / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.kube_dir / "kubeconfig"

    @property
    def containerd_dir(self) -> Path:
        return self.kube_dir / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd_dir / "containerd.sock"

    @property
    def kubelet_dir(self) -> Path:
        return self.kube_dir / "kubelet"

    @property
    def venv(self) -> Path:
        return self.root / "vllm-venv"

    @property
    def model_dir(self) -> Path:
        return self.root / "models" / self.model_name

    def engine_ports(self) -> list[int]:
        return [self.engine_port + i for i in range(self.replicas)]


# -- pure logic: the wrapper module --------------------------------------------------------


@dataclass
class GoMod:
    go: str
    godebug: list[str]
    staging: list[str]  # module paths kubernetes replaces with ./staging/src/...


def go_mod_directives(text: str) -> Iterator[tuple[str, str]]:
    """(verb, body) for every directive of a go.mod, with blocks (`replace ( ... )`)
    flattened into one directive per line and comments dropped."""
    block = ""
    for raw in text.splitlines():
        line = raw.split("//", 1)[0].strip()
        if not line:
            continue
        if block:
            if line == ")":
                block = ""
            else:
                yield block, line
            continue
        verb, _, rest = line.partition(" ")
        if rest.strip() == "(":
            block = verb
        else:
            yield verb, rest.strip()


def parse_go_mod(text: str) -> GoMod:
    """The parts of kubernetes' go.mod the wrapper copies: its `go` line, its `godebug`
    settings (line or block), and every module it replaces with a staging folder."""
    go = ""
    godebug: list[str] = []
    staging: list[str] = []
    for verb, body in go_mod_directives(text):
        if verb == "go":
            go = body
        elif verb == "godebug":
            godebug.append(body)
        elif verb == "replace":
            left, arrow, right = body.partition("=>")
            if arrow and right.strip().startswith("./staging/"):
                staging.append(left.split()[0])
    if not go:
        raise StackError("kubernetes' go.mod has no `go` line")
    if not staging:
        raise StackError("kubernetes' go.mod replaces no module with ./staging: "
                         "the wrapper module would not be needed, or the format changed")
    return GoMod(go=go, godebug=godebug, staging=staging)


def wrapper_go_mod(kube_go_mod: str, version: str = K8S_VERSION,
                   staging_version: str = STAGING_VERSION,
                   module: str = WRAPPER_MODULE) -> str:
    """A go.mod that builds kubernetes' commands from the module proxy: require the
    kubernetes module, and point every staging module it requires as v0.0.0 at the
    published v0.x tag instead of the folder only a git checkout has."""
    mod = parse_go_mod(kube_go_mod)
    lines = [f"module {module}", "", f"go {mod.go}", ""]
    if mod.godebug:
        lines += [*(f"godebug {d}" for d in mod.godebug), ""]
    lines += [f"require k8s.io/kubernetes {version}", "", "replace ("]
    lines += [f"\t{path} => {path} {staging_version}" for path in mod.staging]
    lines += [")", ""]
    return "\n".join(lines)


def version_ldflags(version: str, build_date: str) -> str:
    """-s -w plus the version stamp: without it the binaries say v0.0.0-master and
    kubectl warns about version skew against every server."""
    match = re.fullmatch(r"v(\d+)\.(\d+)\.\d+.*", version)
    if not match:
        raise StackError(f"not a Kubernetes version: {version}")
    values = {"gitVersion": version, "gitMajor": match.group(1), "gitMinor": match.group(2),
              "gitTreeState": "clean", "buildDate": build_date}
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{name}={value}" for name, value in values.items()]
    return " ".join(flags)


# -- pure logic: configuration files -------------------------------------------------------


def containerd_config(root: Path, state: Path, socket: Path, cni_conf_dir: Path,
                      sandbox_image: str = PAUSE_IMAGE, cni_bin_dir: Path = CNI_BIN_DIR) -> str:
    """containerd 1.6's config (version 2) with everything of its own, so it runs beside
    a Docker engine's containerd on the default paths."""
    return f"""version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # No CAP_SYS_RESOURCE here: runc cannot lower oom_score_adj, and the start fails with
  # "can't get final child's PID from pipe: EOF" unless the CRI never asks it to.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{state}/runc"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin_dir}"
    conf_dir = "{cni_conf_dir}"
"""


def cni_config() -> dict[str, Any]:
    """Only the loopback plugin: every pod here uses the host network (traffic stays on
    127.0.0.1, no bridge in a private range), but the CRI reports NetworkReady (and the
    node Ready) only once some CNI network is configured."""
    return {"cniVersion": "0.4.0", "name": "llmdrill-loopback", "plugins": [{"type": "loopback"}]}


def kubelet_config(pki: Path, socket: Path, pod_logs: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": "127.0.0.1",
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(pki / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        "containerRuntimeEndpoint": f"unix://{socket}",
        # cgroup v1 without systemd.
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        # The kubelet's default -999 needs CAP_SYS_RESOURCE, which this sandbox lacks.
        "oomScoreAdj": 0,
        # Its KUBE-FIREWALL chain drops non-127 -> 127/8 traffic on the host.
        "makeIPTablesUtilChains": False,
        "failSwapOn": False,
        "clusterDomain": "cluster.local",
        "podLogsDir": str(pod_logs),
        # Nothing can be pulled again: never garbage-collect the imported images.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "2%",
                         "imagefs.available": "2%"},
        # A short lease (renewed every quarter of it) so the controller-manager's short
        # --node-monitor-grace-period sees a stopped kubelet within seconds, not a live one
        # as dead between two renewals.
        "nodeLeaseDurationSeconds": 8,
        "nodeStatusUpdateFrequency": "4s",
        "serializeImagePulls": False,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
    }


def kubeconfig(ca: Path, cert: Path, key: Path, user: str,
               server: str = f"https://127.0.0.1:{APISERVER_PORT}") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "llmdrill",
                      "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user,
                   "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "llmdrill", "context": {"cluster": "llmdrill", "user": user}}],
        "current-context": "llmdrill",
    }


def sysctl_standins(current: dict[str, str]) -> dict[str, str]:
    """The stand-in file contents for the kubelet's mount namespace: the value it wants,
    so it finds nothing to change; only for keys that exist on this host."""
    return {key: f"{KUBELET_SYSCTLS[key]}\n" for key in KUBELET_SYSCTLS if key in current}


@dataclass
class CertSpec:
    name: str
    subject: str
    usage: str  # extendedKeyUsage
    sans: tuple[str, ...] = ()


def cert_specs() -> list[CertSpec]:
    server_sans = ("DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
                   "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local",
                   "IP:127.0.0.1", "IP:10.96.0.1")
    return [
        CertSpec("apiserver", "/CN=kube-apiserver", "serverAuth", server_sans),
        CertSpec("apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client",
                 "clientAuth"),
        CertSpec("admin", "/O=system:masters/CN=llmdrill-admin", "clientAuth"),
        CertSpec("controller-manager", "/CN=system:kube-controller-manager", "clientAuth"),
        CertSpec("scheduler", "/CN=system:kube-scheduler", "clientAuth"),
        # The Node authorizer knows a kubelet by this exact name and group.
        CertSpec("kubelet", f"/O=system:nodes/CN=system:node:{NODE_NAME}", "clientAuth"),
        CertSpec("kubelet-serving", f"/CN={NODE_NAME}", "serverAuth",
                 ("DNS:localhost", "IP:127.0.0.1")),
    ]


def cert_extensions(spec: CertSpec) -> str:
    lines = ["basicConstraints=critical,CA:FALSE",
             "keyUsage=critical,digitalSignature,keyEncipherment",
             f"extendedKeyUsage={spec.usage}"]
    if spec.sans:
        lines.append("subjectAltName=" + ",".join(spec.sans))
    return "\n".join(lines) + "\n"


def engine_manifests(cfg: KubeClusterConfig, python_home: Path, *,
                     readiness_probe: bool = True,
                     replicas: dict[int, int] | None = None) -> dict[str, Any]:
    """The engine as one Deployment per replica, each replicas: 1, and a headless Service
    over both.

    `readiness_probe=False` and `replicas` ({index: 0} takes a replica away) build the
    deliberately broken shapes the drills must fail on.

    Why not one Deployment with replicas: 2: on the host network two pods of one template
    would ask for the same port, and the scheduler keeps the second Pending (one node).
    A StatefulSet could derive each port from its ordinal in a shell wrapper, but then the
    template can declare no port, the readiness probe would have to exec wget instead of
    an httpGet on /health, and the Service could not find each pod's port. One Deployment
    per replica keeps everything Kubernetes-native: a declared hostPort (the scheduler
    refuses a clash), an httpGet readiness probe, a named port the Service's EndpointSlices
    resolve per pod, and a stable address per replica: a deleted pod comes back on the same
    port and core. `strategy: Recreate`, because a surge pod could never bind the port its
    predecessor holds.
    """
    selector_labels = dict(ENGINE_SELECTOR)
    items: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": cfg.namespace},
    }]
    model = cfg.model_dir
    venv = cfg.venv
    cpus = os.cpu_count() or 1
    for index, port in enumerate(cfg.engine_ports()):
        name = f"{ENGINE_NAME}-{index}"
        cpu = str(index % cpus)
        labels = {**selector_labels, "llmdrill.replica": str(index)}
        cache = cfg.kube_dir / "engine-cache" / name
        host_ro = ["/usr", "/lib", "/lib64", "/etc", str(python_home), str(venv), str(model)]
        volumes: list[dict[str, Any]] = [
            {"name": f"host-{i}", "hostPath": {"path": path}} for i, path in enumerate(host_ro)
        ]
        mounts: list[dict[str, Any]] = [
            {"name": f"host-{i}", "mountPath": path, "readOnly": True}
            for i, path in enumerate(host_ro)
        ]
        volumes += [
            {"name": "cache", "hostPath": {"path": str(cache), "type": "DirectoryOrCreate"}},
            # vLLM's CPU backend uses shared memory; the runtime's default /dev/shm is 64 MiB.
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
        ]
        mounts += [{"name": "cache", "mountPath": "/cache"},
                   {"name": "shm", "mountPath": "/dev/shm"}]
        command = [
            # The whole process tree (API server, EngineCore, Worker) on one core, and the
            # worker's OpenMP threads bound to it: the two replicas do not share a core.
            "/usr/bin/taskset", "-c", cpu,
            str(venv / "bin" / "vllm"), "serve", str(model), "--load-format", "dummy",
            "--max-model-len", "512", "--dtype", "bfloat16", "--host", "127.0.0.1",
            "--port", str(port), "--served-model-name", cfg.model_name,
            "--num-gpu-blocks-override", str(cfg.kv_blocks),
            # No torch.compile: a killed replica's replacement serves about 8 s sooner
            # (22 s instead of 29 s on one idle core, warm compile cache; far more on a
            # cold one), which the kill drills' phases wait for; the tiny model does not
            # need it.
            "--enforce-eager",
        ]
        env = {
            "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "HOME": "/cache/home", "TMPDIR": "/cache/tmp",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": cpu,
            "VLLM_CACHE_ROOT": "/cache/vllm", "TORCHINDUCTOR_CACHE_DIR": "/cache/inductor",
            "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
        }
        container: dict[str, Any] = {
            "name": "vllm",
            "image": ENGINE_IMAGE,
            "imagePullPolicy": "Never",  # no registry: the image is imported into containerd
            # busybox's sh makes the writable cache folders, then becomes the engine.
            "command": ["/bin/sh", "-c",
                        "mkdir -p /cache/home /cache/tmp /cache/vllm /cache/inductor && "
                        'exec "$@"', "vllm", *command],
            "env": [{"name": k, "value": v} for k, v in env.items()],
            "ports": [{"name": "http", "containerPort": port, "hostPort": port,
                       "protocol": "TCP"}],
            "resources": {"requests": {"cpu": "500m", "memory": "2Gi"},
                          "limits": {"memory": cfg.engine_memory}},
            "volumeMounts": mounts,
        }
        if readiness_probe:
            # The probe goes to 127.0.0.1: on the host network the pod IP is the node's
            # address, where vLLM (bound to 127.0.0.1) does not listen.
            container["readinessProbe"] = {
                "httpGet": {"host": "127.0.0.1", "path": "/health", "port": port},
                "periodSeconds": 2, "timeoutSeconds": 3, "failureThreshold": 2,
            }
        items.append({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": cfg.namespace, "labels": labels},
            "spec": {
                "replicas": (replicas or {}).get(index, 1),
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels,
                                 "annotations": {"llmdrill.port": str(port),
                                                 "llmdrill.cpu": cpu}},
                    "spec": {
                        "hostNetwork": True,
                        # No cluster DNS here: the host's resolver, stated, not defaulted.
                        "dnsPolicy": "Default",
                        "enableServiceLinks": False,
                        "automountServiceAccountToken": False,
                        "terminationGracePeriodSeconds": cfg.engine_grace,
                        "containers": [container],
                        "volumes": volumes,
                    },
                },
            },
        })
    items.append({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": ENGINE_NAME, "namespace": cfg.namespace,
                     "labels": selector_labels},
        "spec": {
            # Headless: there is no kube-proxy, so a virtual IP would lead nowhere; the
            # EndpointSlices list each ready pod with its own port (clients use 127.0.0.1).
            "clusterIP": "None",
            "selector": selector_labels,
            "ports": [{"name": "http", "port": cfg.engine_port, "targetPort": "http",
                       "protocol": "TCP"}],
        },
    })
    return {"apiVersion": "v1", "kind": "List", "items": items}


# -- pure logic: images --------------------------------------------------------------------


def _tar_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def _tar_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def pause_layer(pause: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        _tar_file(tar, "pause", pause)
    return out.getvalue()


def busybox_layer(busybox: bytes) -> bytes:
    """A minimal root: /bin/busybox, its applets as links, and the folders the read-only
    host mounts land on."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for folder in ("bin", "tmp", "cache", "proc", "sys", "dev", "etc", "usr", "root"):
            _tar_dir(tar, folder, 0o1777 if folder == "tmp" else 0o755)
        _tar_file(tar, "bin/busybox", busybox)
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
    return out.getvalue()


def docker_archive(ref: str, layer: bytes, config: dict[str, Any],
                   architecture: str = "amd64") -> bytes:
    """A one-layer image in `docker save` format, what `ctr images import` reads."""
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    image = {
        "architecture": architecture, "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "llmdrill.stack.kube_cluster"}],
    }
    image_bytes = json.dumps(image, sort_keys=True).encode()
    config_name = hashlib.sha256(image_bytes).hexdigest() + ".json"
    layer_name = f"{diff_id.removeprefix('sha256:')}/layer.tar"
    manifest = [{"Config": config_name, "RepoTags": [ref], "Layers": [layer_name]}]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        _tar_file(tar, config_name, image_bytes, 0o644)
        _tar_file(tar, layer_name, layer, 0o644)
        _tar_file(tar, "manifest.json", json.dumps(manifest).encode(), 0o644)
    return out.getvalue()


def go_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def mountpoints(mountinfo: str) -> list[str]:
    """Mount points from /proc/self/mountinfo text (octal escapes undone)."""
    points = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4:
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]))
    return points


def shim_pids(socket: Path, cmdlines: dict[int, list[str]]) -> list[int]:
    """The containerd shims started by the containerd on `socket` (their -address)."""
    pids = []
    for pid, argv in cmdlines.items():
        if not argv or not Path(argv[0]).name.startswith("containerd-shim"):
            continue
        if "-address" in argv:
            i = argv.index("-address")
            if i + 1 < len(argv) and argv[i + 1] == str(socket):
                pids.append(pid)
    return sorted(pids)


class KubeCluster:
    def __init__(self, config: KubeClusterConfig | None = None) -> None:
        self.config = config or KubeClusterConfig.from_env()

    # -- install ------------------------------------------------------------------------

    def install(self) -> None:
        self.install_debs()
        self.build_kubernetes()
        self.build_pause()
        self.build_images()

    def install_debs(self) -> None:
        if shutil.which("dpkg-query") is None:
            raise StackError("dpkg-query is missing: this installer needs Debian packages "
                             f"({', '.join(DEBS)})")
        apt_install([pkg for pkg in DEBS if not deb_installed(pkg)])

    def _go_env(self) -> dict[str, str]:
        # GOTOOLCHAIN=local: never download another Go; GOWORK=off: a go.work above the
        # cache folder must not join the build.
        return {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOWORK": "off"}

    def binaries_built(self) -> bool:
        bindir = self.config.bin_dir
        return (bindir / ".complete").exists() and all((bindir / c).exists()
                                                       for c in COMPONENTS)

    def build_kubernetes(self) -> None:
        cfg = self.config
        if self.binaries_built():
            _say(f"kubernetes {cfg.version}: cached in {cfg.bin_dir}")
            return
        if not GO.exists():
            raise StackError(f"{GO} is missing (set LLMDRILL_GO to a Go toolchain)")
        with processes.file_lock(cfg.cache / ".lock"):
            if self.binaries_built():  # another install finished it while we waited
                return
            started = time.time()
            src = cfg.cache / "src"
            src.mkdir(parents=True, exist_ok=True)
            kube_mod = self._kube_go_mod()
            (src / "go.mod").write_text(wrapper_go_mod(kube_mod, cfg.version, _staging(cfg)))
            partial = cfg.cache / "bin.partial"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            build_date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            cmd = [str(GO), "build", "-mod=mod", "-trimpath", "-v",
                   "-ldflags", version_ldflags(cfg.version, build_date),
                   "-o", f"{partial}/", *(f"k8s.io/kubernetes/cmd/{c}" for c in COMPONENTS)]
            log = cfg.cache / "build.log"
            _say(f"building kubernetes {cfg.version} ({', '.join(COMPONENTS)}) from the Go "
                 f"module proxy: about 10 min on 2 cores; log: {log}")
            self._run_logged(cmd, src, log, "kubernetes build", self._go_env())
            for component in COMPONENTS:
                if not (partial / component).exists():
                    raise StackError(f"the build made no {component} (log: {log})")
            shutil.rmtree(cfg.bin_dir, ignore_errors=True)
            partial.rename(cfg.bin_dir)
            (cfg.bin_dir / ".complete").write_text(f"{cfg.version}\n")
            _say(f"kubernetes {cfg.version}: built in {time.time() - started:.0f}s "
                 f"into {cfg.bin_dir}")

    def _kube_go_mod(self) -> str:
        # `go list -m` fetches only the .info and .mod files, from the proxy or the cache.
        out = subprocess.run(
            [str(GO), "list", "-m", "-json", f"k8s.io/kubernetes@{self.config.version}"],
            capture_output=True, text=True, env=self._go_env(), cwd=self.config.cache,
            timeout=600)
        if out.returncode != 0:
            raise StackError(f"go list -m k8s.io/kubernetes@{self.config.version} failed:\n"
                             f"{out.stderr[-2000:]}")
        return Path(json.loads(out.stdout)["GoMod"]).read_text()

    def _run_logged(self, cmd: list[str], cwd: Path, log: Path, what: str,
                    env: dict[str, str]) -> None:
        """Runs a slow command with its output in a log, saying how far it got every 30 s."""
        started = time.time()
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)
            try:
                while True:
                    try:
                        code = proc.wait(timeout=30)
                        break
                    except subprocess.TimeoutExpired:
                        done = log.read_bytes().count(b"\n")
                        _say(f"{what}: {time.time() - started:.0f}s, {done} packages so far")
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()
                raise
        if code != 0:
            raise StackError(f"{what} failed (exit {code}); log: {log}; last lines:\n"
                             f"{processes.tail(log, 3000)}")

    def build_pause(self) -> Path:
        target = self.config.bin_dir / "pause"
        if target.exists():
            return target
        if not GO.exists():
            raise StackError(f"{GO} is missing (set LLMDRILL_GO to a Go toolchain)")
        target.parent.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(
            [str(GO), "-C", str(KUBE_DATA / "pause"), "build", "-trimpath",
             "-ldflags", "-s -w", "-o", str(target), "."],
            capture_output=True, text=True, env=self._go_env(), timeout=600)
        if out.returncode != 0:
            raise StackError(f"building the pause program failed:\n{out.stderr[-2000:]}")
        return target

    @property
    def image_archives(self) -> dict[str, Path]:
        images = self.config.cache / "images"
        return {PAUSE_IMAGE: images / "pause.tar", ENGINE_IMAGE: images / "engine.tar"}

    def build_images(self) -> None:
        """Writes both archives each time (milliseconds; byte-identical when nothing
        changed, so the images keep their digests)."""
        if not BUSYBOX.exists():
            raise StackError(f"{BUSYBOX} is missing; install busybox-static")
        arch = go_arch()
        archives = self.image_archives
        pause = self.build_pause().read_bytes()
        contents = {
            PAUSE_IMAGE: docker_archive(PAUSE_IMAGE, pause_layer(pause),
                                        {"Entrypoint": ["/pause"]}, arch),
            ENGINE_IMAGE: docker_archive(
                ENGINE_IMAGE, busybox_layer(BUSYBOX.read_bytes()),
                {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["/bin/sh"]}, arch),
        }
        for ref, data in contents.items():
            path = archives[ref]
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.read_bytes() != data:
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(data)
                tmp.replace(path)

    # -- files --------------------------------------------------------------------------

    def _bin(self, name: str) -> str:
        path = self.config.bin_dir / name
        if not path.exists():
            raise StackError(f"{path} is missing; run "
                             "`python -m llmdrill.stack.kube_cluster install` (make kube-stack)")
        return str(path)

    def write_pki(self) -> None:
        """The certificates, once: a CA, the apiserver's and the kubelet's serving
        certificates, one client certificate per component, the service-account key."""
        pki = self.config.pki
        if (pki / ".complete").exists():
            return
        if shutil.which("openssl") is None:
            raise StackError("openssl is missing; run install")
        partial = pki.with_name("pki.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)

        def openssl(*args: str) -> None:
            out = subprocess.run(["openssl", *args], cwd=partial, capture_output=True,
                                 text=True, timeout=60)
            if out.returncode != 0:
                raise StackError(f"openssl {' '.join(args)} failed:\n{out.stderr[-2000:]}")

        openssl("genrsa", "-out", "ca.key", "2048")
        openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=llmdrill-kube-ca",
                "-days", "3650", "-out", "ca.crt",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature")
        for spec in cert_specs():
            openssl("genrsa", "-out", f"{spec.name}.key", "2048")
            openssl("req", "-new", "-key", f"{spec.name}.key", "-subj", spec.subject,
                    "-out", f"{spec.name}.csr")
            (partial / f"{spec.name}.ext").write_text(cert_extensions(spec))
            openssl("x509", "-req", "-in", f"{spec.name}.csr", "-CA", "ca.crt",
                    "-CAkey", "ca.key", "-set_serial", "0x" + secrets.token_hex(16),
                    "-days", "3650", "-extfile", f"{spec.name}.ext",
                    "-out", f"{spec.name}.crt")
        openssl("genrsa", "-out", "sa.key", "2048")
        openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")
        for scratch in [*partial.glob("*.csr"), *partial.glob("*.ext")]:
            scratch.unlink()
        for key in partial.glob("*.key"):
            key.chmod(0o600)
        shutil.rmtree(pki, ignore_errors=True)
        partial.rename(pki)
        (pki / ".complete").write_text("")

    def write_configs(self) -> None:
        cfg = self.config
        pki = cfg.pki
        kube = cfg.kube_dir
        for user, name in (("admin", "admin"), ("controller-manager", "controller-manager"),
                           ("scheduler", "scheduler"), ("kubelet", "kubelet")):
            content = kubeconfig(pki / "ca.crt", pki / f"{name}.crt", pki / f"{name}.key", user)
            target = cfg.kubeconfig if user == "admin" else kube / f"{user}.kubeconfig"
            _write_if_changed(target, json.dumps(content, indent=2) + "\n")
        cd = cfg.containerd_dir
        cni_dir = kube / "cni" / "net.d"
        for folder in (cd / "root", cd / "state", cni_dir, cfg.kubelet_dir, kube / "pod-logs",
                       kube / "etcd", cfg.run_dir):
            folder.mkdir(parents=True, exist_ok=True)
        (kube / "etcd").chmod(0o700)  # etcd 3.4 warns about and 3.6 refuses looser modes
        if len(str(cfg.containerd_socket)) > 100:  # sun_path is 108 bytes, with ".ttrpc"
            raise StackError(f"containerd's socket path {cfg.containerd_socket} is too long "
                             "for a unix socket: set LLMDRILL_STACK_DIR to a shorter path")
        _write_if_changed(cd / "config.toml", containerd_config(
            cd / "root", cd / "state", cfg.containerd_socket, cni_dir))
        _write_if_changed(cni_dir / "10-loopback.conflist",
                          json.dumps(cni_config(), indent=2) + "\n")
        _write_if_changed(kube / "kubelet-config.json", json.dumps(
            kubelet_config(pki, cfg.containerd_socket, kube / "pod-logs"), indent=2) + "\n")
        current = {}
        for key in KUBELET_SYSCTLS:
            with contextlib.suppress(OSError):
                current[key] = Path("/proc/sys", key).read_text().strip()
        for key, value in sysctl_standins(current).items():
            _write_if_changed(kube / "sysctl" / key.replace("/", "."), value)

    # -- component health ---------------------------------------------------------------

    def _tls(self, client: bool = True, verify: bool = True) -> ssl.SSLContext:
        pki = self.config.pki
        if verify:
            ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        else:  # the controller-manager and scheduler serve self-signed certificates
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if client:
            ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return ctx

    def _get(self, url: str, tls: ssl.SSLContext | None = None,
             timeout: float = 3) -> httpx.Response | None:
        try:
            return httpx.get(url, verify=tls if tls is not None else True, timeout=timeout)
        except (httpx.HTTPError, OSError, ssl.SSLError):
            return None

    def _ok(self, url: str, tls: ssl.SSLContext | None = None) -> bool:
        response = self._get(url, tls)
        return response is not None and response.status_code == 200

    def etcd_healthy(self) -> bool:
        response = self._get(f"http://127.0.0.1:{ETCD_PORT}/health")
        return response is not None and '"true"' in response.text

    def apiserver_healthy(self) -> bool:
        if not (self.config.pki / ".complete").exists():
            return False
        return self._ok(f"https://127.0.0.1:{APISERVER_PORT}/readyz", self._tls())

    def controller_manager_healthy(self) -> bool:
        return self._ok(f"https://127.0.0.1:{CONTROLLER_MANAGER_PORT}/healthz",
                        self._tls(client=False, verify=False))

    def scheduler_healthy(self) -> bool:
        return self._ok(f"https://127.0.0.1:{SCHEDULER_PORT}/healthz",
                        self._tls(client=False, verify=False))

    def kubelet_healthy(self) -> bool:
        return self._ok(f"http://127.0.0.1:{KUBELET_HEALTHZ_PORT}/healthz")

    def containerd_healthy(self) -> bool:
        if not self.config.containerd_socket.exists():
            return False
        # `ctr version` can hang forever on a stale socket: always with a timeout.
        try:
            out = subprocess.run(self._ctr("version"), capture_output=True, timeout=5)
        except subprocess.TimeoutExpired:
            return False
        return out.returncode == 0

    def node_ready(self) -> bool:
        response = self._get(f"https://127.0.0.1:{APISERVER_PORT}/api/v1/nodes/{NODE_NAME}",
                             self._tls())
        if response is None or response.status_code != 200:
            return False
        conditions = response.json().get("status", {}).get("conditions", [])
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def _ctr(self, *args: str) -> list[str]:
        return ["ctr", "--address", str(self.config.containerd_socket), "--namespace",
                "k8s.io", *args]

    # -- start and stop -----------------------------------------------------------------

    def _pidfile(self, name: str) -> Path:
        return self.config.run_dir / f"{name}.pid"

    def _log(self, name: str) -> Path:
        return self.config.run_dir / f"{name}.log"

    def pid(self, name: str) -> int | None:
        return processes.read_pid(self._pidfile(name))

    def _start(self, name: str, cmd: list[str], healthy: Callable[[], bool],
               timeout: float) -> None:
        """Starts a component in a session of its own unless it already answers (or ours
        is still starting), then waits for it; a start-up failure names its log."""
        if healthy():
            return
        if self.pid(name) is None:
            self.config.run_dir.mkdir(parents=True, exist_ok=True)
            processes.spawn(cmd, self._log(name), self._pidfile(name), cwd=self.config.run_dir)
        try:
            processes.wait_healthy(name, healthy, lambda: self.pid(name) is not None,
                                   timeout, self._log(name))
        except processes.ServiceStartError as exc:
            raise StackError(str(exc)) from None

    def stop(self, name: str, grace: float = 20) -> bool:
        return processes.stop_pidfile(self._pidfile(name), grace)

    def start_etcd(self) -> None:
        etcd = shutil.which("etcd") or "/usr/bin/etcd"
        if not Path(etcd).exists():
            raise StackError("etcd is missing; run install (it installs etcd-server)")
        peer = f"http://127.0.0.1:{ETCD_PEER_PORT}"
        client = f"http://127.0.0.1:{ETCD_PORT}"
        self._start("etcd", [
            etcd, "--name", "llmdrill", "--data-dir", str(self.config.kube_dir / "etcd"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"llmdrill={peer}", "--initial-cluster-state", "new",
        ], self.etcd_healthy, 60)

    def start_apiserver(self) -> None:
        pki = self.config.pki
        self._start("kube-apiserver", [
            self._bin("kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{ETCD_PORT}",
            "--bind-address=127.0.0.1", f"--secure-port={APISERVER_PORT}",
            "--advertise-address=127.0.0.1",
            # The `kubernetes` Service's endpoint would be 127.0.0.1, which the API refuses
            # (loopback) every 10 s; no pod here needs it.
            "--endpoint-reconciler-type=none",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            # The node's InternalIP is the host's interface; its name `localhost` resolves
            # to 127.0.0.1, where the kubelet listens.
            "--kubelet-preferred-address-types=Hostname",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            "--profiling=false",
        ], self.apiserver_healthy, 120)

    def start_controller_manager(self) -> None:
        pki = self.config.pki
        kc = self.config.kube_dir / "controller-manager.kubeconfig"
        self._start("kube-controller-manager", [
            self._bin("kube-controller-manager"),
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", f"--secure-port={CONTROLLER_MANAGER_PORT}",
            "--leader-elect=false",
            # One service account per controller, as kubeadm does: the bootstrap RBAC role
            # of system:kube-controller-manager alone does not cover every controller.
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            # Node-restart drills: a stopped kubelet makes the node NotReady in about this
            # long instead of 50 s (the kubelet renews its lease every 2 s, see its config).
            f"--node-monitor-grace-period={self.config.node_grace}",
            "--node-monitor-period=2s",
            "--profiling=false",
        ], self.controller_manager_healthy, 60)

    def start_scheduler(self) -> None:
        kc = self.config.kube_dir / "scheduler.kubeconfig"
        self._start("kube-scheduler", [
            self._bin("kube-scheduler"),
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", f"--secure-port={SCHEDULER_PORT}",
            "--leader-elect=false", "--profiling=false",
        ], self.scheduler_healthy, 60)

    def start_containerd(self) -> None:
        containerd = shutil.which("containerd") or "/usr/bin/containerd"
        if not Path(containerd).exists():
            raise StackError("containerd is missing; run install")
        self._start("containerd", [
            containerd, "--config", str(self.config.containerd_dir / "config.toml"),
        ], self.containerd_healthy, 60)
        self.import_images()

    def import_images(self) -> None:
        """Imports both archives (idempotent, well under a second; an archive that
        changed retags its image)."""
        for ref, path in self.image_archives.items():
            if not path.exists():
                raise StackError(f"{path} is missing; run install")
            out = subprocess.run(self._ctr("images", "import", str(path)),
                                 capture_output=True, text=True, timeout=120)
            if out.returncode != 0:
                raise StackError(f"ctr images import {path} ({ref}) failed:\n{out.stderr}")

    def _prepare_kubelet_dir(self) -> None:
        """The kubelet runs in a mount namespace of its own; its root dir is bind-mounted
        onto itself and made rshared here, so the volume mounts it makes there (tmpfs,
        hostPath subpaths) still reach containerd in the host's namespace."""
        root = self.config.kubelet_dir
        root.mkdir(parents=True, exist_ok=True)
        if str(root) not in mountpoints(Path("/proc/self/mountinfo").read_text()):
            _check_run(["mount", "--bind", str(root), str(root)])
        _check_run(["mount", "--make-rshared", str(root)])

    def kubelet_command(self) -> list[str]:
        kube = self.config.kube_dir
        binds = []
        for standin in sorted((kube / "sysctl").glob("*")):
            target = "/proc/sys/" + standin.name.replace(".", "/")
            binds.append(f"mount --bind {shlex.quote(str(standin))} {shlex.quote(target)}")
        # /proc made a slave first: on a host whose mounts are shared (systemd), the
        # stand-in binds must not propagate back to the host's /proc.
        script = "; ".join(["set -e", "mount --make-rslave /proc", *binds, 'exec "$@"'])
        return [
            "unshare", "--mount", "--propagation", "unchanged", "--",
            "/bin/sh", "-c", script, "kubelet",
            self._bin("kubelet"),
            f"--config={kube / 'kubelet-config.json'}",
            f"--kubeconfig={kube / 'kubelet.kubeconfig'}",
            f"--root-dir={self.config.kubelet_dir}",
            f"--hostname-override={NODE_NAME}",
        ]

    def start_kubelet(self) -> None:
        if not self.kubelet_healthy():
            self._prepare_kubelet_dir()
        self._start("kubelet", self.kubelet_command(), self.kubelet_healthy, 60)

    def wait_node_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.node_ready():
                return
            if self.pid("kubelet") is None and not self.kubelet_healthy():
                raise StackError(f"the kubelet exited (log: {self._log('kubelet')}); last "
                                 f"lines:\n{processes.tail(self._log('kubelet'))}")
            time.sleep(0.5)
        raise StackError(f"node {NODE_NAME} was not Ready within {timeout:.0f}s; see "
                         f"{self._log('kubelet')} and {self._log('containerd')}")

    def up(self) -> float:
        """Starts whatever is not running yet; returns the seconds it took."""
        started = time.time()
        for component in COMPONENTS:
            self._bin(component)
        for path in self.image_archives.values():
            if not path.exists():
                raise StackError(f"{path} is missing; run install")
        self.write_pki()
        self.write_configs()
        self.start_etcd()
        self.start_apiserver()
        self.start_containerd()
        self.start_controller_manager()
        self.start_scheduler()
        self.start_kubelet()
        self.wait_node_ready(self.config.start_timeout)
        took = time.time() - started
        _say(f"kubernetes {self.config.version}: node {NODE_NAME} Ready ({took:.1f}s); "
             f"kubeconfig: {self.config.kubeconfig}")
        return took

    # -- node restarts (the Kubernetes fault backend's test commands) -------------------

    def stop_kubelet(self) -> bool:
        """The kubelet alone: its containers keep running, the node goes NotReady once the
        controller-manager's --node-monitor-grace-period passes (node_grace)."""
        return self.stop("kubelet")

    def stop_node(self) -> list[str]:
        """A power cut, as near as one host allows: the kubelet stopped, every container
        of this node killed (SIGKILL), containerd and its shims stopped. The API server
        and etcd (the control plane, on other machines in a real cluster) stay up; etcd's
        pods stay, so start_node brings the same pods back with new containers. Every pod
        here uses the host network: no network namespace is left behind."""
        stopped = []
        if self.stop("kubelet"):
            stopped.append("kubelet")
        self._kill_tasks()
        if self.stop("containerd"):
            stopped.append("containerd")
        shims = self._stop_shims()
        if shims:
            stopped.append(f"{len(shims)} containerd shim(s)")
        return stopped

    def start_node(self) -> None:
        """containerd, then the kubelet (each only if not running: idempotent)."""
        self.start_containerd()
        self.start_kubelet()

    # -- kubectl ------------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [self._bin("kubectl"), f"--kubeconfig={self.config.kubeconfig}", *args]
        out = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise StackError(f"kubectl {' '.join(args)} failed:\n{out.stderr.strip()}")
        return out

    # -- the engine ---------------------------------------------------------------------

    def engine_pods(self) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in ENGINE_SELECTOR.items())
        out = self.kubectl("get", "pods", "-n", self.config.namespace, "-l", selector,
                           "-o", "json")
        items: list[dict[str, Any]] = json.loads(out.stdout).get("items", [])
        return items

    def deploy_engine(self, wait: bool = True) -> float:
        cfg = self.config
        if not (cfg.venv / "bin" / "vllm").exists() or not (cfg.model_dir / "config.json").exists():
            raise StackError(f"the engine venv ({cfg.venv}) or the tiny model "
                             f"({cfg.model_dir}) is missing; run `make stack` first")
        if not self.apiserver_healthy():
            raise StackError("the cluster is not running; run "
                             "`python -m llmdrill.stack.kube_cluster up` (make kube-up)")
        started = time.time()
        manifests = engine_manifests(cfg, processes.python_home(cfg.venv))
        self.kubectl("apply", "-f", "-", input=json.dumps(manifests))
        if wait:
            self.wait_engine_ready(cfg.engine_timeout)
        took = time.time() - started
        urls = ", ".join(f"http://127.0.0.1:{p}" for p in cfg.engine_ports())
        _say(f"engine: {cfg.replicas} replicas Ready in {cfg.namespace} ({took:.0f}s): {urls}")
        return took

    def wait_engine_ready(self, timeout: float) -> None:
        cfg = self.config
        started = time.time()
        last_report = started
        while time.time() - started < timeout:
            pods = self.engine_pods()
            ready = [p for p in pods if _pod_ready(p) and not p["metadata"].get(
                "deletionTimestamp")]
            if len(ready) >= cfg.replicas and all(
                    self._ok(f"http://127.0.0.1:{port}/health") for port in cfg.engine_ports()):
                return
            for pod in pods:
                problem = _pod_problem(pod)
                if problem:
                    name = pod["metadata"]["name"]
                    raise StackError(
                        f"engine pod {name}: {problem}; see `python -m "
                        f"llmdrill.stack.kube_cluster kubectl -n {cfg.namespace} describe pod "
                        f"{name}` and `... logs {name}`")
            if time.time() - last_report > 15:
                last_report = time.time()
                _say(f"engine: {len(ready)}/{cfg.replicas} Ready after "
                     f"{time.time() - started:.0f}s")
            time.sleep(1)
        raise StackError(f"the engine was not Ready within {timeout:.0f}s; see `kubectl -n "
                         f"{cfg.namespace} describe pods` and the kubelet log "
                         f"{self._log('kubelet')}")

    def undeploy_engine(self) -> bool:
        if not self.apiserver_healthy():
            return False
        selector = ",".join(f"{k}={v}" for k, v in ENGINE_SELECTOR.items())
        ns = self.config.namespace
        out = self.kubectl("delete", "deployments,services", "-n", ns, "-l", selector,
                           "--ignore-not-found", "--wait=true", "--timeout=120s", timeout=180)
        # The Deployments are gone at once; wait for their pods, so the ports are free.
        self.kubectl("wait", "--for=delete", "pods", "-n", ns, "-l", selector,
                     "--timeout=120s", check=False, timeout=180)
        return bool(out.stdout.strip())

    # -- down and status ----------------------------------------------------------------

    def _delete_pods(self) -> None:
        """Deletes every pod through the API while the kubelet still runs, so it stops
        the containers and removes the sandboxes cleanly; killing containers directly
        leaves /var/run/netns/cni-* and shims behind. The controller-manager and the
        scheduler are stopped first: nothing makes or binds replacements meanwhile, and
        the next `up` recreates the pods from the Deployments still in etcd."""
        if not self.apiserver_healthy():
            return
        args = ["delete", "pods", "--all", "--all-namespaces", "--wait=true", "--timeout=90s"]
        if not self.kubelet_healthy():
            # Nobody would confirm a graceful deletion: remove the objects; the containers
            # go with containerd below.
            args += ["--force", "--grace-period=0"]
        out = self.kubectl(*args, check=False, timeout=150)
        if out.returncode != 0:
            _say(f"kube down: deleting pods: {out.stderr.strip()}")

    def _kill_tasks(self) -> None:
        """Whatever containers are still running in our containerd (a kubelet that was
        already gone): killed and deleted through containerd, so their shims exit."""
        if not self.containerd_healthy():
            return
        try:
            out = subprocess.run(self._ctr("tasks", "ls", "-q"), capture_output=True,
                                 text=True, timeout=10)
        except subprocess.TimeoutExpired:
            return
        for task in out.stdout.split():
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(self._ctr("tasks", "kill", "-s", "SIGKILL", task),
                               capture_output=True, timeout=10)
                subprocess.run(self._ctr("tasks", "delete", "-f", task),
                               capture_output=True, timeout=10)

    def _stop_shims(self) -> list[int]:
        """Shims of our containerd that outlived it (only ours: matched by its socket)."""
        cmdlines: dict[int, list[str]] = {}
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    raw = (proc / "cmdline").read_bytes()
                    cmdlines[int(proc.name)] = [a.decode(errors="replace")
                                                for a in raw.split(b"\0") if a]
        pids = shim_pids(self.config.containerd_socket, cmdlines)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.time() + 10
        while time.time() < deadline and any(processes.alive(p) for p in pids):
            time.sleep(0.2)
        for pid in pids:
            if processes.alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return pids

    def _unmount_under(self, folder: Path) -> None:
        """Mounts left under one of our folders: volume mounts of a kubelet that died
        before tearing its pods down, sandbox /dev/shm mounts of a containerd that never
        removed its sandboxes, and the kubelet dir's own bind mount."""
        root = str(folder)
        points = [p for p in mountpoints(Path("/proc/self/mountinfo").read_text())
                  if p == root or p.startswith(root + "/")]
        for point in sorted(set(points), key=lambda p: p.count("/"), reverse=True):
            if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True)

    def down(self) -> list[str]:
        stopped = []
        for name in ("kube-controller-manager", "kube-scheduler"):
            if self.stop(name):
                stopped.append(name)
        self._delete_pods()
        if self.stop("kubelet"):
            stopped.append("kubelet")
        self._kill_tasks()
        if self.stop("containerd"):
            stopped.append("containerd")
        shims = self._stop_shims()
        if shims:
            stopped.append(f"{len(shims)} containerd shim(s)")
        self._unmount_under(self.config.kubelet_dir)
        self._unmount_under(self.config.containerd_dir)
        for name in ("kube-apiserver", "etcd"):
            if self.stop(name):
                stopped.append(name)
        return stopped

    def status(self) -> dict[str, Any]:
        checks: dict[str, Callable[[], bool]] = {
            "etcd": self.etcd_healthy, "kube-apiserver": self.apiserver_healthy,
            "containerd": self.containerd_healthy,
            "kube-controller-manager": self.controller_manager_healthy,
            "kube-scheduler": self.scheduler_healthy, "kubelet": self.kubelet_healthy,
        }
        report: dict[str, Any] = {
            "binaries": str(self.config.bin_dir) if self.binaries_built() else "not built",
            "components": {name: {"pid": self.pid(name), "healthy": check()}
                           for name, check in checks.items()},
        }
        if report["components"]["kube-apiserver"]["healthy"]:
            report["node_ready"] = self.node_ready()
            report["engine"] = [
                {"pod": p["metadata"]["name"], "ready": _pod_ready(p),
                 "port": p["metadata"].get("annotations", {}).get("llmdrill.port"),
                 "restarts": sum(c.get("restartCount", 0)
                                 for c in p.get("status", {}).get("containerStatuses", []))}
                for p in self.engine_pods()
            ]
            report["kubeconfig"] = str(self.config.kubeconfig)
        return report


# -- helpers -------------------------------------------------------------------------------


def _staging(cfg: KubeClusterConfig) -> str:
    """v1.34.4 -> v0.34.4: the staging modules' tag for a Kubernetes version."""
    return re.sub(r"^v1\.", "v0.", cfg.version)


def _write_if_changed(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _check_run(cmd: list[str]) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise StackError(f"{' '.join(cmd)} failed: {out.stderr.strip()}")


def _pod_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


# Waiting reasons that will not resolve by waiting longer.
FATAL_REASONS = ("ErrImageNeverPull", "CreateContainerConfigError", "CreateContainerError",
                 "InvalidImageName", "RunContainerError", "CrashLoopBackOff")


def _pod_problem(pod: dict[str, Any]) -> str | None:
    for status in pod.get("status", {}).get("containerStatuses", []):
        waiting = status.get("state", {}).get("waiting") or {}
        if waiting.get("reason") in FATAL_REASONS:
            return f"{waiting['reason']}: {waiting.get('message', '')}".strip()
    return None


USAGE = ("usage: python -m llmdrill.stack.kube_cluster "
         "install|up|down|status|deploy-engine|undeploy-engine|stop-kubelet|start-kubelet|"
         "stop-node|start-node|kubectl ARGS...")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    cluster = KubeCluster()
    try:
        if args == ["install"]:
            started = time.time()
            cluster.install()
            _say(f"kube install: done in {time.time() - started:.1f}s")
        elif args == ["up"]:
            cluster.up()
        elif args == ["down"]:
            stopped = cluster.down()
            _say(f"stopped: {', '.join(stopped) or 'nothing'}")
        elif args == ["status"]:
            print(json.dumps(cluster.status(), indent=2))
        elif args == ["deploy-engine"]:
            cluster.deploy_engine()
        elif args == ["undeploy-engine"]:
            removed = cluster.undeploy_engine()
            _say("engine removed" if removed else "no engine deployed")
        elif args == ["stop-kubelet"]:
            _say("kubelet stopped" if cluster.stop_kubelet() else "the kubelet was not running")
        elif args == ["start-kubelet"]:
            cluster.start_kubelet()
            _say("kubelet running")
        elif args == ["stop-node"]:
            _say(f"node stopped: {', '.join(cluster.stop_node()) or 'nothing was running'}")
        elif args == ["start-node"]:
            cluster.start_node()
            _say("node running (containerd, kubelet)")
        elif args[:1] == ["kubectl"]:
            cmd = [cluster._bin("kubectl"), f"--kubeconfig={cluster.config.kubeconfig}",
                   *args[1:]]
            return subprocess.run(cmd).returncode
        else:
            print(USAGE, file=sys.stderr)
            return 2
    except StackError as exc:
        print(f"kube cluster: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
