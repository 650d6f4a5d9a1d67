"""Toxiproxy faults: network toxics and a proxy taken down."""

from __future__ import annotations

from typing import Any

from llmdrill.drills.base import EnvironmentProblem, RevertAction, register_reverter
from llmdrill.drills.registry import register_injector
from llmdrill.drills.toxiproxy_client import ToxiproxyClient
from llmdrill.scenario import models as m

BACKEND = "toxiproxy"
# Toxics that hold data in flight: removing them from links whose client left can hang.
WEDGE_PRONE = ("latency", "bandwidth", "slicer", "timeout")


# Units of Toxiproxy's attributes, for messages (slicer's delay is in microseconds).
ATTRIBUTE_UNITS = {"latency": "ms", "jitter": "ms", "timeout": "ms", "rate": "KB/s",
                   "bytes": "B", "average_size": "B", "size_variation": "B"}


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def toxic_attributes(spec: Any) -> dict[str, Any]:
    """Scenario units (seconds, bytes) to Toxiproxy's (ms, KB/s, microseconds)."""
    if isinstance(spec, m.LatencyToxic):
        return {"latency": _ms(spec.latency), "jitter": _ms(spec.jitter)}
    if isinstance(spec, m.TimeoutToxic):
        return {"timeout": _ms(spec.timeout)}
    if isinstance(spec, m.BandwidthToxic):
        return {"rate": max(1, spec.rate // 1024)}
    if isinstance(spec, m.SlowCloseToxic):
        return {"delay": _ms(spec.delay)}
    if isinstance(spec, m.ResetPeerToxic):
        return {"timeout": _ms(spec.timeout)}
    if isinstance(spec, m.SlicerToxic):
        return {"average_size": spec.average_size, "size_variation": spec.size_variation,
                "delay": round(spec.delay * 1_000_000)}
    if isinstance(spec, m.LimitDataToxic):
        return {"bytes": spec.bytes}
    return {}


class ToxiproxyFault:
    backend = BACKEND

    def __init__(self, run_id: str, fault_name: str, spec: Any, server_url: str) -> None:
        self.spec = spec
        self.server_url = server_url
        self.fault_name = fault_name
        # Unique per run so cleanup removes exactly what this run added.
        self.toxic_name = f"llmdrill-{run_id}-{fault_name}"

    def describe(self) -> str:
        spec = self.spec
        if spec.toxic == "down":
            return f"disable Toxiproxy proxy '{spec.proxy}' at {self.server_url}"
        attrs = ", ".join(f"{k}={v}{ATTRIBUTE_UNITS.get(k, '')}"
                          for k, v in toxic_attributes(spec).items())
        return (
            f"add {spec.toxic} toxic ({attrs}; {spec.stream}, toxicity {spec.toxicity}) to "
            f"proxy '{spec.proxy}' at {self.server_url}"
        )

    def preflight(self) -> list[str]:
        with ToxiproxyClient(self.server_url) as client:
            version = client.version()
            proxy = client.get_proxy(self.spec.proxy)
        if proxy is None and not (self.spec.listen and self.spec.upstream):
            raise EnvironmentProblem(
                f"Toxiproxy at {self.server_url} has no proxy '{self.spec.proxy}' "
                "(create it, or give listen and upstream in the fault so llmdrill creates it)"
            )
        lines = [f"Toxiproxy {version} at {self.server_url}: {self.describe()}"]
        if self.spec.stream == "downstream" and self.spec.toxic in WEDGE_PRONE:
            lines.append(
                f"warning: a downstream {self.spec.toxic} toxic can wedge Toxiproxy when "
                "clients give up mid-delay (Shopify/toxiproxy#558); llmdrill then rebuilds "
                "the proxy to revert. Prefer stream: upstream where the drill allows."
            )
        return lines

    def prepare(self) -> RevertAction:
        action: RevertAction = {"backend": BACKEND, "server": self.server_url,
                                "proxy": self.spec.proxy}
        # What the proxy looks like now, so a revert can rebuild it if Toxiproxy wedges.
        with ToxiproxyClient(self.server_url) as client:
            proxy = client.get_proxy(self.spec.proxy)
        if proxy is not None:
            action["listen"] = proxy.get("listen")
            action["upstream"] = proxy.get("upstream")
        if self.spec.toxic == "down":
            action["op"] = "enable_proxy"
        else:
            action["op"] = "remove_toxic"
            action["toxic"] = self.toxic_name
        return action

    def stop(self, timeout: float = 30.0) -> None:
        """Nothing runs in this process; reverting is the journal's action."""

    def apply(self) -> None:
        spec = self.spec
        with ToxiproxyClient(self.server_url) as client:
            if spec.toxic == "down":
                client.set_enabled(spec.proxy, False)
            else:
                client.add_toxic(spec.proxy, self.toxic_name, spec.toxic, spec.stream,
                                 spec.toxicity, toxic_attributes(spec))


@register_injector(BACKEND)
def make_toxiproxy_fault(ctx: Any, name: str, spec: Any) -> ToxiproxyFault:
    server = ctx.scenario.toxiproxy[spec.server].url
    return ToxiproxyFault(ctx.run_id, name, spec, server)


class ProxySetup:
    """Creates a proxy a scenario declares (listen + upstream) for the run's lifetime."""

    backend = BACKEND

    def __init__(self, server_url: str, name: str, listen: str, upstream: str) -> None:
        self.server_url, self.name, self.listen, self.upstream = server_url, name, listen, upstream

    def describe(self) -> str:
        return f"create Toxiproxy proxy '{self.name}' {self.listen} -> {self.upstream}"

    def exists(self) -> bool:
        with ToxiproxyClient(self.server_url) as client:
            return client.get_proxy(self.name) is not None

    def prepare(self) -> RevertAction:
        return {"backend": BACKEND, "op": "delete_proxy", "server": self.server_url,
                "proxy": self.name}

    def apply(self) -> None:
        with ToxiproxyClient(self.server_url) as client:
            client.create_proxy(self.name, self.listen, self.upstream)


REMOVE_TIMEOUT = 10.0


@register_reverter(BACKEND)
def revert_toxiproxy(action: RevertAction) -> None:
    server, proxy, op = str(action["server"]), str(action["proxy"]), action["op"]
    if op == "delete_proxy":
        with ToxiproxyClient(server, timeout=REMOVE_TIMEOUT) as client:
            client.delete_proxy(proxy)
        return
    if op not in ("remove_toxic", "enable_proxy"):
        raise ValueError(f"unknown Toxiproxy revert op '{op}'")
    try:
        with ToxiproxyClient(server, timeout=REMOVE_TIMEOUT) as client:
            if op == "remove_toxic":
                client.remove_toxic(proxy, str(action["toxic"]))
            else:
                client.set_enabled(proxy, True)
        return
    except EnvironmentProblem:
        if not (action.get("listen") and action.get("upstream")):
            raise
    # Toxiproxy can wedge while removing a toxic from links whose clients went away
    # mid-delay (Shopify/toxiproxy#558): the call never returns and the proxy's toxic
    # list stays locked. Deleting the proxy still works; rebuilding it with the same
    # listen/upstream leaves it clean and enabled. See docs/decisions/0006.
    rebuild_proxy(server, proxy, str(action["listen"]), str(action["upstream"]))


def rebuild_proxy(server: str, proxy: str, listen: str, upstream: str) -> None:
    with ToxiproxyClient(server, timeout=3 * REMOVE_TIMEOUT) as client:
        client.delete_proxy(proxy)
        client.create_proxy(proxy, listen, upstream)
