"""A fault that misses the traffic is no pass: the shipped timeout-spike drill, with its
toxic put on a second Toxiproxy proxy that no client goes through, ends inconclusive
(exit 4) with the fault's effect "missed", whatever its checks say."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmdrill.faults.toxiproxy_client import ToxiproxyClient
from tests.integration.conftest import REPO, Stack, llmdrill

pytestmark = pytest.mark.integration

SCENARIO = str(REPO / "scenarios" / "timeout-spike.yaml")
UNUSED_PROXY = "llmdrill-test-unused"
# The shipped 15 s baseline is for a report people read; the check needs far less.
SHORT_BASELINE = "8s"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def unused_proxy(clean_proxy: Stack) -> Iterator[str]:
    """A second proxy in front of the same engine, which no client of the drill uses."""
    upstream = clean_proxy.vllm_url.split("://", 1)[1].rstrip("/")
    with ToxiproxyClient(clean_proxy.toxiproxy_url, timeout=10) as client:
        client.delete_proxy(UNUSED_PROXY)  # a leftover of an interrupted session
        client.create_proxy(UNUSED_PROXY, f"127.0.0.1:{_free_port()}", upstream)
    try:
        yield UNUSED_PROXY
    finally:
        with ToxiproxyClient(clean_proxy.toxiproxy_url, timeout=30) as client:
            client.delete_proxy(UNUSED_PROXY)


def test_toxic_on_a_proxy_no_client_uses_is_missed_and_inconclusive(
    clean_proxy: Stack, unused_proxy: str, tmp_path: Path
) -> None:
    env = clean_proxy.env(LLMDRILL_PROXY=unused_proxy, BASELINE_PHASE=SHORT_BASELINE)
    proc = llmdrill("run", SCENARIO, "--out", str(tmp_path / "reports"), env=env, timeout=600)
    runs = [p for p in (tmp_path / "reports").iterdir() if p.is_dir()]
    assert len(runs) == 1, proc.stdout + proc.stderr
    result = json.loads((runs[0] / "result.json").read_text())
    fault = result["faults"][0]
    assert fault["applied_at"] and fault["reverted_at"] and not fault["revert_error"]
    # The toxic really was on the other proxy, and the clients' traffic did not feel it.
    assert fault["effect"] == "missed", fault
    assert "pointed at" in fault["effect_detail"] and unused_proxy in fault["effect_detail"]
    failed = [c["name"] for c in result["checks"] if c["status"] in ("failed", "error")]
    assert not failed, f"checks failed on a spike that never reached the traffic: {failed}"
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert result["status"] == "inconclusive"
    assert unused_proxy in (result["abort_reason"] or "")
    assert clean_proxy.toxics() == []
    assert clean_proxy.toxics(unused_proxy) == []
