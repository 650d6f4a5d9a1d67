"""HAProxy faults: one server of a backend drained or put in maintenance through HAProxy's
runtime API (its `stats socket ... level admin`), the way an operator takes a replica out
for a rollout.

- `drain`: HAProxy sends the server no new request; the requests it is serving finish;
- `maint`: the server is out of rotation at once (its open connections are left alone
  unless the config says `on-marked-down shutdown-sessions`).

Like every fault, the way back is computed and journaled before the change: prepare reads
the server's own administrative state (`show servers state <backend>`: the forced
maintenance and drain flags) and the revert sets it back (`set server b/s state ready`,
or `drain`/`maint` when it already was). The action is plain JSON, so `llmdrill cleanup`
or the watchdog, in another process, can carry it out alone. A HAProxy that is gone when
the revert comes (no socket, nothing listening) took its runtime state with it: a new one
starts from its config, so there is nothing to revert (unless it loads a
`server-state-file`, which a drill's HAProxy should not).

Whether the fault reached the traffic is read from the replica behind the server when the
server's address (or its name) is one of target.engines: its own prompt-token counter
stops growing. Otherwise the state HAProxy reports after the command is the evidence.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Required, TypedDict

from pydantic import Field, model_validator

from llmdrill.faults.base import (
    ARRIVALS,
    EnvironmentProblem,
    arrivals_in_second_half,
    engine_behind,
    fault_window,
    replica_cannot_tell,
    replica_cut_off,
)
from llmdrill.model.verdict import FaultEffect
from llmdrill.plugin import FaultBackend
from llmdrill.scenario.fields import Strict
from llmdrill.stack.gateway import haproxy_command, parse_server_status

if TYPE_CHECKING:
    from llmdrill.model.context import RunContext
    from llmdrill.model.records import Evidence

BACKEND = "haproxy"

AdminState = Literal["ready", "drain", "maint"]

# Forced flags of `srv_admin_state` (HAProxy's enum srv_admin): what `set server ... state`
# sets and clears. Inherited (tracked server), configured and DNS flags are not ours.
ADMF_FMAINT = 0x01
ADMF_FDRAIN = 0x08

TIMEOUT_S = 5.0  # one command on the runtime API (a large `show stat` included)
SET_EVENT = "haproxy_set"  # apply's command: fault, socket, proxy, server, state
STATE_EVENT = "haproxy_state"  # the server read back: fault, when, admin, status

# HAProxy's answers when the backend or server is not (or no longer) there.
NOT_FOUND = ("No such server.", "No such backend.", "Can't find backend.")


# --- the spec: the YAML under this key ----------------------------------------


class HaproxyFault(Strict):
    """One HAProxy server drained or put in maintenance through the runtime API; the
    revert sets back the administrative state it had."""

    socket: str = Field(
        description="HAProxy's runtime API socket (`stats socket <path> level admin` in "
        "its global section), e.g. the gateway stack's `.stack/run/haproxy.sock`; a "
        "relative path is relative to the scenario file's folder.")
    backend: str = Field(default="replicas", description="The HAProxy backend (proxy) "
                         "that holds the server.")
    server: str = Field(description="The server, by its name in the backend.")
    state: Literal["drain", "maint"] = Field(
        default="drain",
        description="`drain`: no new request reaches the server, those it serves finish; "
        "`maint`: out of rotation at once.")

    @model_validator(mode="after")
    def _names(self) -> HaproxyFault:
        if not self.socket.strip():
            raise ValueError("socket is empty")
        for field in ("backend", "server"):
            value = getattr(self, field)
            # The runtime API reads `<backend>/<server>` as words: no space, no slash.
            if not value or any(c.isspace() for c in value) or "/" in value:
                raise ValueError(f"{field} must be a name without spaces or '/', got "
                                 f"{value!r}")
        return self


class HaproxyRevert(TypedDict, total=False):
    """The journal's way back: the state to set the server to again. `proxy` is the
    HAProxy backend (`backend` is the key of this llmdrill backend, as in every action)."""

    backend: Required[str]
    socket: Required[str]  # absolute
    proxy: Required[str]
    server: Required[str]
    state: Required[str]  # what apply sets
    restore: Required[str]  # ready, drain or maint: what the server had before
    address: str | None  # host:port of the server, to find the replica behind it


# --- the runtime API ---------------------------------------------------------------------


class HaproxyGone(EnvironmentProblem):
    """Nothing answers on the socket: no such file, or no HAProxy listening on it."""


def ask(sock: Path, command: str, timeout: float = TIMEOUT_S) -> str:
    """One command on the runtime API; HAProxy's answer, or EnvironmentProblem (HaproxyGone
    when no HAProxy is there) naming the socket."""
    try:
        return haproxy_command(sock, command, timeout)
    except FileNotFoundError:
        raise HaproxyGone(f"HAProxy's runtime API socket {sock} does not exist: is HAProxy "
                          f"running with `stats socket {sock} level admin`?") from None
    except ConnectionRefusedError:
        raise HaproxyGone(f"nothing listens on HAProxy's runtime API socket {sock} (HAProxy "
                          "stopped and left its socket file?)") from None
    except PermissionError:
        raise EnvironmentProblem(f"not allowed to connect to HAProxy's runtime API socket "
                                 f"{sock} (its owner and `mode`)") from None
    except TimeoutError:
        raise EnvironmentProblem(f"HAProxy did not answer `{command}` on {sock} within "
                                 f"{timeout:g}s") from None
    except OSError as exc:
        raise EnvironmentProblem(f"cannot use HAProxy's runtime API socket {sock}: "
                                 f"{exc}") from None


def parse_servers_state(text: str) -> list[dict[str, str]]:
    """The rows of `show servers state` (format 1: a version line, a `# be_id be_name ...`
    header, one line per server), as header name -> value."""
    header: list[str] | None = None
    rows: list[dict[str, str]] = []
    for line in text.splitlines():
        if line.startswith("#"):
            header = line.lstrip("# ").split()
        elif header is not None and line.strip():
            rows.append(dict(zip(header, line.split(), strict=False)))
    return rows


def admin_state(flags: int) -> AdminState:
    """The state `set server ... state` gives, from the forced flags of srv_admin_state."""
    if flags & ADMF_FMAINT:
        return "maint"
    return "drain" if flags & ADMF_FDRAIN else "ready"


def server_address(row: dict[str, str]) -> str | None:
    """host:port of a server from its `show servers state` row ([v6]:port), if known."""
    host, port = row.get("srv_addr", "-"), row.get("srv_port", "-")
    if host in ("", "-") or not port.isdigit() or port == "0":
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def proxies_of(show_stat: str) -> list[str]:
    """The proxies (frontends and backends) in `show stat`'s CSV, in order."""
    names: list[str] = []
    for line in show_stat.splitlines():
        if line and not line.startswith("#"):
            name = line.split(",", 1)[0]
            if name not in names:
                names.append(name)
    return names


