"""Deliberately hostile OpenAI-lookalike servers on 127.0.0.1, one behaviour each.

They answer GET /v1/models properly (so a run gets past its preflight) and misbehave on
the completion routes and /metrics: the harness must classify every request, never hang,
never read without a bound, never crash.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

MODELS = json.dumps({"object": "list", "data": [{"id": "tiny", "object": "model"}]}).encode()
TOKEN = b'data: {"choices":[{"index":0,"text":"x"}]}\n\n'

OVERLOADED = json.dumps({"error": {"message": "overloaded", "type": "server_overloaded",
                                   "code": 503}}).encode()
MODES = ("malformed_sse", "endless_stream", "huge_headers", "huge_body", "silent", "trickle",
         "garbage_status")


def _head(status: str, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return head.split(b"\r\n", 1)[0]


async def _serve(mode: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 stop: asyncio.Event) -> None:
    try:
        while not stop.is_set():
            request_line = await _read_request(reader)
            if request_line.startswith(b"GET /v1/models"):
                writer.write(_head("200 OK", {"content-type": "application/json",
                                              "content-length": str(len(MODELS))}) + MODELS)
                await writer.drain()
                continue
            if mode == "overloaded":
                # Not hostile: a gateway shedding load (HAProxy's `http-error status 503`).
                writer.write(_head("503 Service Unavailable", {
                    "content-type": "application/json", "retry-after": "1",
                    "content-length": str(len(OVERLOADED))}) + OVERLOADED)
                await writer.drain()
                continue
            if mode == "silent":
                await stop.wait()
                return
            if mode == "garbage_status":
                writer.write(b"HTTP/1.1 banana\r\n\x00\x01\x02 not http at all\r\n\r\n")
                await writer.drain()
                return
            if mode == "huge_headers":
                big = "x" * (1 << 20)
                writer.write(_head("200 OK", {"content-type": "text/event-stream",
                                              "x-padding": big}))
                await writer.drain()
                return
            if mode == "huge_body":
                size = 64 << 20
                writer.write(_head("200 OK", {"content-type": "application/json",
                                              "content-length": str(size)}))
                chunk = b"7" * (1 << 16)
                for _ in range(size // len(chunk)):
                    if stop.is_set():
                        return
                    writer.write(chunk)
                    await writer.drain()
                return
            writer.write(_head("200 OK", {"content-type": "text/event-stream",
                                          "transfer-encoding": "chunked"}))
            if mode == "malformed_sse":
                body = b"data: {not json\n\nrubbish \xff\xfe line\n\ndata: [DONE-ish]\n\n"
                writer.write(f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
                await writer.drain()
                continue
            if mode == "endless_stream":
                while not stop.is_set():
                    writer.write(f"{len(TOKEN):x}\r\n".encode() + TOKEN + b"\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.01)
                return
            if mode == "trickle":
                writer.write(b"3\r\nda")
                while not stop.is_set():
                    await writer.drain()
                    await asyncio.sleep(0.5)
                    writer.write(b"t")
                return
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        return
    finally:
        writer.close()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, asyncio.Event], Awaitable[None]]


@contextmanager
def _serve_in_thread(handler: Handler) -> Iterator[int]:
    """Run an asyncio server with `handler` in a thread on a free 127.0.0.1 port."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()
    port_box: list[int] = []

    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: handler(r, w, stop), "127.0.0.1", 0)
        port_box.append(server.sockets[0].getsockname()[1])
        ready.set()
        async with server:
            await stop.wait()
        # Connections still being served (a trickle, an endless stream) end here, inside
        # the loop: left pending, they were destroyed with it and warned at exit.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def run() -> None:
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield port_box[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


@contextmanager
def hostile_server(mode: str) -> Iterator[int]:
    """Serve one hostile behaviour on a free 127.0.0.1 port; yield the port."""
    with _serve_in_thread(lambda r, w, stop: _serve(mode, r, w, stop)) as port:
        yield port

@contextmanager
def echoing_server() -> Iterator[int]:
    """Answers every completion with a 400 whose error echoes the Authorization header
    (type, message and a header), like a careless gateway: our key must still not be
    written anywhere."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     stop: asyncio.Event) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                auth = ""
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"authorization:"):
                        auth = line.split(b":", 1)[1].strip().decode()
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                if head.startswith(b"GET /v1/models"):
                    writer.write(_head("200 OK", {"content-type": "application/json",
                                                  "content-length": str(len(MODELS))}) + MODELS)
                else:
                    body = json.dumps({"error": {"type": auth[:60], "code": 400,
                                                 "message": f"bad key {auth}"}}).encode()
                    writer.write(_head("400 Bad Request", {
                        "content-type": "application/json", "x-echo": auth,
                        "content-length": str(len(body))}) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            return
        finally:
            writer.close()

    with _serve_in_thread(handle) as port:
        yield port
