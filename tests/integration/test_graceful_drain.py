"""The graceful-drain drill (scenarios/graceful-drain.yaml) end to end: two real vLLM
replicas behind a real HAProxy. A replica is drained through HAProxy's runtime API, then
sent SIGTERM, while it streams.

It passes on replica 0, which drains at SIGTERM (`--shutdown-timeout 30`), behind HAProxy
with its health checks and retries on. It fails on replica 1, which keeps vLLM's default
(`--shutdown-timeout 0`: its streams are dropped at SIGTERM), behind a HAProxy with the
checks and retries off (new requests keep going to the replica that left): both checks
that fail are named.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmdrill.stack.gateway import HAPROXY, GatewayStack, running_gateway
from tests.integration.conftest import REPO
from tests.integration.gateway_helpers import (
    BROKEN_PORTS,
    checks_by_name,
    drill_env,
    left_clean,
    only_phases,
    run_drill,
)

pytestmark = [pytest.mark.integration, pytest.mark.gateway]

SCENARIO = REPO / "scenarios" / "graceful-drain.yaml"


def _failures(checks: dict[str, dict[str, object]]) -> str:
    return json.dumps({n: c["summary"] for n, c in checks.items() if c["status"] != "passed"},
                      indent=1)


def test_drain_passes_on_a_replica_that_drains_behind_a_checked_gateway(
        gateway_stack: GatewayStack, tmp_path: Path) -> None:
    url = gateway_stack.gateway(HAPROXY).url
    env = drill_env(gateway_stack, url, LLMDRILL_HAPROXY_SOCKET=str(
        gateway_stack.gateway(HAPROXY).socket), RESTART_PHASE="45s")
    code, result, output = run_drill(SCENARIO, env, tmp_path / "reports")
    checks = checks_by_name(result)
    assert code == 0, output + _failures(checks)
    for name in ("gateway-drain", "sigterm-drain"):
        observed = checks[name]["observed"]
        # Streams were running on it when it was taken out, and every one finished.
        assert observed["in_flight"] >= 1 and observed["cut"] == 0, (name, observed)
        assert observed["last_in_flight_ended_s"] is not None, (name, observed)
    assert checks["sigterm-failover"]["observed"]["served_by_others_after_switch"] > 0
    assert {f["effect"] for f in result["faults"]} == {"seen"}, result["faults"]
    left_clean(gateway_stack)


def test_drain_fails_on_a_replica_that_drops_its_streams_behind_an_unchecked_gateway(
        gateway_stack: GatewayStack, tmp_path: Path) -> None:
    """vLLM's default shutdown (in-flight requests aborted) behind HAProxy without health
    checks or retries: the streams open on the replica are cut, and new requests still go
    to it after it left. The run ends with the SIGTERM phase (its revert restarts the
    replica)."""
    scenario = only_phases(SCENARIO, ["baseline", "settle", "terminated"], tmp_path)
    with running_gateway(HAPROXY, BROKEN_PORTS[HAPROXY], resilient=False) as broken:
        env = drill_env(gateway_stack, broken.url, DRAIN_REPLICA="replica-1")
        code, result, output = run_drill(scenario, env, tmp_path / "reports")
    checks = checks_by_name(result)
    assert code == 1, output + _failures(checks)
    assert checks["baseline-healthy"]["status"] == "passed", checks["baseline-healthy"]
    drain = checks["sigterm-drain"]
    assert drain["status"] == "failed", drain
    # Aborted streams end with an error event (InternalServerError) or stall to the read
    # timeout: either is a stream that did not complete (allow_clear_errors is off).
    assert drain["observed"]["cut"] >= 1, drain
    assert "did not complete at their first attempt" in drain["summary"], drain
    failover = checks["sigterm-failover"]
    assert failover["status"] == "failed", failover
    assert "sigterm-drain" in output and "sigterm-failover" in output
    left_clean(gateway_stack)