def read_server(sock: Path, proxy: str, server: str) -> dict[str, str]:
    """The server's `show servers state` row, or EnvironmentProblem saying what is there."""
    answer = ask(sock, f"show servers state {proxy}")
    rows = parse_servers_state(answer)
    if not rows and not answer.lstrip().startswith(("1", "#")):
        raise EnvironmentProblem(f"HAProxy at {sock} has no backend '{proxy}' (it answered "
                                 f"`show servers state {proxy}` with: "
                                 f"{answer.strip()[:200]!r})")
    row = next((r for r in rows if r.get("srv_name") == server), None)
    if row is None:
        names = ", ".join(r.get("srv_name", "?") for r in rows) or "none"
        raise EnvironmentProblem(f"HAProxy at {sock} has no server '{server}' in backend "
                                 f"'{proxy}' (its servers: {names})")
    return row


def flags_of(row: dict[str, str]) -> int:
    value = row.get("srv_admin_state", "")
    if not value.isdigit():
        raise EnvironmentProblem(f"HAProxy gave server {row.get('srv_name')} an unreadable "
                                 f"srv_admin_state {value!r}")
    return int(value)


def set_state(sock: Path, proxy: str, server: str, state: str) -> str:
    """`set server <proxy>/<server> state <state>`: HAProxy's answer, '' when it took it."""
    return ask(sock, f"set server {proxy}/{server} state {state}").strip()


def engine_for(engines: dict[str, str], address: str | None, server: str
               ) -> tuple[str | None, str]:
    """The replica of target.engines behind the server: by its address (host:port of the
    replica's metrics URL), else by a label equal to the server's name (the gateway stack
    names both `replica-N`, its servers being Toxiproxy proxies in front of them)."""
    found = engine_behind(engines, address)
    if found is not None:
        return found, "by address"
    return (server, "by name") if server in engines else (None, "")


# --- the injector --------------------------------------------------------------------------


