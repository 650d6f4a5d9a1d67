"""The cancel storm's pure helpers, and its streams against a small in-process SSE server
on 127.0.0.1 that records exactly how each client left (FIN or RST, and when)."""

from __future__ import annotations

import asyncio
import json
import random
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from llmdrill.faults import cancel_storm as cs
from llmdrill.faults.cancel_storm import CancelStormFault
from llmdrill.faults.registry import make_injector
from llmdrill.harness.progress import Progress
from llmdrill.model.context import RunContext
from llmdrill.model.evidence import EvidenceStore
from llmdrill.scenario.models import Fault, Scenario

pytestmark = pytest.mark.unit


# --- pure helpers ---------------------------------------------------------------------


def test_parse_endpoint() -> None:
    assert cs.parse_endpoint("http://127.0.0.1:18000") == cs.Endpoint("http", "127.0.0.1",
                                                                      18000, "")
    https = cs.parse_endpoint("https://gw.example/llm/")
    assert https == cs.Endpoint("https", "gw.example", 443, "/llm")
    assert https.host_header == "gw.example"
    assert cs.parse_endpoint("http://[::1]:8080").host_header == "[::1]:8080"
    for bad in ("ftp://x", "http://", "127.0.0.1:18000", "http://h:99999"):
        with pytest.raises(ValueError):
            cs.parse_endpoint(bad)


def test_request_bodies_ask_for_a_long_streamed_answer() -> None:
    chat = json.loads(cs.request_body("chat", "tiny", "hi there", 400))
    assert chat == {"model": "tiny", "max_tokens": 400, "stream": True, "ignore_eos": True,
                    "messages": [{"role": "user", "content": "hi there"}]}
    completion = json.loads(cs.request_body("completions", "tiny", "hi", 5))
    assert completion["prompt"] == "hi" and "messages" not in completion
    assert "n" not in completion
    assert json.loads(cs.request_body("chat", "tiny", "hi", 5, n=4))["n"] == 4


def test_prompt_has_about_the_asked_tokens_and_differs_each_time() -> None:
    rng = random.Random(1)
    first, second = cs.make_prompt(48, rng), cs.make_prompt(48, rng)
    assert len(first.split()) == 48
    assert first != second  # no shared prefix for the prefix cache to hit


def test_build_request() -> None:
    endpoint = cs.parse_endpoint("http://127.0.0.1:8080/gw")
    raw = cs.build_request(endpoint, "chat", b"{}", {"Authorization": "Bearer k",
                                                      "Connection": "keep-alive"})
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /gw/v1/chat/completions HTTP/1.1"
    assert "Host: 127.0.0.1:8080" in lines and "Content-Length: 2" in lines
    assert "Authorization: Bearer k" in lines
    assert [line for line in lines if line.startswith("Connection")] == ["Connection: close"]
    assert body == b"{}"
    with pytest.raises(ValueError):
        cs.build_request(endpoint, "chat", b"{}", {"X-Evil": "a\r\nHost: other"})


def test_parse_head() -> None:
    head = cs.parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b")
    assert head.status == 200 and head.chunked and head.headers["x-a"] == "b"
    assert head.content_length is None
    assert cs.parse_head(b"HTTP/1.0 400 Bad\r\nContent-Length: 12").content_length == 12
    with pytest.raises(ValueError):
        cs.parse_head(b"SSH-2.0-OpenSSH")


def test_chunked_decoder_any_split() -> None:
    raw = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
    for size in (1, 2, 3, 7, len(raw)):
        decoder = cs.ChunkedDecoder()
        out = b"".join(decoder.feed(raw[i:i + size]) for i in range(0, len(raw), size))
        assert out == b"hello world" and decoder.done


@pytest.mark.parametrize("raw", [b"zz\r\nhello\r\n", b"5\r\nhelloXX", b"-1\r\n",
                                 b"f" * 2000])
def test_chunked_decoder_rejects_garbage(raw: bytes) -> None:
    with pytest.raises(ValueError):
        cs.ChunkedDecoder().feed(raw)


def test_sse_counter_counts_token_events_only() -> None:
    counter = cs.SseCounter()
    stream = (b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
              b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
              b'data: {"choices":[{"delta":{"content":"b"}}]}\r\n\r\n'
              b"data: [DONE]\n\n")
    for i in range(0, len(stream), 5):  # split mid-line
        counter.feed(stream[i:i + 5], now=float(i))
    assert counter.tally.token_events == 2 and counter.tally.done
    with pytest.raises(ValueError):
        cs.SseCounter().feed(b"x" * (cs.MAX_LINE + 1), now=0.0)


