"""A vLLM-shaped streaming stub that knows when it freed its KV cache, for the KV-cleanup
detection benchmark (kv_cleanup_latency.py).

It serves GET /health, /version, /v1/models, /metrics and /truth, and POST
/v1/completions and /v1/chat/completions (streamed SSE chunks shaped like vLLM's: one
token every `--token-ms`, up to `max_tokens`, then a finish chunk and [DONE]), HTTP/1.1
with keep-alive (a stream closes its connection), on 127.0.0.1 only.

The KV cache is the stub's own bookkeeping, and so is the truth. A stream takes its share
of the cache (`--kv-per-stream`) and a running slot when it comes in. While a stream is
sent, the stub watches its socket: when the client closes or resets it, the stream stops
at once. When the last stream in flight has gone, the stub keeps both gauges where they
are for `--hold-ms` (an engine noticing the disconnect and aborting), then drops them to
the baseline in one step and records that moment (time.time(), the clock the harness
dates its scrapes and storm waves by): the cleanup a check should see. A stream that
comes in during the hold cancels it. /metrics shows:

    vllm:num_requests_running   streams holding the cache (left or not, until the drop)
    vllm:num_requests_waiting   0
    vllm:kv_cache_usage_perc    --baseline-kv + --kv-per-stream each (at most 1)
    vllm:generation_tokens_total, vllm:prompt_tokens_total   counters of what was sent

GET /truth answers every cleanup so far as JSON, oldest first: `busy_since` (the first
stream of the busy spell came in), `last_gone` (the stub saw its last stream's client
leave), `freed_at` (the gauges dropped), `streams` (how many the spell held). They are
also appended to `--log` as JSON lines when given.

    python benchmarks/kv_stub.py --port 18194 --hold-ms 200

Traffic stays on 127.0.0.1. Standard library only (the benchmark pins it to a core).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
MAX_BODY = 1 << 20
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 413: "Payload Too Large"}


class Engine:
    """The stub's state: the streams holding the KV cache, and the cleanups so far."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.model: str = args.model
        self.token_s: float = args.token_ms / 1000
        self.hold_s: float = args.hold_ms / 1000
        self.baseline_kv: float = args.baseline_kv
        self.kv_per_stream: float = args.kv_per_stream
        self.log = Path(args.log) if args.log else None
        self.started = time.time()
        self.held = 0  # streams whose cache is held: in flight, or gone but not freed yet
        self.in_flight = 0  # streams whose client is still there
        self.spell_streams = 0
        self.busy_since: float | None = None
        self.last_gone: float | None = None
        self.free_timer: asyncio.TimerHandle | None = None
        self.generated = 0
        self.prompt = 0
        self.frees: list[dict[str, Any]] = []

    # -- the KV cache -------------------------------------------------------------------

    def admit(self) -> None:
        if self.free_timer is not None:  # back to work during the hold: no cleanup yet
            self.free_timer.cancel()
            self.free_timer = None
        if self.held == 0:
            self.busy_since, self.spell_streams = time.time(), 0
        self.held += 1
        self.in_flight += 1
        self.spell_streams += 1

    def gone(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.last_gone = time.time()
            self.free_timer = asyncio.get_running_loop().call_later(self.hold_s, self.free)

    def free(self) -> None:
        self.free_timer = None
        self.held = 0
        freed_at = time.time()  # right after the gauges changed: no scrape sees between
        record = {"busy_since": self.busy_since, "last_gone": self.last_gone,
                  "freed_at": freed_at, "streams": self.spell_streams}
        self.frees.append(record)
        if self.log is not None:
            with self.log.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def metrics(self) -> bytes:
        label = f'{{model_name="{self.model}"}}'
        kv = min(1.0, self.baseline_kv + self.kv_per_stream * self.held)
        lines = []
        for name, kind, value in (
                ("vllm:num_requests_running", "gauge", self.held),
                ("vllm:num_requests_waiting", "gauge", 0),
                ("vllm:kv_cache_usage_perc", "gauge", kv),
                ("vllm:generation_tokens_total", "counter", self.generated),
                ("vllm:prompt_tokens_total", "counter", self.prompt)):
            family = name.removesuffix("_total")
            lines += [f"# TYPE {family} {kind}", f"{name}{label} {value}"]
        lines += ["# TYPE process_start_time_seconds gauge",
                  f"process_start_time_seconds {self.started}"]
        return ("\n".join(lines) + "\n").encode()

    # -- HTTP ---------------------------------------------------------------------------

    async def connection(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path, headers = parse_head(head)
                length = int(headers.get("content-length", "0") or 0)
                if length > MAX_BODY:
                    await send(writer, 413, {"error": {"type": "invalid_request_error",
                                                       "message": "body too large"}})
                    return
                body = await reader.readexactly(length) if length else b""
                keep = await self.route(method, path.split("?", 1)[0], body, reader, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                ValueError):
            return
        finally:
            writer.close()

    async def route(self, method: str, path: str, body: bytes, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> bool:
        if method == "GET" and path == "/health":
            await send(writer, 200, None)
        elif method == "GET" and path == "/version":
            await send(writer, 200, {"version": "kv-stub"})
        elif method == "GET" and path == "/v1/models":
            await send(writer, 200, {"object": "list", "data": [
                {"id": self.model, "object": "model", "created": int(self.started),
                 "owned_by": "llmdrill", "max_model_len": 512}]})
        elif method == "GET" and path == "/metrics":
            await send_raw(writer, 200, "text/plain; version=0.0.4", self.metrics())
        elif method == "GET" and path == "/truth":
            await send(writer, 200, {"hold_s": self.hold_s, "frees": self.frees})
        elif method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            try:
                request = json.loads(body or b"{}")
                if not isinstance(request, dict):
                    raise ValueError("not an object")
                max_tokens = max(1, min(int(request.get("max_tokens") or 16), 4096))
            except (TypeError, ValueError):
                await send(writer, 400, {"error": {"type": "invalid_request_error",
                                                   "message": "not a completion request"}})
                return True
            if not request.get("stream"):
                await send(writer, 400, {"error": {"type": "invalid_request_error",
                                                   "message": "this stub only streams"}})
                return True
            await self.stream(reader, writer, request, max_tokens,
                              chat=path.endswith("chat/completions"))
            return False  # the stream's connection closes with it
        else:
            await send(writer, 404, {"error": {"type": "NotFoundError",
                                               "message": f"no route {method} {path}"}})
        return True

    async def stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     request: dict[str, Any], max_tokens: int, chat: bool) -> None:
        prompt = json.dumps(request.get("messages")) if chat else str(request.get("prompt"))
        self.prompt += max(1, len(prompt.split()))
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        kind = "chat.completion.chunk" if chat else "text_completion"
        created = int(time.time())

        def event(choice: dict[str, Any] | None) -> bytes:
            data = b"[DONE]" if choice is None else json.dumps(
                {"id": rid, "object": kind, "created": created, "model": self.model,
                 "choices": [{"index": 0, "logprobs": None, **choice}]},
                separators=(",", ":")).encode()
            data = b"data: " + data + b"\n\n"
            return f"{len(data):x}\r\n".encode() + data + b"\r\n"

        self.admit()
        # The client sends nothing more (Connection: close, or it waits for the answer):
        # a read that ends is the client leaving (b"" on FIN, an error on RST).
        left = asyncio.create_task(_until_gone(reader))
        try:
            writer.write(head(200, {"content-type": "text/event-stream; charset=utf-8",
                                    "transfer-encoding": "chunked", "connection": "close"}))
            if chat:
                writer.write(event({"delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None}))
            for i in range(max_tokens):
                done, _ = await asyncio.wait({left}, timeout=self.token_s)
                if done:
                    return
                text = f" t{i}"
                writer.write(event({"delta": {"content": text}, "finish_reason": None}
                                   if chat else {"text": text, "finish_reason": None}))
                self.generated += 1
                await writer.drain()
            writer.write(event({"delta": {}, "finish_reason": "length"} if chat
                               else {"text": "", "finish_reason": "length"})
                         + event(None) + b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            return
        finally:
            left.cancel()
            self.gone()


async def _until_gone(reader: asyncio.StreamReader) -> None:
    try:
        while await reader.read(4096):
            pass
    except ConnectionError:
        pass


async def send(writer: asyncio.StreamWriter, status: int, obj: Any) -> None:
    body = b"" if obj is None else json.dumps(obj).encode()
    await send_raw(writer, status, "application/json", body)


async def send_raw(writer: asyncio.StreamWriter, status: int, ctype: str, body: bytes) -> None:
    writer.write(head(status, {"content-type": ctype, "content-length": str(len(body))}) + body)
    await writer.drain()


def head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", "server: kv-stub",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse_head(raw: bytes) -> tuple[str, str, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    return method, path, headers


async def main(args: argparse.Namespace) -> None:
    engine = Engine(args)
    server = await asyncio.start_server(engine.connection, HOST, args.port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="KV-cache stub engine with known cleanups")
    parser.add_argument("--port", type=int, default=18194)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--token-ms", type=float, default=50.0, help="between token events")
    parser.add_argument("--hold-ms", type=float, default=200.0,
                        help="from the last stream's client leaving to the cache's release")
    parser.add_argument("--baseline-kv", type=float, default=0.0)
    parser.add_argument("--kv-per-stream", type=float, default=0.05)
    parser.add_argument("--log", help="append each cleanup here as a JSON line")
    asyncio.run(main(parser.parse_args()))
