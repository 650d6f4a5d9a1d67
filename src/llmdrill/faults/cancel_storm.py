"""Client-side fault: cancel_storm. Waves of streaming requests that clients abandon
mid-flight, the way users close tabs and retrying clients give up.

Each stream is a bare TCP connection (asyncio streams, no HTTP client library) so that
how the client leaves is exact: `graceful` sends FIN (shutdown) and reads on, discarding,
until the server closes too (at most `hold`), `reset` sends RST (SO_LINGER 0, then
close), `stop_reading` stops reading and holds the connection for `hold` before the RST.
A library would pool, drain or half-close connections on its own. A wave's streams share
one event loop in the wave's thread.

What the engine does after the drop is not this module's business: it only records when
each wave started and when its last stream was dropped (a `storm_wave` event) plus one
request sample per stream (shape "cancel_storm"); the kv_cache_cleanup check compares
the engine's gauges with those times.

Every wait has a deadline and every read a size cap: a hostile or broken target can make
a stream fail, never hang the harness.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import ssl
import string
import struct
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from llmdrill.faults.base import EnvironmentProblem
from llmdrill.faults.client import ClientActivity, engine_queue, queue_rise, revert_client
from llmdrill.load.openai_api import make_prompt, status_error_class
from llmdrill.load.sse import StreamTally, error_type_of_body
from llmdrill.model.events import EventKind
from llmdrill.model.verdict import FaultEffect
from llmdrill.plugin import FaultBackend
from llmdrill.scenario.fields import (
    APIS,
    Api,
    Strict,
    http_url,
)
from llmdrill.scenario.units import Duration, PositiveInt, format_duration

if TYPE_CHECKING:
    from llmdrill.model.context import RunContext
    from llmdrill.model.records import Evidence


# --- the spec: the YAML under this key ----------------------------------------


class AbortAfter(Strict):
    """When a cancel-storm client drops its stream: after some chunks, or after a delay."""

    chunks: int | None = Field(
        default=None, ge=0,
        description="Drop after this many SSE data events that carry a token; 0 drops as "
        "soon as the response headers arrive, before any token (during prefill).",
    )
    delay: Duration | None = Field(default=None, description="Drop this long after sending.")

    @model_validator(mode="after")
    def _one(self) -> AbortAfter:
        if (self.chunks is None) == (self.delay is None):
            raise ValueError("give exactly one of chunks or delay")
        return self


class CancelStormFault(Strict):
    """Client-side: waves of streaming requests that are abandoned mid-flight."""

    streams: PositiveInt = Field(default=30, description="Concurrent streams per wave.")
    apis: list[Api] = Field(
        default_factory=lambda: list(APIS), min_length=1,
        description="APIs the streams use, in turn.",
    )
    prompt_tokens: PositiveInt = Field(default=64, description="Prompt length, in tokens.")
    max_tokens: PositiveInt = Field(
        default=256,
        description="Output tokens asked for (with ignore_eos): what an engine that misses "
        "the disconnect keeps generating for nobody.",
    )
    n: PositiveInt = Field(
        default=1,
        description="Completions per request (the API's `n`): each is work an engine that "
        "misses the disconnect keeps doing for nobody.",
    )
    abort_after: AbortAfter = Field(
        default_factory=lambda: AbortAfter(chunks=3),
        description="When each stream is dropped: after `chunks` token events or a `delay`.",
    )
    close: Literal["graceful", "reset", "stop_reading"] = Field(
        default="reset",
        description="graceful: FIN, then read on until the server closes too (at most "
        "`hold`); reset: TCP RST; stop_reading: stop reading and hold the connection open "
        "for `hold`, then reset it.",
    )
    hold: Duration = Field(
        default=5.0,
        description="How long stop_reading holds a connection, and the longest a graceful "
        "close waits for the server's side to close.",
    )
    waves: PositiveInt = Field(default=1, description="How many waves the storm sends.")
    interval: Duration = Field(default=5.0, description="Time between the starts of waves.")
    start_after: Duration = Field(
        default=0.0,
        description="Delay from the fault's apply to its first wave; lets two storms in one "
        "phase take turns.",
    )
    base_url: str | None = Field(
        default=None, description="Where the storm goes (default: target.base_url)."
    )

    @field_validator("base_url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        return None if url is None else http_url(url)


BACKEND = "cancel_storm"
SHAPE = "cancel_storm"  # the request shape of storm samples, kept apart from the load's
EVENT = EventKind.STORM_WAVE
API_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}

CONNECT_TIMEOUT = 5.0
STREAM_DEADLINE = 30.0  # a stream that never reaches its abort point is dropped after this
GATE_WAIT = CONNECT_TIMEOUT + 5.0  # a connected stream sends after this even if the gate stuck
POLL = 0.2  # how often a wave looks at the stop event
ERROR_BODY_WAIT = 2.0
MAX_HEAD = 64 * 1024
MAX_LINE = 1024 * 1024
MAX_ERROR_BODY = 16 * 1024
MAX_CHUNK_SIZE_LINE = 1024
READ_SIZE = 64 * 1024
LATE_NOTE_S = 1.0  # a drop this late against its plan is mentioned in the progress line
# Slack on top of a stream's longest life, so a wave's join can never wait for ever.
JOIN_SLACK = 10.0


Outcome = Literal["aborted", "completed", "failed"]


# --- pure helpers ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    scheme: str
    host: str
    port: int
    prefix: str  # the base URL's path, put before /v1/...

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_endpoint(base_url: str) -> Endpoint:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"'{base_url}' is not an http:// or https:// URL with a host")
    try:
        port = parts.port
    except ValueError as exc:  # urlsplit raises on a bad port only when asked
        raise ValueError(f"'{base_url}' has an invalid port") from exc
    default = 443 if parts.scheme == "https" else 80
    return Endpoint(parts.scheme, parts.hostname, port or default, parts.path.rstrip("/"))



def request_body(api: str, model: str, prompt: str, max_tokens: int, n: int = 1) -> bytes:
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "stream": True,
                            "ignore_eos": True}
    if n > 1:
        body["n"] = n
    if api == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return json.dumps(body).encode()


_OWN_HEADERS = {"host", "content-type", "content-length", "accept", "connection",
                "transfer-encoding"}


def build_request(endpoint: Endpoint, api: str, body: bytes,
                  headers: dict[str, str]) -> bytes:
    """One HTTP/1.1 request, `Connection: close` so nothing pools or reuses the socket."""
    lines = [
        f"POST {endpoint.prefix}{API_PATHS[api]} HTTP/1.1",
        f"Host: {endpoint.host_header}",
        "Content-Type: application/json",
        "Accept: text/event-stream",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    for key, value in headers.items():
        if any(c in key + value for c in "\r\n\0") or ":" in key:
            raise ValueError(f"header '{key}' contains characters a header cannot hold")
        if key.lower() not in _OWN_HEADERS:
            lines.append(f"{key}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True, slots=True)
class Head:
    status: int
    headers: dict[str, str]  # names lower-cased

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length", "").strip()
        return int(value) if value.isdigit() else None


def parse_head(raw: bytes) -> Head:
    """Status line and headers (without the blank line); ValueError if it is not HTTP."""
    lines = raw.split(b"\r\n")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ValueError("not an HTTP status line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return Head(int(parts[1]), headers)


class ChunkedDecoder:
    """Incremental HTTP/1.1 chunked transfer decoding (trailers are ignored)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._left = 0
        self._state: Literal["size", "data", "crlf"] = "size"
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out: list[bytes] = []
        while not self.done:
            if self._state == "size":
                end = self._buf.find(b"\r\n")
                if end < 0:
                    if len(self._buf) > MAX_CHUNK_SIZE_LINE:
                        raise ValueError("chunk size line too long")
                    break
                size_text = bytes(self._buf[:end]).split(b";")[0].strip()
                if not size_text or any(chr(c) not in string.hexdigits for c in size_text):
                    raise ValueError("invalid chunk size")
                del self._buf[: end + 2]
                size = int(size_text, 16)
                if size == 0:
                    self.done = True
                    break
                self._left, self._state = size, "data"
            elif self._state == "data":
                take = bytes(self._buf[: self._left])
                if not take:
                    break
                out.append(take)
                del self._buf[: len(take)]
                self._left -= len(take)
                if self._left:
                    break
                self._state = "crlf"
            else:
                if len(self._buf) < 2:
                    break
                if self._buf[:2] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
                del self._buf[:2]
                self._state = "size"
        return b"".join(out)


