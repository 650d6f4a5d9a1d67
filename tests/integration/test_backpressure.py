"""The backpressure drill (scenarios/backpressure.yaml) end to end: two real vLLM replicas
behind a real HAProxy, one taken away (its Toxiproxy proxy disabled) while a flood of long
requests arrives on top of the load.

It passes behind the stack's HAProxy, which gives each replica at most 8 requests and
answers the rest, after 3 s in its queue, with a 503 that carries Retry-After. It fails
behind a HAProxy with no limit, no checks and no retries: the flood queues in the engine
that is left, and the requests sent to the missing replica get 503s that say nothing of
when to come back. Both reasons are named.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llmdrill.stack.gateway import HAPROXY, Gateway, GatewayStack, running_gateway
from tests.integration.conftest import REPO
from tests.integration.gateway_helpers import (
    BROKEN_PORTS,
    checks_by_name,
    drill_env,
    left_clean,
    run_drill,
)

pytestmark = [pytest.mark.integration, pytest.mark.gateway]

SCENARIO = REPO / "scenarios" / "backpressure.yaml"


def _metrics_url(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.metrics_port}/metrics"  # HAProxy's exporter


def test_backpressure_passes_behind_a_gateway_that_sheds(
        gateway_stack: GatewayStack, tmp_path: Path) -> None:
    gateway = gateway_stack.gateway(HAPROXY)
    env = drill_env(gateway_stack, gateway.url,
                    LLMDRILL_GATEWAY_METRICS_URL=_metrics_url(gateway))
    code, result, output = run_drill(SCENARIO, env, tmp_path / "reports")
    checks = checks_by_name(result)
    assert code == 0, output
    sheds = checks["overload-sheds"]["observed"]
    # The overload was real: requests were refused, each saying when to come back, and
    # they waited at the gateway, not in the engine.
    assert sheds["refused"] > 0 and sheds["refused_without_retry_after"] == 0, sheds
    assert sheds["shedding_started_s"] is not None, sheds
    assert sheds["gateway_queue_peak"] > 0, sheds
    assert sheds["waiting_peak"] <= 2, sheds
    assert {f["effect"] for f in result["faults"]} == {"seen"}, result["faults"]
    left_clean(gateway_stack)


def test_backpressure_fails_behind_a_gateway_that_queues(
        gateway_stack: GatewayStack, tmp_path: Path) -> None:
    with running_gateway(HAPROXY, BROKEN_PORTS[HAPROXY], resilient=False) as broken:
        env = drill_env(gateway_stack, broken.url,
                        LLMDRILL_GATEWAY_METRICS_URL=_metrics_url(broken))
        code, result, output = run_drill(SCENARIO, env, tmp_path / "reports")
    checks = checks_by_name(result)
    assert code == 1, output
    assert checks["baseline-healthy"]["status"] == "passed", checks["baseline-healthy"]
    sheds = checks["overload-sheds"]
    assert sheds["status"] == "failed", sheds
    assert "queued instead of shedding" in sheds["summary"], sheds
    assert sheds["observed"]["waiting_peak"] > 2, sheds["observed"]
    assert "had no Retry-After" in sheds["summary"], sheds
    left_clean(gateway_stack)
