"""Client-side fault: request_flood. While applied, the harness keeps `concurrency` long
requests in flight against the target, to push the engine into KV-cache pressure: a full
cache, a waiting queue, preemptions. Each finished request is recorded like a load request,
with `shape` set to the flood's name, so checks can tell the flood from the background load.

With `rate` the flood is an open loop instead: requests start at fixed times, `rate` per
second, whatever the answers (no backoff after failures), like independent clients
arriving; `concurrency` caps how many are in flight, and an arrival that found every one of
them busy is dropped by the client and counted (see `ArrivalSchedule`).

Every wait is bounded (a hostile target must not hang the harness): connect and read
timeouts on each request, a total deadline the controller enforces by cutting the
connection, capped lines and bodies. On stop the controller cuts every open connection, so
the flood ends within a second even when the target answers nothing; what was in flight
is recorded as `interrupted`. Flood requests are never retried: they are pressure, not a
client with a retry policy.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

import httpx
from pydantic import Field, field_validator

from llmdrill.faults.base import fault_window
from llmdrill.faults.client import ClientActivity, engine_queue, queue_rise, revert_client
from llmdrill.load.openai_api import make_prompt, status_error_class
from llmdrill.load.sse import StreamTally, error_type_of_body, read_whole_body, stream_error
from llmdrill.model.events import EventKind
from llmdrill.model.verdict import FaultEffect
from llmdrill.plugin import FaultBackend
from llmdrill.scenario.fields import (
    Name,
    Strict,
    Timeouts,
    http_url,
)
from llmdrill.scenario.units import PositiveInt

if TYPE_CHECKING:
    from llmdrill.model.context import RunContext
    from llmdrill.model.records import Evidence, RequestRecord


# --- the spec: the YAML under this key ----------------------------------------


class RequestFloodFault(Strict):
    """Client-side: a flood of long requests (long prompts, long outputs) while it lasts."""

    concurrency: PositiveInt = Field(
        default=16, description="Requests kept in flight, each sent again as soon as it ends "
        "(with `rate`: the most in flight at once)."
    )
    rate: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        default=None,
        description="Open loop: requests start at this rate whatever the answers, like "
        "independent clients arriving; `concurrency` then caps how many may be in flight (an "
        "arrival finding every slot busy is counted as dropped by the client, not sent). "
        "Unset: a closed loop of `concurrency` requests back to back.",
    )
    api: Literal["chat", "completions"] = Field(
        default="completions", description="Endpoint: /v1/chat/completions or /v1/completions."
    )
    prompt_tokens: PositiveInt = Field(default=400, description="Prompt length, in tokens.")
    max_tokens: PositiveInt = Field(default=100, description="Output tokens asked for.")
    stream: bool = Field(default=True, description="Ask for streamed (SSE) responses.")
    ignore_eos: bool = Field(
        default=True, description="vLLM extension: generate exactly max_tokens tokens."
    )
    name: Name = Field(default="flood", description="Request shape name in the evidence.")
    timeouts: Timeouts = Field(
        default_factory=Timeouts,
        description="Deadlines of each flood request (never retried); on stop, requests in "
        "flight are cut and recorded as interrupted.",
    )
    base_url: str | None = Field(
        default=None, description="Where the flood goes (default: target.base_url)."
    )

    @field_validator("base_url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        return None if url is None else http_url(url)


BACKEND_KEY = "request_flood"
MAX_BODY_BYTES = 1 << 20  # a whole (non-streamed) answer
MAX_ERROR_BODY_BYTES = 64 << 10  # an error answer: only its `type` is read
MAX_LINE_BYTES = 1 << 20  # one SSE line
WATCH_INTERVAL = 0.1  # how often the controller looks for requests past their deadline
STOP_GRACE = 2.0  # after cutting, how long workers get to record their own requests
BACKOFF_BASE, BACKOFF_MAX = 0.1, 1.0  # pause after failures, so a dead target is not spun on
ARRIVALS_EVENT = EventKind.FLOOD_ARRIVALS  # an open-loop flood stopped: its dropped arrivals

Error = tuple[str, str]  # (error class, error type)



class ConnectionCutter:
    """Lets another thread end a blocking httpx request at once.

    httpcore's `trace` hook hands over each new connection's socket; `shutdown()` on it
    wakes a read blocked in another thread (a plain close() would not). A cut asked for
    before the connection exists is applied as soon as it does.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.reason: str | None = None

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event != "connection.connect_tcp.complete":
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if not isinstance(sock, socket.socket):
            return
        with self._lock:
            self._sock = sock
            cut_now = self.reason is not None
        if cut_now:
            _shutdown(sock)

    def cut(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
            sock = self._sock
        if sock is not None:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed: nothing left to cut
        sock.shutdown(socket.SHUT_RDWR)


def classify_exception(exc: BaseException, got_response: bool) -> Error:
    """Error class and type of a transport failure, as the load generator classifies them."""
    name = type(exc).__name__
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return "timeout", name
    if got_response:
        return "incomplete_stream", name
    if isinstance(exc, httpx.ConnectError):
        return "connect", name  # refused, unreachable, unresolvable: nothing was sent
    if isinstance(exc, (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError,
                        ConnectionError)):
        return "reset", name  # the server dropped the connection before answering
    if isinstance(exc, httpx.ProtocolError):
        return "protocol", name
    if isinstance(exc, (httpx.TransportError, OSError)):
        return "connect", name
    return "protocol", name



def read_capped(chunks: Iterable[bytes], cap: int) -> tuple[bytes, bool]:
    """At most `cap` bytes of a body, and whether there was more (the rest is not read)."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        if len(buf) > cap:
            return bytes(buf[:cap]), True
    return bytes(buf), False


def read_sse(chunks: Iterable[bytes], tally: StreamTally,
             clock: Callable[[], float] = time.time,
             max_line: int = MAX_LINE_BYTES) -> Error | None:
    """Feed an SSE body to `tally` line by line; the stream's error, or None if it ended
    with [DONE]. Stops reading at [DONE] and at a line over `max_line` bytes."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        while (newline := buf.find(b"\n")) >= 0:
            line = bytes(buf[:newline])
            del buf[:newline + 1]
            tally.feed_line(line, clock())
            if tally.done:
                break
        if tally.done:
            break
        if len(buf) > max_line:
            return "protocol", "line_too_long"
    # A stream that ended with [DONE] but generated nothing is `empty`.
    return stream_error(tally)


def read_whole(body: bytes, tally: StreamTally) -> Error | None:
    """Usage and id of a non-streamed answer; `empty` if it generated nothing."""
    return read_whole_body(body, tally)


class ArrivalSchedule:
    """The arrivals of an open-loop flood: the k-th at `start + k / rate` (k = 0, 1, 2...),
    whatever the answers. Free workers take arrivals in order, each waits until its time.
    Without a `start`, the first arrival is when the first worker is ready to send it (a
    worker's first client can take a while to build on a busy machine: the first arrivals
    must not be dropped for that).

    An arrival more than one interval overdue when a worker takes it came while every
    worker was busy, and the next one has come due since: it is dropped (counted, never
    sent), like every arrival after it that is also more than one interval overdue; the
    worker takes the first one overdue by at most an interval and sends it at once.
    Thread-safe: all workers share one.
    """

    def __init__(self, rate: float, start: float | None = None) -> None:
        self.rate = rate
        self.start = start
        self.interval = 1.0 / rate
        self.dropped = 0  # arrivals skipped so far
        self._next = 0  # the next arrival no worker has taken
        self._lock = threading.Lock()

    def at(self, k: int) -> float:
        """When the k-th arrival is due (computed, not summed: no drift over a long run)."""
        if self.start is None:
            raise ValueError("the schedule has not started: no arrival is due yet")
        return self.start + k / self.rate

    def take(self, now: float) -> tuple[float, int]:
        """The next arrival's time, for the worker free at `now`, and how many arrivals it
        skipped as dropped to get there."""
        with self._lock:
            if self.start is None:
                self.start = now
            skipped = self._skip(now)
            slot = self.at(self._next)
            self._next += 1
            return slot, skipped

    def settle(self, now: float) -> int:
        """At the end: count as dropped the arrivals overdue by more than one interval that
        no worker took (every request was still in flight); how many."""
        with self._lock:
            return 0 if self.start is None else self._skip(now)

    def _skip(self, now: float) -> int:
        if now - self.at(self._next) <= self.interval:
            return 0
        # The first arrival due at or after now - interval: at(k) >= now - interval.
        first = max(self._next + 1, math.ceil((now - self.at(0)) * self.rate - 1))
        while now - self.at(first) > self.interval:  # float rounding of the line above
            first += 1
        skipped = first - self._next
        self._next = first
        self.dropped += skipped
        return skipped


@dataclass
class _InFlight:
    """One request of one worker; `recorded` makes sure it is recorded once, by the worker
    or, if the worker does not return in time after a stop, by the controller."""

    start: float
    cutter: ConnectionCutter = field(default_factory=ConnectionCutter)
    tally: StreamTally = field(default_factory=StreamTally)
    status: int | None = None
    request_id: str | None = None
    retry_after: bool = False
    recorded: bool = False


class RequestFlood(ClientActivity):
    backend = BACKEND_KEY

    def __init__(self, ctx: RunContext, fault_name: str, spec: RequestFloodFault) -> None:
        super().__init__(fault_name)
        self.ctx = ctx
        self.spec = spec
        self.base_url = (spec.base_url or ctx.base_url).rstrip("/")
        self.model = ctx.scenario.target.model
        self.path = "/v1/chat/completions" if spec.api == "chat" else "/v1/completions"
        self.outcomes: Counter[str] = Counter()  # error class (or "ok") per recorded request
        self._lock = threading.Lock()
        self._pending: list[dict[str, Any]] = []
        self._closed = False
        self.schedule: ArrivalSchedule | None = None  # open loop (`rate`): set by run()

    def describe(self) -> str:
        s = self.spec
        how = "streamed " if s.stream else ""
        tokens = f"{s.prompt_tokens} prompt + {s.max_tokens} output tokens each"
        if s.rate is not None:
            return (f"start {s.rate:g} {how}{s.api} requests/s (at most {s.concurrency} in "
                    f"flight; {tokens}) against {self.base_url}")
        return (f"keep {s.concurrency} {how}{s.api} requests in flight ({tokens}) against "
                f"{self.base_url}")

    def apply(self) -> None:
        # The runner applies the same injector again when a later phase lists the fault
        # again: start from a fresh stop event, and record again.
        self._stop = threading.Event()
        with self._lock:
            self._closed = False
        super().apply()

    # -- requests -------------------------------------------------------------------------

    def client(self) -> httpx.Client:
        t = self.spec.timeouts
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity",
                   **self.ctx.headers}
        if self.spec.stream:
            headers["Accept"] = "text/event-stream"
        # No keep-alive: every request opens its connection, so the cutter always sees it.
        # No environment proxies, like the load generator: the flood goes to the target.
        return httpx.Client(
            timeout=httpx.Timeout(connect=t.connect, read=t.read, write=t.read, pool=t.connect),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=0),
            headers=headers, follow_redirects=False, trust_env=False,
        )

    def body(self, rng: random.Random) -> bytes:
        s = self.spec
        body: dict[str, Any] = {"model": self.model, "max_tokens": s.max_tokens,
                                "stream": s.stream}
        if s.ignore_eos:
            body["ignore_eos"] = True
        if s.stream:
            body["stream_options"] = {"include_usage": True}
        prompt = make_prompt(s.prompt_tokens, rng)
        if s.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        return json.dumps(body).encode()

    def record(self, flight: _InFlight, end: float, error: Error | None,
               finished: bool = True) -> None:
        tally = flight.tally
        raw = {
            "start": flight.start, "end": end, "api": self.spec.api, "stream": self.spec.stream,
            "ttft": (tally.first_token_at - flight.start) if tally.first_token_at else None,
            "status": flight.status,
            "error_class": None if error is None else error[0],
            "error_type": None if error is None else error[1],
            "attempts": 1, "output_tokens": tally.output_tokens,
            "prompt_tokens": tally.prompt_tokens or 0,
            "itl_max": tally.gap_max if tally.token_events > 1 else None,
            "itl_mean": tally.gap_mean,
            "request_id": flight.request_id or tally.response_id,
            "finished": finished, "shape": self.spec.name, "retry_after": flight.retry_after,
        }
        with self._lock:
            if self._closed:
                return  # a worker that outlived the stop: its request is already recorded
            self.outcomes["ok" if error is None else error[0]] += 1
            self._pending.append(raw)

    def flush(self) -> None:
        """Hand the recorded requests to the store, from the controller only: a store write
        can take tens of ms on a busy machine, which the workers must not wait for (the
        flood would thin out into bursts)."""
        with self._lock:
            batch, self._pending = self._pending, []
        store = self.ctx.store
        if batch and store is not None:  # None only at plan time, when nothing runs
            store.add_requests(batch)

    # -- the activity ---------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        rate = self.spec.rate
        # A fresh schedule per apply: a flood applied again starts its arrivals anew.
        self.schedule = None if rate is None else ArrivalSchedule(rate)
        workers = [_Worker(self, i) for i in range(self.spec.concurrency)]
        threads = [threading.Thread(target=w.loop, args=(stop,), daemon=True,
                                    name=f"flood-{self.fault_name}-{w.index}") for w in workers]
        for thread in threads:
            thread.start()
        total = self.spec.timeouts.total
        try:
            while not stop.wait(WATCH_INTERVAL):
                now = time.time()
                for worker in workers:
                    worker.cut_if_older(now - total, "total_deadline")
                self.flush()
        finally:
            stop.set()  # also when the loop itself failed: no worker may outlive run()
            self._shut_down(workers, threads)

    def _shut_down(self, workers: list[_Worker], threads: list[threading.Thread]) -> None:
        for worker in workers:
            worker.cut_if_older(float("inf"), "stop")
        grace_end = time.time() + STOP_GRACE
        for thread in threads:
            thread.join(max(0.0, grace_end - time.time()))
        now = time.time()
        for worker in workers:
            worker.abandon(now)  # a worker still stuck (e.g. in connect) is recorded for it
        with self._lock:
            self._closed = True
        self.flush()
        counts = ", ".join(f"{n} {k}" for k, n in sorted(self.outcomes.items()))
        line = (f"{self.fault_name} stopped: {sum(self.outcomes.values())} requests recorded "
                f"({counts or 'none'})")
        dropped = self._record_arrivals(now)
        if dropped:
            line += f"; {dropped_text(dropped, self.spec.concurrency)}"
        self.ctx.progress.event(line)

    def _record_arrivals(self, now: float) -> int:
        """An open loop's arrivals dropped while it ran, recorded as an event; 0 for a
        closed loop."""
        schedule = self.schedule
        if schedule is None:
            return 0
        schedule.settle(now)
        store = self.ctx.store
        if store is not None:
            store.add_event(now, ARRIVALS_EVENT, {
                "fault": self.fault_name, "rate": schedule.rate,
                "concurrency": self.spec.concurrency, "dropped": schedule.dropped})
        return schedule.dropped

    def effect(self, evidence: Evidence) -> FaultEffect:
        """Whether the flood reached the engine (see `judge_flood`), and, for an open loop,
        how many arrivals the client dropped."""
        window = fault_window(evidence, self.fault_name)
        if window is None:
            return FaultEffect(None, "the fault has no apply time in the evidence")
        effect = judge_flood(self.spec.name, evidence, window.start, window.end)
        dropped = dropped_arrivals(evidence, self.fault_name)
        if not dropped:
            return effect
        return FaultEffect(effect.landed,
                           f"{effect.detail}; {dropped_text(dropped, self.spec.concurrency)}")