class SseCounter:
    """Splits the body into lines and counts token events (StreamTally's rules: the chat
    role preamble and empty chunks carry no token and do not count)."""

    def __init__(self) -> None:
        self.tally = StreamTally()
        self._partial = bytearray()

    def feed(self, data: bytes, now: float) -> None:
        self._partial += data
        while (end := self._partial.find(b"\n")) >= 0:
            line = bytes(self._partial[:end]).rstrip(b"\r")
            del self._partial[: end + 1]
            self.tally.feed_line(line, now)
        if len(self._partial) > MAX_LINE:
            raise ValueError("line_too_long")


def wave_starts(applied_at: float, waves: int, interval: float, start_after: float
                ) -> list[float]:
    """When each wave starts: the first `start_after` after the apply, then every interval."""
    return [applied_at + start_after + i * interval for i in range(waves)]



def describe_abort(chunks: int | None, delay: float | None) -> str:
    if chunks == 0:
        return "before the first token (prefill)"
    if chunks is not None:
        return f"after {chunks} chunk{'s' if chunks != 1 else ''}"
    return f"after {format_duration(delay or 0.0)}"


# --- one stream -----------------------------------------------------------------------
#
# A wave runs in one asyncio loop (in the wave's thread), every stream a coroutine. A
# thread per stream was measured to fall apart under CPU contention: with the engine
# using both cores, 40 threads handing the GIL around dropped their streams up to 10s
# late, and starved the metrics scraper too.