def test_wave_schedule_and_labels() -> None:
    assert cs.wave_starts(100.0, 3, 5.0, 2.0) == [102.0, 107.0, 112.0]
    assert cs.status_error_class(429) == "http_429"
    assert cs.status_error_class(404) == "http_4xx"
    assert cs.status_error_class(502) == "http_5xx"
    assert cs.describe_abort(0, None) == "before the first token (prefill)"
    assert cs.describe_abort(1, None) == "after 1 chunk"
    assert cs.describe_abort(None, 1.5) == "after 1.5s"


def test_wave_detail_counts_and_last_drop() -> None:
    outcomes = [
        cs.StreamOutcome("chat", 10.0, end=12.0, dropped_at=11.5, outcome="aborted"),
        cs.StreamOutcome("completions", 10.0, end=12.5, dropped_at=12.4, outcome="aborted"),
        cs.StreamOutcome("chat", 10.0, end=10.1, error_class="http_5xx"),
        cs.StreamOutcome("chat", 10.0, end=11.0, outcome="completed"),
    ]
    detail = cs.wave_detail("storm", 1, "reset", "after 3 chunks", 10.0, outcomes)
    assert detail == {
        "fault": "storm", "wave": 1, "started_at": 10.0, "dropped_at": 12.4, "streams": 4,
        "aborted": 2, "completed": 1, "failed": 1, "errors": {"http_5xx": 1}, "tokens": 0,
        "late_s": None, "drain": {}, "streamed_on_s": [], "close": "reset",
        "abort_after": "after 3 chunks",
    }
    detail_late = cs.wave_detail("storm", 0, "graceful", "after 1s", 10.0, [
        cs.StreamOutcome("chat", 10.0, end=20.0, dropped_at=12.0, outcome="aborted",
                         late_s=1.5, drain="hold_expired"),
        cs.StreamOutcome("chat", 10.0, end=11.0, dropped_at=11.0, outcome="aborted",
                         late_s=0.1, drain="server_closed")])
    assert detail_late["late_s"] == 1.5
    assert detail_late["drain"] == {"hold_expired": 1, "server_closed": 1}
    late_line = cs.wave_line("storm", detail_late, 1)
    assert "the server kept streaming to 1 after their FIN until they gave up" in late_line
    assert "dropped up to 1.5s late" in late_line
    line = cs.wave_line("storm", detail, 3)
    assert line.startswith("storm wave 2/3: 2/4 streams dropped after 3 chunks (reset)")
    assert "1 failed before the abort point (http_5xx 1)" in line
    sample = outcomes[0].sample(64)
    assert sample["shape"] == cs.SHAPE and sample["error_class"] is None
    assert sample["finished"] and sample["prompt_tokens"] == 64


# --- streams against a fake SSE server ------------------------------------------------


@dataclass
class Seen:
    """What the server saw of one connection."""

    body: dict[str, Any] = field(default_factory=dict)
    ended: str = ""  # "fin", "rst", "done", "closed"
    ended_at: float = 0.0
    fin_at: float | None = None  # the client's FIN, when the server ignores it
    sent_tokens: int = 0