def dropped_text(dropped: int, concurrency: int) -> str:
    return f"{dropped} arrivals dropped (all {concurrency} slots busy)"


def dropped_arrivals(evidence: Evidence, fault: str) -> int:
    """Arrivals an open-loop flood dropped, over every time it was applied."""
    return sum(int(d.get("dropped", 0)) for _, d in evidence.events_of(ARRIVALS_EVENT)
               if d.get("fault") == fault)


class _Worker:
    """One request at a time, each on its own connection: back to back (closed loop), or
    at the next arrival of the flood's schedule (open loop)."""

    def __init__(self, flood: RequestFlood, index: int) -> None:
        self.flood = flood
        self.index = index
        self.rng = random.Random()
        self._lock = threading.Lock()
        self._current: _InFlight | None = None

    def loop(self, stop: threading.Event) -> None:
        failures = 0
        schedule = self.flood.schedule
        try:
            with self.flood.client() as client:
                while not stop.is_set():
                    if schedule is not None:  # open loop: no backoff, arrivals keep coming
                        at, _ = schedule.take(time.time())
                        if not stop.wait(max(0.0, at - time.time())):
                            self.one(client, stop)
                        continue
                    ok = self.one(client, stop)
                    failures = 0 if ok else failures + 1
                    if failures:
                        stop.wait(min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (failures - 1)))
        except Exception as exc:  # one broken worker must not take the run down
            self.flood.error = f"{type(exc).__name__}: {exc}"

    def cut_if_older(self, started_before: float, reason: str) -> None:
        with self._lock:
            flight = self._current
        if flight is not None and flight.start <= started_before:
            flight.cutter.cut(reason)

    def abandon(self, now: float) -> None:
        with self._lock:
            flight = self._current
            if flight is None or flight.recorded:
                return
            flight.recorded = True
            self._current = None
        self.flood.record(flight, now, ("interrupted", "stopped"), finished=False)

    def one(self, client: httpx.Client, stop: threading.Event) -> bool:
        """One request, recorded; whether it succeeded."""
        flight = _InFlight(start=time.time())
        with self._lock:
            self._current = flight
        # Checked after publishing the request: a stop from now on finds and cuts it.
        if stop.is_set():
            with self._lock:
                self._current = None
            return True
        error = self._send(client, flight)
        reason = flight.cutter.reason
        finished = True
        if error is not None and reason == "stop":
            error, finished = ("interrupted", "stopped"), False
        elif error is not None and reason == "total_deadline":
            error = ("timeout", "total_deadline")
        with self._lock:
            if flight.recorded:
                return error is None  # the controller recorded it after the grace period
            flight.recorded = True
            self._current = None
        self.flood.record(flight, time.time(), error, finished)
        return error is None

    def _send(self, client: httpx.Client, flight: _InFlight) -> Error | None:
        flood = self.flood
        try:
            with client.stream("POST", f"{flood.base_url}{flood.path}",
                               content=flood.body(self.rng),
                               extensions={"trace": flight.cutter.trace}) as resp:
                flight.status = resp.status_code
                rid = resp.headers.get("x-request-id")
                flight.request_id = rid[:128] if rid else None
                if resp.status_code != 200:
                    flight.retry_after = bool(resp.headers.get("retry-after"))
                    body, _ = read_capped(resp.iter_bytes(), MAX_ERROR_BODY_BYTES)
                    return (status_error_class(resp.status_code),
                            error_type_of_body(body) or f"status_{resp.status_code}")
                if flood.spec.stream:
                    return read_sse(resp.iter_bytes(), flight.tally)
                body, over = read_capped(resp.iter_bytes(), MAX_BODY_BYTES)
                if over:
                    return "protocol", "body_too_large"
                return read_whole(body, flight.tally)
        except (httpx.HTTPError, OSError) as exc:
            return classify_exception(exc, flight.status is not None)


