"""Reachability checks before a run (and for `llmdrill plan --check`). Changes nothing."""

from __future__ import annotations

import socket

import httpx

from llmdrill.checks.alerts import alert_names
from llmdrill.faults.base import EnvironmentProblem
from llmdrill.monitoring.prometheus import MonitoringError, alert_rule_names, alertmanager_alerts
from llmdrill.probes.engine_metrics import MAX_SCRAPE_BYTES, parse_metrics
from llmdrill.probes.http import bounded_get
from llmdrill.scenario.models import Scenario, Target

DEADLINE_S = 5.0


def check_target(target: Target, headers: dict[str, str]) -> str:
    """The target answers /v1/models as an OpenAI API and serves the scenario's model."""
    url = f"{target.base_url.rstrip('/')}/v1/models"
    try:
        resp = bounded_get(url, headers=headers, deadline=DEADLINE_S)
    except httpx.TimeoutException:
        raise EnvironmentProblem(f"target {url} did not answer within 5s") from None
    except httpx.HTTPError as exc:
        raise EnvironmentProblem(
            f"target {url} is unreachable ({type(exc).__name__}: {exc})"
        ) from None
    if resp.status_code in (401, 403):
        raise EnvironmentProblem(
            f"target {url} refused our credentials (HTTP {resp.status_code}); set the key in "
            "the variable named by target.api_key_env"
        )
    if resp.status_code != 200:
        raise EnvironmentProblem(f"target {url} answered HTTP {resp.status_code}")
    try:
        models = [str(m.get("id")) for m in resp.json().get("data", [])]
    except (ValueError, AttributeError, TypeError):
        raise EnvironmentProblem(
            f"target {url} did not answer with an OpenAI model list (not JSON)"
        ) from None
    if target.model not in models:
        served = ", ".join(models[:10]) or "none"
        raise EnvironmentProblem(
            f"target {url} does not serve model '{target.model}' (served: {served})"
        )
    return f"target {target.base_url} serves '{target.model}'"


def check_metrics(url: str, headers: dict[str, str]) -> str:
    try:
        resp = bounded_get(url, headers=headers, deadline=DEADLINE_S, max_bytes=MAX_SCRAPE_BYTES)
    except httpx.TimeoutException:
        raise EnvironmentProblem(f"metrics endpoint {url} did not answer within 5s") from None
    except httpx.HTTPError as exc:
        raise EnvironmentProblem(
            f"metrics endpoint {url} is unreachable ({type(exc).__name__}: {exc})"
        ) from None
    if resp.status_code != 200:
        raise EnvironmentProblem(f"metrics endpoint {url} answered HTTP {resp.status_code}")
    if resp.truncated:
        raise EnvironmentProblem(f"metrics endpoint {url} sent more than {MAX_SCRAPE_BYTES} "
                                 "bytes")
    try:
        samples = parse_metrics(resp.text, 0.0)
    except Exception as exc:
        raise EnvironmentProblem(
            f"metrics endpoint {url} did not answer in Prometheus text format ({exc})"
        ) from None
    engine = sum(1 for s in samples if s.name.startswith("vllm:"))
    return f"metrics {url}: {len(samples)} samples ({engine} from vLLM)"


def check_alerting(scenario: Scenario) -> list[str]:
    """For the enabled alert checks: Prometheus answers and has a rule for every alert
    they name, Alertmanager answers, and the webhook receiver's port is free."""
    if not scenario.alert_checks:
        return []
    lines: list[str] = []
    wanted = alert_names(scenario)
    hook = scenario.monitoring.webhook
    if hook is not None:
        with socket.socket(socket.AF_INET6 if ":" in hook.host else socket.AF_INET) as sock:
            # As the receiver's server does: a port in TIME_WAIT from the last run is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((hook.host, hook.port))
            except OSError as exc:
                raise EnvironmentProblem(
                    f"the alert webhook receiver cannot listen on {hook.listen}: "
                    f"{exc.strerror or exc}") from None
        lines.append(f"webhook receiver {hook.listen}: free")
    try:
        if scenario.prometheus is not None:
            rules = alert_rule_names(scenario.prometheus.url)
            missing = sorted({a for a in wanted if a not in rules})
            if missing:
                raise EnvironmentProblem(
                    f"Prometheus {scenario.prometheus.url} has no alert rule named "
                    f"{', '.join(missing)} ({len(rules)} alert rules loaded)")
            lines.append(f"prometheus {scenario.prometheus.url}: {len(rules)} alert rules, "
                         f"all {len(wanted)} the checks name")
        if scenario.alertmanager is not None:
            active = alertmanager_alerts(scenario.alertmanager.url)
            lines.append(f"alertmanager {scenario.alertmanager.url}: {len(active)} alerts now")
    except MonitoringError as exc:
        raise EnvironmentProblem(str(exc)) from None
    return lines
