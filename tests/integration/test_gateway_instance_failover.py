"""The gateway instance failover drill (scenarios/gateway-instance-failover.yaml) end to
end: two real HAProxy instances over the two real vLLM replicas, a real HAProxy front
balancer over both instances, one instance killed under load.

It passes behind a front with health checks and retries, and fails behind a front without
them (half the new requests keep going to the dead instance): the check that fails is
named. The instances' own counters come from HAProxy's built-in Prometheus exporter.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmdrill.stack.gateway import HAPROXY, ROUTER, Gateway, GatewayStack
from tests.integration.conftest import REPO
from tests.integration.gateway_helpers import (
    checks_by_name,
    drill_env,
    left_clean,
    only_phases,
    run_drill,
)

pytestmark = [pytest.mark.integration, pytest.mark.gateway]

SCENARIO = REPO / "scenarios" / "gateway-instance-failover.yaml"
BROKEN_FRONT_PORT = 18052


@pytest.fixture
def front(gateway_stack: GatewayStack) -> Iterator[Gateway]:
    """The second HAProxy instance and the front over both, as `llmdrill up --front`
    starts them; stopped afterwards (the other gateway drills do not use them)."""
    gateway_stack.up([HAPROXY, ROUTER], install=False, front=True)
    yield gateway_stack.front()
    for gateway in (gateway_stack.front(), gateway_stack.instances()[1]):
        gateway.stop()


@contextlib.contextmanager
def broken_front(stack: GatewayStack) -> Iterator[Gateway]:
    gateway = stack.front(BROKEN_FRONT_PORT, resilient=False)
    gateway.start(all_up=True)
    try:
        yield gateway
    finally:
        gateway.stop()


def _instances_serve(stack: GatewayStack) -> bool:
    return all(g.answers() for g in stack.instances())


def test_instance_failover_passes_behind_a_checked_front(
        gateway_stack: GatewayStack, front: Gateway, tmp_path: Path) -> None:
    env = drill_env(gateway_stack, gateway_stack.gateway(HAPROXY).url,
                    LLMDRILL_FRONT_URL=front.url)
    code, result, output = run_drill(SCENARIO, env, tmp_path / "reports")
    checks = checks_by_name(result)
    assert code == 0, output + json.dumps(
        {n: c["summary"] for n, c in checks.items() if c["status"] != "passed"}, indent=1)
    observed = checks["instance-failover"]["observed"]
    # The killed instance had traffic before, the other took it over, and it came back.
    assert observed["arrivals_before_fault"] > 0, observed
    assert observed["served_by_others_after_switch"] > 0, observed
    assert observed["back_after_revert_s"] is not None, observed
    assert {f["effect"] for f in result["faults"]} == {"seen"}, result["faults"]
    assert _instances_serve(gateway_stack)
    left_clean(gateway_stack)


def test_instance_failover_fails_behind_a_front_without_checks(
        gateway_stack: GatewayStack, front: Gateway, tmp_path: Path) -> None:
    """No health checks and no retries in the front: every other request goes to the dead
    instance until it is restarted, and the drill says so."""
    scenario = only_phases(SCENARIO, ["baseline", "settle", "killed"], tmp_path)
    with broken_front(gateway_stack) as broken:
        env = drill_env(gateway_stack, gateway_stack.gateway(HAPROXY).url,
                        LLMDRILL_FRONT_URL=broken.url)
        code, result, output = run_drill(scenario, env, tmp_path / "reports")
    checks = checks_by_name(result)
    assert code == 1, output
    assert checks["baseline-healthy"]["status"] == "passed", checks["baseline-healthy"]
    failover = checks["instance-failover"]
    assert failover["status"] == "failed", failover
    assert "the gateway still sent to gateway-1" in failover["summary"], failover
    assert "instance-failover" in output
    assert _instances_serve(gateway_stack)
    assert os.path.exists(gateway_stack.instances()[1].pidfile)
    left_clean(gateway_stack)