REFUSALS = (429, 503)


QUEUE_SHARE = 0.5


def peak_in_flight(records: list[RequestRecord]) -> int:
    """The most of these requests that were open at the same time."""
    edges = sorted([(r.start, 1) for r in records] + [(r.end, -1) for r in records],
                   key=lambda e: (e[0], e[1]))
    level = peak = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    return peak


def judge_flood(shape: str, evidence: Evidence, start: float, end: float) -> FaultEffect:
    """A flood landed when its requests reached the engine: answered (tokens or a 200) or
    refused (429/503: the server pushed back), and, when the engine's metrics were scraped
    meanwhile, its queue (running + waiting) rose, or refusals show it was full."""
    sent = [r for r in evidence.requests if r.shape == shape and start <= r.start < end]
    if not sent:
        return FaultEffect(None, f"no flood request (shape '{shape}') was recorded while the "
                                 "fault was on: nothing to judge from")
    answered = [r for r in sent if r.status == 200 and (r.ok or r.output_tokens or r.ttft)]
    refused = [r for r in sent if r.status in REFUSALS]
    errors = Counter(r.error_class or "ok" for r in sent)
    tally = ", ".join(f"{k} {v}" for k, v in sorted(errors.items()))
    counted = (f"{len(sent)} flood requests sent: {len(answered)} answered, "
               f"{len(refused)} refused (429/503) [{tally}]")
    if not answered and not refused:
        return FaultEffect(False, f"{counted}: none reached the engine; is the flood's "
                                  "base_url the API, reachable from here?")
    rise = queue_rise(engine_queue(evidence), start, end)
    if rise is None:
        return FaultEffect(True, f"{counted}; no engine metrics scraped meanwhile, judged "
                                 "from the answers alone")
    queue = f"engine running+waiting {rise[0]:g} before, up to {rise[1]:g} during"
    # Other traffic moves the queue by a few: want a rise worth the flood's own size.
    wanted = max(1.0, QUEUE_SHARE * peak_in_flight(sent))
    if rise[1] >= rise[0] + wanted or refused:
        return FaultEffect(True, f"{counted}; {queue}")
    return FaultEffect(False, f"{counted}, but {queue}: the engine whose metrics were scraped "
                              "never saw the flood; does metrics_url belong to the engine "
                              "behind the flood's base_url?")


def make_request_flood(ctx: RunContext, name: str, spec: RequestFloodFault) -> RequestFlood:
    return RequestFlood(ctx, name, spec)


REQUEST_FLOOD = FaultBackend(
    spec=RequestFloodFault,
    injector=make_request_flood,
    revert=revert_client,
    description="Extra long requests from the harness while applied.",
    blast_radius=lambda spec: int(spec.concurrency),
)
