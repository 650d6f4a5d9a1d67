"""Versions recorded in every report: llmdrill, its dependencies and the engine."""

from __future__ import annotations

import importlib.metadata as md
import platform

import httpx

from llmdrill.probes.http import bounded_get

PACKAGES = ("llmdrill", "locust", "pydantic", "httpx", "prometheus-client", "jinja2", "typer",
            "rich", "pyyaml")


def harness_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def engine_version(base_url: str, headers: dict[str, str], timeout: float = 5.0) -> str | None:
    """vLLM answers GET /version; other servers may not, which is fine."""
    try:
        resp = bounded_get(f"{base_url.rstrip('/')}/version", headers=headers,
                           deadline=timeout, max_bytes=4096)
        if resp.status_code == 200:
            value = resp.json().get("version")
            return str(value)[:64] if value else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return None