@dataclass(frozen=True, slots=True)
class StreamPlan:
    endpoint: Endpoint
    api: str
    request: bytes
    prompt_tokens: int
    abort_chunks: int | None
    abort_delay: float | None
    close: str
    hold: float
    deadline: float = STREAM_DEADLINE


@dataclass(slots=True)
class StreamOutcome:
    api: str
    start: float
    end: float = 0.0
    dropped_at: float | None = None  # when our close reached the wire (FIN or RST)
    outcome: Outcome = "failed"
    status: int | None = None
    error_class: str | None = None
    error_type: str | None = None
    ttft: float | None = None
    tokens: int = 0
    late_s: float | None = None  # an abort-after-delay drop, against its plan
    drain: str | None = None  # how a graceful close ended: server_closed, hold_expired...
    streamed_on_s: float | None = None  # FIN to the end of a drain the server never closed

    def sample(self, prompt_tokens: int) -> dict[str, Any]:
        """A request sample; storm streams dropped as planned are not errors."""
        return {
            "start": self.start, "end": self.end, "api": self.api, "stream": True,
            "ttft": self.ttft, "status": self.status, "error_class": self.error_class,
            "error_type": self.error_type, "attempts": 1, "output_tokens": self.tokens,
            "prompt_tokens": prompt_tokens, "finished": True, "shape": SHAPE,
        }


class _Deadline(Exception):
    """The stream did not reach its abort point in time."""


class _Wake(Exception):
    """The delay of an abort-after-delay stream has passed."""


class Gate:
    """Lets a wave's streams connect first and then send together, so the engine gets one
    burst, not a trickle of requests as connections come up."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.open = asyncio.Event()

    def arrive(self) -> None:
        self.arrived += 1
        if self.arrived >= self.parties:
            self.open.set()

    async def wait(self) -> None:
        """Wait for the others; send anyway after GATE_WAIT (connects are bounded, so
        this is only a backstop)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(GATE_WAIT):
                await self.open.wait()


async def _read(reader: asyncio.StreamReader, deadline: float,
                wake_at: float | None = None) -> bytes:
    """One read (b"" at EOF) that never waits past the deadline or the wake time."""
    now = asyncio.get_running_loop().time()
    if wake_at is not None and now >= wake_at:
        raise _Wake
    if now >= deadline:
        raise _Deadline
    until = min(deadline, wake_at) if wake_at is not None else deadline
    try:
        async with asyncio.timeout(until - now):
            return await reader.read(READ_SIZE)
    except TimeoutError:
        raise _Wake if wake_at is not None and until == wake_at else _Deadline from None


