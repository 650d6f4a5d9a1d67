"""One bounded HTTP exchange for the harness's own requests (preflight, version, scrapes,
probes): a deadline on the whole exchange and a cap on the body.

httpx's timeouts bound each wait, not the exchange: a target that trickles a byte every
second, or streams forever, would hold a plain `httpx.get` without end. Every request the
harness makes itself goes through here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx


class DeadlineExceeded(httpx.TimeoutException):
    """The whole exchange took longer than its deadline."""


@dataclass
class BoundedResponse:
    status_code: int
    headers: httpx.Headers
    content: bytes
    truncated: bool = False  # the body was longer than the cap; only the start is here
    elapsed: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        import json

        return json.loads(self.content)


def bounded_request(
    method: str,
    url: str,
    *,
    deadline: float,
    max_bytes: int = 1 << 20,
    client: httpx.Client | None = None,
    headers: dict[str, str] | None = None,
    content: bytes | str | None = None,
    json: Any = None,
) -> BoundedResponse:
    """Raises httpx errors (DeadlineExceeded for the whole-exchange deadline)."""
    own = client is None
    http = client or httpx.Client(follow_redirects=False)
    started = time.monotonic()
    timeout = httpx.Timeout(deadline)
    try:
        with http.stream(method, url, headers=headers, content=content, json=json,
                         timeout=timeout) as resp:
            body = bytearray()
            truncated = False
            for chunk in resp.iter_bytes():  # decoded: the cap bounds what we keep
                if time.monotonic() - started > deadline:
                    raise DeadlineExceeded(f"{url} took longer than {deadline:g}s")
                body += chunk
                if len(body) > max_bytes:
                    truncated = True
                    del body[max_bytes:]
                    break
            return BoundedResponse(resp.status_code, resp.headers, bytes(body), truncated,
                                   time.monotonic() - started)
    finally:
        if own:
            http.close()


def bounded_get(url: str, *, deadline: float = 5.0, max_bytes: int = 1 << 20,
                headers: dict[str, str] | None = None,
                client: httpx.Client | None = None) -> BoundedResponse:
    return bounded_request("GET", url, deadline=deadline, max_bytes=max_bytes, headers=headers,
                           client=client)
