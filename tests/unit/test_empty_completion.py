"""A 200 that generated nothing is an error of its own class, `empty`, wherever a
completion is judged: the load generator, the request flood, the cancel storm's streams
and the caps drill's health request."""

from __future__ import annotations

import asyncio

import pytest

from llmdrill.faults import cancel_storm as cs
from llmdrill.faults.request_flood import read_sse, read_whole
from llmdrill.load.sse import StreamTally, completion_empty, read_whole_body, stream_error
from llmdrill.probes.caps_cases import health_answer_ok, health_answer_problem

pytestmark = pytest.mark.unit

DONE_ONLY = b"data: [DONE]\n\n"
NORMAL = (b'data: {"id":"c1","choices":[{"index":0,"delta":{"role":"assistant",'
          b'"content":""}}]}\n\n'
          b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"Hello"}}]}\n\n'
          b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":" there"},'
          b'"finish_reason":"length"}]}\n\n'
          b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":5,"total_tokens":7,'
          b'"completion_tokens":2}}\n\n'
          b"data: [DONE]\n\n")


def tally_of(body: bytes) -> StreamTally:
    tally = StreamTally()
    for line in body.split(b"\n"):
        tally.feed_line(line.strip(), 1.0)
    return tally


def test_a_stream_of_only_done_is_empty() -> None:
    assert stream_error(tally_of(DONE_ONLY)) == ("empty", "no_tokens")
    assert read_sse([DONE_ONLY], StreamTally()) == ("empty", "no_tokens")


def test_a_normal_stream_is_ok() -> None:
    tally = tally_of(NORMAL)
    assert stream_error(tally) is None
    assert tally.token_events == 2 and tally.output_tokens == 2
    assert read_sse([NORMAL[i:i + 9] for i in range(0, len(NORMAL), 9)], StreamTally()) is None


def test_a_broken_stream_stays_incomplete_not_empty() -> None:
    assert stream_error(tally_of(b"")) == ("incomplete_stream", "no_done_event")


@pytest.mark.parametrize(("body", "why"), [
    (b"{}", "no_choices"),
    (b'{"choices":[]}', "no_choices"),
    (b'{"id":"x","choices":[{"index":0,"text":""}]}', "empty_text"),
    (b'{"choices":[{"message":{"role":"assistant","content":null}}]}', "empty_text"),
    (b'{"choices":[{"text":"hi"}],"usage":{"completion_tokens":0}}', "zero_completion_tokens"),
    (b'{"choices":[],"usage":{"completion_tokens":0}}', "zero_completion_tokens"),
    (b'{"usage":{"prompt_tokens":3}}', "no_choices"),
    (b'{"choices":[{"text":""}],"usage":{"prompt_tokens":3}}', "empty_text"),
])
def test_non_stream_answers_that_generated_nothing_are_empty(body: bytes, why: str) -> None:
    assert read_whole_body(body, StreamTally()) == ("empty", why)
    assert read_whole(body, StreamTally()) == ("empty", why)


def test_non_stream_answers_with_text_are_ok() -> None:
    chat = (b'{"id":"r1","choices":[{"index":0,"message":{"role":"assistant",'
            b'"content":"Hi!"},"finish_reason":"stop"}],'
            b'"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}')
    tally = StreamTally()
    assert read_whole_body(chat, tally) is None
    assert (tally.output_tokens, tally.prompt_tokens, tally.response_id) == (2, 9, "r1")
    assert read_whole_body(b'{"choices":[{"text":"a"}]}', StreamTally()) is None
    # The engine generated a token that decodes to nothing (an immediate end of sequence):
    # its usage says it generated one, so it is not empty.
    assert read_whole_body(b'{"choices":[{"text":""}],"usage":{"completion_tokens":1}}',
                           StreamTally()) is None
    assert read_whole_body(b"[]", StreamTally()) == ("protocol", "invalid_json")
    assert read_whole_body(b"not json", StreamTally()) == ("protocol", "invalid_json")


def test_the_rule() -> None:
    assert completion_empty(False, None) and completion_empty(False, 0)
    assert completion_empty(True, 0)
    assert not completion_empty(True, None) and not completion_empty(False, 1)


def test_caps_health_request_needs_a_completion_with_text() -> None:
    ok = b'{"choices":[{"message":{"content":"hi"}}],"usage":{"completion_tokens":1}}'
    assert health_answer_ok(200, None, ok)
    assert health_answer_problem(200, None, b'{"choices":[]}') == "empty"
    assert health_answer_problem(200, None, b"{}") == "empty"
    assert health_answer_problem(500, None, ok) == "status 500"
    assert health_answer_problem(None, "timeout", b"") == "timeout"


# --- the cancel storm's streams -----------------------------------------------------------


async def _serve_once(body: bytes) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        with_length = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                       b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        writer.write(with_length)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _storm_stream(body: bytes, chunks: int | None = 3) -> cs.StreamOutcome:
    async def run() -> cs.StreamOutcome:
        server, port = await _serve_once(body)
        try:
            endpoint = cs.parse_endpoint(f"http://127.0.0.1:{port}")
            request = cs.build_request(endpoint, "chat", b"{}", {})
            plan = cs.StreamPlan(endpoint, "chat", request, 8, chunks, None, "reset", 1.0,
                                 deadline=5.0)
            return await cs.run_stream(plan)
        finally:
            server.close()
    return asyncio.run(run())


def test_a_storm_stream_answered_with_nothing_is_empty() -> None:
    out = _storm_stream(DONE_ONLY)
    assert (out.outcome, out.error_class, out.error_type) == ("failed", "empty", "no_tokens")


def test_a_storm_stream_that_ended_with_tokens_before_its_abort_point_completed() -> None:
    out = _storm_stream(NORMAL, chunks=3)
    assert out.outcome == "completed" and out.error_class is None and out.tokens == 2


def test_a_storm_stream_dropped_on_purpose_is_not_empty() -> None:
    # Dropped as soon as the headers came (chunks 0): cut by the client, no token read.
    out = _storm_stream(NORMAL, chunks=0)
    assert out.outcome == "aborted" and out.error_class is None
