"""A Locust user that drives an OpenAI-compatible API and records one line per request.

Runs inside the Locust process only (gevent); never import it from the harness, which
must not be monkey-patched. It speaks HTTP through `wire.WireClient` (geventhttpclient's
connection pool and parser, a request head built once) rather than FastHttpUser's session,
and fires Locust's request event itself so Locust's own statistics stay true.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import time
from collections.abc import Callable
from typing import IO, Any

import gevent
import orjson
from locust import User, task

from llmdrill.load.config import LoadConfig, RequestShapeConfig, process_samples_path
from llmdrill.load.openai_api import prompt_head, prompt_tail, status_error_class
from llmdrill.load.sse import StreamTally, error_type_of_body, read_whole_body, stream_error
from llmdrill.load.transport import LineTooLong, classify_exception, read_lines
from llmdrill.load.wire import WireClient


def read_api_key(config: LoadConfig) -> str | None:
    if config.api_key_env:
        return os.environ.get(config.api_key_env)
    if config.api_key_file:
        with open(config.api_key_file, encoding="utf-8") as fh:
            return fh.read().strip()
    return None


class _Attempt:
    """The outcome of one HTTP attempt."""

    __slots__ = ("error_class", "error_type", "request_id", "retry_after", "status", "tally",
                 "tokens_seen")

    def __init__(self) -> None:
        self.status: int | None = None
        self.error_class: str | None = None
        self.error_type: str | None = None
        self.tally = StreamTally()
        self.request_id: str | None = None
        self.tokens_seen = False
        self.retry_after = False


class _Sink:
    """Appends one JSON line per finished request. Lines are written in batches (every
    FLUSH_EVERY seconds, or FLUSH_LINES lines, and when the process stops): a write per
    request cost the load generator about 3% of its rate. A kill -9 of this process loses
    at most the last batch; a SIGTERM, and the harness dying, flush it first.

    In Locust's distributed mode on one machine (`--processes`), the workers are forks of
    the process that made the sink: each writes a file of its own (`samples-w<pid>.jsonl`),
    so no two processes append to one file and the harness reads every worker's requests.
    """

    FLUSH_EVERY = 0.1
    FLUSH_LINES = 256

    def __init__(self, path: str, secret: str | None = None,
                 send: Callable[[bytes], None] | None = None) -> None:
        self._secret = secret.encode() if secret else None
        self._path = path
        # A worker on another machine (`llmdrill load-worker`) has no file the harness can
        # read: its batches go to Locust's master, which writes them for the harness.
        self._send = send
        self._creator = os.getpid()
        self._pid: int | None = None  # the process that opened _fh
        self._fh: IO[bytes] | None = None
        self._pending: list[bytes] = []

    def _forked(self) -> None:
        # A fork inherits the parent's unwritten lines (the parent writes them) and its
        # file: start afresh, with a flusher of this process's own.
        self._pid = os.getpid()
        self._pending = []
        if self._send is None:
            path = (self._path if self._pid == self._creator
                    else process_samples_path(self._path, self._pid))
            self._fh = open(path, "ab", buffering=0)  # noqa: SIM115
        gevent.spawn(self._run_flusher)

    def write(self, record: dict[str, Any]) -> None:
        if self._pid != os.getpid():
            self._forked()
        line = orjson.dumps(record)
        if self._secret and self._secret in line:  # a target echoed our key back
            line = line.replace(self._secret, b"***")
        self._pending.append(line)
        if len(self._pending) >= self.FLUSH_LINES:
            self.flush()

    def flush(self) -> None:
        if not self._pending or self._pid != os.getpid():
            return
        lines, self._pending = self._pending, []
        batch = b"\n".join(lines) + b"\n"
        if self._send is not None:
            self._send(batch)
        elif self._fh is not None:
            self._fh.write(batch)

    def _run_flusher(self) -> None:
        """A greenlet's loop: the harness sees each request within FLUSH_EVERY."""
        while True:
            gevent.sleep(self.FLUSH_EVERY)
            self.flush()


_CONFIG: LoadConfig | None = None
_SINK: _Sink | None = None


CONFIG_ENV = "LLMDRILL_LOAD_CONFIG"


