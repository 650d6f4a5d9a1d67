from __future__ import annotations

import httpx
import pytest

from llmdrill import httpclient

pytestmark = pytest.mark.unit


def test_clients_share_one_tls_context() -> None:
    assert httpclient.tls_context() is httpclient.tls_context()
    with httpclient.client(timeout=1) as one, httpclient.client(timeout=1) as two:
        assert one._transport._pool._ssl_context is two._transport._pool._ssl_context  # type: ignore[attr-defined]


def test_a_client_still_sends_what_it_is_given() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    with httpclient.client(base_url="http://127.0.0.1:1",
                           transport=httpx.MockTransport(answer)) as http:
        assert http.post("/x", params={"url": "w"}).json() == {"ok": True}
    assert str(seen[0].url) == "http://127.0.0.1:1/x?url=w"