async def _connect(endpoint: Endpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    context = ssl.create_default_context() if endpoint.scheme == "https" else None
    async with asyncio.timeout(CONNECT_TIMEOUT):
        reader, writer = await asyncio.open_connection(
            endpoint.host, endpoint.port, ssl=context, limit=MAX_HEAD,
            server_hostname=endpoint.host if context else None)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


def _reset(writer: asyncio.StreamWriter) -> float:
    """Close with an RST: SO_LINGER 0, then close the socket at once."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    dropped = time.time()
    writer.transport.abort()
    return dropped


async def drop(out: StreamOutcome, reader: asyncio.StreamReader,
               writer: asyncio.StreamWriter, mode: str, hold: float) -> None:
    """Leave the way `mode` says, recording in `out` when the FIN or RST went out and, for
    a graceful close, how the server answered it. Cancelled (the fault is reverted) during
    a hold or a drain, it resets the connection at once."""
    if mode == "stop_reading":
        # Read nothing more: the server's writes pile up in the socket buffers until the
        # hold is over, then the connection is reset.
        transport = writer.transport
        if isinstance(transport, asyncio.ReadTransport):  # else reads stop at the buffer
            transport.pause_reading()
        try:
            await asyncio.sleep(hold)
        finally:
            out.dropped_at = _reset(writer)
        return
    if mode == "reset" or not writer.can_write_eof():  # TLS cannot half-close: plain close
        out.dropped_at = _reset(writer) if mode == "reset" else _close(writer)
        return
    out.dropped_at = time.time()
    try:
        writer.write_eof()  # our FIN (shutdown SHUT_WR)
    except OSError as exc:  # the connection is already gone
        out.drain = f"error:{type(exc).__name__}"
        _reset(writer)
        return
    # A TCP-graceful close: read on (discarding) until the server closes its side too, at
    # most `hold`. A server or gateway that takes our FIN as "client gone" closes at once;
    # one that ignores it keeps streaming, and the engine keeps generating, for nobody.
    deadline = asyncio.get_running_loop().time() + hold
    try:
        while await _read(reader, deadline):
            pass
        out.drain = "server_closed"
    except _Deadline:
        out.drain = "hold_expired"
        out.streamed_on_s = time.time() - out.dropped_at
    except OSError as exc:
        out.drain = f"error:{type(exc).__name__}"
    except asyncio.CancelledError:
        out.drain = "stopped"
        out.streamed_on_s = time.time() - out.dropped_at
        _reset(writer)
        raise
    _close(writer)


def _close(writer: asyncio.StreamWriter) -> float:
    dropped = time.time()
    writer.transport.close()
    return dropped


async def run_stream(plan: StreamPlan, gate: Gate | None = None) -> StreamOutcome:
    """Open one stream, drop it at its abort point, and say what happened. Cancelled (the
    fault is reverted), it closes everything and reports what it got to."""
    out = StreamOutcome(api=plan.api, start=time.time())
    writer: asyncio.StreamWriter | None = None
    got_head = False
    try:
        try:
            reader, writer = await _connect(plan.endpoint)
        finally:
            if gate is not None:
                gate.arrive()
        if gate is not None:
            await gate.wait()
        out.start = time.time()  # the request starts when it is sent
        loop = asyncio.get_running_loop()
        deadline = loop.time() + plan.deadline
        writer.write(plan.request)
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await writer.drain()
        wake_at = loop.time() + plan.abort_delay if plan.abort_delay is not None else None
        try:
            head_raw = await _read_head(reader, deadline, wake_at)
        except _Wake:  # the delay passed while the request was still queued
            await _dropped(out, reader, writer, plan)
            return out
        head, rest = head_raw
        got_head = True
        out.status = head.status
        if head.status != 200:
            out.error_class = status_error_class(head.status)
            out.error_type = await _error_body_type(reader, rest) or f"status_{head.status}"
            return out
        if plan.abort_chunks == 0:
            # The engine accepted the request (headers go out once it is queued) and no
            # token has been read: this is the prefill abort.
            await _dropped(out, reader, writer, plan)
            return out
        await _read_until_abort(out, reader, writer, rest, head, plan, wake_at, deadline)
    except asyncio.CancelledError:
        if out.outcome != "aborted":
            out.error_class, out.error_type = "interrupted", "fault_stopped"
    except _Deadline:
        out.error_class, out.error_type = "timeout", "abort_point_not_reached"
    except TimeoutError as exc:
        out.error_class, out.error_type = "timeout", type(exc).__name__
    except ConnectionRefusedError as exc:
        out.error_class, out.error_type = "connect", type(exc).__name__
    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError,
            asyncio.IncompleteReadError) as exc:
        out.error_class = "incomplete_stream" if got_head else "reset"
        out.error_type = ("ConnectionResetError" if isinstance(exc, asyncio.IncompleteReadError)
                          else type(exc).__name__)
    except ssl.SSLError as exc:
        out.error_class, out.error_type = "protocol", type(exc).__name__
    except (ValueError, asyncio.LimitOverrunError) as exc:
        out.error_class, out.error_type = "protocol", str(exc)[:64]
    except OSError as exc:  # unreachable, name not found, ...
        out.error_class = "incomplete_stream" if got_head else "connect"
        out.error_type = type(exc).__name__
    finally:
        if writer is not None and out.dropped_at is None:
            _reset(writer)
        out.end = time.time()
    return out


async def _read_head(reader: asyncio.StreamReader, deadline: float,
                     wake_at: float | None) -> tuple[Head, bytes]:
    loop = asyncio.get_running_loop()
    until = min(deadline, wake_at) if wake_at is not None else deadline
    try:
        async with asyncio.timeout(max(0.0, until - loop.time())):
            raw = await reader.readuntil(b"\r\n\r\n")
    except TimeoutError:
        raise _Wake if wake_at is not None and until == wake_at else _Deadline from None
    except asyncio.LimitOverrunError:
        raise ValueError("response head too large") from None
    return parse_head(raw[:-4]), b""


async def _read_until_abort(out: StreamOutcome, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter, rest: bytes, head: Head,
                            plan: StreamPlan, wake_at: float | None, deadline: float) -> None:
    decoder = ChunkedDecoder() if head.chunked else None
    counter = SseCounter()
    data = rest
    while True:
        now = time.time()
        body = decoder.feed(data) if decoder is not None else data
        counter.feed(body, now)
        tally = counter.tally
        out.tokens = tally.token_events
        if tally.first_token_at is not None and out.ttft is None:
            out.ttft = tally.first_token_at - out.start
        if plan.abort_chunks is not None and tally.token_events >= plan.abort_chunks:
            await _dropped(out, reader, writer, plan)
            return
        if tally.error_type is not None:
            out.error_class, out.error_type = "incomplete_stream", tally.error_type
            return
        if tally.done or (decoder is not None and decoder.done):
            if tally.token_events == 0:
                # A 200 that ended before its abort point without a token: an empty
                # answer, not a stream that was dropped (a drop is never empty).
                out.error_class, out.error_type = "empty", "no_tokens"
                return
            out.outcome = "completed"  # the stream ended before its abort point
            return
        try:
            data = await _read(reader, deadline, wake_at)
        except _Wake:
            await _dropped(out, reader, writer, plan)
            return
        if not data:
            out.error_class, out.error_type = "incomplete_stream", "closed_before_abort"
            return


async def _dropped(out: StreamOutcome, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter, plan: StreamPlan) -> None:
    out.outcome = "aborted"
    if plan.abort_delay is not None:
        # How late the drop is against its plan: a starved harness drops late, and the
        # engine meanwhile serves clients that are still there.
        out.late_s = max(0.0, time.time() - (out.start + plan.abort_delay))
    try:
        await drop(out, reader, writer, plan.close, plan.hold)
    except asyncio.CancelledError:
        out.dropped_at = out.dropped_at or time.time()  # reset on the way out
        raise


async def _error_body_type(reader: asyncio.StreamReader, rest: bytes) -> str | None:
    """The error body's `type`, read briefly and capped (bodies only say why)."""
    body = bytearray(rest)
    deadline = asyncio.get_running_loop().time() + ERROR_BODY_WAIT
    with contextlib.suppress(_Deadline, OSError):
        while len(body) < MAX_ERROR_BODY and (data := await _read(reader, deadline)):
            body += data
    text = bytes(body[:MAX_ERROR_BODY])
    start = text.find(b"{")
    return error_type_of_body(text[start:].strip()) if start >= 0 else None


async def run_wave(plans: Sequence[StreamPlan], stop: threading.Event,
                   limit: float) -> list[StreamOutcome]:
    """All streams of a wave; when `stop` is set or `limit` passes, every open stream is
    cancelled (and its connection reset)."""
    gate = Gate(len(plans))
    tasks = [asyncio.create_task(run_stream(p, gate)) for p in plans]
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    pending: set[asyncio.Task[StreamOutcome]] = set(tasks)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=POLL)
        if pending and (stop.is_set() or loop.time() >= end):
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)
            break
    now = time.time()
    return [t.result() if not t.cancelled() else
            StreamOutcome(api=p.api, start=now, end=now, error_class="interrupted",
                          error_type="fault_stopped")
            for t, p in zip(tasks, plans, strict=True)]


