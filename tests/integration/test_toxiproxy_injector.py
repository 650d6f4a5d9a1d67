"""Every Toxiproxy fault kind applies and reverts on the real Toxiproxy server."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter

from llmdrill.faults.base import revert
from llmdrill.faults.toxiproxy import ProxySetup, ToxiproxyFault
from llmdrill.faults.toxiproxy import ToxiproxySpec as FaultSpec
from llmdrill.faults.toxiproxy_client import ToxiproxyClient
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

SPECS = [
    {"toxic": "latency", "latency": "1s", "jitter": "100ms"},
    {"toxic": "timeout", "timeout": "0s"},
    {"toxic": "bandwidth", "rate": "16KiB"},
    {"toxic": "slow_close", "delay": "500ms"},
    {"toxic": "reset_peer", "timeout": "100ms"},
    {"toxic": "slicer", "average_size": "64B", "size_variation": "16B", "delay": "1ms"},
    {"toxic": "limit_data", "bytes": "1KiB"},
]


@pytest.mark.parametrize("raw", SPECS, ids=[s["toxic"] for s in SPECS])
def test_toxic_applies_and_reverts_idempotently(clean_proxy: Stack, raw: dict[str, str]) -> None:
    spec = TypeAdapter(FaultSpec).validate_python({"proxy": "vllm", **raw})
    fault = ToxiproxyFault("test", "f", spec, clean_proxy.toxiproxy_url)
    assert fault.preflight()
    action = fault.prepare()
    fault.apply()
    toxics = clean_proxy.toxics()
    assert [t["type"] for t in toxics] == [raw["toxic"]]
    assert toxics[0]["name"] == "llmdrill-test-f"
    revert(action)
    revert(action)  # idempotent
    assert clean_proxy.toxics() == []


def test_down_disables_and_revert_enables(clean_proxy: Stack) -> None:
    spec = TypeAdapter(FaultSpec).validate_python({"proxy": "vllm", "toxic": "down"})
    fault = ToxiproxyFault("test", "d", spec, clean_proxy.toxiproxy_url)
    action = fault.prepare()
    fault.apply()
    assert not clean_proxy.proxy_enabled()
    revert(action)
    assert clean_proxy.proxy_enabled()


def test_proxy_setup_creates_and_revert_deletes(stack: Stack) -> None:
    setup = ProxySetup(stack.toxiproxy_url, "llmdrill-test-extra", "127.0.0.1:18099",
                       "127.0.0.1:18000")
    action = setup.prepare()
    setup.apply()
    assert setup.exists()
    revert(action)
    revert(action)
    with ToxiproxyClient(stack.toxiproxy_url) as client:
        assert client.get_proxy("llmdrill-test-extra") is None


def test_upstream_latency_reverts_cleanly_when_clients_drop_mid_delay(
    clean_proxy: Stack,
) -> None:
    """Clients that vanish while a *downstream* latency toxic holds their data can wedge
    Toxiproxy (Shopify/toxiproxy#558); the shipped drills use upstream latency, which must
    revert at once however the clients leave."""
    import socket
    import struct
    import time

    import httpx

    spec = TypeAdapter(FaultSpec).validate_python(
        {"proxy": "vllm", "toxic": "latency", "latency": "1500ms", "jitter": "300ms",
         "stream": "upstream"})
    fault = ToxiproxyFault("test", "wedge", spec, clean_proxy.toxiproxy_url)
    action = fault.prepare()
    fault.apply()
    port = int(clean_proxy.proxy_url.rsplit(":", 1)[1])
    body = (b'{"model":"tiny","prompt":"hello","max_tokens":200,"stream":true,'
            b'"ignore_eos":true}')
    request = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Content-Type: application/json\r\nContent-Length: "
               + str(len(body)).encode() + b"\r\n\r\n" + body)
    socks = []
    for _ in range(8):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(request)
        socks.append(s)
    time.sleep(2)
    for s in socks:  # an abrupt close (RST), like a killed client
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    time.sleep(0.2)
    started = time.time()
    revert(action)
    assert time.time() - started < 10
    assert clean_proxy.toxics() == []
    assert clean_proxy.proxy_enabled()
    resp = httpx.get(f"{clean_proxy.proxy_url}/v1/models", timeout=10)
    assert resp.status_code == 200
