"""docker-compose.yml's `gateway` profile and the local gateway stack cannot drift apart: its
HAProxy config is haproxy_config's output for the stack's default ports, and the replicas'
Toxiproxy proxies (in deploy/toxiproxy/toxiproxy.json, beside the engine's) are the ones
`llmdrill up --replicas 2` creates."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from llmdrill.stack.gateway import GatewayConfig, haproxy_config, replica_name
from llmdrill.stack.local import StackConfig

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
COMPOSE_CFG = REPO / "deploy" / "gateway" / "haproxy-compose.cfg"
TOXIPROXY = REPO / "deploy" / "toxiproxy"
REGENERATE = "run .venv/bin/python scripts/gen_haproxy_compose.py"


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_compose_haproxy_config_is_haproxy_config_for_the_stacks_ports() -> None:
    generator = load(REPO / "scripts" / "gen_haproxy_compose.py")
    # What the task asked for, spelled out: the generator cannot drift either.
    expected = haproxy_config(
        18040, {"replica-0": "127.0.0.1:18011", "replica-1": "127.0.0.1:18021"},
        Path("/run/haproxy"), socket_path=Path("/run/haproxy/haproxy.sock"),
        metrics_port=19040)
    assert generator.render() == expected
    text = COMPOSE_CFG.read_text(encoding="utf-8")
    assert text == generator.HEADER + expected, f"{COMPOSE_CFG.name} is stale: {REGENERATE}"
    # The header is comments only: every setting of the file is haproxy_config's.
    assert all(not line.strip() or line.startswith("#")
               for line in generator.HEADER.splitlines())
    for setting in ("bind 127.0.0.1:18040", "bind 127.0.0.1:19040",
                    "stats socket /run/haproxy/haproxy.sock mode 600 level admin",
                    "server replica-0 127.0.0.1:18011 check",
                    "server replica-1 127.0.0.1:18021 check",
                    "option httpchk GET /health", "retry-on conn-failure",
                    "timeout queue 3s", "http-error status 503"):
        assert setting in text, setting


@pytest.mark.skipif(shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists(),
                    reason="HAProxy is not installed (make gateway-stack installs it)")
def test_haproxy_accepts_the_compose_config() -> None:
    # A config check binds nothing: the socket's folder (/run/haproxy, the container's)
    # need not exist here.
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    result = subprocess.run([binary, "-c", "-f", str(COMPOSE_CFG)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_replicas_proxies_are_the_gateway_stacks(tmp_path: Path) -> None:
    config = GatewayConfig(stack=StackConfig(root=tmp_path))
    every = json.loads((TOXIPROXY / "toxiproxy.json").read_text())
    proxies = [p for p in every if p["name"].startswith("replica-")]
    assert proxies == [
        {"name": replica_name(i), "listen": f"127.0.0.1:{config.proxy_port(i)}",
         "upstream": f"127.0.0.1:{config.engine_port(i)}", "enabled": True}
        for i in range(config.replicas)]
    assert [p["listen"] for p in proxies] == ["127.0.0.1:18011", "127.0.0.1:18021"]
    assert [p["upstream"] for p in proxies] == ["127.0.0.1:18010", "127.0.0.1:18020"]
    # HAProxy balances over exactly these proxies.
    assert config.servers() == {p["name"]: p["listen"] for p in proxies}
    # Beside the engine's own proxy: no name or port twice.
    assert len({p["name"] for p in every}) == len({p["listen"] for p in every}) == len(every)