def _config() -> tuple[LoadConfig, _Sink]:
    """The load's configuration and this process's sink: from the file the harness wrote
    (CONFIG_ENV), or, on a remote worker, as `configure_remote` was given them."""
    global _CONFIG, _SINK
    if _CONFIG is None or _SINK is None:
        if not os.environ.get(CONFIG_ENV):
            raise RuntimeError("no load configuration: a remote worker gets it from the "
                               "master when the load starts")
        _CONFIG = LoadConfig.load(__import__("pathlib").Path(os.environ[CONFIG_ENV]))
        _SINK = _Sink(_CONFIG.samples_path, read_api_key(_CONFIG))
        atexit.register(_SINK.flush)  # forks (Locust's --processes) inherit it
    return _CONFIG, _SINK


def configure_remote(config_text: str, send: Callable[[bytes], None]) -> _Sink:
    """A worker on another machine: the configuration the master sent (no secret in it:
    the API key is read here, from this machine's environment or file), and a sink that
    sends the samples to the master."""
    global _CONFIG, _SINK
    if _SINK is not None:
        _SINK.flush()
    _CONFIG = LoadConfig.from_json(config_text)
    _SINK = _Sink(_CONFIG.samples_path, read_api_key(_CONFIG), send=send)
    atexit.register(_SINK.flush)
    return _SINK


_PROMPT = "@@llmdrill-prompt@@"


class _Shape:
    """A request shape ready to send: its path, its body around the prompt (serialized
    once: only the prompt changes from one request to the next) and its Locust name."""

    __slots__ = ("after", "before", "config", "name", "path")

    def __init__(self, shape: RequestShapeConfig, model: str) -> None:
        body: dict[str, Any] = {"model": model, "max_tokens": shape.max_tokens,
                                "stream": shape.stream}
        if shape.ignore_eos:
            body["ignore_eos"] = True
        if shape.stream:
            body["stream_options"] = {"include_usage": True}
        if shape.api == "chat":
            body["messages"] = [{"role": "user", "content": _PROMPT}]
            self.path = "/v1/chat/completions"
        else:
            body["prompt"] = _PROMPT
            self.path = "/v1/completions"
        before, after = json.dumps(body).split(_PROMPT)
        tail = prompt_tail(shape.prompt_tokens, random.Random())
        self.before, self.after = before.encode(), (tail + after).encode()
        self.config = shape
        self.name = f"{shape.api}{'/stream' if shape.stream else ''}"

    def body(self, rng: random.Random) -> bytes:
        # A prompt as make_prompt writes it (digits and plain words: nothing in it needs
        # JSON escaping), its words after the first drawn once per user and shape.
        return self.before + prompt_head(rng).encode() + self.after


