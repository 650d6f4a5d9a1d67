"""The router drain drill (scenarios/router-drain.yaml) end to end: two real vLLM replicas
behind a real vllm-router; replica 0's worker is removed from the router while it streams
(`POST /remove_worker`), and added back at the revert.

It passes when the clients go through the router that was drained. It fails when they go
through a second router instance that was not drained (several gateway instances, only
one told): new requests keep reaching the replica, and the drain check says so.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from llmdrill.stack.gateway import ROUTER, GatewayStack, running_gateway
from tests.integration.conftest import REPO
from tests.integration.gateway_helpers import (
    BROKEN_PORTS,
    checks_by_name,
    drill_env,
    left_clean,
    run_drill,
)

pytestmark = [pytest.mark.integration, pytest.mark.gateway]

SCENARIO = REPO / "scenarios" / "router-drain.yaml"
WORKER = "http://127.0.0.1:18011"  # replica 0's Toxiproxy proxy, as the router lists it


def _workers(url: str) -> list[str]:
    return list(httpx.get(f"{url}/list_workers", timeout=5).json()["urls"])


def test_router_drain_passes_through_the_drained_router(
        gateway_stack: GatewayStack, tmp_path: Path) -> None:
    router = gateway_stack.gateway(ROUTER)
    env = drill_env(gateway_stack, router.url, LLMDRILL_ROUTER_URL=router.url,
                    DRAIN_ROUTER_URL=router.url, DRAIN_WORKER=WORKER)
    code, result, output = run_drill(SCENARIO, env, tmp_path / "reports")
    checks = checks_by_name(result)
    assert code == 0, output
    drain = checks["router-drain"]["observed"]
    # Streams were running on it when it was removed, and every one finished.
    assert drain["in_flight"] >= 1 and drain["cut"] == 0, drain
    assert {f["effect"] for f in result["faults"]} == {"seen"}, result["faults"]
    assert WORKER in _workers(router.url)  # added back
    left_clean(gateway_stack)


def test_router_drain_fails_through_a_router_that_was_not_drained(
        gateway_stack: GatewayStack, tmp_path: Path) -> None:
    router = gateway_stack.gateway(ROUTER)
    with running_gateway(ROUTER, BROKEN_PORTS[ROUTER], resilient=False) as other:
        env = drill_env(gateway_stack, other.url, LLMDRILL_ROUTER_URL=other.url,
                        DRAIN_ROUTER_URL=router.url, DRAIN_WORKER=WORKER)
        code, result, output = run_drill(SCENARIO, env, tmp_path / "reports")
        assert WORKER in _workers(other.url)
    checks = checks_by_name(result)
    assert code == 1, output
    assert checks["baseline-healthy"]["status"] == "passed", checks["baseline-healthy"]
    drain = checks["router-drain"]
    assert drain["status"] == "failed", drain
    assert "still received new requests" in drain["summary"], drain
    assert WORKER in _workers(router.url)  # added back to the drained one
    left_clean(gateway_stack)