# --- waves ----------------------------------------------------------------------------


def wave_detail(fault: str, wave: int, close: str, abort: str, started_at: float,
                outcomes: Sequence[StreamOutcome]) -> dict[str, Any]:
    """The storm_wave event: counts and the times the cleanup check measures from.
    `wave` is the wave's index within its fault, from 0 (shown from 1)."""
    failed = [o for o in outcomes if o.outcome == "failed"]
    drops = [o.dropped_at if o.dropped_at is not None else o.end for o in outcomes]
    errors = Counter(o.error_class or "unknown" for o in failed)
    lates = [o.late_s for o in outcomes if o.late_s is not None]
    drains = Counter(o.drain for o in outcomes if o.drain is not None)
    return {
        "fault": fault,
        "wave": wave,
        "started_at": started_at,
        # When the last stream was gone: from here on the engine has nobody to serve.
        "dropped_at": max(drops) if drops else started_at,
        "streams": len(outcomes),
        "aborted": sum(1 for o in outcomes if o.outcome == "aborted"),
        "completed": sum(1 for o in outcomes if o.outcome == "completed"),
        "failed": len(failed),
        "errors": dict(sorted(errors.items())),
        # Tokens the clients received before they left: the engine that served the wave
        # generated at least these (the check uses it to tell it watched that engine).
        "tokens": sum(o.tokens for o in outcomes),
        # The latest drop against its plan (abort after a delay): seconds the starved
        # harness was late, while the engine kept serving the still-connected clients.
        "late_s": round(max(lates), 3) if lates else None,
        # How the server answered graceful closes: closing at once, or streaming on until
        # the client gave up (`hold_expired`: it did not take the FIN as "client gone").
        "drain": dict(sorted(drains.items())),
        # Per graceful stream the server never closed: seconds from the FIN until the client
        # gave up (or the fault was reverted).
        "streamed_on_s": sorted(round(o.streamed_on_s, 2) for o in outcomes
                                if o.streamed_on_s is not None),
        "close": close,
        "abort_after": abort,
    }


