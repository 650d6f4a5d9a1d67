"""Small, bounded clients for Prometheus' query API and Alertmanager's alert API."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from llmdrill.probes.http import bounded_get

DEADLINE_S = 5.0


class MonitoringError(Exception):
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