class FakeServer:
    """An OpenAI-ish streaming server: `mode` is sse, error, silent or hangup."""

    def __init__(self, mode: str = "sse", tokens: int = 200, gap: float = 0.01,
                 ignore_fin: bool = False) -> None:
        self.mode, self.tokens, self.gap = mode, tokens, gap
        self.ignore_fin = ignore_fin  # like a gateway with proxy_ignore_client_abort on
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.seen: list[Seen] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(5)

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            seen = Seen()
            self.seen.append(seen)
            threading.Thread(target=self._serve, args=(conn, seen), daemon=True).start()

    def _serve(self, conn: socket.socket, seen: Seen) -> None:
        conn.settimeout(5)
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data:  # a connection check, no request
                conn.close()
                return
            buf += data
        head, _, body = buf.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += conn.recv(65536)
        seen.body = json.loads(body)
        if self.mode == "hangup":
            conn.close()
            seen.ended = "closed"
            return
        if self.mode == "silent":
            self._stop.wait(10)
            conn.close()
            return
        if self.mode == "error":
            err = b'{"error":{"message":"nope","type":"InternalServerError","code":500}}'
            conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: "
                         b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(err), err))
            conn.close()
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        events = [b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n']
        events += [b'data: {"choices":[{"delta":{"content":"t"}}]}\n\n'] * self.tokens
        events += [b"data: [DONE]\n\n"]
        try:
            for event in events:
                watched = [conn] if seen.fin_at is None else []
                readable, _, _ = select.select(watched, [], [], self.gap)
                if readable and not conn.recv(65536):
                    if not self.ignore_fin:
                        seen.ended, seen.ended_at = "fin", time.time()
                        conn.close()
                        return
                    seen.fin_at = time.time()
                if not watched:
                    time.sleep(self.gap)
                conn.sendall(b"%x\r\n%s\r\n" % (len(event), event))
                seen.sent_tokens += 1
            conn.sendall(b"0\r\n\r\n")
            seen.ended, seen.ended_at = "done", time.time()
        except (ConnectionResetError, BrokenPipeError):
            seen.ended, seen.ended_at = "rst", time.time()
        conn.close()


@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer()
    yield srv
    srv.close()


def plan(url: str, chunks: int | None = 3, delay: float | None = None, close: str = "reset",
         hold: float = 0.0, deadline: float = cs.STREAM_DEADLINE) -> cs.StreamPlan:
    endpoint = cs.parse_endpoint(url)
    body = cs.request_body("chat", "tiny", "hello", 100)
    return cs.StreamPlan(endpoint, "chat", cs.build_request(endpoint, "chat", body, {}), 5,
                         chunks, delay, close, hold, deadline)


def run_one(stream: cs.StreamPlan, stop: threading.Event | None = None) -> cs.StreamOutcome:
    """One stream, run as a wave of one."""
    return asyncio.run(cs.run_wave([stream], stop or threading.Event(), 60))[0]


def wait_seen(server: FakeServer, timeout: float = 5.0) -> Seen:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.seen and server.seen[-1].ended:
            return server.seen[-1]
        time.sleep(0.01)
    raise AssertionError("the server never saw the connection end")


@pytest.mark.parametrize("close,ended", [("reset", "rst"), ("graceful", "fin")])
def test_close_modes_are_exact(server: FakeServer, close: str, ended: str) -> None:
    out = run_one(plan(server.url, chunks=3, close=close))
    assert out.outcome == "aborted" and out.error_class is None
    assert out.tokens >= 3 and out.ttft is not None and out.status == 200
    seen = wait_seen(server)
    assert seen.ended == ended
    assert out.dropped_at is not None and seen.ended_at >= out.dropped_at - 0.01
    assert seen.sent_tokens < 50  # it was really dropped mid-stream
    assert seen.body["stream"] is True and seen.body["ignore_eos"] is True


def test_graceful_close_waits_for_the_server_to_close_its_side(server: FakeServer) -> None:
    out = run_one(plan(server.url, close="graceful", hold=5.0))
    assert out.outcome == "aborted" and out.drain == "server_closed"
    assert out.end - out.start < 2  # the server closed at once: no waiting for the hold


def test_graceful_close_to_a_server_that_ignores_the_fin_ends_after_hold() -> None:
    srv = FakeServer(tokens=1000, ignore_fin=True)
    try:
        out = run_one(plan(srv.url, close="graceful", hold=0.5))
        seen = wait_seen(srv)
    finally:
        srv.close()
    assert out.outcome == "aborted" and out.dropped_at is not None
    assert out.drain == "hold_expired"
    assert out.streamed_on_s is not None and out.streamed_on_s >= 0.5
    assert seen.fin_at is not None and abs(seen.fin_at - out.dropped_at) < 0.2
    # It streamed on for nobody until we gave up waiting and the connection was reset.
    assert seen.ended == "rst" and seen.ended_at - out.dropped_at >= 0.5


def test_stop_reading_holds_then_resets(server: FakeServer) -> None:
    started = time.time()
    out = run_one(plan(server.url, chunks=1, close="stop_reading", hold=0.6))
    assert out.outcome == "aborted"
    assert out.dropped_at is not None and out.dropped_at - started >= 0.6
    # The server only learns the client is gone when the held connection is reset (its
    # writes first pile up in the buffers).
    seen = wait_seen(server, timeout=30)
    assert seen.ended == "rst"


def test_prefill_abort_drops_before_any_token(server: FakeServer) -> None:
    out = run_one(plan(server.url, chunks=0, close="graceful"))
    assert out.outcome == "aborted" and out.tokens == 0 and out.ttft is None
    assert wait_seen(server).ended == "fin"


def test_abort_after_delay(server: FakeServer) -> None:
    server.gap = 0.05
    out = run_one(plan(server.url, chunks=None, delay=0.3))
    assert out.outcome == "aborted"
    assert out.late_s is not None and 0 <= out.late_s < 1
    assert out.dropped_at is not None and 0.3 <= out.dropped_at - out.start < 1.5
    assert 1 <= out.tokens < 40


def test_a_wave_connects_first_and_sends_together(server: FakeServer) -> None:
    outs = asyncio.run(cs.run_wave([plan(server.url, chunks=1)] * 20, threading.Event(), 30))
    starts = [o.start for o in outs]
    assert max(starts) - min(starts) < 0.1
    assert {o.outcome for o in outs} == {"aborted"}


def test_a_stream_that_ends_before_the_abort_point_is_completed() -> None:
    srv = FakeServer(tokens=2)
    try:
        out = run_one(plan(srv.url, chunks=5))
    finally:
        srv.close()
    assert out.outcome == "completed" and out.tokens == 2 and out.error_class is None


@pytest.mark.parametrize("mode,error_class,error_type", [
    ("error", "http_5xx", "InternalServerError"),
    ("hangup", "reset", "ConnectionResetError"),
    ("silent", "timeout", "abort_point_not_reached"),
])
def test_failures_before_the_abort_point(mode: str, error_class: str, error_type: str) -> None:
    srv = FakeServer(mode=mode)
    try:
        started = time.monotonic()
        out = run_one(plan(srv.url, deadline=0.5))
        assert time.monotonic() - started < 3
    finally:
        srv.close()
    assert out.outcome == "failed"
    assert (out.error_class, out.error_type) == (error_class, error_type)


def test_connection_refused_is_a_connect_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    out = run_one(plan(f"http://127.0.0.1:{port}"))
    assert (out.outcome, out.error_class) == ("failed", "connect")


def test_stop_interrupts_a_waiting_stream_promptly() -> None:
    srv = FakeServer(mode="silent")
    stop = threading.Event()
    try:
        threading.Timer(0.3, stop.set).start()
        started = time.monotonic()
        out = run_one(plan(srv.url), stop)
        assert time.monotonic() - started < 0.3 + 2 * cs.POLL + 0.5
    finally:
        srv.close()
    assert (out.error_class, out.error_type) == ("interrupted", "fault_stopped")


# --- the injector -----------------------------------------------------------------------


def _ctx(url: str, tmp_path: Path) -> RunContext:
    scenario = Scenario.model_validate({
        "apiVersion": "llmdrill/v1", "kind": "Scenario", "metadata": {"name": "storm"},
        "target": {"base_url": url, "model": "tiny"},
        "phases": [{"name": "storm", "duration": "5s"}],
    })
    store = EvidenceStore(tmp_path / "evidence.db")
    return RunContext("run-1", scenario, store, {"Authorization": "Bearer k"},
                      Progress(quiet=True), tmp_path)


def test_storm_runs_its_waves_and_records_them(server: FakeServer, tmp_path: Path) -> None:
    ctx = _ctx(server.url, tmp_path)
    fault = Fault.model_validate({"cancel_storm": {
        "streams": 4, "waves": 2, "interval": "400ms", "abort_after": {"chunks": 2},
        "apis": ["chat", "completions"], "max_tokens": 50, "prompt_tokens": 8}})
    storm = make_injector(ctx, "storm", fault)
    assert isinstance(storm, cs.CancelStorm)
    assert storm.preflight() == [storm.describe()]
    assert "2 waves of 4 streams (chat/completions, 8+50 tokens)" in storm.describe()
    storm.apply()
    assert storm._thread is not None
    storm._thread.join(20)
    assert storm.error is None
    assert ctx.store is not None
    waves = [d for _, _, d in ctx.store.events("storm_wave")]
    assert [w["wave"] for w in waves] == [0, 1]  # indexes within the fault
    assert all(w["aborted"] == 4 and w["failed"] == 0 for w in waves)
    assert 0.35 <= waves[1]["started_at"] - waves[0]["started_at"] < 1.0
    assert all(w["dropped_at"] >= w["started_at"] for w in waves)
    evidence = ctx.store.load([], [], None)
    assert len(evidence.requests) == 8
    assert {r.shape for r in evidence.requests} == {cs.SHAPE}
    assert {r.api for r in evidence.requests} == {"chat", "completions"}
    # (The preflight's connection check sends no request.)
    models = [s.body["model"] for s in server.seen if s.body]
    assert models == ["tiny"] * 8
    storm.stop()


def test_stop_ends_the_storm_and_records_the_interrupted_wave(tmp_path: Path) -> None:
    srv = FakeServer(mode="silent")
    try:
        ctx = _ctx(srv.url, tmp_path)
        storm = cs.CancelStorm(ctx, "storm", CancelStormFault.model_validate(
            {"streams": 3, "waves": 5, "interval": "10s"}))
        storm.apply()
        time.sleep(0.3)
        started = time.monotonic()
        storm.stop()
        assert time.monotonic() - started < 3
    finally:
        srv.close()
    assert ctx.store is not None
    waves = [d for _, _, d in ctx.store.events("storm_wave")]
    assert len(waves) == 1
    assert waves[0]["failed"] == 3 and waves[0]["errors"] == {"interrupted": 3}


def test_preflight_refuses_an_unreachable_storm_target(tmp_path: Path) -> None:
    from llmdrill.faults.base import EnvironmentProblem

    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    storm = cs.CancelStorm(_ctx(f"http://127.0.0.1:{port}", tmp_path), "storm",
                           CancelStormFault())
    with pytest.raises(EnvironmentProblem, match="cannot connect"):
        storm.preflight()
