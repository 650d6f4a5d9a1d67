"""vllm-router faults: one worker taken out of vllm-router's rotation through its HTTP admin
API (`POST /remove_worker?url=<worker>` on the router's serving port), the way an operator
takes a replica out of the router for a rollout: the router sends it no new request, and
the requests it already proxied to it go on (a drain through the gateway).

Like every fault, the way back is computed and journaled before the change: prepare reads
the router's worker list (`GET /list_workers`; the worker must be in it) and the revert
adds the worker again (`POST /add_worker?url=<worker>`, which vllm-router answers once
the worker passes its health check: hence the generous `add_timeout`), then reads the list
again to see it there. The revert does nothing when the worker is already listed, so it
is idempotent. The action is plain JSON, so `llmdrill cleanup` or the watchdog, in another
process, can carry it out alone. A router that is gone when the revert comes (nothing
listens on its port) took its worker list with it: a new one starts from its command line
(`--worker-urls`), so there is nothing to revert, as for a HAProxy that is gone. A router
that answers but does not take the worker back is a revert error.

Whether the fault reached the traffic is read from the replica behind the worker when one
of target.engines is that replica: the spec's `engine`, else the engine whose metrics URL
has the worker URL's host:port, else the one whose label is the worker URL's host name.
Its own prompt-token counter stops growing. Otherwise the worker list the router reports
after the command is the evidence.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal, TypedDict
from urllib.parse import urlsplit

import httpx
from pydantic import Field, field_validator, model_validator

from llmdrill import httpclient
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
from llmdrill.plugin import FaultBackend, Location, Problem
from llmdrill.scenario import refs
from llmdrill.scenario.fields import Strict, http_url
from llmdrill.scenario.units import Duration

if TYPE_CHECKING:
    from llmdrill.model.context import RunContext
    from llmdrill.model.records import Evidence

BACKEND = "router"

TIMEOUT_S = 5.0  # one call of the admin API but add_worker (GET /list_workers, a remove)
REVERT_MARGIN_S = 2 * TIMEOUT_S + 5.0  # the reads around the add, in revert_timeout
REMOVE_EVENT = "router_remove"  # apply's command: fault, url, worker, engine, status
STATE_EVENT = "router_state"  # the worker list read back: fault, when, listed, workers


# --- the spec: the YAML under this key ----------------------------------------------------


class RouterFault(Strict):
    """One worker removed from vllm-router's rotation through its HTTP admin API; the
    revert adds it back."""

    url: str = Field(
        description="vllm-router's base URL: its serving port, where its admin API is too "
        "(`/list_workers`, `/remove_worker`, `/add_worker`), e.g. the gateway stack's "
        "`http://127.0.0.1:18030`.")
    worker: str = Field(
        description="The worker's URL exactly as the router lists it (`GET /list_workers`), "
        "e.g. `http://127.0.0.1:18011`.")
    action: Literal["remove"] = Field(
        default="remove",
        description="`remove`: out of the router's rotation (no new request reaches it, "
        "those it serves finish); the revert adds it back.")
    add_timeout: Duration = Field(
        default=30.0,
        description="Longest the revert waits for `POST /add_worker` (vllm-router answers "
        "once the worker passes its health check).")
    engine: str | None = Field(
        default=None,
        description="The replica behind the worker: its label in target.engines, whose own "
        "counters show the effect. Default: the engine whose metrics URL has the worker "
        "URL's host:port, else the one labelled as the worker URL's host; with neither, "
        "the effect is judged from the router's worker list only.")

    @field_validator("url", "worker")
    @classmethod
    def _url(cls, url: str) -> str:
        return http_url(url)

    @model_validator(mode="after")
    def _bounds(self) -> RouterFault:
        if self.add_timeout <= 0:
            raise ValueError("add_timeout must be more than 0s")
        if self.engine is not None and not self.engine.strip():
            raise ValueError("engine is empty: give a label of target.engines, or leave it "
                             "out")
        return self


class RouterRevert(TypedDict):
    """The journal's way back: add the worker to the router again."""

    backend: str
    url: str  # the router's base URL, without a trailing /
    worker: str
    action: str  # what apply does: remove
    add_timeout: float
    # How long the whole revert may take (the add waits for a health check): the runner
    # journals it so the watchdog does not start a second one meanwhile.
    revert_timeout: float


# --- the admin API -----------------------------------------------------------------------


class RouterGone(EnvironmentProblem):
    """Nothing listens on the router's port (connection refused)."""


