from __future__ import annotations

import pytest

from llmdrill.load.sse import StreamTally, error_type_of_body, read_whole_body, stream_error

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


# --- empty completions ------------------------------------------------------------------


def feed(*lines: bytes) -> StreamTally:
    tally = StreamTally()
    for i, line in enumerate(lines):
        tally.feed_line(line.rstrip(b"\n"), float(i))
    return tally


def test_events_without_text_are_not_tokens() -> None:
    # The role preamble, a finish chunk with an empty or missing delta, a null content.
    tally = feed(ROLE,
                 b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n',
                 b'data: {"choices":[{"index":0,"delta":{"content":null}}]}\n',
                 b'data: {"choices":[{"index":0,"text":"","finish_reason":"length"}]}\n',
                 b"data: [DONE]\n")
    assert tally.token_events == 0 and tally.first_token_at is None
    assert tally.done and tally.empty


def test_text_in_any_form_is_a_token() -> None:
    tally = feed(b'data: {"choices":[{"delta":{"content": "spaced"}}]}\n',
                 b'data: {"choices":[{"text":"\\n"}]}\n',
                 b'data: {"choices":[{"delta":{"reasoning_content":"hm"}}]}\n',
                 b'data: {"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}\n',
                 b"data: [DONE]\n")
    assert tally.token_events == 4 and not tally.empty


def test_a_stream_with_usage_of_generated_tokens_is_not_empty_without_text() -> None:
    # With dummy weights an engine can end at once; a token it generated that decodes to
    # no text is still a generated token, and its usage says so.
    tally = feed(ROLE, USAGE, b"data: [DONE]\n")
    assert tally.token_events == 0 and tally.usage_tokens == 3 and not tally.empty
    zero = feed(TOKEN, USAGE.replace(b'"completion_tokens":3', b'"completion_tokens":0'),
                b"data: [DONE]\n")
    assert zero.empty


# vLLM's last chunk of a stream it aborted at shutdown: a finish_reason, then [DONE].
ABORT = (b'data: {"id":"c1","choices":[{"index":0,"text":"","logprobs":null,'
         b'"finish_reason":"abort","stop_reason":null}]}\n')
LENGTH = ABORT.replace(b'"abort"', b'"length"')


def test_a_stream_the_server_aborted_is_incomplete_not_a_completion() -> None:
    # A 200 with partial output, a finish_reason of abort and [DONE]: the answer was cut.
    aborted = feed(ROLE, TOKEN, TOKEN, ABORT, USAGE, b"data: [DONE]\n")
    assert aborted.token_events == 2 and aborted.done
    assert stream_error(aborted) == ("incomplete_stream", "finish_reason_abort")
    errored = feed(TOKEN, ABORT.replace(b'"abort"', b'"error"'), b"data: [DONE]\n")
    assert stream_error(errored) == ("incomplete_stream", "finish_reason_error")
    assert stream_error(feed(TOKEN, LENGTH, USAGE, b"data: [DONE]\n")) is None


def test_the_words_abort_and_error_in_text_are_not_an_aborted_stream() -> None:
    said = b'data: {"choices":[{"index":0,"text":"abort error","finish_reason":null}]}\n'
    tally = feed(said, LENGTH, b"data: [DONE]\n")
    assert tally.failed_finish is None and stream_error(tally) is None
    assert tally.token_events == 1


def test_a_whole_answer_the_server_aborted_is_incomplete() -> None:
    body = (b'{"id":"c1","choices":[{"index":0,"text":"partial","finish_reason":"abort"}],'
            b'"usage":{"prompt_tokens":4,"completion_tokens":2}}')
    assert read_whole_body(body, StreamTally()) == ("incomplete_stream", "finish_reason_abort")
    fine = body.replace(b'"abort"', b'"length"')
    assert read_whole_body(fine, StreamTally()) is None


def _spaced(line: bytes) -> bytes:
    """The same event as a server that writes a space after every colon and comma."""
    return line.replace(b'":', b'": ').replace(b',"', b', "')


def test_events_written_with_spaces_read_as_the_compact_ones() -> None:
    stream = (ROLE, TOKEN, TOKEN, LENGTH, USAGE, b"data: [DONE]\n")
    compact, spaced = feed(*stream), feed(*map(_spaced, stream))
    assert spaced.token_events == compact.token_events == 2
    assert spaced.usage_tokens == compact.usage_tokens == 3
    assert spaced.prompt_tokens == 7 and spaced.response_id == "c1"
    aborted = feed(*map(_spaced, (TOKEN, ABORT, b"data: [DONE]\n")))
    assert stream_error(aborted) == ("incomplete_stream", "finish_reason_abort")


def test_an_empty_text_with_spaces_is_not_a_token() -> None:
    empty = b'data: {"choices": [{"index": 0, "delta": {"content": ""}}]}\n'
    assert feed(empty).token_events == 0
    null = b'data: {"choices": [{"index": 0, "delta": {"content": null}}]}\n'
    assert feed(null).token_events == 0


def test_usage_with_text_in_the_same_event_counts_the_token() -> None:
    both = (b'data: {"id":"c1","choices":[{"index":0,"text":"x","finish_reason":"length"}],'
            b'"usage":{"prompt_tokens":2,"completion_tokens":1}}\n')
    tally = feed(both, b"data: [DONE]\n")
    assert tally.token_events == 1 and stream_error(tally) is None


def test_the_fast_spellings_fall_back_to_every_text_key() -> None:
    # Two choices in one event, the first with empty text: the quick look at the first
    # `"text":"` says empty, the full look finds the second.
    two = b'data: {"choices":[{"index":0,"text":""},{"index":1,"text":"x"}]}\n'
    assert feed(two).token_events == 1
    assert feed(_spaced(two)).token_events == 1
    # Text that starts with an escaped quote is text; a line cut right after the key's
    # opening quote is not.
    assert feed(b'data: {"choices":[{"text":"\\"q\\""}]}\n').token_events == 1
    assert feed(b'data: {"choices":[{"text":"').token_events == 0
    # An error object and an abort are still seen where the rare-word search looks.
    errored = feed(TOKEN, b'data: {"error":{"type":"internal","message":"boom"}}\n')
    assert errored.error_type is not None and errored.token_events == 1
