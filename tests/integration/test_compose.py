"""docker-compose.yml, checked by a real compose parser (Debian's docker-compose 1.29) and
run: its topology (engine, Toxiproxy, gateway, Prometheus, Alertmanager, the llmdrill
runner) from images built here, as there is no registry to pull the published ones from
(deploy/compose/local-images.yml). The runner runs the quickstart suite against the
stack through the gateway and Toxiproxy; its reports land in a mounted folder. The
`gateway` profile (two replicas, their Toxiproxy proxies, HAProxy) is checked by `config`
only: its ports against the gateway scenarios' defaults.

Not run here: the published images themselves (vllm/vllm-openai on a GPU, toxiproxy,
nginx, prom/*) and the two Dockerfiles (their base images cannot be pulled); the
`config` checks below cover the file that uses them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmdrill.stack.processes import python_home
from tests.integration.conftest import REPO, Stack

pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.own_engine]

COMPOSE = REPO / "docker-compose.yml"
LOCAL = REPO / "deploy" / "compose" / "local-images.yml"
PROJECT = "llmdrillci"
RUN_TIMEOUT = 900.0


@pytest.fixture
def compose(docker_client: Any) -> str:
    """The docker-compose command (installed with the engine, which runs)."""
    return "docker-compose"


def run(compose: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120,
        files: tuple[Path, ...] = (COMPOSE,)) -> subprocess.CompletedProcess[str]:
    cmd = [compose, "-p", PROJECT]
    for f in files:
        cmd += ["-f", str(f)]
    return subprocess.run([*cmd, *args], cwd=REPO, env=env or dict(os.environ),
                          capture_output=True, text=True, timeout=timeout)


def resolved(compose: str, profile: str, files: tuple[Path, ...] = (COMPOSE,),
             env: dict[str, str] | None = None) -> dict[str, Any]:
    done = run(compose, "config", env={**(env or os.environ), "COMPOSE_PROFILES": profile},
               files=files)
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


def test_the_compose_file_is_valid_for_both_profiles_and_its_parts_agree(compose: str) -> None:
    for profile in ("gpu", "cpu"):
        config = resolved(compose, profile)
        services = config["services"]
        assert {"toxiproxy", "gateway", "prometheus", "alertmanager", "llmdrill"} <= set(
            services)
        for name, svc in services.items():
            assert svc["network_mode"] == "host", name  # the host's loopback, nothing else
            for volume in svc.get("volumes", []):
                source = str(volume).split(":")[0]
                if source.startswith(str(REPO)) and "reports" not in source \
                        and ".cache" not in source:
                    assert Path(source).exists(), f"{name} mounts missing {source}"
        binds = json.dumps(services)
        assert re.findall(r"0\.0\.0\.0|--host=(?!127\.0\.0\.1)", binds) == []
    assert (REPO / ".env").read_text().count("COMPOSE_PROFILES=gpu") == 1
    # The path of a request, as the files wire it: runner -> nginx -> Toxiproxy -> vLLM.
    runner = resolved(compose, "cpu")["services"]["llmdrill"]["environment"]
    nginx = (REPO / "deploy" / "nginx" / "staging-gateway.conf").read_text()
    assert runner["LLMDRILL_TARGET_URL"] == "http://127.0.0.1:18080"
    assert "listen 127.0.0.1:18080;" in nginx and "server 127.0.0.1:18001;" in nginx
    proxies = json.loads((REPO / "deploy" / "toxiproxy" / "toxiproxy.json").read_text())
    assert proxies[0] == {"name": "vllm", "listen": "127.0.0.1:18001",
                          "upstream": "127.0.0.1:18000", "enabled": True}
    # The gateway profile's replicas (tests/unit/test_compose_gateway.py checks them).
    assert [p["name"] for p in proxies[1:]] == ["replica-0", "replica-1"]
    prometheus = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}
    assert "127.0.0.1:18000" in targets
    assert runner["LLMDRILL_METRICS_URL"] == "http://127.0.0.1:18000/metrics"



SCENARIOS = REPO / "scenarios"
GATEWAY_SERVICES = ("replica-0", "replica-1", "haproxy")


def scenario_default(name: str, variable: str) -> str:
    """The default a scenario gives a variable: `${VARIABLE:-default}`."""
    text = (SCENARIOS / f"{name}.yaml").read_text()
    found = re.search(r"\$\{" + variable + r":-([^}]*)\}", text)
    assert found, f"{name}.yaml has no default for {variable}"
    return found.group(1)


def test_the_gateway_profile_is_the_gateway_stack_on_the_scenarios_ports(compose: str) -> None:
    """COMPOSE_PROFILES=cpu,gateway: two replicas of the CPU engine's image, each behind a
    proxy of the one Toxiproxy, HAProxy over the proxies; on the host network, 127.0.0.1
    only, on the ports the gateway drills default to."""
    services = resolved(compose, "cpu,gateway")["services"]
    assert {*GATEWAY_SERVICES, "vllm-cpu", "toxiproxy"} <= set(services)
    gateway = {name: services[name] for name in GATEWAY_SERVICES}
    for name, svc in gateway.items():
        assert svc["network_mode"] == "host", name
        assert svc["profiles"] == ["gateway"], name
        for volume in svc.get("volumes", []):
            source = str(volume).split(":")[0]
            assert Path(source).exists(), f"{name} mounts missing {source}"
    cfg = (REPO / "deploy" / "gateway" / "haproxy-compose.cfg").read_text()
    proxies = json.loads((REPO / "deploy" / "toxiproxy" / "toxiproxy.json").read_text())
    # Only 127.0.0.1, wherever an address is written.
    addresses = re.findall(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])",
                           json.dumps(gateway) + cfg + json.dumps(proxies))
    assert addresses and set(addresses) == {"127.0.0.1"}
    assert re.findall(r"--host=(?!127\.0\.0\.1)", json.dumps(gateway)) == []

    # The replicas: vllm-cpu's image, build and flags, on their own ports, draining at SIGTERM.
    cpu = services["vllm-cpu"]
    ports = {}
    for name in ("replica-0", "replica-1"):
        svc = services[name]
        assert (svc["image"], svc["build"]) == (cpu["image"], cpu["build"]), name
        assert svc["container_name"] == f"llmdrill-{name}"
        assert svc["labels"] == {"llmdrill.role": "replica"}
        assert set(cpu["command"]) - {"--port=18000"} <= set(svc["command"]), name
        assert "--shutdown-timeout=30" in svc["command"]
        port = int(next(a for a in svc["command"] if a.startswith("--port=")).split("=")[1])
        ports[name] = port
        assert f"http://127.0.0.1:{port}/health" in " ".join(svc["healthcheck"]["test"])
    assert ports == {"replica-0": 18010, "replica-1": 18020}
    # Their proxies (in the compose file's Toxiproxy), and HAProxy over the proxies.
    assert services["toxiproxy"]["command"][:2] == ["-host=127.0.0.1", "-port=18474"]
    proxies = [p for p in proxies if p["name"] in ports]
    for p in proxies:
        assert p["upstream"] == f"127.0.0.1:{ports[p['name']]}"
        assert f"    server {p['name']} {p['listen']} check\n" in cfg
    assert [p["listen"] for p in proxies] == ["127.0.0.1:18011", "127.0.0.1:18021"]
    haproxy = services["haproxy"]
    assert haproxy["command"][-2:] == ["-f", "/usr/local/etc/haproxy/haproxy.cfg"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in haproxy["volumes"]}
    assert Path(mounts["/usr/local/etc/haproxy/haproxy.cfg"]).name == "haproxy-compose.cfg"
    assert "stats socket /run/haproxy/haproxy.sock mode 600 level admin" in cfg
    assert Path(mounts["/run/haproxy"]) == REPO / ".run" / "haproxy"

    # The gateway drills' defaults reach exactly these.
    for name in ("gateway-failover", "graceful-drain", "backpressure"):
        assert scenario_default(name, "LLMDRILL_GATEWAY_URL") == "http://127.0.0.1:18040"
        assert "    bind 127.0.0.1:18040\n" in cfg
        assert scenario_default(name, "LLMDRILL_REPLICA0_URL") == "http://127.0.0.1:18010"
        assert scenario_default(name, "LLMDRILL_REPLICA1_URL") == "http://127.0.0.1:18020"
    for name in ("gateway-failover", "backpressure"):
        assert scenario_default(name, "LLMDRILL_TOXIPROXY_URL") == "http://127.0.0.1:18474"
    names = {p["name"] for p in proxies}
    assert scenario_default("gateway-failover", "LLMDRILL_REPLICA0_PROXY") in names
    assert scenario_default("backpressure", "LLMDRILL_REPLICA1_PROXY") in names
    assert (scenario_default("backpressure", "LLMDRILL_GATEWAY_METRICS_URL")
            == "http://127.0.0.1:19040/metrics")
    assert "    bind 127.0.0.1:19040\n" in cfg and "prometheus-exporter" in cfg
    assert scenario_default("graceful-drain", "DRAIN_REPLICA") in names

def local_env(tmp_path: Path) -> dict[str, str]:
    stack_dir = Path(os.environ.get("LLMDRILL_STACK_DIR", REPO / ".stack")).resolve()
    venv = Path(os.environ.get("VIRTUAL_ENV") or REPO / ".venv").resolve()
    home = python_home(stack_dir / "vllm-venv")
    assert python_home(venv) == home, "both venvs must come from one Python installation"
    reports = tmp_path / "reports"
    reports.mkdir()
    return {**os.environ, "COMPOSE_PROFILES": "cpu", "LLMDRILL_STACK_DIR": str(stack_dir),
            "LLMDRILL_VENV": str(venv), "LLMDRILL_PYTHON_HOME": str(home),
            "LLMDRILL_REPO": str(REPO), "LLMDRILL_REPORTS_DIR": str(reports),
            "LLMDRILL_TAGS": "quickstart"}


def in_stack(url: str) -> Any:
    """GET a URL inside the stack's own network namespace (busybox wget in `net`)."""
    out = subprocess.run(["docker", "exec", f"{PROJECT}_net_1", "wget", "-qO-", url],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if out.stdout.startswith("{") else out.stdout


def test_the_compose_topology_runs_the_suite_from_local_images(
        compose: str, stack: Stack, tmp_path: Path) -> None:
    env = local_env(tmp_path)
    files = (COMPOSE, LOCAL)
    assert resolved(compose, "cpu", files, env)["services"]["net"]["network_mode"] == "none"
    run(compose, "down", "-v", "-t", "5", env=env, files=files)  # a leftover of a killed run
    try:
        up = run(compose, "up", "-d", env=env, files=files, timeout=300)
        assert up.returncode == 0, up.stderr
        started = time.time()
        waited = subprocess.run(["docker", "wait", f"{PROJECT}_llmdrill_1"],
                                capture_output=True, text=True, timeout=RUN_TIMEOUT)
        logs = subprocess.run(["docker", "logs", "--tail", "60", f"{PROJECT}_llmdrill_1"],
                              capture_output=True, text=True, timeout=30)
        assert waited.stdout.strip() == "0", logs.stdout + logs.stderr
        print(f"\ncompose stack: the runner's suite ended after {time.time() - started:.0f}s")
        reports = Path(env["LLMDRILL_REPORTS_DIR"])
        results = {json.loads(p.read_text())["scenario"]["name"]: json.loads(p.read_text())
                   for p in reports.glob("*/result.json")}
        assert set(results) == {"caps", "timeout-spike"}
        assert all(r["status"] == "passed" for r in results.values())
        assert (reports / "junit.xml").exists()
        # The monitoring half: both scrape targets up, the project's rules loaded,
        # Alertmanager ready and known to Prometheus.
        targets = in_stack("http://127.0.0.1:9090/api/v1/targets")["data"]["activeTargets"]
        assert {(t["labels"]["job"], t["health"]) for t in targets} == {
            ("vllm", "up"), ("gateway", "up")}
        groups = in_stack("http://127.0.0.1:9090/api/v1/rules")["data"]["groups"]
        assert [g["name"] for g in groups] == ["llm-serving"] and groups[0]["rules"]
        managers = in_stack("http://127.0.0.1:9090/api/v1/alertmanagers")
        assert managers["data"]["activeAlertmanagers"]
        assert in_stack("http://127.0.0.1:9093/-/ready").strip() == "OK"
    finally:
        down = run(compose, "down", "-v", "-t", "5", env=env, files=files)
        assert down.returncode == 0, down.stderr
