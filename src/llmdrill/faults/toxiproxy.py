"""Toxiproxy faults: network toxics and a proxy taken down."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, Required, TypedDict

from pydantic import Field

from llmdrill.faults.base import (
    Baseline,
    EnvironmentProblem,
    baseline_before,
    cut_or_retried,
    engine_behind,
    fault_window,
    replica_cut_off,
    share_text,
)
from llmdrill.faults.toxiproxy_client import ToxiproxyClient
from llmdrill.model.verdict import FaultEffect
from llmdrill.plugin import FaultBackend, Location, Problem, RunSetup
from llmdrill.scenario.fields import (
    Name,
    Strict,
)
from llmdrill.scenario.units import Duration, Fraction, Size

if TYPE_CHECKING:
    from llmdrill.model.records import Evidence, RequestRecord


# --- the spec: the YAML under this key ----------------------------------------


class _ToxicBase(Strict):
    server: str = Field(default="default", description="Key in `toxiproxy:` servers.")
    proxy: Name = Field(description="Toxiproxy proxy name; created if listen/upstream are set.")
    listen: str | None = Field(default=None, description="host:port the proxy listens on.")
    upstream: str | None = Field(default=None, description="host:port the proxy forwards to.")
    stream: Literal["downstream", "upstream"] = Field(
        default="downstream",
        description="Direction the toxic acts on: downstream is server to client, "
        "upstream is client to server.",
    )
    toxicity: Fraction = Field(
        default=1.0, description="Chance that a connection gets the toxic (1: every one)."
    )


class LatencyToxic(_ToxicBase):
    toxic: Literal["latency"]
    latency: Duration = Field(description="Delay added to the data passing through.")
    jitter: Duration = Field(
        default=0.0, description="Random amount added to or taken from the latency."
    )


class TimeoutToxic(_ToxicBase):
    """Stops all data; closes the connection after `timeout` (0s: never)."""

    toxic: Literal["timeout"]
    timeout: Duration = Field(
        description="When the stalled connection is closed; 0s: it stays open, stalled."
    )


class BandwidthToxic(_ToxicBase):
    toxic: Literal["bandwidth"]
    rate: Size = Field(description="Bytes per second, e.g. '16KiB'.")


class SlowCloseToxic(_ToxicBase):
    toxic: Literal["slow_close"]
    delay: Duration = Field(description="How long the close of a connection is delayed.")


class ResetPeerToxic(_ToxicBase):
    toxic: Literal["reset_peer"]
    timeout: Duration = Field(
        default=0.0, description="Wait before the connection is reset (TCP RST); 0s: at once."
    )


class SlicerToxic(_ToxicBase):
    toxic: Literal["slicer"]
    average_size: Size = Field(description="Average size of the slices the data is cut into.")
    size_variation: Size = Field(
        default=0, description="How much a slice's size varies around the average."
    )
    delay: Duration = Field(default=0.0, description="Pause between two slices.")


class LimitDataToxic(_ToxicBase):
    toxic: Literal["limit_data"]
    bytes: Size = Field(description="The connection is closed once this much data has passed.")


class DownToxic(_ToxicBase):
    """The proxy is disabled: new connections are refused, open ones are cut."""

    toxic: Literal["down"]


ToxiproxySpec = Annotated[
    LatencyToxic
    | TimeoutToxic
    | BandwidthToxic
    | SlowCloseToxic
    | ResetPeerToxic
    | SlicerToxic
    | LimitDataToxic
    | DownToxic,
    Field(discriminator="toxic"),
]


BACKEND = "toxiproxy"


class ToxiproxyRevert(TypedDict, total=False):
    """The journal's way back from a toxic, a disabled proxy or a proxy the run created."""

    backend: Required[str]
    op: Required[Literal["remove_toxic", "enable_proxy", "delete_proxy"]]
    server: Required[str]  # the Toxiproxy API
    proxy: Required[str]
    toxic: str  # remove_toxic: the toxic's name
    listen: str | None  # the proxy as it was, to rebuild it if Toxiproxy wedges
    upstream: str | None