class OpenAIUser(User):
    """One simulated client. Timeouts and retries come from the scenario's `load`."""

    abstract = True  # made concrete by the locustfile once the config is known

    def on_start(self) -> None:
        self.cfg, self.sink = _config()
        self.rng = random.Random()
        key = read_api_key(self.cfg)
        self.key = key
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.wire = WireClient(self.host or self.cfg.base_url, headers,
                               self.cfg.connect_timeout, self.cfg.read_timeout)
        self.shapes = [_Shape(s, self.cfg.model) for s in self.cfg.shapes]
        self.weights = [s.weight for s in self.cfg.shapes]
        self.fire = self.environment.events.request.fire
        self.wire.connect()  # the first request's TTFT without the connect (WireClient.connect)

    def on_stop(self) -> None:
        self.wire.close()

    def wait_time(self) -> float:
        return self.cfg.wait

    @task
    def one_request(self) -> None:
        shape = (self.shapes[0] if len(self.shapes) == 1
                 else self.rng.choices(self.shapes, weights=self.weights)[0])
        start = time.time()
        attempts = 0
        outcome = _Attempt()
        try:
            while True:
                attempts += 1
                outcome = self._attempt(shape, start)
                if outcome.error_class is None or attempts >= self.cfg.max_attempts:
                    break
                if outcome.tokens_seen or not self._retryable(outcome):
                    break
                cap = min(self.cfg.max_backoff, self.cfg.backoff * 2 ** (attempts - 1))
                gevent.sleep(self.rng.uniform(0, cap))  # full jitter
        except gevent.GreenletExit:
            # Locust is stopping this user: keep the request as unfinished evidence.
            self._record(shape, start, attempts, outcome, interrupted=True)
            raise
        self._record(shape, start, attempts, outcome, interrupted=False)

    def _retryable(self, outcome: _Attempt) -> bool:
        on = self.cfg.retry_on
        cls = outcome.error_class
        if cls == "http_429":
            return "429" in on
        if cls == "http_5xx":
            return "5xx" in on
        return cls in on

    def _record(
        self, shape: _Shape, start: float, attempts: int, outcome: _Attempt,
        interrupted: bool,
    ) -> None:
        tally = outcome.tally
        end = time.time()
        error_class = "interrupted" if interrupted else outcome.error_class
        if error_class is None and shape.config.stream and not tally.done:
            error_class = "incomplete_stream"
        self.sink.write(
            {
                "start": start,
                "end": end,
                "api": shape.config.api,
                "stream": shape.config.stream,
                "ttft": (tally.first_token_at - start) if tally.first_token_at else None,
                "status": outcome.status,
                "error_class": error_class,
                "error_type": outcome.error_type,
                "attempts": attempts,
                "output_tokens": tally.output_tokens,
                "prompt_tokens": tally.prompt_tokens or 0,
                "itl_max": tally.gap_max if tally.token_events > 1 else None,
                "itl_mean": tally.gap_mean,
                "request_id": outcome.request_id or tally.response_id,
                "finished": not interrupted,
                "shape": shape.config.name,
                "retry_after": outcome.retry_after,
            }
        )

    def _attempt(self, shape: _Shape, start: float) -> _Attempt:
        outcome = _Attempt()
        body = shape.body(self.rng)
        sent = time.perf_counter()
        resp = None
        failure: BaseException | str | None = None
        timer = gevent.Timeout(self.cfg.total_timeout)
        timer.start()
        try:
            resp = self.wire.post(shape.path, body)
            outcome.status = resp.status_code
            rid = resp.get("x-request-id")
            outcome.request_id = str(rid)[:128] if rid else None
            if outcome.status != 200:
                outcome.retry_after = bool(resp.get("retry-after"))
                self._read_error(resp, outcome)
            elif shape.config.stream:
                self._read_stream(resp, outcome)
            else:
                self._read_whole(resp, outcome, start)
            if outcome.error_class:
                failure = f"{outcome.error_class}:{outcome.error_type}"
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            outcome.error_class, outcome.error_type = "timeout", "total_deadline"
            failure = exc
        except gevent.GreenletExit:
            raise
        except Exception as exc:
            outcome.error_class, outcome.error_type = classify_exception(exc, resp is not None)
            failure = exc
        finally:
            timer.close()
            if resp is not None:
                resp.release()  # a body read to its end keeps the connection, else closed
        # Locust's own statistics (its CSV, its web UI) count what the evidence counts.
        self.fire(request_type="POST", name=shape.name,
                  response_time=(time.perf_counter() - sent) * 1000.0, response_length=0,
                  exception=None if failure is None else (
                      failure if isinstance(failure, BaseException) else Exception(failure)),
                  context={}, response=None, url=shape.path, start_time=start)
        return outcome

    def _read_error(self, resp: Any, outcome: _Attempt) -> None:
        status = outcome.status or 0
        body = resp.read(self.cfg.max_body_bytes)
        error_type = error_type_of_body(body) or f"status_{status}"
        if self.key:  # a target that echoes our key in its error must not get it logged
            error_type = error_type.replace(self.key, "***")  # (Locust's failure CSV too)
        outcome.error_type = error_type
        outcome.error_class = status_error_class(status)

    def _read_stream(self, resp: Any, outcome: _Attempt) -> None:
        raw = resp
        tally = outcome.tally
        limit = self.cfg.max_line_bytes
        stamped = getattr(raw, "llmdrill_stamped", False)
        while not tally.done:
            try:
                # The kernel's arrival stamps until the first token (TTFT is the figure a
                # busy event loop would skew); the time of reading after it.
                lines, now = read_lines(raw, limit, stamped and tally.first_token_at is None)
            except LineTooLong:
                outcome.error_class, outcome.error_type = "protocol", "line_too_long"
                return
            if not lines:
                break
            for line in lines:  # the lines of one read arrived together
                tally.feed_line(line, now)
                if tally.done:
                    break
            if tally.first_token_at is not None:
                outcome.tokens_seen = True
        # A 200 stream that ends with [DONE] but generated nothing is `empty`, an error.
        error = stream_error(tally)
        if error is not None:
            outcome.error_class, outcome.error_type = error

    def _read_whole(self, resp: Any, outcome: _Attempt, start: float) -> None:
        body = resp.read(self.cfg.max_body_bytes)
        # Any JSON is not a success: a 200 with no choices or no text is `empty`.
        error = read_whole_body(body, outcome.tally)
        if error is not None:
            outcome.error_class, outcome.error_type = error
