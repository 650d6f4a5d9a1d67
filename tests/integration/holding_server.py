"""An OpenAI-compatible streaming server whose graceful shutdown hangs: the negative control
of the node-restart drill's stream-recovery check.

It serves GET /health, /version, /metrics, /v1/models and POST /v1/completions and
/v1/chat/completions (streamed SSE chunks shaped like vLLM's, `max_tokens` tokens, a
usage chunk when asked for, then [DONE]; or one JSON body when not streamed), HTTP/1.1
with keep-alive, on 127.0.0.1 only. One chunk every `--chunk-interval` (20 ms), carrying
`--tokens-per-chunk` tokens (8, as vLLM's --stream-interval does): a 400-token stream
lasts about a second, as on the tiny vLLM, so the node-restart drill's 2 s settle phase
still ends the baseline's streams before the kill, and streams of different lengths take
different times (the load's users do not fall in step).

At SIGTERM it closes its listening socket (new connections are refused, so health polls
fail, as with vLLM), closes its idle keep-alive connections, and holds every request in
progress: the streams stay open and send nothing more, and the process stays alive, until
SIGKILL. A client of a stream in flight at SIGTERM hangs for the whole grace period of
`docker stop`/`docker restart`, every time (vLLM does so only in some runs).

Stdlib only: it runs in the busybox container with the host's Python mounted read-only.
`python3 holding_server.py --port 18150 --model tiny`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import uuid
from typing import Any

HOST = "127.0.0.1"
MAX_HEAD = 64 * 1024
MAX_BODY = 1 << 20
WORDS = (" the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", ",",
         " and", " then", " it", " runs", " home", ".")


class Holder:
    """The server's state: its connections, and whether SIGTERM has come."""

    def __init__(self, model: str, chunk_interval: float, tokens_per_chunk: int) -> None:
        self.model = model
        self.chunk_interval = chunk_interval
        self.tokens_per_chunk = tokens_per_chunk
        self.started = time.time()
        self.terminating = asyncio.Event()
        self.idle: set[asyncio.StreamWriter] = set()
        self.busy = 0
        self.server: asyncio.AbstractServer | None = None

    def sigterm(self) -> None:
        if self.terminating.is_set():
            return
        self.terminating.set()
        if self.server is not None:
            self.server.close()  # refuse new connections; the open ones stay open
        for writer in list(self.idle):
            writer.close()
        print(f"holding_server: SIGTERM: listener closed, {len(self.idle)} idle connections "
              f"closed, holding {self.busy} requests until SIGKILL", file=sys.stderr,
              flush=True)

    async def hold(self) -> None:
        """Never returns: only SIGKILL ends a request caught by SIGTERM."""
        await asyncio.Event().wait()

    # -- HTTP -------------------------------------------------------------------------------

    async def connection(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        try:
            while not self.terminating.is_set():
                self.idle.add(writer)
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                finally:
                    self.idle.discard(writer)
                if self.terminating.is_set():
                    await self.hold()  # a request that came in as SIGTERM did: held too
                method, path, headers = _parse_head(head)
                length = int(headers.get("content-length", "0") or 0)
                if length > MAX_BODY:
                    await self.send(writer, 413, {"error": {"type": "invalid_request_error",
                                                            "message": "body too large"}})
                    return
                body = await reader.readexactly(length) if length else b""
                keep = await self.route(method, path, body, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                ValueError):
            return
        finally:
            writer.close()

    async def route(self, method: str, path: str, body: bytes,
                    writer: asyncio.StreamWriter) -> bool:
        path = path.split("?", 1)[0]
        if method == "GET" and path == "/health":
            await self.send(writer, 200, None)
        elif method == "GET" and path == "/version":
            await self.send(writer, 200, {"version": "holding-server"})
        elif method == "GET" and path == "/v1/models":
            await self.send(writer, 200, {"object": "list", "data": [
                {"id": self.model, "object": "model", "created": int(self.started),
                 "owned_by": "llmdrill", "max_model_len": 512}]})
        elif method == "GET" and path == "/metrics":
            await self.send_raw(writer, 200, "text/plain; version=0.0.4", self.metrics())
        elif method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            try:
                request = json.loads(body or b"{}")
                if not isinstance(request, dict):
                    raise ValueError("not an object")
            except ValueError:
                await self.send(writer, 400, {"error": {"type": "invalid_request_error",
                                                        "message": "body is not JSON"}})
                return True
            if request.get("model", self.model) != self.model:
                await self.send(writer, 404, {"error": {
                    "type": "NotFoundError",
                    "message": f"The model `{request.get('model')}` does not exist."}})
                return True
            self.busy += 1
            try:
                return await self.complete(writer, request,
                                           chat=path.endswith("chat/completions"))
            finally:
                self.busy -= 1
        else:
            await self.send(writer, 404, {"error": {"type": "NotFoundError",
                                                    "message": f"no route {method} {path}"}})
        return True

    def metrics(self) -> bytes:
        label = f'{{model_name="{self.model}"}}'
        return (f"# TYPE vllm:num_requests_running gauge\n"
                f"vllm:num_requests_running{label} {self.busy}\n"
                f"# TYPE vllm:num_requests_waiting gauge\n"
                f"vllm:num_requests_waiting{label} 0\n"
                f"# TYPE vllm:kv_cache_usage_perc gauge\n"
                f"vllm:kv_cache_usage_perc{label} {min(self.busy / 16, 1.0)}\n"
                f"# TYPE process_start_time_seconds gauge\n"
                f"process_start_time_seconds {self.started}\n").encode()

    async def send(self, writer: asyncio.StreamWriter, status: int, obj: Any) -> None:
        body = b"" if obj is None else json.dumps(obj).encode()
        await self.send_raw(writer, status, "application/json", body)

    async def send_raw(self, writer: asyncio.StreamWriter, status: int, ctype: str,
                       body: bytes) -> None:
        writer.write(_head(status, {"content-type": ctype,
                                    "content-length": str(len(body))}) + body)
        await writer.drain()

    # -- completions ----------------------------------------------------------------------

    async def complete(self, writer: asyncio.StreamWriter, request: dict[str, Any],
                       chat: bool) -> bool:
        try:
            max_tokens = max(1, min(int(request.get("max_tokens") or 16), 4096))
        except (TypeError, ValueError):
            await self.send(writer, 400, {"error": {"type": "invalid_request_error",
                                                    "message": "max_tokens: not a number"}})
            return True
        prompt = (json.dumps(request.get("messages")) if chat
                  else str(request.get("prompt", "")))
        prompt_tokens = max(1, len(prompt.split()))
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"
        if not request.get("stream"):
            text = ""
            for words in self.chunks(max_tokens):
                await self.tick()
                text += words
            choice: dict[str, Any] = ({"index": 0, "message": {"role": "assistant",
                                                               "content": text}}
                                      if chat else {"index": 0, "text": text})
            choice.update({"logprobs": None, "finish_reason": "length"})
            await self.send(writer, 200, {
                "id": rid, "object": kind, "created": created, "model": self.model,
                "choices": [choice], "usage": _usage(prompt_tokens, max_tokens)})
            return True
        chunk_kind = "chat.completion.chunk" if chat else "text_completion"
        writer.write(_head(200, {"content-type": "text/event-stream; charset=utf-8",
                                 "transfer-encoding": "chunked"}))

        async def event(obj: Any) -> None:
            data = b"data: " + (obj if isinstance(obj, bytes) else json.dumps(
                obj, separators=(",", ":")).encode()) + b"\n\n"
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            await writer.drain()

        def chunk(choice: dict[str, Any]) -> dict[str, Any]:
            return {"id": rid, "object": chunk_kind, "created": created, "model": self.model,
                    "choices": [choice]}

        if chat:
            await event(chunk({"index": 0, "delta": {"role": "assistant", "content": ""},
                               "logprobs": None, "finish_reason": None}))
        pieces = self.chunks(max_tokens)
        for i, word in enumerate(pieces):
            await self.tick()
            last = i == len(pieces) - 1
            choice = ({"index": 0, "delta": {"content": word}} if chat
                      else {"index": 0, "text": word})
            choice.update({"logprobs": None, "finish_reason": "length" if last else None})
            await event(chunk(choice))
        options = request.get("stream_options") or {}
        if isinstance(options, dict) and options.get("include_usage"):
            await event({"id": rid, "object": chunk_kind, "created": created,
                         "model": self.model, "choices": [],
                         "usage": _usage(prompt_tokens, max_tokens)})
        await event(b"[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    def chunks(self, tokens: int) -> list[str]:
        """The text of each chunk of a `tokens`-token answer."""
        words = [WORDS[i % len(WORDS)] for i in range(tokens)]
        n = self.tokens_per_chunk
        return ["".join(words[i:i + n]) for i in range(0, tokens, n)]

    async def tick(self) -> None:
        """One chunk's time; after SIGTERM, forever: the stream is held, silent."""
        if self.terminating.is_set():
            await self.hold()
        try:
            await asyncio.wait_for(self.terminating.wait(), self.chunk_interval)
        except TimeoutError:
            return
        await self.hold()


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "total_tokens": prompt + completion,
            "completion_tokens": completion}


REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 413: "Payload Too Large"}


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", "server: holding-server",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    return method, path, headers


async def serve(port: int, model: str, chunk_interval: float, tokens_per_chunk: int) -> None:
    holder = Holder(model, chunk_interval, tokens_per_chunk)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, holder.sigterm)
    holder.server = await asyncio.start_server(holder.connection, HOST, port, limit=MAX_HEAD)
    print(f"holding_server: serving '{model}' on http://{HOST}:{port}", file=sys.stderr,
          flush=True)
    await holder.hold()  # alive until SIGKILL, SIGTERM or not


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=18150)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--chunk-interval", type=float, default=0.02)
    parser.add_argument("--tokens-per-chunk", type=int, default=8)
    args = parser.parse_args(argv)
    if args.tokens_per_chunk < 1 or args.chunk_interval <= 0:
        parser.error("--tokens-per-chunk must be >= 1 and --chunk-interval > 0")
    asyncio.run(serve(args.port, args.model, args.chunk_interval, args.tokens_per_chunk))
    return 0


if __name__ == "__main__":
    sys.exit(main())
