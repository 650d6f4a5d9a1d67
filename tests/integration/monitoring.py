"""Real Prometheus and Alertmanager (Debian's packages) for the tests, on 127.0.0.1.

Prometheus scrapes the real vLLM every second and evaluates the rules given; alerts go to
a real Alertmanager whose only receiver discards them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

PROMETHEUS_PORT, ALERTMANAGER_PORT = 19090, 19093


@dataclass
class Monitoring:
    prometheus_url: str
    alertmanager_url: str


def _binary(name: str) -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists()
                                   else None)
    if found is None:
        raise RuntimeError(f"{name} is not installed (make test installs it with apt)")
    return found


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited: {log.read_text()[-2000:]}")
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not become ready")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


DISCARD = ("route: {receiver: discard, group_wait: 0s, group_interval: 1s, repeat_interval: 1h}\n"
           "receivers: [{name: discard}]\n")


@contextmanager
def monitoring(run_dir: Path, rules: str, engine: str = "127.0.0.1:18000",
               alertmanager_config: str = DISCARD, gateway: str | None = None,
               gateway_interval: str = "2s",
               prometheus_port: int = PROMETHEUS_PORT,
               alertmanager_port: int = ALERTMANAGER_PORT) -> Iterator[Monitoring]:
    """`gateway`: also scrape the engine's /metrics through this host:port (job gateway),
    every `gateway_interval` (which is also its scrape timeout: room for a slow probe)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "rules.yml").write_text(rules)
    (run_dir / "alertmanager.yml").write_text(alertmanager_config)
    gateway_job = (f"  - {{job_name: gateway, scrape_interval: {gateway_interval}, "
                   f"static_configs: [{{targets: ['{gateway}']}}]}}\n" if gateway else "")
    (run_dir / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{run_dir / 'rules.yml'}]\n"
        "alerting:\n  alertmanagers:\n"
        f"    - static_configs: [{{targets: ['127.0.0.1:{alertmanager_port}']}}]\n"
        "scrape_configs:\n"
        f"  - {{job_name: vllm, static_configs: [{{targets: ['{engine}']}}]}}\n"
        + gateway_job
    )
    am_log, prom_log = run_dir / "alertmanager.log", run_dir / "prometheus.log"
    am = subprocess.Popen(
        [_binary("prometheus-alertmanager"), f"--config.file={run_dir / 'alertmanager.yml'}",
         f"--storage.path={run_dir / 'am-data'}",
         f"--web.listen-address=127.0.0.1:{alertmanager_port}",
         "--cluster.listen-address="],
        stdout=am_log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    prom = subprocess.Popen(
        [_binary("prometheus"), f"--config.file={run_dir / 'prometheus.yml'}",
         f"--storage.tsdb.path={run_dir / 'prom-data'}",
         f"--web.listen-address=127.0.0.1:{prometheus_port}",
         # Firing alerts are sent again every resend-delay (1m by default): one sent before
         # Alertmanager was discovered would otherwise reach it only a minute later.
         "--rules.alert.resend-delay=1s"],
        stdout=prom_log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(f"http://127.0.0.1:{alertmanager_port}/-/ready", am, am_log)
        _wait(f"http://127.0.0.1:{prometheus_port}/-/ready", prom, prom_log)
        yield Monitoring(f"http://127.0.0.1:{prometheus_port}",
                         f"http://127.0.0.1:{alertmanager_port}")
    finally:
        _stop(prom)
        _stop(am)