class HaproxyInjector:
    backend = BACKEND

    def __init__(self, ctx: RunContext, fault_name: str, spec: HaproxyFault) -> None:
        self.ctx = ctx
        self.fault_name = fault_name
        self.spec = spec
        self.socket = Path(os.path.abspath(Path(spec.socket).expanduser()))
        self.engines = {label: e.metrics_url
                        for label, e in ctx.scenario.target.engines.items()}
        self.address: str | None = None  # the server's, read at prepare
        self.engine: str | None = None  # the replica behind it, if target.engines has it
        self._applied = False

    @property
    def who(self) -> str:
        return f"{self.spec.backend}/{self.spec.server}"

    def describe(self) -> str:
        return f"set server {self.who} state {self.spec.state} via {self.socket}"

    def _read(self) -> tuple[dict[str, str], AdminState]:
        row = read_server(self.socket, self.spec.backend, self.spec.server)
        now = admin_state(flags_of(row))
        if now == self.spec.state:
            raise EnvironmentProblem(
                f"server {self.who} at {self.socket} is already in {now}: the fault would "
                "change nothing (left by a drill that was not reverted? `llmdrill cleanup`, "
                f"or `set server {self.who} state ready`)")
        return row, now

    def preflight(self) -> list[str]:
        stat = ask(self.socket, "show stat")
        if not stat.startswith("# pxname"):
            raise EnvironmentProblem(f"HAProxy at {self.socket} did not answer `show stat` "
                                     f"with its CSV: {stat.strip()[:200]!r}")
        if self.spec.backend not in proxies_of(stat):
            raise EnvironmentProblem(
                f"HAProxy at {self.socket} has no backend '{self.spec.backend}' (its "
                f"proxies: {', '.join(proxies_of(stat)) or 'none'}); server "
                f"'{self.spec.server}' cannot be found")
        level = ask(self.socket, "show cli level").strip()
        if level in ("user", "operator"):
            raise EnvironmentProblem(f"HAProxy's runtime API at {self.socket} is at level "
                                     f"{level}; `set server` needs `level admin` on its "
                                     "stats socket line")
        row, now = self._read()
        status = parse_server_status(stat, self.spec.backend).get(self.spec.server, "?")
        address = server_address(row)
        lines = [f"haproxy: {self.describe()} (now {now}, {status}, at "
                 f"{address or 'an unknown address'})",
                 f"  revert: set server {self.who} state {now}"]
        engine, how = engine_for(self.engines, address, self.spec.server)
        if engine is not None:
            lines.append(f"  replica behind it: {engine} of target.engines ({how})")
        else:
            lines.append("  note: no replica of target.engines is at its address or has its "
                         "name: its effect is judged from the state HAProxy reports only")
        return lines

    def prepare(self) -> HaproxyRevert:
        # Read again: what preflight saw may have changed since.
        row, now = self._read()
        self.address = server_address(row)
        self.engine, _ = engine_for(self.engines, self.address, self.spec.server)
        return HaproxyRevert(backend=BACKEND, socket=str(self.socket), proxy=self.spec.backend,
                             server=self.spec.server, state=self.spec.state, restore=now,
                             address=self.address)

    def apply(self) -> None:
        began = time.time()
        answer = set_state(self.socket, self.spec.backend, self.spec.server, self.spec.state)
        if answer:
            raise EnvironmentProblem(f"HAProxy at {self.socket} refused `set server {self.who} "
                                     f"state {self.spec.state}`: {answer[:300]}")
        self._event(began, SET_EVENT, {"socket": str(self.socket), "proxy": self.spec.backend,
                                       "server": self.spec.server, "state": self.spec.state,
                                       "address": self.address, "engine": self.engine})
        self._applied = True
        self._read_back("after_set")

    def _read_back(self, when: str) -> None:
        """The server's state as HAProxy reports it now: the fault's evidence."""
        try:
            admin = admin_state(flags_of(read_server(self.socket, self.spec.backend,
                                                     self.spec.server)))
            stat = ask(self.socket, "show stat")
        except EnvironmentProblem:
            return  # nothing read back: the effect says so
        status = parse_server_status(stat, self.spec.backend).get(self.spec.server, "?")
        self._event(time.time(), STATE_EVENT, {"when": when, "admin": admin, "status": status})

    def _event(self, ts: float, kind: str, detail: dict[str, Any]) -> None:
        if self.ctx.store is not None:
            self.ctx.store.add_event(ts, kind, {"fault": self.fault_name, **detail})

    def stop(self, timeout: float = 30.0) -> None:
        """Nothing runs here; the server is read back once more at the fault's end."""
        if self._applied:
            self._applied = False  # once per application
            self._read_back("fault_end")

    def effect(self, evidence: Evidence) -> FaultEffect:
        return judge_haproxy(self.spec, self.fault_name, evidence, self.engine)