def wave_line(fault: str, detail: dict[str, Any], waves: int) -> str:
    took = detail["dropped_at"] - detail["started_at"]
    line = (f"{fault} wave {detail['wave'] + 1}/{waves}: {detail['aborted']}/{detail['streams']} "
            f"streams dropped {detail['abort_after']} ({detail['close']}), last one "
            f"{took:.1f}s after the start")
    if detail["failed"]:
        errors = ", ".join(f"{k} {v}" for k, v in detail["errors"].items())
        line += f"; {detail['failed']} failed before the abort point ({errors})"
    if detail["completed"]:
        line += f"; {detail['completed']} ended before the abort point"
    kept = detail["drain"].get("hold_expired", 0)
    if kept:
        line += f"; the server kept streaming to {kept} after their FIN until they gave up"
    if (detail["late_s"] or 0) >= LATE_NOTE_S:
        line += f"; dropped up to {detail['late_s']:.1f}s late (the harness was starved)"
    return line


class CancelStorm(ClientActivity):
    backend = BACKEND

    def __init__(self, ctx: RunContext, fault_name: str, spec: CancelStormFault) -> None:
        super().__init__(fault_name)
        self.ctx = ctx
        self.spec = spec
        self.base_url = (spec.base_url or ctx.base_url).rstrip("/")

    def describe(self) -> str:
        s = self.spec
        waves = f"{s.waves} wave{'s' if s.waves != 1 else ''}"
        every = f" every {format_duration(s.interval)}" if s.waves > 1 else ""
        first = f", first after {format_duration(s.start_after)}" if s.start_after else ""
        hold = {"stop_reading": f" after holding {format_duration(s.hold)}",
                "graceful": f" (FIN, then up to {format_duration(s.hold)} for the server's)",
                }.get(s.close, "")
        times_n = f", n={s.n}" if s.n > 1 else ""
        return (f"cancel storm: {waves} of {s.streams} streams ({'/'.join(s.apis)}, "
                f"{s.prompt_tokens}+{s.max_tokens} tokens{times_n}) to "
                f"{self.base_url}{every}{first}; "
                f"drop {describe_abort(s.abort_after.chunks, s.abort_after.delay)}, "
                f"close {s.close}{hold}")

    def preflight(self) -> list[str]:
        try:
            endpoint = parse_endpoint(self.base_url)
        except ValueError as exc:
            raise EnvironmentProblem(f"cancel storm '{self.fault_name}': {exc}") from None
        try:
            socket.create_connection((endpoint.host, endpoint.port),
                                     timeout=CONNECT_TIMEOUT).close()
        except OSError as exc:
            raise EnvironmentProblem(
                f"cancel storm '{self.fault_name}': cannot connect to {self.base_url} "
                f"({type(exc).__name__}: {exc})"
            ) from None
        return [self.describe()]

    def plans(self, wave: int) -> list[StreamPlan]:
        s = self.spec
        endpoint = parse_endpoint(self.base_url)
        rng = random.Random(f"{self.ctx.run_id}/{self.fault_name}/{wave}")
        plans = []
        for i in range(s.streams):
            api = s.apis[i % len(s.apis)]
            body = request_body(api, self.ctx.scenario.target.model,
                                make_prompt(s.prompt_tokens, rng), s.max_tokens, s.n)
            plans.append(StreamPlan(endpoint, api, build_request(endpoint, api, body,
                                                                 self.ctx.headers),
                                    s.prompt_tokens, s.abort_after.chunks, s.abort_after.delay,
                                    s.close, s.hold))
        return plans

    def run(self, stop: threading.Event) -> None:
        s = self.spec
        waves: list[threading.Thread] = []
        starts = wave_starts(time.time(), s.waves, s.interval, s.start_after)
        for number, at in enumerate(starts, start=1):
            if stop.wait(max(0.0, at - time.time())):
                break
            thread = threading.Thread(target=self._wave, args=(number, stop), daemon=True,
                                      name=f"storm-{self.fault_name}-{number}")
            thread.start()
            waves.append(thread)
        for thread in waves:
            thread.join(self._stream_limit() + JOIN_SLACK)

    def _stream_limit(self) -> float:
        return CONNECT_TIMEOUT * 2 + GATE_WAIT + STREAM_DEADLINE + self.spec.hold

    def _wave(self, number: int, stop: threading.Event) -> None:
        started = time.time()
        plans = self.plans(number)
        done = asyncio.run(run_wave(plans, stop, self._stream_limit()))
        s = self.spec
        detail = wave_detail(self.fault_name, number - 1, s.close,
                             describe_abort(s.abort_after.chunks, s.abort_after.delay),
                             started, done)
        store = self.ctx.store
        if store is not None:
            store.add_requests([o.sample(p.prompt_tokens)
                                for o, p in zip(done, plans, strict=True)])
            store.add_event(started, EVENT, detail)
        self.ctx.progress.event(wave_line(self.fault_name, detail, s.waves))

    def effect(self, evidence: Evidence) -> FaultEffect:
        """Whether the storm's streams reached an engine (see `judge_storm`)."""
        return judge_storm(self.fault_name, evidence)


