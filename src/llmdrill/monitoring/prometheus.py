"""Small, bounded clients for Prometheus' query API and Alertmanager's alert API."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from llmdrill.errors import LlmdrillError
from llmdrill.probes.http import bounded_get

DEADLINE_S = 5.0


class MonitoringError(LlmdrillError):
    """The monitoring server did not answer, or not in its documented shape."""


def _get_json(url: str) -> Any:
    try:
        resp = bounded_get(url, deadline=DEADLINE_S, max_bytes=4 << 20)
    except Exception as exc:
        raise MonitoringError(f"{url}: {type(exc).__name__}: {exc}") from None
    if resp.status_code != 200:
        raise MonitoringError(f"{url}: HTTP {resp.status_code} {resp.text[:200]}")
    try:
        return resp.json()
    except (ValueError, json.JSONDecodeError):
        raise MonitoringError(f"{url}: not JSON") from None


def promql_value(base_url: str, query: str) -> float | None:
    """The value of the first sample of an instant query; None when the result is empty."""
    url = f"{base_url.rstrip('/')}/api/v1/query?{urlencode({'query': query})}"
    data = _get_json(url)
    if not isinstance(data, dict) or data.get("status") != "success":
        raise MonitoringError(f"{url}: query failed: {str(data)[:200]}")
    result = data.get("data", {})
    kind, values = result.get("resultType"), result.get("result")
    if kind == "scalar":
        return float(values[1])
    if kind == "vector":
        return float(values[0]["value"][1]) if values else None
    raise MonitoringError(f"{url}: unsupported result type {kind}")


def alert_firing(base_url: str, name: str, source: str) -> bool:
    """Whether an alert of this name is firing (Alertmanager: active and not silenced)."""
    if source == "prometheus":
        value = promql_value(base_url, f'ALERTS{{alertname="{name}",alertstate="firing"}}')
        return value is not None
    url = (f"{base_url.rstrip('/')}/api/v2/alerts?"
           f"{urlencode({'filter': f'alertname={name}', 'active': 'true', 'silenced': 'false'})}")
    data = _get_json(url)
    if not isinstance(data, list):
        raise MonitoringError(f"{url}: expected a list of alerts")
    return any(a.get("status", {}).get("state") == "active" for a in data)


def alert_rule_names(base_url: str) -> list[str]:
    """Names of the alerting rules Prometheus has loaded (its /api/v1/rules)."""
    url = f"{base_url.rstrip('/')}/api/v1/rules?type=alert"
    data = _get_json(url)
    if not isinstance(data, dict) or data.get("status") != "success":
        raise MonitoringError(f"{url}: rules query failed: {str(data)[:200]}")
    names: list[str] = []
    for group in data.get("data", {}).get("groups", []):
        for rule in group.get("rules", []):
            if rule.get("type") == "alerting" and rule.get("name") not in names:
                names.append(str(rule.get("name")))
    return names


AlertStates = dict[str, tuple[str, dict[str, str]]]
"""alertname -> (state, the labels of one instance in that state)."""

_RANK = {"inactive": 0, "pending": 1, "suppressed": 1, "active": 2, "firing": 2}


def _merge(states: AlertStates, labels: dict[str, Any], state: str) -> None:
    name = str(labels.get("alertname", ""))
    if name and _RANK.get(state, 0) > _RANK.get(states.get(name, ("inactive", {}))[0], -1):
        states[name] = (state, {str(k): str(v) for k, v in labels.items()})


def prometheus_alerts(base_url: str) -> AlertStates:
    """Every alert Prometheus holds, by name: firing if any instance fires, else pending."""
    url = f"{base_url.rstrip('/')}/api/v1/alerts"
    data = _get_json(url)
    if not isinstance(data, dict) or data.get("status") != "success":
        raise MonitoringError(f"{url}: alerts query failed: {str(data)[:200]}")
    states: AlertStates = {}
    for alert in data.get("data", {}).get("alerts", []):
        _merge(states, alert.get("labels", {}), str(alert.get("state", "")))
    return states


def alertmanager_alerts(base_url: str) -> AlertStates:
    """Alertmanager's current (unresolved) alerts by name: active, suppressed or
    unprocessed (its v2 API leaves resolved alerts out)."""
    url = f"{base_url.rstrip('/')}/api/v2/alerts"
    data = _get_json(url)
    if not isinstance(data, list):
        raise MonitoringError(f"{url}: expected a list of alerts")
    states: AlertStates = {}
    for alert in data:
        _merge(states, alert.get("labels", {}), str(alert.get("status", {}).get("state", "")))
    return states


def promql_range(base_url: str, query: str, start: float, end: float, step: float
                 ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
    """A range query: every series with its (time, value) points."""
    params = {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}",
              "step": f"{max(step, 0.001):g}"}
    url = f"{base_url.rstrip('/')}/api/v1/query_range?{urlencode(params)}"
    data = _get_json(url)
    if not isinstance(data, dict) or data.get("status") != "success":
        raise MonitoringError(f"{url}: query failed: {str(data)[:200]}")
    out = []
    for series in data.get("data", {}).get("result", []):
        points = [(float(t), float(v)) for t, v in series.get("values", [])]
        out.append(({str(k): str(v) for k, v in series.get("metric", {}).items()}, points))
    return out