def make_haproxy_fault(ctx: RunContext, name: str, spec: HaproxyFault) -> HaproxyInjector:
    return HaproxyInjector(ctx, name, spec)


# --- did the fault land? ---------------------------------------------------------------------


def judge_haproxy(spec: HaproxyFault, fault: str, evidence: Evidence, engine: str | None
                  ) -> FaultEffect:
    """Seen when the replica behind the server stopped receiving requests (its counter
    stood still in the fault's second half); missed when HAProxy read the server back in
    another state, or the replica kept receiving requests; otherwise, with no replica to
    read, seen when HAProxy read the server back in the state set (the target changed, the
    traffic is not measured); no record of the command or of a read-back: unknown."""
    window = fault_window(evidence, fault)
    if window is None:
        return FaultEffect(None, "the fault has no apply time in the evidence")
    who = f"{spec.backend}/{spec.server}"
    if not [d for _, d in evidence.events_of(SET_EVENT) if d.get("fault") == fault]:
        return FaultEffect(None, f"no `set server {who}` was recorded for the fault: no "
                                 "evidence either way")
    reads = [d for _, d in evidence.events_of(STATE_EVENT) if d.get("fault") == fault]
    afters = [d for d in reads if d.get("when") == "after_set"]
    # Every application (a fault may be applied in several phases) must have taken.
    wrong = next((d for d in afters if d.get("admin") != spec.state), None)
    if wrong is not None:
        return FaultEffect(False, f"HAProxy read {who} back in {wrong.get('admin')} "
                                  f"({wrong.get('status')}) after `set server {who} state "
                                  f"{spec.state}`: the command did not take")
    after = afters[0] if afters else None
    if engine is not None:
        cut = replica_cut_off(evidence, engine, window)
        if cut is not None:
            return FaultEffect(True, f"{who} set to {spec.state}; {cut.detail}")
        grew = arrivals_in_second_half(evidence, engine, window)
        if grew > 0:
            return FaultEffect(False, f"{who} was set to {spec.state}, but {engine} behind it "
                                      "still received new requests in the second half of "
                                      f"the fault ({ARRIVALS[0]} grew by {grew:g}): the "
                                      "clients reach it another way, or HAProxy still "
                                      "sends to it (stickiness?)")
    note = replica_cannot_tell(engine)
    if after is None:
        return FaultEffect(None, f"{who} was not read back after the command, and {note}: "
                                 "no evidence either way")
    end = next((d for d in reads if d.get("when") == "fault_end"
                and d.get("admin") != spec.state), None)
    moved = ("" if end is None
             else f" (but in {end.get('admin')} at the fault's end: changed meanwhile)")
    return FaultEffect(True, f"HAProxy read {who} back in {spec.state} ({after.get('status')})"
                             f" after the command{moved}; {note}")


def markers(evidence: Evidence, t0: float) -> list[tuple[float, str]]:
    """The command, on the report's charts: `drain replica-0`."""
    return [(round(ts - t0, 3), f"{d.get('state')} {d.get('server')}")
            for ts, d in evidence.events_of(SET_EVENT)]


# --- the reverter --------------------------------------------------------------------------


def revert_haproxy(action: HaproxyRevert) -> None:
    """Idempotent, and safe in any process: sets the recorded state again. A HAProxy that
    is gone, or no longer has the server, leaves nothing to revert."""
    restore = str(action["restore"])
    if restore not in ("ready", "drain", "maint"):
        raise ValueError(f"unknown HAProxy state to restore '{restore}'")
    sock, proxy, server = Path(action["socket"]), str(action["proxy"]), str(action["server"])
    try:
        answer = set_state(sock, proxy, server, restore)
    except HaproxyGone:
        return  # its runtime state went with it; a new HAProxy starts from its config
    if answer and not answer.startswith(NOT_FOUND):
        raise EnvironmentProblem(f"HAProxy at {sock} refused `set server {proxy}/{server} "
                                 f"state {restore}`: {answer[:300]}")


HAPROXY = FaultBackend(
    spec=HaproxyFault,
    injector=make_haproxy_fault,
    revert=revert_haproxy,  # type: ignore[arg-type]  # a dict from the journal
    description="One HAProxy server drained or put in maintenance through the runtime API "
                "(its previous state set back at revert).",
    blast_radius=lambda spec: 1,  # one server
    markers=markers,
    label=lambda spec: f"haproxy {spec.state}",
)
