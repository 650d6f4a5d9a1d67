"""request_flood, queue_bounded and engine_healthy: pure logic on synthetic evidence, and
the flood and the health probe against small local servers (good, slow, silent, refusing)
on 127.0.0.1."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmdrill.checks import evaluate_check
from llmdrill.checks.health import EngineHealthyCheck, poll_once, probe_engine_health
from llmdrill.checks.probes import probe_for
from llmdrill.faults.registry import make_injector
from llmdrill.faults.request_flood import (
    STOP_GRACE,
    ArrivalSchedule,
    ConnectionCutter,
    RequestFlood,
    RequestFloodFault,
    classify_exception,
    read_capped,
    read_sse,
    read_whole,
    status_error_class,
)
from llmdrill.harness.progress import Progress
from llmdrill.load.sse import StreamTally
from llmdrill.model.context import RunContext
from llmdrill.model.evidence import EvidenceStore
from llmdrill.model.records import (
    Evidence,
    FaultEvent,
    MetricSample,
    PhaseWindow,
    RequestRecord,
)
from llmdrill.model.result import CheckResult
from llmdrill.scenario.fields import Timeouts
from llmdrill.scenario.models import Check, Fault, Scenario

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0
PHASES = [PhaseWindow("baseline", T0, T0 + 10), PhaseWindow("flood", T0 + 10, T0 + 30)]
WAITING = "vllm:num_requests_waiting"


def waiting(values: list[tuple[float, float]], name: str = WAITING) -> list[MetricSample]:
    """Samples of the waiting gauge at T0 + t, split over two label sets (summed)."""
    out = []
    for t, v in values:
        out.append(MetricSample(T0 + t, name, v / 2, {"engine": "0"}))
        out.append(MetricSample(T0 + t, name, v / 2, {"engine": "1"}))
    return out


def judge(check: dict[str, Any], metrics: list[MetricSample] | None = None,
          requests: list[RequestRecord] | None = None,
          events: list[tuple[float, str, dict[str, Any]]] | None = None) -> CheckResult:
    evidence = Evidence(requests=requests or [], metrics=metrics or [], phases=PHASES,
                        events=events or [])
    return evaluate_check(Check.model_validate({"phase": "flood", **check}), 0, evidence)


def refused(t: float, status: int, retry_after: bool) -> RequestRecord:
    return RequestRecord(start=T0 + t, end=T0 + t + 0.01, status=status,
                         error_class=status_error_class(status), retry_after=retry_after)


# --- queue_bounded --------------------------------------------------------------------


def test_queue_within_bound_passes_and_says_when_it_peaked() -> None:
    result = judge({"queue_bounded": {"max_waiting": 8}},
                   waiting([(5, 9), (11, 2), (15, 6), (22.3, 6), (25, 0)]))
    assert result.status == "passed", result.summary
    # The peak before the window (9 at +5s, in baseline) does not count.
    assert result.summary == ("waiting peaked at 6 (within bound 8) at +5.0s; "
                              "0 requests refused")
    assert result.observed["max_waiting"] == 6
    assert result.observed["peak_at_s"] == pytest.approx(5.0)
    assert result.observed["samples"] == 4


def test_queue_over_bound_fails() -> None:
    result = judge({"queue_bounded": {"max_waiting": 8}},
                   waiting([(11, 2), (22.3, 14), (25, 3)]))
    assert result.status == "failed"
    assert result.summary.startswith("waiting peaked at 14 (> bound 8) at +12.3s")


def test_queue_metric_missing_is_inconclusive_naming_what_was_tried() -> None:
    result = judge({"queue_bounded": {"max_waiting": 8,
                                      "series": ["vllm:num_requests_queued", "tgi:queue_size"]}},
                   waiting([(12, 1)]))
    assert result.status == "inconclusive"
    assert "not found: tried vllm:num_requests_queued, tgi:queue_size" in result.summary
    assert WAITING in result.observed["similar"]


def test_queue_uses_first_series_the_target_exposes() -> None:
    result = judge({"queue_bounded": {"max_waiting": 8, "series": ["old:waiting", WAITING]}},
                   waiting([(12, 3), (13, 2), (14, 1)]))
    assert result.status == "passed"
    assert result.observed["series"] == WAITING


def test_queue_without_samples_in_window_is_inconclusive() -> None:
    result = judge({"queue_bounded": {"max_waiting": 8}}, waiting([(2, 0), (5, 0)]))
    assert result.status == "inconclusive"
    assert "0 samples of vllm:num_requests_waiting in the window, need 3" in result.summary


def test_refusals_without_retry_after_fail_when_required() -> None:
    requests = [refused(12, 429, True), refused(13, 503, False), refused(14, 400, False),
                refused(2, 429, False)]  # a 400 is no refusal; t=2 is outside the window
    spec = {"max_waiting": 8, "require_retry_after": True}
    result = judge({"queue_bounded": spec}, waiting([(12, 1), (13, 1), (14, 0)]), requests)
    assert result.status == "failed"
    assert result.summary.endswith("2 requests refused, 1 without Retry-After (required)")
    assert result.observed["refused_by_status"] == {"429": 1, "503": 1}
    assert result.observed["refused_without_retry_after"] == 1
    # Not required: the same refusals pass, and the missing header is still reported.
    result = judge({"queue_bounded": {"max_waiting": 8}}, waiting([(12, 1), (13, 1), (14, 0)]),
                   requests)
    assert result.status == "passed"
    assert result.summary.endswith("2 requests refused, 1 without Retry-After")


def test_refusals_all_with_retry_after_pass() -> None:
    requests = [refused(12, 429, True), refused(13, 503, True)]
    result = judge({"queue_bounded": {"max_waiting": 8, "require_retry_after": True}},
                   waiting([(12, 1), (13, 1), (14, 0)]), requests)
    assert result.status == "passed"
    assert "0 without Retry-After (required)" in result.summary


# --- engine_healthy: the evaluator ----------------------------------------------------


def poll(t: float, ok: bool = True, check: str = "flood-engine_healthy-1",
         error: str | None = None) -> tuple[float, str, dict[str, Any]]:
    return (T0 + t, "health_poll", {"check": check, "ok": ok, "status": 200 if ok else None,
                                    "elapsed_s": 0.01, "error": error,
                                    "url": "http://127.0.0.1:1/health"})


def test_healthy_polls_pass() -> None:
    result = judge({"engine_healthy": {}}, events=[poll(t) for t in range(10, 30)])
    assert result.status == "passed", result.summary
    assert result.summary.startswith("health answered 20/20 polls of http://127.0.0.1:1/health")
    assert result.observed["failures"] == 0


def test_failed_polls_over_the_allowance_fail_naming_the_first() -> None:
    events = [poll(t) for t in range(10, 20)]
    events += [poll(t, ok=False, error="ConnectError: refused") for t in range(20, 23)]
    events += [poll(t) for t in range(23, 30)]
    result = judge({"engine_healthy": {"max_failures": 2}}, events=events)
    assert result.status == "failed"
    assert "3 failures > allowed 2" in result.summary
    assert "3/20 health polls" in result.summary
    assert "first at +10.0s: ConnectError: refused" in result.summary
    assert judge({"engine_healthy": {"max_failures": 3}}, events=events).status == "passed"


def test_no_polls_are_inconclusive_and_other_checks_polls_do_not_count() -> None:
    result = judge({"engine_healthy": {}}, events=[poll(12, check="someone-else")])
    assert result.status == "inconclusive"
    assert "0 health polls in the phase, need 3" in result.summary


def test_scrape_failures_in_the_window_count_as_failures() -> None:
    events = [poll(t) for t in range(10, 30)]
    events += [(T0 + 15, "scrape_failed", {"error": "refused"}),
               (T0 + 5, "scrape_failed", {"error": "before the window"})]
    result = judge({"engine_healthy": {}}, events=events)
    assert result.status == "failed"
    assert result.observed["scrape_failures"] == 1
    assert "1 metric scrapes failed" in result.summary
    assert judge({"engine_healthy": {"max_failures": 1}}, events=events).status == "passed"


def test_a_crashed_probe_is_inconclusive() -> None:
    events = [poll(10), (T0 + 11, "probe_error", {"check": "flood-engine_healthy-1",
                                                  "error": "RuntimeError: boom"})]
    result = judge({"engine_healthy": {}}, events=events)
    assert result.status == "inconclusive"
    assert "the health probe crashed: RuntimeError: boom" in result.summary


# --- small local servers ----------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.bodies.append(self.path)
        self._answer()

    def _answer(self) -> None:
        mode = self.server.mode
        if mode == "silent":  # headers never come
            self.server.release.wait(30)
            return
        if mode in ("429", "503"):
            body = b'{"error":{"type":"overloaded","message":"busy","code":%s}}' % mode.encode()
            self.send_response(int(mode))
            if mode == "429":
                self.send_header("Retry-After", "1")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = 1000 if mode == "slow" else 3
        for _ in range(events):
            self._chunk(b'data: {"choices":[{"text":"x"}]}\n\n')
            if mode == "slow":
                time.sleep(0.05)
        self._chunk(b'data: {"choices":[],"usage":{"prompt_tokens":7,'
                    b'"completion_tokens":3}}\n\ndata: [DONE]\n\n')
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mode: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = mode
        self.bodies: list[str] = []
        self.release = threading.Event()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that were cut mid-answer are the point of these tests

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def server_factory() -> Iterator[Any]:
    servers: list[_Server] = []

    def start(mode: str) -> _Server:
        srv = _Server(mode)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.release.set()
        srv.shutdown()
        srv.server_close()


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- engine_healthy: the probe ----------------------------------------------------------


def test_poll_once_ok_refused_and_silent(server_factory: Any) -> None:
    good = server_factory("ok")
    with httpx.Client(timeout=0.5) as client:
        assert poll_once(client, f"{good.url}/health", 0.5) == (True, 200, None)
        assert poll_once(client, f"{server_factory('503').url}/health", 0.5) == (
            False, 503, "status 503")
        ok, status, error = poll_once(client, f"http://127.0.0.1:{unused_port()}/health", 0.5)
        assert not ok and status is None and error and "ConnectError" in error
        began = time.monotonic()
        ok, _, error = poll_once(client, f"{server_factory('silent').url}/health", 0.5)
        assert not ok and error and "no answer within 0.5s" in error
        assert time.monotonic() - began < 2


def test_probe_polls_until_stopped_and_records_events(tmp_path: Path,
                                                      server_factory: Any) -> None:
    srv = server_factory("ok")
    ctx = context(tmp_path, srv.url)
    stop = threading.Event()
    spec = EngineHealthyCheck(interval="100ms")
    assert probe_for("engine_healthy") is probe_engine_health
    thread = threading.Thread(target=probe_engine_health, args=(ctx, "c", spec, stop))
    thread.start()
    time.sleep(0.8)
    stop.set()
    thread.join(3)
    assert not thread.is_alive()
    assert ctx.store is not None
    polls = ctx.store.events("health_poll")
    assert len(polls) >= 2
    detail = polls[0][2]
    assert detail["check"] == "c" and detail["ok"] and detail["status"] == 200
    assert detail["url"] == f"{srv.url}/health"  # default: the engine's own /health


def test_probe_on_a_silent_server_stops_promptly(tmp_path: Path, server_factory: Any) -> None:
    srv = server_factory("silent")
    ctx = context(tmp_path, srv.url)
    stop = threading.Event()
    spec = EngineHealthyCheck(url=f"{srv.url}/health", interval="100ms", timeout="300ms")
    thread = threading.Thread(target=probe_engine_health, args=(ctx, "c", spec, stop))
    thread.start()
    time.sleep(0.2)
    stop.set()
    thread.join(3)
    assert not thread.is_alive(), "the probe hung on a server that never answers"


# --- request_flood: helpers -------------------------------------------------------------


def test_read_sse_counts_tokens_across_chunk_boundaries() -> None:
    tally = StreamTally()
    body = (b'data: {"choices":[{"text":"a"}]}\n\ndata: {"choices":[{"text":"b"}]}\r\n\r\n'
            b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}\n\n'
            b"data: [DONE]\n\n")
    chunks = [body[i:i + 7] for i in range(0, len(body), 7)]
    assert read_sse(chunks, tally) is None
    assert tally.token_events == 2 and tally.output_tokens == 2 and tally.prompt_tokens == 5


def test_read_sse_errors() -> None:
    assert read_sse([b'data: {"choices":[{"text":"a"}]}\n\n'], StreamTally()) == (
        "incomplete_stream", "no_done_event")
    assert read_sse([b'data: {"error":{"type":"EngineDead"}}\n\n'], StreamTally()) == (
        "incomplete_stream", "EngineDead")
    assert read_sse([b"x" * 50, b"y" * 60], StreamTally(), max_line=100) == (
        "protocol", "line_too_long")


def test_read_capped_and_read_whole() -> None:
    assert read_capped([b"abc", b"def"], 4) == (b"abcd", True)
    assert read_capped([b"abc"], 4) == (b"abc", False)
    tally = StreamTally()
    assert read_whole(b'{"id":"r1","usage":{"prompt_tokens":3,"completion_tokens":4}}',
                      tally) is None
    assert (tally.output_tokens, tally.prompt_tokens, tally.response_id) == (4, 3, "r1")
    assert read_whole(b"not json", StreamTally()) == ("protocol", "invalid_json")


def test_classify_exception_like_the_load_generator() -> None:
    assert classify_exception(httpx.ReadTimeout("t"), True) == ("timeout", "ReadTimeout")
    assert classify_exception(httpx.ConnectError("r"), False) == ("connect", "ConnectError")
    assert classify_exception(httpx.RemoteProtocolError("x"), False)[0] == "reset"
    assert classify_exception(httpx.RemoteProtocolError("x"), True)[0] == "incomplete_stream"
    assert classify_exception(httpx.LocalProtocolError("x"), False)[0] == "protocol"
    assert [status_error_class(s) for s in (400, 404, 429, 500, 503)] == [
        "http_4xx", "http_4xx", "http_429", "http_5xx", "http_5xx"]


def test_cutter_wakes_a_blocked_read_and_cuts_late_connections(server_factory: Any) -> None:
    srv = server_factory("silent")
    for cut_first in (False, True):
        cutter = ConnectionCutter()
        if cut_first:
            cutter.cut("stop")  # asked before the connection exists: applied on connect
        else:
            threading.Timer(0.2, cutter.cut, args=("stop",)).start()
        began = time.monotonic()
        with pytest.raises(httpx.HTTPError), httpx.Client(timeout=10) as client:
            client.get(f"{srv.url}/x", extensions={"trace": cutter.trace})
        assert time.monotonic() - began < 2
        assert cutter.reason == "stop"


def test_arrivals_are_due_at_fixed_times_whoever_takes_them() -> None:
    schedule = ArrivalSchedule(4.0, 100.0)  # every 0.25 s from t=100
    # Free workers take the next arrivals ahead of time, in order.
    assert schedule.take(99.0) == (100.0, 0)
    assert schedule.take(99.0) == (100.25, 0)
    assert schedule.take(100.3) == (100.5, 0)
    # Overdue by less than one interval (a worker freed just after it): sent at once.
    assert schedule.take(100.9) == (100.75, 0)
    assert schedule.dropped == 0
    assert schedule.settle(100.9) == 0  # nothing overdue that no worker took


def test_arrivals_overdue_by_more_than_an_interval_are_dropped_and_counted() -> None:
    schedule = ArrivalSchedule(4.0, 100.0)
    assert schedule.take(100.0) == (100.0, 0)
    # Every worker was busy from 100.25 to 102.1: 100.25 ... 101.75 found no free slot;
    # 102.0 is overdue by less than an interval and goes now.
    assert schedule.take(102.1) == (102.0, 7)
    # Overdue by exactly one interval: still sent.
    assert schedule.take(102.5) == (102.25, 0)
    assert schedule.dropped == 7
    # At the stop, arrivals no worker took (all requests hung) are counted too, once.
    assert schedule.settle(103.0) == 1  # 102.5; 102.75 is not overdue by an interval
    assert schedule.settle(103.0) == 0
    assert schedule.dropped == 8
    assert schedule.take(103.0) == (102.75, 0)


def test_arrivals_start_when_the_first_worker_is_ready() -> None:
    schedule = ArrivalSchedule(2.0)
    assert schedule.settle(50.0) == 0  # not started: nothing was due
    assert schedule.take(100.0) == (100.0, 0)
    assert schedule.take(100.1) == (100.5, 0)


def test_arrival_schedule_does_not_drift_nor_lose_arrivals() -> None:
    start, rate = 1_700_000_000.123, 7.0  # an interval that binary floats cannot hold
    schedule = ArrivalSchedule(rate, start)
    taken = dropped = 0
    now = start
    for step in range(2000):
        now += (0.05, 0.01, 0.9, 0.3)[step % 4]  # free early, late, very late
        slot, skipped = schedule.take(now)
        taken, dropped = taken + 1, dropped + skipped
        assert slot == start + (taken + dropped - 1) / rate  # every arrival: sent or dropped
        assert now - slot <= 1 / rate + 1e-6  # never more than an interval overdue
    assert dropped == schedule.dropped > 0


def test_rate_must_be_positive_and_finite() -> None:
    assert RequestFloodFault().rate is None
    assert RequestFloodFault(rate=0.5).rate == 0.5
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="rate"):
            RequestFloodFault(rate=bad)


# --- request_flood: against local servers ----------------------------------------------


def context(tmp_path: Path, url: str) -> RunContext:
    scenario = Scenario.model_validate({
        "apiVersion": "llmdrill/v1", "kind": "Scenario", "metadata": {"name": "t"},
        "target": {"base_url": url, "model": "tiny", "metrics_url": f"{url}/metrics"},
        "phases": [{"name": "p", "duration": "1s"}],
    })
    store = EvidenceStore(tmp_path / "evidence.db")
    return RunContext("run", scenario, store, {}, Progress(quiet=True), tmp_path)


def flood_records(ctx: RunContext) -> list[RequestRecord]:
    assert ctx.store is not None
    return ctx.store.load([], [], None).requests


def run_flood(ctx: RunContext, spec: RequestFloodFault, seconds: float,
              server: _Server | None = None, received: int = 0) -> float:
    """Runs the flood for `seconds`, or until `server` has received `received` requests;
    returns how long stopping it took."""
    flood = RequestFlood(ctx, "flood", spec)
    flood.apply()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server is not None and len(server.bodies) >= received:
            break
        time.sleep(0.05)
    began = time.monotonic()
    flood.stop()
    assert flood.error is None
    return time.monotonic() - began


def test_factory_is_registered(tmp_path: Path) -> None:
    ctx = context(tmp_path, "http://127.0.0.1:9")
    fault = Fault.model_validate({"request_flood": {"concurrency": 2}})
    injector = make_injector(ctx, "flood", fault)
    assert isinstance(injector, RequestFlood)
    assert injector.describe() == ("keep 2 streamed completions requests in flight (400 prompt "
                                   "+ 100 output tokens each) against http://127.0.0.1:9")
    assert injector.preflight() == [injector.describe()]


def test_open_loop_flood_describes_its_rate(tmp_path: Path) -> None:
    ctx = context(tmp_path, "http://127.0.0.1:9")
    flood = RequestFlood(ctx, "flood", RequestFloodFault(concurrency=4, rate=2.5, stream=False))
    assert flood.describe() == ("start 2.5 completions requests/s (at most 4 in flight; 400 "
                                "prompt + 100 output tokens each) against http://127.0.0.1:9")


def test_open_loop_flood_starts_requests_at_its_rate(tmp_path: Path, server_factory: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # A fast server: a closed loop would send hundreds a second; the open loop sends 10.
    srv = server_factory("ok")
    ctx = context(tmp_path, srv.url)
    lines: list[str] = []
    monkeypatch.setattr(ctx.progress, "event", lines.append)
    flood = RequestFlood(ctx, "flood", RequestFloodFault(concurrency=4, rate=10))
    flood.apply()
    time.sleep(1.0)
    flood.stop()
    assert flood.error is None and flood.schedule is not None
    first = flood.schedule.at(0)  # when the first worker was ready
    starts = sorted(r.start for r in flood_records(ctx))
    assert 5 <= len(starts) <= (time.time() - first) * 10 + 2
    # None before its time: the i-th request sent took the i-th arrival or a later one.
    assert all(start >= first + i / 10 - 0.01 for i, start in enumerate(starts))
    assert "dropped" not in lines[-1]
    assert ctx.store is not None
    assert [d["dropped"] for _, _, d in ctx.store.events("flood_arrivals")] == [0]


def test_open_loop_flood_drops_arrivals_when_every_slot_is_busy(
        tmp_path: Path, server_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = server_factory("silent")  # the first 2 requests never end: the rest are dropped
    ctx = context(tmp_path, srv.url)
    lines: list[str] = []
    monkeypatch.setattr(ctx.progress, "event", lines.append)
    flood = RequestFlood(ctx, "flood", RequestFloodFault(concurrency=2, rate=20))
    applied = time.time()
    flood.apply()
    time.sleep(1.0)
    flood.stop()
    assert flood.error is None
    records = flood_records(ctx)
    assert len(records) == 2 and {r.error_class for r in records} == {"interrupted"}
    assert ctx.store is not None
    (_, _, event), = ctx.store.events("flood_arrivals")
    dropped = event["dropped"]
    assert event == {"fault": "flood", "rate": 20.0, "concurrency": 2, "dropped": dropped}
    assert 10 <= dropped <= 60  # ~18 in 1 s at 20/s; a busy machine stops later
    assert lines[-1].endswith(f"; {dropped} arrivals dropped (all 2 slots busy)")
    evidence = ctx.store.load([], [FaultEvent("flood", applied, time.time())], None)
    effect = flood.effect(evidence)
    assert effect.detail.endswith(f"; {dropped} arrivals dropped (all 2 slots busy)")


def test_flood_records_finished_requests_under_its_name(tmp_path: Path,
                                                        server_factory: Any) -> None:
    srv = server_factory("ok")
    ctx = context(tmp_path, srv.url)
    run_flood(ctx, RequestFloodFault(concurrency=3, name="big"), 10, srv, 9)
    records = flood_records(ctx)
    done = [r for r in records if r.finished]
    assert len(done) >= 3
    assert {r.shape for r in records} == {"big"}
    assert all(r.ok and r.ttft is not None and r.output_tokens == 3 and r.prompt_tokens == 7
               and r.status == 200 and r.api == "completions" for r in done)
    assert set(srv.bodies) == {"/v1/completions"}


def test_flood_stops_promptly_and_records_what_was_in_flight(tmp_path: Path,
                                                             server_factory: Any) -> None:
    for mode in ("slow", "silent"):  # mid-stream, and before any header
        srv = server_factory(mode)
        (tmp_path / mode).mkdir()
        ctx = context(tmp_path / mode, srv.url)
        took = run_flood(ctx, RequestFloodFault(concurrency=4, api="chat"), 10, srv, 4)
        # Far below the 30s read timeout: the connections were cut. Workers that a busy
        # machine does not schedule in time are recorded for after STOP_GRACE.
        assert took < STOP_GRACE + 1.5, f"{mode}: stopping took {took:.2f}s"
        records = flood_records(ctx)
        assert len(records) == 4
        assert {(r.error_class, r.finished) for r in records} == {("interrupted", False)}
        assert set(srv.bodies) == {"/v1/chat/completions"}


def test_flood_refusals_and_retry_after(tmp_path: Path, server_factory: Any) -> None:
    for mode, cls, retry_after in (("429", "http_429", True), ("503", "http_5xx", False)):
        srv = server_factory(mode)
        (tmp_path / mode).mkdir()
        ctx = context(tmp_path / mode, srv.url)
        run_flood(ctx, RequestFloodFault(concurrency=2), 1.0)
        records = [r for r in flood_records(ctx) if r.finished]  # not those cut at stop
        assert records
        assert {(r.error_class, r.error_type, r.status, r.retry_after) for r in records} == {
            (cls, "overloaded", int(mode), retry_after)}


def test_flood_on_a_dead_port_backs_off(tmp_path: Path) -> None:
    ctx = context(tmp_path, f"http://127.0.0.1:{unused_port()}")
    run_flood(ctx, RequestFloodFault(concurrency=2), 1.5)
    records = flood_records(ctx)
    assert {r.error_class for r in records} == {"connect"}
    # Backoff 0.1, 0.2, 0.4 s...: a handful per worker, not thousands.
    assert 2 <= len(records) <= 16


def test_flood_total_deadline_cuts_the_request(tmp_path: Path, server_factory: Any) -> None:
    srv = server_factory("slow")
    ctx = context(tmp_path, srv.url)
    spec = RequestFloodFault(concurrency=1, timeouts=Timeouts(read="5s", total="300ms"))
    run_flood(ctx, spec, 1.5)
    records = [r for r in flood_records(ctx) if r.finished]
    assert records
    assert {(r.error_class, r.error_type) for r in records} == {("timeout", "total_deadline")}
    assert all(r.duration < 1.2 for r in records)  # 0.3s, checked every 0.1s; busy machine


def test_urls_are_validated_when_the_scenario_loads() -> None:
    with pytest.raises(ValueError, match="must start with http"):
        RequestFloodFault(base_url="127.0.0.1:18000")
    with pytest.raises(ValueError, match="must start with http"):
        EngineHealthyCheck(url="localhost:18000/health")


def test_flood_applied_again_floods_again(tmp_path: Path, server_factory: Any) -> None:
    srv = server_factory("ok")
    ctx = context(tmp_path, srv.url)
    flood = RequestFlood(ctx, "flood", RequestFloodFault(concurrency=1))
    stopped = []
    for _ in (1, 2):  # e.g. phases 1 and 3 list the fault, phase 2 does not
        wanted = len(srv.bodies) + 2  # one finished, one more sent
        flood.apply()
        deadline = time.monotonic() + 10
        while len(srv.bodies) < wanted and time.monotonic() < deadline:
            time.sleep(0.05)
        flood.stop()
        stopped.append(time.time())
    ok = [r for r in flood_records(ctx) if r.ok]
    assert any(r.start < stopped[0] for r in ok)
    assert any(stopped[0] < r.start < stopped[1] for r in ok)
