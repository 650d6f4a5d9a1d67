"""A small typed client for Toxiproxy's HTTP API (see docs/decisions/0002)."""

from __future__ import annotations

from typing import Any

import httpx

from llmdrill import httpclient
from llmdrill.faults.base import EnvironmentProblem


class ToxiproxyClient:
    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpclient.client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ToxiproxyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, json: Any = None) -> httpx.Response:
        try:
            return self._http.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise EnvironmentProblem(
                f"Toxiproxy at {self.url} is unreachable ({type(exc).__name__}: {exc})"
            ) from exc

    def _ok(self, resp: httpx.Response, what: str) -> Any:
        if resp.status_code >= 400:
            raise EnvironmentProblem(
                f"Toxiproxy at {self.url} refused to {what}: HTTP {resp.status_code} "
                f"{resp.text[:200]}"
            )
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise EnvironmentProblem(
                f"Toxiproxy at {self.url} answered {what} with something that is not JSON"
            ) from None

    def version(self) -> str:
        resp = self._call("GET", "/version")
        if resp.status_code != 200:
            raise EnvironmentProblem(f"Toxiproxy at {self.url} answered HTTP {resp.status_code}")
        text = resp.text.strip()
        try:
            data = resp.json()
            if isinstance(data, dict):
                return str(data.get("version", text))
        except ValueError:
            pass
        return text

    def get_proxy(self, name: str) -> dict[str, Any] | None:
        resp = self._call("GET", f"/proxies/{name}")
        if resp.status_code == 404:
            return None
        result: dict[str, Any] = self._ok(resp, f"show proxy {name}")
        return result

    def create_proxy(self, name: str, listen: str, upstream: str) -> None:
        resp = self._call(
            "POST", "/proxies", json={"name": name, "listen": listen, "upstream": upstream,
                                      "enabled": True}
        )
        self._ok(resp, f"create proxy {name}")

    def delete_proxy(self, name: str) -> None:
        resp = self._call("DELETE", f"/proxies/{name}")
        if resp.status_code != 404:
            self._ok(resp, f"delete proxy {name}")

    def set_enabled(self, name: str, enabled: bool) -> None:
        resp = self._call("POST", f"/proxies/{name}", json={"enabled": enabled})
        if resp.status_code == 404 and enabled:
            return  # nothing left to re-enable
        self._ok(resp, f"{'enable' if enabled else 'disable'} proxy {name}")

    def add_toxic(
        self, proxy: str, name: str, kind: str, stream: str, toxicity: float,
        attributes: dict[str, Any],
    ) -> None:
        resp = self._call(
            "POST",
            f"/proxies/{proxy}/toxics",
            json={"name": name, "type": kind, "stream": stream, "toxicity": toxicity,
                  "attributes": attributes},
        )
        self._ok(resp, f"add toxic {name} to proxy {proxy}")

    def remove_toxic(self, proxy: str, name: str) -> None:
        resp = self._call("DELETE", f"/proxies/{proxy}/toxics/{name}")
        if resp.status_code != 404:
            self._ok(resp, f"remove toxic {name} from proxy {proxy}")

    def toxics(self, proxy: str) -> list[dict[str, Any]]:
        resp = self._call("GET", f"/proxies/{proxy}/toxics")
        if resp.status_code == 404:
            return []
        result: list[dict[str, Any]] = self._ok(resp, f"list toxics of {proxy}")
        return result