def judge_storm(fault: str, evidence: Evidence) -> FaultEffect:
    """A storm landed when its waves dropped streams that had started: streams that got
    the engine's answer (a 200 head, tokens) before they were dropped. A wave whose streams
    all failed before any answer did not; nor did a wave the engine never saw: when the
    engine's metrics were scraped during the wave and its queue (running + waiting) never
    rose, the answers came from somewhere else (another engine, a cache, a stub)."""
    waves = [d for _, d in evidence.events_of(EVENT) if d.get("fault") == fault]
    if not waves:
        return FaultEffect(None, "no storm wave was recorded while the fault was on (it was "
                                 "reverted before its first wave?): nothing to judge from")
    queue = engine_queue(evidence)
    landed: list[str] = []
    unanswered: list[str] = []
    unseen: list[str] = []
    unjudged: list[str] = []
    for d in sorted(waves, key=lambda w: int(w.get("wave", 0))):
        number = int(d.get("wave", 0)) + 1
        start, dropped = float(d.get("started_at", 0.0)), float(d.get("dropped_at", 0.0))
        samples = [r for r in evidence.requests if r.shape == SHAPE
                   and start <= r.start <= dropped + 0.001]
        answered = sum(1 for r in samples if r.status == 200 or r.ttft is not None)
        answered = min(int(d.get("streams", answered)), answered)
        if not answered and int(d.get("tokens", 0)) > 0:
            answered = int(d.get("aborted", 0))
        if not answered and int(d.get("aborted", 0)):
            # Dropped before any answer (a drop while queued or in prefill, by design):
            # it landed if the engine took the wave in: its queue rose, or it processed
            # the wave's prompts, while the wave was open or just after the drop.
            seen = _engine_took_in(evidence, queue, start, dropped,
                                   int(d.get("streams", 0)))
            if seen:
                landed.append(f"wave {number}: {d.get('aborted')} of {d.get('streams')} "
                              f"streams dropped before any answer, and the engine took "
                              f"them in ({seen})")
                continue
        if not answered or not int(d.get("aborted", 0)):
            errors = ", ".join(f"{k} {v}" for k, v in (d.get("errors") or {}).items())
            unanswered.append(f"wave {number}: {answered} of {d.get('streams')} streams "
                              f"answered, {d.get('aborted', 0)} dropped"
                              + (f" ({errors})" if errors else ""))
            continue
        first = min((r.start for r in samples), default=start)
        rise = queue_rise(queue, first, dropped + TAKE_IN_GRACE_S)
        if rise is None and queue:
            # The engine was scraped, but not while this wave was open (scrapes failing?):
            # its answers alone do not show which engine served them.
            unjudged.append(f"wave {number}: no scrape of the engine while its {answered} "
                            "answered streams were open")
            continue
        if rise is not None and rise[1] < rise[0] + max(1.0, QUEUE_SHARE * answered):
            # The queue gauge may miss a short wave between scrapes; the prompt-token
            # counter does not (e.g. a gateway that answered a few streams of a wave it
            # mostly held back).
            took_in = _engine_took_in(evidence, queue, start, dropped,
                                      int(d.get("streams", 0)))
            if took_in:
                landed.append(f"wave {number}: {d.get('aborted')} of {d.get('streams')} "
                              f"streams dropped, {answered} of them answered, and the "
                              f"engine took them in ({took_in})")
                continue
            unseen.append(f"wave {number}: the engine's running+waiting went from "
                          f"{rise[0]:g} to at most {rise[1]:g} while its {answered} answered "
                          "streams were open")
            continue
        landed.append(f"wave {number}: {d.get('aborted')} of {d.get('streams')} streams "
                      f"dropped {d.get('abort_after', '')}, {answered} of them answered"
                      + (f", engine queue {rise[0]:g} -> {rise[1]:g}" if rise else ""))
    notes = "; ".join(unanswered + [f"{u} (a wave the engine never saw)" for u in unseen]
                      + unjudged)
    if landed:
        return FaultEffect(True, f"{len(landed)} of {len(waves)} waves landed ("
                                 + "; ".join(landed) + ")" + (f"; {notes}" if notes else ""))
    if unjudged and not unseen:
        return FaultEffect(None, f"no wave shown to land ({notes}): nothing shows which "
                                 "engine served the storm")
    why = ("the streams never got an answer: is the storm's base_url the API the engine "
           "serves, reachable from here?" if unanswered else
           "the streams were answered, but the engine whose metrics were scraped never "
           "saw them: does metrics_url belong to the engine behind the storm's base_url?")
    return FaultEffect(False, f"no wave landed ({notes}): {why}")