def _refused(exc: BaseException) -> bool:
    """Whether an httpx error comes from a refused connection (its chain holds one)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        err = todo.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, ConnectionRefusedError):
            return True
        todo += [e for e in (err.__cause__, err.__context__, *err.args)
                 if isinstance(e, BaseException)]
    return False


def call(method: str, url: str, path: str, worker: str | None = None,
         timeout: float | None = None) -> httpx.Response:
    """One call of the admin API; the response whatever its status, or EnvironmentProblem
    (RouterGone when nothing listens) naming the router and the call."""
    what = f"{method} {path}" + (f"?url={worker}" if worker is not None else "")
    wait = TIMEOUT_S if timeout is None else timeout
    try:
        return httpclient.request(method, f"{url}{path}",
                             params={"url": worker} if worker is not None else None,
                             timeout=httpx.Timeout(wait, connect=min(wait, TIMEOUT_S)))
    except httpx.TimeoutException:
        raise EnvironmentProblem(f"vllm-router at {url} did not answer {what} within "
                                 f"{wait:g}s") from None
    except httpx.HTTPError as exc:
        if _refused(exc):
            raise RouterGone(f"cannot reach vllm-router at {url} ({what}: connection "
                             "refused): is it running, and is this its serving port?"
                             ) from None
        raise EnvironmentProblem(f"cannot reach vllm-router at {url} ({what}: "
                                 f"{type(exc).__name__}: {exc})") from None


def _json(url: str, resp: httpx.Response, what: str) -> Any:
    if not resp.is_success:
        hint = ("it wants an API key, and the router backend sends none"
                if resp.status_code in (401, 403)
                else f"is {url} a vllm-router's serving port?")
        raise EnvironmentProblem(f"vllm-router at {url} answered {what} with HTTP "
                                 f"{resp.status_code}: {resp.text.strip()[:200]!r} ({hint})")
    try:
        return resp.json()
    except ValueError:
        raise EnvironmentProblem(f"vllm-router at {url} answered {what} with something that "
                                 f"is not JSON: {resp.text.strip()[:200]!r} (is {url} a "
                                 "vllm-router's serving port?)") from None


def list_workers(url: str) -> list[str]:
    """The worker URLs the router has in rotation (`GET /list_workers`)."""
    data = _json(url, call("GET", url, "/list_workers"), "GET /list_workers")
    urls = data.get("urls") if isinstance(data, dict) else None
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise EnvironmentProblem(f"vllm-router at {url} answered GET /list_workers without a "
                                 f"list of worker URLs: {str(data)[:200]!r}")
    return urls


def worker_details(url: str) -> dict[str, dict[str, Any]]:
    """Each worker's entry of `GET /workers` (is_healthy, load, ...) by URL; {} when the
    router does not give it (it is only said in preflight)."""
    try:
        data = _json(url, call("GET", url, "/workers"), "GET /workers")
    except EnvironmentProblem:
        return {}
    workers = data.get("workers") if isinstance(data, dict) else None
    if not isinstance(workers, list):
        return {}
    return {str(w["url"]): w for w in workers if isinstance(w, dict) and "url" in w}


def remove_worker(url: str, worker: str) -> int:
    """`POST /remove_worker?url=<worker>`: its status (any 2xx), or EnvironmentProblem."""
    resp = call("POST", url, "/remove_worker", worker)
    if not resp.is_success:
        raise EnvironmentProblem(f"vllm-router at {url} refused POST /remove_worker?url="
                                 f"{worker}: HTTP {resp.status_code} "
                                 f"{resp.text.strip()[:300]}")
    return resp.status_code


def not_listed(url: str, worker: str, listed: list[str]) -> str:
    """What to say when the router does not list the worker: the ones it has."""
    names = ", ".join(listed) or "none"
    close = [u for u in listed if u.rstrip("/") == worker.rstrip("/")]
    hint = (f" (did you mean {close[0]}? give the URL exactly as the router lists it)"
            if close else "")
    return f"vllm-router at {url} does not list worker {worker} (its workers: {names}){hint}"


def worker_address(worker: str) -> str:
    """host:port of a worker URL as written (the way engine_behind reads a metrics URL)."""
    return worker.split("://", 1)[-1].split("/", 1)[0]


def engine_for(engines: dict[str, str], worker: str, given: str | None = None
               ) -> tuple[str | None, str]:
    """The replica of target.engines behind the worker: the spec's `engine` if given, else
    by address (the worker URL's host:port is that of the replica's metrics URL), else by
    name (a label equal to the worker URL's host, e.g. `http://replica-0:8000`)."""
    if given is not None:
        return given, "given in `engine`"
    found = engine_behind(engines, worker_address(worker))
    if found is not None:
        return found, "by address"
    host = urlsplit(worker).hostname
    return (host, "by name") if host is not None and host in engines else (None, "")


# --- the injector --------------------------------------------------------------------------


class RouterInjector:
    backend = BACKEND

    def __init__(self, ctx: RunContext, fault_name: str, spec: RouterFault) -> None:
        self.ctx = ctx
        self.fault_name = fault_name
        self.spec = spec
        self.url = spec.url.rstrip("/")
        self.engines = {label: e.metrics_url
                        for label, e in ctx.scenario.target.engines.items()}
        # The replica behind the worker, if target.engines has it.
        self.engine, self.how = engine_for(self.engines, spec.worker, spec.engine)
        self._applied = False

    def describe(self) -> str:
        return f"remove worker {self.spec.worker} from vllm-router at {self.url}"

    def _read(self) -> list[str]:
        listed = list_workers(self.url)
        if self.spec.worker not in listed:
            raise EnvironmentProblem(
                not_listed(self.url, self.spec.worker, listed) + ": the fault would change "
                "nothing (left removed by a drill that was not reverted? `llmdrill cleanup`, "
                f"or POST {self.url}/add_worker?url={self.spec.worker})")
        return listed

    def preflight(self) -> list[str]:
        listed = self._read()
        entry = worker_details(self.url).get(self.spec.worker, {})
        healthy = entry.get("is_healthy")
        health = ", healthy" if healthy is True else ", unhealthy" if healthy is False else ""
        load = f", load {entry['load']}" if "load" in entry else ""
        lines = [f"router: {self.describe()} (now listed{health}{load}; the router has "
                 f"{len(listed)} worker{'s' if len(listed) != 1 else ''})",
                 f"  revert: POST {self.url}/add_worker?url={self.spec.worker} (waits up to "
                 f"{self.spec.add_timeout:g}s for the router's health check of it)"]
        if self.engine is not None:
            lines.append(f"  replica behind it: {self.engine} of target.engines ({self.how})")
        else:
            lines.append("  note: no replica of target.engines is at its address or has its "
                         "name (and `engine` is not given): its effect is judged from the "
                         "router's worker list only")
        if len(listed) == 1:
            lines.append("  note: it is the router's only worker: every request fails while "
                         "it is out")
        return lines

    def prepare(self) -> RouterRevert:
        # Read again: what preflight saw may have changed since.
        self._read()
        return RouterRevert(backend=BACKEND, url=self.url, worker=self.spec.worker,
                            action=self.spec.action, add_timeout=self.spec.add_timeout,
                            revert_timeout=self.spec.add_timeout + REVERT_MARGIN_S)

    def apply(self) -> None:
        began = time.time()
        status = remove_worker(self.url, self.spec.worker)
        self._event(began, REMOVE_EVENT, {"url": self.url, "worker": self.spec.worker,
                                          "engine": self.engine, "status": status})
        self._applied = True
        listed = self._read_back("after_remove")
        if listed is not None and self.spec.worker in listed:
            raise EnvironmentProblem(f"vllm-router at {self.url} still lists worker "
                                     f"{self.spec.worker} after POST /remove_worker answered "
                                     f"HTTP {status}: it did not remove it")

    def _read_back(self, when: str) -> list[str] | None:
        """The router's worker list now: the fault's evidence (None if it cannot be read)."""
        try:
            listed = list_workers(self.url)
        except EnvironmentProblem:
            return None  # nothing read back: the effect says so
        self._event(time.time(), STATE_EVENT, {"when": when,
                                               "listed": self.spec.worker in listed,
                                               "workers": len(listed)})
        return listed

    def _event(self, ts: float, kind: str, detail: dict[str, Any]) -> None:
        if self.ctx.store is not None:
            self.ctx.store.add_event(ts, kind, {"fault": self.fault_name, **detail})

    def stop(self, timeout: float = 30.0) -> None:
        """Nothing runs here; the worker list is read back once more at the fault's end."""
        if self._applied:
            self._applied = False  # once per application
            self._read_back("fault_end")

    def effect(self, evidence: Evidence) -> FaultEffect:
        return judge_router(self.spec, self.fault_name, evidence, self.engine)


def make_router_fault(ctx: RunContext, name: str, spec: RouterFault) -> RouterInjector:
    return RouterInjector(ctx, name, spec)


# --- did the fault land? ---------------------------------------------------------------------


def judge_router(spec: RouterFault, fault: str, evidence: Evidence, engine: str | None
                 ) -> FaultEffect:
    """Seen when the replica behind the worker stopped receiving requests (its counter
    stood still in the fault's second half); missed when the router still listed the
    worker after the command, or the replica kept receiving requests; otherwise, with no
    replica to read, seen when the router's list read back without the worker (the target
    changed, the traffic is not measured); no record of the command or of a read-back:
    unknown."""
    window = fault_window(evidence, fault)
    if window is None:
        return FaultEffect(None, "the fault has no apply time in the evidence")
    who = f"worker {spec.worker}"
    if not [d for _, d in evidence.events_of(REMOVE_EVENT) if d.get("fault") == fault]:
        return FaultEffect(None, f"no `POST /remove_worker` of {who} was recorded for the "
                                 "fault: no evidence either way")
    reads = [d for _, d in evidence.events_of(STATE_EVENT) if d.get("fault") == fault]
    afters = [d for d in reads if d.get("when") == "after_remove"]
    # Every application (a fault may be applied in several phases) must have taken.
    if any(d.get("listed") for d in afters):
        return FaultEffect(False, f"vllm-router still listed {who} after `POST "
                                  "/remove_worker`: the command did not take")
    after = afters[0] if afters else None
    if engine is not None:
        cut = replica_cut_off(evidence, engine, window)
        if cut is not None:
            return FaultEffect(True, f"{who} removed from vllm-router; {cut.detail}")
        grew = arrivals_in_second_half(evidence, engine, window)
        if grew > 0:
            return FaultEffect(False, f"{who} was removed from vllm-router, but {engine} "
                                      "behind it still received new requests in the second "
                                      f"half of the fault ({ARRIVALS[0]} grew by {grew:g}): "
                                      "the clients reach it another way (another router or "
                                      "gateway, or directly), or it is not the replica "
                                      "behind the worker (`engine`)")
    note = replica_cannot_tell(engine)
    if after is None:
        return FaultEffect(None, f"the router's workers were not read back after the "
                                 f"command, and {note}: no evidence either way")
    end = next((d for d in reads if d.get("when") == "fault_end" and d.get("listed")), None)
    moved = ("" if end is None
             else " (but listed again at the fault's end: added back meanwhile)")
    return FaultEffect(True, f"vllm-router's worker list read back without {who} after the "
                             f"command{moved}; {note}")


def markers(evidence: Evidence, t0: float) -> list[tuple[float, str]]:
    """The command, on the report's charts: `remove replica-0` (or the worker's host:port
    when no replica of target.engines is behind it)."""
    return [(round(ts - t0, 3),
             f"remove {d.get('engine') or worker_address(str(d.get('worker', '?')))}")
            for ts, d in evidence.events_of(REMOVE_EVENT)]


def references(spec: RouterFault, scenario: Any, location: Location) -> list[Problem]:
    if spec.engine is None:
        return []
    return refs.unknown_engine(scenario, spec.engine, (*location, "engine"))


# --- the reverter --------------------------------------------------------------------------


def revert_router(action: RouterRevert) -> None:
    """Idempotent, and safe in any process: adds the worker back unless the router lists
    it already, then reads the list to see it there. A router that is gone (nothing
    listens on its port) leaves nothing to revert: a new one starts from its command line.
    A router that answers but does not take the worker back is an error saying why."""
    if str(action.get("action", "remove")) != "remove":
        raise ValueError(f"unknown vllm-router action to revert '{action.get('action')}'")
    url, worker = str(action["url"]).rstrip("/"), str(action["worker"])
    timeout = float(action.get("add_timeout", 30.0))
    try:
        if worker in list_workers(url):
            return
        problem: str | None = None
        try:
            resp = call("POST", url, "/add_worker", worker, timeout=timeout)
        except RouterGone:
            raise
        except EnvironmentProblem as exc:  # a timeout: the router may add it all the same
            problem = (f"{exc} (it answers once the worker passes its health check: is the "
                       "worker up?)")
            status = None
        else:
            status = resp.status_code
            if not resp.is_success:
                problem = (f"vllm-router at {url} refused POST /add_worker?url={worker}: "
                           f"HTTP {status} {resp.text.strip()[:300]}")
        listed = list_workers(url)
    except RouterGone:
        return  # its worker list went with it; a new router starts from its command line
    if worker in listed:
        return
    raise EnvironmentProblem(
        (problem or f"vllm-router at {url} answered POST /add_worker?url={worker} with "
                    f"HTTP {status} but does not list it afterwards")
        + f"; its workers now: {', '.join(listed) or 'none'}. Add it by hand once the "
        f"worker answers: curl -X POST '{url}/add_worker?url={worker}'")


ROUTER = FaultBackend(
    spec=RouterFault,
    injector=make_router_fault,
    revert=revert_router,  # type: ignore[arg-type]  # a dict from the journal
    description="One vllm-router worker removed from rotation through its HTTP admin API "
                "(added back at revert).",
    blast_radius=lambda spec: 1,  # one worker
    references=references,
    markers=markers,
    label=lambda spec: f"router {spec.action}",
)
