"""Alert checks end to end: the real vLLM, a real Prometheus and Alertmanager, and the
harness's own webhook receiver.

Prometheus (127.0.0.1:18295) scrapes the engine directly (job vllm) and through the
Toxiproxy proxy (job gateway), evaluates the shipped rules rendered for drill timing plus
a few deliberately broken test rules, and sends to Alertmanager (127.0.0.1:18296), which
routes everything to the harness's receiver on 127.0.0.1:18294 except one alert, routed to
a receiver that discards it. Each run proves one thing:
- scenarios/alerts.yaml passes: the gateway goes down, LlmTargetDown fires and notifies,
  then resolves with a resolved notification; nothing fires in the baseline;
- broken setups fail, each for its own reason: a rule on a wrong metric name never fires;
  a firing alert that Alertmanager does not route to the webhook fails on the
  notification; an always-firing alert fails no_false_alarms; an unknown alert name and a
  Prometheus that is not there fail instead of passing;
- an alert guardrail aborts the run (exit 3), the proxy is enabled again, the report says
  why, and the webhook receiver is gone;
- the timeout-spike drill's opt-in alert checks pass (LlmGatewaySlow fires and resolves).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmdrill.monitoring.rules import render
from tests.integration.conftest import REPO, Stack, llmdrill
from tests.integration.monitoring import Monitoring, monitoring

pytestmark = pytest.mark.integration

WEBHOOK = "127.0.0.1:18294"
PROMETHEUS_PORT, ALERTMANAGER_PORT = 18295, 18296
NOBODY = "http://127.0.0.1:18297"  # nothing listens here

# The shipped rules at drill timing, plus test rules that are broken on purpose.
RULES = render({"for": "1s", "for_down": "1s", "window": "10s",
                "tokens_baseline_window": "30s", "restart_window": "30s"}) + """
  - name: llmdrill-test
    rules:
      - alert: LlmdrillTestAlwaysFiring
        expr: vector(1)
      - alert: LlmdrillTestImpossible      # a wrong metric name: can never fire
        expr: upp{job="gateway"} == 0
      - alert: LlmdrillTestUnrouted        # fires with the gateway down; routed nowhere
        expr: up{job="gateway"} == 0
"""

ALERTMANAGER = f"""
route:
  receiver: harness
  group_by: [alertname]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
  routes:
    - matchers: ['alertname="LlmdrillTestUnrouted"']
      receiver: discard
receivers:
  - name: harness
    webhook_configs: [{{url: "http://{WEBHOOK}/", send_resolved: true}}]
  - name: discard
"""

BROKEN = """
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: alerts-broken}
target: {base_url: "${LLMDRILL_TARGET_URL}", model: tiny}
toxiproxy: {default: {url: "${LLMDRILL_TOXIPROXY_URL}"}}
prometheus: {url: "${LLMDRILL_PROMETHEUS_URL}"}
alertmanager: {url: "${LLMDRILL_ALERTMANAGER_URL}"}
monitoring: {webhook: {listen: "${LLMDRILL_WEBHOOK_LISTEN}"}}
faults:
  gateway_down: {toxiproxy: {proxy: vllm, toxic: down}}
load: {users: 0}
phases:
  - {name: baseline, duration: 4s}
  - {name: down, duration: 10s, faults: [gateway_down]}
checks:
  - {name: quiet-always-firing, phase: baseline,
     no_false_alarms: {alerts: [LlmdrillTestAlwaysFiring]}}
  - {name: fires-impossible, phase: down,
     alert_fires: {alert: LlmdrillTestImpossible, within: 8s}}
  - {name: fires-unrouted, phase: down, alert_fires: {alert: LlmdrillTestUnrouted, within: 8s}}
  - {name: fires-unknown, phase: down, alert_fires: {alert: LlmdrillTestNoSuchAlert, within: 8s}}
  - {name: fires-control, phase: down, alert_fires: {alert: LlmTargetDown, within: 8s}}
"""

GUARDED = """
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: alerts-guarded}
target: {base_url: "${LLMDRILL_TARGET_URL}", model: tiny}
toxiproxy: {default: {url: "${LLMDRILL_TOXIPROXY_URL}"}}
prometheus: {url: "${LLMDRILL_PROMETHEUS_URL}"}
alertmanager: {url: "${LLMDRILL_ALERTMANAGER_URL}"}
monitoring: {webhook: {listen: "${LLMDRILL_WEBHOOK_LISTEN}"}}
faults:
  gateway_down: {toxiproxy: {proxy: vllm, toxic: down}}