# How long after a drop the engine may still be taking in a wave dropped while queued.
TAKE_IN_GRACE_S = 1.0
# The rise of the engine's running+waiting, as a share of a wave's answered streams, that
# shows the engine had the wave (other traffic moves it by a few either way).
QUEUE_SHARE = 0.5
PROMPT_TOKENS = "vllm:prompt_tokens_total"


def _engine_took_in(evidence: Evidence, queue: list[tuple[float, float]], start: float,
                    dropped: float, streams: int) -> str | None:
    """Evidence that the engine received a wave nobody got an answer from, or None."""
    end = dropped + TAKE_IN_GRACE_S
    rise = queue_rise(queue, start, end)
    if rise is not None and rise[1] >= rise[0] + max(1.0, 0.5 * streams):
        return f"running+waiting {rise[0]:g} -> {rise[1]:g}"
    prompts = evidence.series(PROMPT_TOKENS)
    before = [v for ts, v in prompts if ts < start]
    after = [v for ts, v in prompts if start <= ts <= end]
    if before and after:
        # The counter covers every client: take off the prompts of the other requests the
        # harness knows of, and want at least one token per stream of the wave beyond them.
        others = sum(r.prompt_tokens for r in evidence.requests
                     if r.shape != SHAPE and start - 1.0 <= r.start <= end)
        grown = max(after) - before[-1] - others
        if grown >= max(1.0, float(streams)):
            return f"{grown:g} prompt tokens processed beyond the other traffic's"
    return None


def make_cancel_storm(ctx: RunContext, name: str, spec: CancelStormFault) -> CancelStorm:
    return CancelStorm(ctx, name, spec)


def wave_markers(evidence: Evidence, t0: float) -> list[tuple[float, str]]:
    """Each wave's drop, drawn on the report's charts."""
    return [(round(float(d.get("dropped_at", ts)) - t0, 3),
             f"{d.get('fault', 'storm')} wave {int(d.get('wave', 0)) + 1}")
            for ts, d in evidence.events_of(EVENT)]


CANCEL_STORM = FaultBackend(
    spec=CancelStormFault,
    injector=make_cancel_storm,
    revert=revert_client,
    description="Waves of client streams abandoned mid-flight.",
    markers=wave_markers,
    blast_radius=lambda spec: int(spec.streams),
)
