"""The gateway stack's pure logic: the HAProxy config and vllm-router command of both
variants (resilient, and broken on purpose), the replicas' command and environment, the
names and ports, and `llmdrill up`'s refusal of option combinations it cannot serve."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmdrill import cli
from llmdrill.stack import StackError
from llmdrill.stack.gateway import (
    DEFAULT_SERVER_MAXCONN,
    GATEWAYS,
    RETRY_AFTER_S,
    SERVER_MAXCONN_ENV,
    Gateway,
    GatewayConfig,
    GatewayStack,
    gateway_name,
    haproxy_config,
    haproxy_servers,
    main,
    parse_server_status,
    replica_command,
    replica_core,
    replica_env,
    router_command,
)
from llmdrill.stack.local import StackConfig

pytestmark = pytest.mark.unit

SERVERS = {"replica-0": "127.0.0.1:18011", "replica-1": "127.0.0.1:18021"}
WORKERS = ["http://127.0.0.1:18011", "http://127.0.0.1:18021"]


def _config(tmp_path: Path) -> GatewayConfig:
    return GatewayConfig(stack=StackConfig(root=tmp_path))


def _server_lines(cfg: str) -> list[str]:
    return [line.strip() for line in cfg.splitlines() if line.strip().startswith("server ")]


def _flags(cmd: list[str]) -> dict[str, list[str]]:
    """--flag -> the values after it (none for a switch); the program and what comes
    before the first flag under ''."""
    flags: dict[str, list[str]] = {"": []}
    current = ""
    for arg in cmd:
        if arg.startswith("--"):
            current = arg
            flags[current] = []
        else:
            flags[current].append(arg)
    return flags


# --- HAProxy ------------------------------------------------------------------------------


def test_haproxy_with_health_checks_removes_a_failing_replica_and_retries(
        tmp_path: Path) -> None:
    cfg = haproxy_config(18040, SERVERS, tmp_path)
    assert "bind 127.0.0.1:18040" in cfg
    assert f"stats socket {tmp_path / 'haproxy.sock'} mode 600 level admin" in cfg
    for setting in ("mode http", "balance roundrobin", "option httpchk GET /health",
                    "http-check expect status 200",
                    "default-server inter 1s fall 2 rise 2 maxconn 8", "timeout queue 3s",
                    "timeout check 1s", "timeout server 30s", "option redispatch 1",
                    "retries 2",
                    "retry-on conn-failure empty-response response-timeout 500 502 503 504",
                    "option http-buffer-request", "option http-server-close"):
        assert f"    {setting}\n" in cfg, setting
    assert _server_lines(cfg) == ["server replica-0 127.0.0.1:18011 check",
                                  "server replica-1 127.0.0.1:18021 check"]
    assert "log " not in cfg  # no access logging


def test_haproxy_with_health_checks_sheds_with_a_503_that_says_when_to_retry(
        tmp_path: Path) -> None:
    cfg = haproxy_config(18040, SERVERS, tmp_path, server_maxconn=3)
    assert "    default-server inter 1s fall 2 rise 2 maxconn 3\n" in cfg
    [line] = [x.strip() for x in cfg.splitlines() if x.strip().startswith("http-error")]
    head, body = line.split(" string ")
    assert head == ("http-error status 503 content-type application/json hdr Retry-After "
                    f"{RETRY_AFTER_S}")
    error = json.loads(body.strip("'"))["error"]
    assert error["type"] == "server_overloaded" and error["code"] == 503


def test_the_server_limit_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SERVER_MAXCONN_ENV, "5")
    assert GatewayConfig.from_env().server_maxconn == 5
    monkeypatch.delenv(SERVER_MAXCONN_ENV)
    assert GatewayConfig.from_env().server_maxconn == DEFAULT_SERVER_MAXCONN


def test_haproxy_without_health_checks_keeps_sending_to_every_server(tmp_path: Path) -> None:
    cfg = haproxy_config(18042, SERVERS, tmp_path, health_checks=False,
                         socket_path=tmp_path / "haproxy-18042.sock")
    assert "bind 127.0.0.1:18042" in cfg
    assert f"stats socket {tmp_path / 'haproxy-18042.sock'} " in cfg
    assert _server_lines(cfg) == ["server replica-0 127.0.0.1:18011",
                                  "server replica-1 127.0.0.1:18021"]
    for absent in ("httpchk", "http-check", "redispatch", "retry-on", "retries 2",
                   "default-server", "http-buffer-request", "maxconn 8", "timeout queue",
                   "http-error"):
        assert absent not in cfg, absent
    assert "    retries 0\n" in cfg
    # Everything else is the same, so a drill compares the checks and nothing else.
    assert "balance roundrobin" in cfg and "timeout server 30s" in cfg


@pytest.mark.skipif(shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists(),
                    reason="HAProxy is not installed (make gateway-stack installs it)")
@pytest.mark.parametrize("health_checks", [True, False])
def test_haproxy_accepts_both_configs(tmp_path: Path, health_checks: bool) -> None:
    path = tmp_path / "haproxy.cfg"
    path.write_text(haproxy_config(18040, SERVERS, tmp_path, health_checks=health_checks,
                                   metrics_port=19040))
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    result = subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_show_stat_gives_each_server_status() -> None:
    show_stat = (
        "# pxname,svname,qcur,status,weight\n"
        "llm,FRONTEND,,OPEN,\n"
        "replicas,replica-0,0,UP,1\n"
        "replicas,replica-1,0,DOWN,1\n"
        "replicas,BACKEND,0,UP,1\n"
        "other,replica-0,0,MAINT,1\n"
        "\n")
    assert parse_server_status(show_stat) == {"replica-0": "UP", "replica-1": "DOWN"}
    assert parse_server_status("") == {}


def test_a_haproxy_that_does_not_answer_has_no_servers(tmp_path: Path) -> None:
    assert haproxy_servers(tmp_path / "missing.sock") == {}


# --- vllm-router --------------------------------------------------------------------------


def test_resilient_router_removes_a_failing_worker_within_seconds() -> None:
    cmd = router_command("/venv/bin/vllm-router", 18030, 18031, WORKERS)
    flags = _flags(cmd)
    assert cmd[0] == "/venv/bin/vllm-router"
    assert flags["--host"] == ["127.0.0.1"] and flags["--port"] == ["18030"]
    assert flags["--worker-urls"] == WORKERS
    assert flags["--policy"] == ["round_robin"]
    assert flags["--prometheus-host"] == ["127.0.0.1"]
    assert flags["--prometheus-port"] == ["18031"]
    assert flags["--health-check-interval-secs"] == ["1"]
    assert flags["--health-check-timeout-secs"] == ["1"]
    assert flags["--health-failure-threshold"] == ["2"]
    assert flags["--health-success-threshold"] == ["2"]
    assert int(flags["--retry-max-retries"][0]) >= 2
    assert int(flags["--cb-timeout-duration-secs"][0]) <= 10
    assert flags["--worker-startup-check-interval"] == ["1"]
    assert "--disable-retries" not in flags and "--disable-circuit-breaker" not in flags


def test_broken_router_never_removes_a_worker_nor_retries() -> None:
    flags = _flags(router_command("vllm-router", 18032, 18033, WORKERS, resilient=False))
    assert flags["--disable-retries"] == [] and flags["--disable-circuit-breaker"] == []
    assert int(flags["--health-check-interval-secs"][0]) >= 3600
    assert int(flags["--health-failure-threshold"][0]) >= 1000
    assert flags["--worker-urls"] == WORKERS and flags["--port"] == ["18032"]
    assert "--retry-max-retries" not in flags and "--cb-failure-threshold" not in flags


# --- replicas, names, ports ---------------------------------------------------------------


def test_each_replica_gets_its_own_core() -> None:
    assert [replica_core(i, 2) for i in range(2)] == [0, 1]
    assert [replica_core(i, 1) for i in range(2)] == [0, 0]
    assert replica_core(1, None) == 0


def test_replica_command_is_the_local_engine_pinned_to_a_core(tmp_path: Path) -> None:
    cmd = replica_command(tmp_path / "vllm", tmp_path / "tiny", 18020, "tiny", 32, core=1)
    assert cmd[:3] == ["taskset", "-c", "1"]
    flags = _flags(cmd)
    assert flags[""][3:] == [str(tmp_path / "vllm"), "serve", str(tmp_path / "tiny")]
    assert flags["--port"] == ["18020"] and flags["--host"] == ["127.0.0.1"]
    assert flags["--num-gpu-blocks-override"] == ["32"]
    assert flags["--served-model-name"] == ["tiny"]
    assert flags["--load-format"] == ["dummy"]
    unpinned = replica_command(tmp_path / "vllm", tmp_path / "tiny", 18010, "tiny", 32, None)
    assert unpinned[0] == str(tmp_path / "vllm")


def test_replica_env_keeps_the_api_server_up_when_its_engine_dies(tmp_path: Path) -> None:
    env = replica_env({"PATH": "/bin"}, tmp_path / "replica-1" / "cache", 1)
    assert env["PATH"] == "/bin"
    assert env["VLLM_KEEP_ALIVE_ON_ENGINE_DEATH"] == "1"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "1"
    for key in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TMPDIR"):
        assert env[key].startswith(str(tmp_path / "replica-1" / "cache")), key
    assert env["HF_HUB_OFFLINE"] == "1"


def test_ports_and_servers(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert [config.engine_port(i) for i in range(2)] == [18010, 18020]
    assert [config.proxy_port(i) for i in range(2)] == [18011, 18021]
    assert config.servers() == SERVERS  # the gateways reach the replicas through Toxiproxy
    assert config.names == ["replica-0", "replica-1"]


def test_a_gateway_off_its_default_port_has_files_of_its_own(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert gateway_name("haproxy", 18040, config) == "haproxy"
    assert gateway_name("vllm-router", 18030, config) == "vllm-router"
    variant = Gateway("haproxy", 18042, config, resilient=False)
    assert variant.pidfile == config.run_dir / "haproxy-18042.pid"
    assert variant.socket == config.run_dir / "haproxy-18042.sock"
    assert Gateway("haproxy", 18040, config).socket == config.run_dir / "haproxy.sock"
    assert Gateway("vllm-router", 18030, config).metrics_port == 18031
    router = Gateway("vllm-router", 18032, config, resilient=False)
    assert router.metrics_port == 18033
    assert router.pidfile == config.run_dir / "vllm-router-18032.pid"
    assert "--disable-retries" in router.command()
    with pytest.raises(StackError, match="unknown gateway"):
        gateway_name("nginx", 18040, config)


def test_urls_name_only_the_gateways_asked_for(tmp_path: Path) -> None:
    stack = GatewayStack(_config(tmp_path))
    urls = stack.urls(["haproxy"])
    assert urls["haproxy"] == "http://127.0.0.1:18040"
    assert urls["replica-1 through toxiproxy"] == "http://127.0.0.1:18021"
    assert "vllm-router" not in urls
    assert stack.urls()["vllm-router metrics"] == "http://127.0.0.1:18031/metrics"


def test_up_refuses_an_unknown_gateway_before_starting_anything(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="unknown gateway 'nginx'"):
        GatewayStack(_config(tmp_path)).up(["nginx"], install=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args", [[], ["start"], ["up", "nginx"], ["install", "haproxy"]])
def test_module_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    assert "usage:" in capsys.readouterr().err


# --- llmdrill up --------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["--replicas", "3"], "--replicas must be 1 or 2"),
    (["--replicas", "0"], "--replicas must be 1 or 2"),
    (["--gateway", "haproxy"], "--gateway needs --replicas 2"),
    (["--replicas", "1", "--gateway", "vllm-router"], "--gateway needs --replicas 2"),
    (["--replicas", "2", "--gateway", "nginx"], "unknown gateway 'nginx'"),
    (["--replicas", "2", "--gateway", "vllm-router", "--front"], "--front needs --gateway "
     "haproxy"),
])
def test_up_refuses_bad_combinations_with_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli.app, ["up", *args])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert message in result.output
    assert "Traceback" not in result.output


def test_up_help_names_the_gateways() -> None:
    result = CliRunner().invoke(cli.app, ["up", "--help"])
    assert result.exit_code == 0
    assert "--replicas" in result.output and "--gateway" in result.output
    assert all(kind in result.output for kind in GATEWAYS)


def test_the_front_balances_over_two_haproxy_instances_each_with_its_metrics(
        tmp_path: Path) -> None:
    stack = GatewayStack(_config(tmp_path))
    first, second = stack.instances()
    assert (first.port, second.port) == (18040, 18041)
    assert (first.metrics_port, second.metrics_port) == (19040, 19041)
    assert second.pidfile == stack.config.run_dir / "haproxy-18041.pid"
    front = stack.front()
    assert front.url == "http://127.0.0.1:18050"
    assert front.servers == {"gateway-0": "127.0.0.1:18040", "gateway-1": "127.0.0.1:18041"}
    text = front._spec()
    assert "server gateway-0 127.0.0.1:18040 check" in text
    assert "bind 127.0.0.1:19050" in text and "prometheus-exporter" in text
    broken = stack.front(18052, resilient=False)
    assert "server gateway-1 127.0.0.1:18041\n" in broken._spec()  # no check
    # The instances balance over the replicas, as the single gateway does.
    assert second.servers == SERVERS
    with pytest.raises(StackError, match="front balancer"):
        stack.up(["vllm-router"], install=False, front=True)