# Toxics that hold data in flight: removing them from links whose client left can hang.
WEDGE_PRONE = ("latency", "bandwidth", "slicer", "timeout")


# Units of Toxiproxy's attributes, for messages (slicer's delay is in microseconds).
ATTRIBUTE_UNITS = {"latency": "ms", "jitter": "ms", "timeout": "ms", "rate": "KB/s",
                   "bytes": "B", "average_size": "B", "size_variation": "B"}


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def toxic_attributes(spec: Any) -> dict[str, Any]:
    """Scenario units (seconds, bytes) to Toxiproxy's (ms, KB/s, microseconds)."""
    if isinstance(spec, LatencyToxic):
        return {"latency": _ms(spec.latency), "jitter": _ms(spec.jitter)}
    if isinstance(spec, TimeoutToxic):
        return {"timeout": _ms(spec.timeout)}
    if isinstance(spec, BandwidthToxic):
        return {"rate": max(1, spec.rate // 1024)}
    if isinstance(spec, SlowCloseToxic):
        return {"delay": _ms(spec.delay)}
    if isinstance(spec, ResetPeerToxic):
        return {"timeout": _ms(spec.timeout)}
    if isinstance(spec, SlicerToxic):
        return {"average_size": spec.average_size, "size_variation": spec.size_variation,
                "delay": round(spec.delay * 1_000_000)}
    if isinstance(spec, LimitDataToxic):
        return {"bytes": spec.bytes}
    return {}


class ToxiproxyFault:
    backend = BACKEND

    def __init__(self, run_id: str, fault_name: str, spec: Any, server_url: str,
                 engines: dict[str, str] | None = None) -> None:
        self.spec = spec
        self.server_url = server_url
        self.fault_name = fault_name
        # Unique per run so cleanup removes exactly what this run added.
        self.toxic_name = f"llmdrill-{run_id}-{fault_name}"
        self.listen: str | None = None  # the proxy's listen address, read at prepare()
        self.upstream: str | None = None  # and where it forwards to
        self.engines = engines or {}  # target.engines: label -> metrics URL

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

    def prepare(self) -> ToxiproxyRevert:
        action = ToxiproxyRevert(backend=BACKEND, op="remove_toxic", server=self.server_url,
                                 proxy=self.spec.proxy)
        # What the proxy looks like now, so a revert can rebuild it if Toxiproxy wedges.
        with ToxiproxyClient(self.server_url) as client:
            proxy = client.get_proxy(self.spec.proxy)
        if proxy is not None:
            self.listen = proxy.get("listen") or None
            self.upstream = proxy.get("upstream") or None
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

    def effect(self, evidence: Evidence) -> FaultEffect:
        """Did the clients' requests feel the toxic? Counted over the requests that started
        while it was on, against those that ended before it (see `judge_toxic`)."""
        window = fault_window(evidence, self.fault_name)
        if window is None:
            return FaultEffect(None, "the fault has no apply time in the evidence")
        engine = engine_behind(self.engines, self.upstream)
        # Behind a gateway the proxy carries one replica's share of the requests.
        share = 1.0 / len(self.engines) if engine is not None else 1.0
        felt = judge_toxic(self.spec, evidence.requests, window.start, window.end,
                           self.listen, share)
        if felt.landed is True or engine is None or self.spec.toxic not in CUTS_OFF:
            return felt
        # Behind a gateway that routes around the replica, clients may feel nothing: the
        # replica's own counter shows whether the toxic cut it off.
        return replica_cut_off(evidence, engine, window) or felt


# --- did the toxic land? ---------------------------------------------------------------------

# A latency toxic counts on a request whose TTFT (or duration) rose by this share of it.
LATENCY_SHARE = 0.5
# bandwidth / slicer: a request this much slower than before (ratio, and at least SLOW_MIN_S).
SLOW_RATIO, SLOW_MIN_S = 1.5, 0.05
# down / timeout / reset_peer / limit_data / slow_close: a request that lasted this much
# longer than before (ratio, and at least LONG_MIN_S) counts even without an error.
LONG_RATIO, LONG_MIN_S = 2.0, 1.0
# Seen when at least this share of the requests the toxic should touch (toxicity x count)
# show it.
SEEN_SHARE = 0.5


def _slowed(r: RequestRecord, base: Baseline, ttft_by: float, duration_by: float,
            ratio: float) -> bool:
    """Whether the request's TTFT or duration exceeded its shape's baseline by `ttft_by` /
    `duration_by` seconds and by the ratio (no baseline: absolute `ttft_by`)."""
    base_ttft = base.of(base.ttft, r.shape)
    base_dur = base.of(base.duration, r.shape)
    if r.ttft is not None and r.ttft >= (base_ttft or 0.0) * ratio + ttft_by:
        return True
    return base_dur is not None and r.duration >= base_dur * ratio + duration_by


def judge_toxic(spec: Any, requests: Sequence[RequestRecord], start: float, end: float,
                listen: str | None = None, share: float = 1.0) -> FaultEffect:
    """Whether the requests that started in [start, end) show the toxic `spec`.

    latency: TTFT (or duration) raised by at least half the latency over the baseline;
    bandwidth, slicer: slower than the baseline (or a network error); down, timeout,
    reset_peer, limit_data, slow_close: a network error (connect, reset, timeout,
    incomplete stream...), a retried attempt, or a much longer request. No request in the
    window: unknown; requests there and too few affected: missed."""
    kind = spec.toxic
    where = f"proxy '{spec.proxy}'" + (f" ({listen})" if listen else "")
    inside = [r for r in requests if start <= r.start < end]
    if not inside:
        return FaultEffect(None, f"no request started while the {kind} toxic was on {where} "
                                 f"({end - start:.1f}s): nothing shows whether it landed")
    base = baseline_before(requests, start)
    if kind == "latency":
        added = float(spec.latency)
        by = LATENCY_SHARE * added
        hit = [r for r in inside if _slowed(r, base, by, by, 1.0)
               or r.error_class == "timeout" or r.attempts > 1]
        yardstick = ("the TTFT before the fault" if base.ttft else "0 (no request before it)")
        what = (f"had TTFT or duration >= {LATENCY_SHARE:g} x {added * 1000:.0f} ms over "
                f"{yardstick}, or timed out")
    elif kind in ("bandwidth", "slicer"):
        hit = [r for r in inside if cut_or_retried(r)
               or _slowed(r, base, SLOW_MIN_S, SLOW_MIN_S, SLOW_RATIO)]
        what = (f"were >= {SLOW_RATIO:g}x slower than before the fault or failed on the "
                "network")
    else:
        hit = [r for r in inside if cut_or_retried(r)
               or _slowed(r, base, LONG_MIN_S, LONG_MIN_S, LONG_RATIO)]
        what = (f"failed on the network (connect, reset, timeout, incomplete stream, 5xx), "
                f"were retried, or took >= {LONG_RATIO:g}x longer than before")
    counted = f"{share_text(len(hit), len(inside))} started while the {kind} toxic was on " \
              f"{where} {what}"
    # `share`: of the requests, those that go through this proxy at all (one replica's of
    # several behind a gateway).
    expected = float(spec.toxicity) * share * len(inside)
    already = _already_broken(requests, start, inside)
    if already:
        return FaultEffect(None, f"{counted}; but {already}: the traffic was already failing "
                                 "this way, so nothing shows the toxic did it")
    if len(hit) >= max(1.0, SEEN_SHARE * expected):
        return FaultEffect(True, counted)
    if kind == "slow_close":
        return FaultEffect(None, f"{counted}: a slow close delays only the end of a "
                                 "connection, which clients that read their answer to the end "
                                 "do not see; no evidence either way")
    if expected < 1.0 and not hit:
        return FaultEffect(None, f"{counted}: at toxicity {spec.toxicity:g} fewer than one "
                                 "of them was expected to get the toxic; too few to tell")
    return FaultEffect(False, f"{counted}: the traffic did not feel it. Are the clients "
                              f"pointed at the listen address of {where}, and not at the "
                              "engine or another proxy? Does the toxic act on the right "
                              "direction (stream)?")


# Requests before the fault that must exist before their failures can explain those inside.
ALREADY_MIN_REQUESTS = 5
ALREADY_SHARE = 0.1


def _already_broken(requests: Sequence[RequestRecord], start: float,
                    inside: list[RequestRecord]) -> str | None:
    """Why failures in the fault's window cannot be put down to the toxic: the requests
    that ended before it failed on the network (or were retried) about as often."""
    ended = broken_before = 0
    for r in requests:  # counted in one pass: a run's log streams
        if r.end <= start:
            ended += 1
            broken_before += cut_or_retried(r)
    if ended < ALREADY_MIN_REQUESTS:
        return None
    share_before = broken_before / ended
    share_inside = sum(map(cut_or_retried, inside)) / len(inside)
    if share_before >= ALREADY_SHARE and share_before >= 0.5 * share_inside:
        return (f"{share_text(broken_before, ended)} that ended before the fault "
                "failed on the network or were retried too")
    return None


def make_toxiproxy_fault(ctx: Any, name: str, spec: Any) -> ToxiproxyFault:
    server = ctx.scenario.toxiproxy[spec.server].url
    engines = {label: e.metrics_url for label, e in ctx.scenario.target.engines.items()}
    return ToxiproxyFault(ctx.run_id, name, spec, server, engines)


# Toxics that keep requests from reaching a replica or its answers from coming back.
CUTS_OFF = ("down", "timeout", "reset_peer", "limit_data")


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

    def prepare(self) -> ToxiproxyRevert:
        return ToxiproxyRevert(backend=BACKEND, op="delete_proxy", server=self.server_url,
                               proxy=self.name)

    def apply(self) -> None:
        with ToxiproxyClient(self.server_url) as client:
            client.create_proxy(self.name, self.listen, self.upstream)


REMOVE_TIMEOUT = 10.0


def revert_toxiproxy(action: ToxiproxyRevert) -> None:
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


def proxy_setups(scenario: Any) -> list[RunSetup]:
    """The proxies the scenario's toxics declare (listen + upstream), one per server and
    name: the run creates the missing ones before its faults and deletes them after."""
    setups: dict[tuple[str, str], ProxySetup] = {}
    for fault in scenario.faults.values():
        spec = getattr(fault, BACKEND)
        if spec is not None and spec.listen and spec.upstream:
            url = scenario.toxiproxy[spec.server].url
            setups[(url, spec.proxy)] = ProxySetup(url, spec.proxy, spec.listen, spec.upstream)
    return list(setups.values())


def references(spec: Any, scenario: Any, location: Location) -> list[Problem]:
    if spec.server in scenario.toxiproxy:
        return []
    return [((*location, "server"),
             f"unknown Toxiproxy server '{spec.server}' "
             f"(defined: {', '.join(sorted(scenario.toxiproxy))})")]


TOXIPROXY = FaultBackend(
    spec=ToxiproxySpec,
    injector=make_toxiproxy_fault,
    revert=revert_toxiproxy,  # type: ignore[arg-type]  # a dict from the journal
    description="A Toxiproxy toxic; `toxic` picks the kind.",
    references=references,
    run_setups=proxy_setups,
    label=lambda spec: str(spec.toxic),
    params=lambda spec: spec.model_dump(mode="json", exclude={"toxic"}),
)
