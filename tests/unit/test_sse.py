from __future__ import annotations

import pytest

from llmdrill.load.sse import StreamTally, error_type_of_body

pytestmark = pytest.mark.unit

ROLE = b'data: {"id":"c1","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n'
TOKEN = b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"hi"}}]}\n'
USAGE = (b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":7,"total_tokens":10,'
         b'"completion_tokens":3}}\n')


def test_counts_tokens_times_first_and_gaps_and_reads_usage() -> None:
    tally = StreamTally()
    for line, now in [(ROLE, 1.0), (b"\n", 1.0), (TOKEN, 1.5), (TOKEN, 1.6), (TOKEN, 2.0),
                      (USAGE, 2.0), (b"data: [DONE]\n", 2.0)]:
        tally.feed_line(line, now)
    assert tally.first_token_at == 1.5
    assert tally.token_events == 3
    assert tally.gap_max == pytest.approx(0.4)
    assert tally.gap_mean == pytest.approx(0.25)
    assert tally.done and tally.output_tokens == 3 and tally.prompt_tokens == 7
    assert tally.response_id == "c1"


def test_error_event_inside_a_stream_is_noticed() -> None:
    tally = StreamTally()
    tally.feed_line(b'data: {"error": {"type": "InternalServerError", "message": "x"}}\n', 1.0)
    assert tally.error_type == "InternalServerError"
    assert tally.token_events == 0


def test_error_type_of_openai_error_bodies() -> None:
    assert error_type_of_body(b'{"error":{"type":"BadRequestError","code":400}}') == (
        "BadRequestError")
    assert error_type_of_body(b'{"object":"error","type":"NotFoundError"}') == "NotFoundError"
    assert error_type_of_body(b"<html>bad gateway</html>") is None
    assert error_type_of_body(b"[1, 2]") is None


def test_wrapped_transport_errors_are_classified_by_their_cause() -> None:
    from geventhttpclient.useragent import RetriesExceeded

    from llmdrill.load.transport import classify_exception

    wrapped = RetriesExceeded("http://127.0.0.1:1/", 1, original=TimeoutError("timed out"))
    assert classify_exception(wrapped, got_response=False) == ("timeout", "TimeoutError")
    refused = RetriesExceeded("http://127.0.0.1:1/", 1, original=ConnectionRefusedError())
    assert classify_exception(refused, got_response=False)[0] == "connect"
    assert classify_exception(ConnectionResetError(), got_response=True)[0] == (
        "incomplete_stream")
    assert classify_exception(ConnectionResetError(), got_response=False)[0] == "reset"
    # The server closed the connection without answering: a reset (retryable), as the
    # flood's httpx client says too, not a protocol error.
    from geventhttpclient.response import HTTPConnectionClosed

    closed = HTTPConnectionClosed("connection closed.")
    assert classify_exception(closed, got_response=False) == ("reset", "HTTPConnectionClosed")
    assert classify_exception(closed, got_response=True)[0] == "incomplete_stream"
