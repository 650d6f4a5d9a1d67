"""Cheap reading of an OpenAI-style SSE stream: count token events, time the first and
the gaps, and parse JSON only for the final usage event and events the bytes cannot tell.

Parsing every event costs about a quarter of the load generator's throughput (measured),
so token events are recognised by bytes, not by decoding them: an event carrying
`"content":"` or `"text":"` (spaces allowed around the colon) followed by something else
than the closing quote has text.
Events that carry neither (the chat role preamble, final chunks with only a
finish_reason, reasoning or tool-call deltas, another server's spacing) are parsed.

A completion is `empty` when the server answered 200 and generated nothing: no event with
text (or, for a whole answer, no choice with text), and the usage does not report a
generated token. A usage of 0 completion tokens is empty whatever else came. A real
engine that generated one token or more reports it in its usage, so an answer that
decoded to no text (an immediate end-of-sequence with dummy weights) is not empty when
the usage says so.

A stream (or a whole answer) that ended with a `finish_reason` of `abort` or `error` did
not complete: vLLM aborts the requests it is serving when it shuts down without draining
(the default `--shutdown-timeout 0`), ends their streams with that reason and `[DONE]`,
and the client holds a partial answer with a 200. Such an ending is `incomplete_stream`
(type `finish_reason_abort`, `finish_reason_error`), never a completion. The reason is
looked for by bytes (`"abort"` or `"error"`, and `"finish_reason"`) and parsed only then.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_DATA = b"data:"
_DONE = b"[DONE]"
# Text in an event, as vLLM (and OpenAI) write it: the key, then a non-empty string.
# vLLM writes compact JSON, other servers a space after the colon: both are read by bytes
# (parsing every event that used spaces cost about 5 us an event, most of a stream's time).
_TEXT_KEYS = (b'"text"', b'"content"')
_NONEMPTY_STRING = re.compile(rb'\s*:\s*"[^"]')  # after a key: a string, not ""
# The two spellings servers write (vLLM's compact JSON, Python json's one space), tried first.
_TEXT_STARTS = tuple(key + colon for key in _TEXT_KEYS for colon in (b':"', b': "'))
_RARE = re.compile(rb'"(?:error|abort)"')
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
# finish_reason values that say the answer was cut short by the server (vLLM's FinishReason).
_FAILED_FINISH = ("abort", "error")
_FINISH_KEY = b'"finish_reason"'
# Keys of a choice or delta that carry generated output.
_OUTPUT_KEYS = ("content", "text", "reasoning_content", "reasoning", "tool_calls",
                "function_call", "refusal")

Error = tuple[str, str]


@dataclass(slots=True)
class StreamTally:
    first_token_at: float | None = None
    last_token_at: float | None = None
    token_events: int = 0
    gap_max: float = 0.0
    gap_sum: float = 0.0
    done: bool = False
    usage_tokens: int | None = None
    prompt_tokens: int | None = None
    response_id: str | None = None
    error_type: str | None = None  # an error object sent inside the stream
    failed_finish: str | None = None  # a finish_reason of abort or error

    def feed_line(self, line: bytes, now: float) -> None:
        if not line.startswith(_DATA):
            return  # blank separators, comments (":"), event:/id: fields
        payload = line[5:].strip()
        if payload == _DONE:
            self.done = True
            return
        # One search for the rare words (an error object, a finish of abort or error):
        # most events have neither, and three `in` tests cost more than the rest.
        rare = _RARE.search(payload) is not None
        if rare and (payload.startswith(b'{"error"') or b'"error":{' in payload[:20]):
            self.error_type = _error_type(payload)
            return
        # Most events are tokens, told by bytes; the rest (usage, a finish chunk without
        # text, a role preamble, tool calls) are rarer and may be parsed.
        if _has_text(payload):
            if rare:
                self._read_finish(payload)
            self._token(now)
            return
        if _USAGE.search(payload) and self._read_usage(payload):
            return
        if rare:
            self._read_finish(payload)
        if _has_output(payload):
            self._token(now)

    def _token(self, now: float) -> None:
        if self.first_token_at is None:
            self.first_token_at = now
        else:
            assert self.last_token_at is not None
            gap = now - self.last_token_at
            self.gap_sum += gap
            if gap > self.gap_max:
                self.gap_max = gap
        self.last_token_at = now
        self.token_events += 1

    def _read_finish(self, payload: bytes) -> None:
        if self.failed_finish is None and _FINISH_KEY in payload:
            self.failed_finish = _failed_finish(payload)

    def _read_usage(self, payload: bytes) -> bool:
        """Reads the usage of a usage chunk (one with no choices, as vLLM and OpenAI send
        it last); False when the event is something else."""
        try:
            obj = json.loads(payload)
        except ValueError:
            return False
        if not isinstance(obj, dict) or obj.get("choices"):
            return False
        usage = obj.get("usage") or {}
        if not isinstance(usage, dict):
            return False
        if isinstance(usage.get("completion_tokens"), int):
            self.usage_tokens = usage["completion_tokens"]
        if isinstance(usage.get("prompt_tokens"), int):
            self.prompt_tokens = usage["prompt_tokens"]
        if isinstance(obj.get("id"), str):
            self.response_id = obj["id"][:128]
        return True

    @property
    def output_tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.token_events

    @property
    def empty(self) -> bool:
        """Nothing was generated: no event with text, and no usage saying otherwise (a
        usage of 0 completion tokens is empty in any case)."""
        return completion_empty(self.token_events > 0, self.usage_tokens)

    @property
    def gap_mean(self) -> float | None:
        if self.token_events < 2:
            return None
        return self.gap_sum / (self.token_events - 1)


def _has_text(payload: bytes) -> bool:
    """A text key with a non-empty string, by bytes: first the two spellings servers use
    (compact as vLLM's, or one space after the colon as Python's json), then any spacing:
    a fast search for the key, and a match only where it is."""
    for start in _TEXT_STARTS:
        at = payload.find(start)
        if at >= 0 and payload[at + len(start):at + len(start) + 1] not in (b'"', b""):
            return True
    for key in _TEXT_KEYS:
        at = payload.find(key)
        while at >= 0:
            if _NONEMPTY_STRING.match(payload, at + len(key)):
                return True
            at = payload.find(key, at + 1)
    return False


# By bytes, the keys other than text that may carry output: an event with none of them
# (a finish chunk with empty text, most often) needs no parse.
_OTHER_OUTPUT_KEYS = (b'"reasoning', b'"tool_calls"', b'"function_call"', b'"refusal"')


def _has_output(payload: bytes) -> bool:
    """Does an event without text carry generated output (reasoning, a tool call)?"""
    if not any(key in payload for key in _OTHER_OUTPUT_KEYS):
        return False
    try:
        obj = json.loads(payload)
    except ValueError:
        return False
    return _choices_have_output(obj)


def _output(value: object) -> bool:
    if isinstance(value, str):
        return bool(value)
    return isinstance(value, (list, dict)) and bool(value)


def _choices_have_output(obj: object) -> bool:
    """Some choice of a chunk or a whole answer carries text (or a tool call)."""
    if not isinstance(obj, dict):
        return False
    choices = obj.get("choices")
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        for part in (choice, choice.get("delta"), choice.get("message")):
            if isinstance(part, dict) and any(_output(part.get(k)) for k in _OUTPUT_KEYS):
                return True
    return False


def _failed_finish(payload: bytes) -> str | None:
    """The finish_reason (abort, error) of a choice that the server cut short, if any."""
    try:
        obj = json.loads(payload)
    except ValueError:
        return None
    return failed_finish_of(obj)


def failed_finish_of(obj: object) -> str | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
        return None
    for choice in obj["choices"]:
        if isinstance(choice, dict) and choice.get("finish_reason") in _FAILED_FINISH:
            return str(choice["finish_reason"])
    return None


def completion_empty(has_text: bool, usage_tokens: int | None) -> bool:
    """A 200 answer generated nothing: the usage says 0 completion tokens, or there is
    no text and no usage says a token was generated."""
    if usage_tokens == 0:
        return True
    return not has_text and not (usage_tokens is not None and usage_tokens > 0)


def stream_error(tally: StreamTally) -> Error | None:
    """How a stream read to its end (or to where it broke) failed, or None: an error event,
    no [DONE], or nothing generated (`empty`)."""
    if tally.error_type:
        return "incomplete_stream", tally.error_type
    if not tally.done:
        return "incomplete_stream", "no_done_event"
    if tally.failed_finish:
        return "incomplete_stream", f"finish_reason_{tally.failed_finish}"
    if tally.empty:
        return "empty", "no_tokens"
    return None


def read_whole_body(body: bytes, tally: StreamTally) -> Error | None:
    """Usage and id of a non-streamed 200 answer, into `tally`; `protocol` if it is not
    a JSON object, `empty` if it generated nothing: a usage of 0 completion tokens, or no
    choice with text (none at all, or all empty) and no usage saying a token was
    generated (the same rule as a stream's)."""
    try:
        obj = json.loads(body)
    except ValueError:
        return "protocol", "invalid_json"
    if not isinstance(obj, dict):
        return "protocol", "invalid_json"
    usage = obj.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    try:
        completion = usage.get("completion_tokens")
        tally.usage_tokens = None if completion is None else int(completion)
        tally.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    except (ValueError, TypeError):
        return "protocol", "invalid_json"
    tally.response_id = str(obj["id"])[:128] if obj.get("id") else None
    tally.done = True
    has_text = _choices_have_output(obj)
    if has_text:
        tally.token_events = 1  # the whole answer: one event with text
    tally.failed_finish = failed_finish_of(obj)
    if tally.failed_finish:
        return "incomplete_stream", f"finish_reason_{tally.failed_finish}"
    if not completion_empty(has_text, tally.usage_tokens):
        return None
    choices = obj.get("choices")
    if tally.usage_tokens == 0:
        return "empty", "zero_completion_tokens"
    if not isinstance(choices, list) or not choices:
        return "empty", "no_choices"
    return "empty", "empty_text"


def _error_type(body: bytes) -> str | None:
    """The `type` (or `code`) of an OpenAI-style error body, if it is one."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    err = obj.get("error", obj)
    if isinstance(err, dict):
        value = err.get("type") or err.get("code")
        if value is not None:
            return str(value)[:64]
    return None


error_type_of_body = _error_type