load: {users: 0}
phases:
  - {name: baseline, duration: 3s}
  - {name: down, duration: 60s, faults: [gateway_down]}
checks:
  - {phase: down, alert_fires: {alert: LlmTargetDown, within: 30s}}
guardrails:
  - abort_if: {alert: {name: LlmTargetDown}}
"""

BLIND = """
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: alerts-blind}
target: {base_url: "${LLMDRILL_TARGET_URL}", model: tiny}
prometheus: {url: "${LLMDRILL_PROMETHEUS_URL}"}
load: {users: 0}
phases: [{name: p, duration: 2s}]
checks:
  - {phase: p, no_false_alarms: {alerts: [LlmTargetDown], notification: false}}
"""


@pytest.fixture(scope="module")
def mon(tmp_path_factory: pytest.TempPathFactory, stack: Stack) -> Iterator[Monitoring]:
    gateway = stack.proxy_url.split("://", 1)[1]
    with monitoring(tmp_path_factory.mktemp("alerting"), RULES, alertmanager_config=ALERTMANAGER,
                    gateway=gateway, prometheus_port=PROMETHEUS_PORT,
                    alertmanager_port=ALERTMANAGER_PORT) as m:
        deadline = time.time() + 60  # until Prometheus has scraped, evaluated and alerted
        while time.time() < deadline:
            alerts = httpx.get(f"{m.alertmanager_url}/api/v2/alerts", timeout=5).json()
            if any(a["labels"].get("alertname") == "LlmdrillTestAlwaysFiring" for a in alerts):
                break
            time.sleep(0.5)
        yield m


@pytest.fixture
def quiet(clean_proxy: Stack, mon: Monitoring) -> Stack:
    """Every drill starts on a quiet stack: an alert of the test before (the gateway was
    down until its revert) must have resolved, or the next baseline rightly fails."""
    deadline = time.time() + 30
    while time.time() < deadline:
        data = httpx.get(f"{mon.prometheus_url}/api/v1/alerts", timeout=5).json()
        if not [a for a in data["data"]["alerts"]
                if a["labels"]["alertname"].startswith("Llm")
                and not a["labels"]["alertname"].startswith("LlmdrillTest")]:
            break
        time.sleep(0.5)
    return clean_proxy


def _env(stack: Stack, mon: Monitoring, **extra: str) -> dict[str, str]:
    return stack.env(LLMDRILL_PROMETHEUS_URL=mon.prometheus_url,
                     LLMDRILL_ALERTMANAGER_URL=mon.alertmanager_url,
                     LLMDRILL_WEBHOOK_LISTEN=WEBHOOK, **extra)


def _run(path: Path, env: dict[str, str], out: Path) -> tuple[int, dict[str, Any], str]:
    proc = llmdrill("run", str(path), "--out", str(out), env=env)
    result = json.loads(next(out.glob("*/result.json")).read_text())
    return proc.returncode, result, proc.stdout + proc.stderr


def _scenario(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


def _checks(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in result["checks"]}


def _listening(listen: str) -> bool:
    host, port = listen.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


def test_gateway_down_alert_fires_notifies_and_resolves(
    quiet: Stack, mon: Monitoring, tmp_path: Path
) -> None:
    clean_proxy = quiet
    env = _env(clean_proxy, mon, BASELINE="6s", DOWN="10s", RECOVER="10s",
               ALERT_FIRE_WITHIN="8s", ALERT_RESOLVE_WITHIN="8s", ENGINE_DOWN_FOR="10s")
    code, result, output = _run(REPO / "scenarios" / "alerts.yaml", env, tmp_path / "r")
    checks = _checks(result)
    assert code == 0, json.dumps(result["checks"], indent=1) + output
    fires = checks["down-target-down-fires"]
    assert fires["observed"]["firing_after_s"] <= 8
    assert fires["observed"]["notified_after_s"] <= 8
    assert fires["observed"]["alertmanager_after_s"] is not None
    assert checks["recover-target-down-resolves"]["observed"]["notified_after_s"] <= 8
    # The notifications are marked on the report's charts, firing before resolved.
    labels = [label for _, label in result["series"]["alerts"]]
    assert "LlmTargetDown firing" in labels and "LlmTargetDown resolved" in labels
    assert labels.index("LlmTargetDown firing") < labels.index("LlmTargetDown resolved")
    html = next((tmp_path / "r").glob("*/report.html")).read_text()
    assert html.count("alert notification: LlmTargetDown firing at") >= 2  # timeline, charts
    assert clean_proxy.proxy_enabled()
    assert not _listening(WEBHOOK)


def test_broken_alerting_fails_each_check_for_its_own_reason(
    quiet: Stack, mon: Monitoring, tmp_path: Path
) -> None:
    clean_proxy = quiet
    code, result, output = _run(_scenario(tmp_path, BROKEN), _env(clean_proxy, mon),
                                tmp_path / "r")
    checks = _checks(result)
    assert code == 1, output
    summaries = {name: c["summary"] for name, c in checks.items()}
    assert checks["fires-control"]["status"] == "passed", summaries
    noisy = checks["quiet-always-firing"]
    assert noisy["status"] == "failed"
    assert "LlmdrillTestAlwaysFiring (firing in Prometheus at the phase start)" in noisy["summary"]
    impossible = checks["fires-impossible"]
    assert impossible["status"] == "failed"
    assert impossible["summary"].startswith("rule never reached firing: LlmdrillTestImpossible")
    unrouted = checks["fires-unrouted"]
    assert unrouted["status"] == "failed"
    assert unrouted["summary"].startswith("firing but no notification: LlmdrillTestUnrouted")
    assert "in Alertmanager at +" in unrouted["summary"]
    unknown = checks["fires-unknown"]
    assert unknown["status"] == "failed"
    assert "'LlmdrillTestNoSuchAlert' is not among the" in unknown["summary"]
    assert clean_proxy.proxy_enabled()


def test_missing_prometheus_is_not_a_pass(
    quiet: Stack, mon: Monitoring, tmp_path: Path
) -> None:
    # No Prometheus: nothing says whether the alert fired. Not failed (the alert may be
    # fine), never passed: inconclusive, exit 4.
    clean_proxy = quiet
    env = _env(clean_proxy, mon) | {"LLMDRILL_PROMETHEUS_URL": NOBODY}
    code, result, output = _run(_scenario(tmp_path, BLIND), env, tmp_path / "r")
    assert code == 4, output
    assert result["status"] == "inconclusive"
    (check,) = result["checks"]
    assert check["status"] == "inconclusive"
    assert check["summary"].startswith(
        f"inconclusive: Prometheus did not answer its rules API: {NOBODY}")


def test_plan_check_finds_the_rules_and_refuses_an_unknown_alert(
    stack: Stack, mon: Monitoring, tmp_path: Path
) -> None:
    env = _env(stack, mon)
    proc = llmdrill("plan", str(REPO / "scenarios" / "alerts.yaml"), "--check", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"prometheus {mon.prometheus_url}: 14 alert rules, all 6 the checks name" in (
        proc.stdout)
    broken = _scenario(tmp_path, BROKEN)
    proc = llmdrill("plan", str(broken), "--check", env=env)
    assert proc.returncode == 2
    assert "has no alert rule named LlmdrillTestNoSuchAlert" in proc.stderr


def test_alert_guardrail_aborts_reverts_and_stops_the_receiver(
    quiet: Stack, mon: Monitoring, tmp_path: Path
) -> None:
    clean_proxy = quiet
    started = time.time()
    code, result, output = _run(_scenario(tmp_path, GUARDED), _env(clean_proxy, mon),
                                tmp_path / "r")
    assert code == 3, output
    assert time.time() - started < 45  # aborted, not the 60s phase
    assert result["status"] == "aborted"
    assert "guardrail: alert LlmTargetDown firing" in result["abort_reason"]
    html = next((tmp_path / "r").glob("*/report.html")).read_text()
    assert "Aborted: guardrail: alert LlmTargetDown firing" in html
    assert clean_proxy.proxy_enabled()
    assert not _listening(WEBHOOK)


def test_timeout_spike_opt_in_alert_checks(
    quiet: Stack, mon: Monitoring, tmp_path: Path
) -> None:
    clean_proxy = quiet
    env = _env(clean_proxy, mon, LLMDRILL_ALERTS="true")
    _code, result, output = _run(REPO / "scenarios" / "timeout-spike.yaml", env, tmp_path / "r")
    checks = _checks(result)
    alert_checks = ["baseline-no-false-alarms", "spike-gateway-slow-alert-fires",
                    "recover-gateway-slow-alert-resolves"]
    assert {n: checks[n]["status"] for n in alert_checks} == dict.fromkeys(alert_checks,
                                                                          "passed"), (
        json.dumps(result["checks"], indent=1) + output)
    assert clean_proxy.toxics() == []
