"""A streaming-completions stub whose first token event comes a fixed delay after the
request, for the TTFT measurement-fidelity benchmark (ttft_bias.py).

Every POST gets its response headers at once (with an `x-request-id` of its own), its
first token event `--delay-ms` after the request was read, then one more token event
every `--interval-ms` until `--tokens`, a finish chunk and `[DONE]`. Nothing else is
served but GET /v1/models.

The stub keeps, per request, the delay it actually achieved (request read to first event
written, by its own monotonic clock): an asyncio timer fires up to a millisecond late, and
the benchmark subtracts that from what each client measured, so the figure left is the
client's own measurement error. On SIGTERM it writes `<id> <delay_us>` lines to `--log`.

    python benchmarks/delayed_sse_stub.py --port 18191 --log /tmp/stub.log

Traffic stays on 127.0.0.1. Standard library only (the benchmark pins it to a core).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import time
from pathlib import Path

_ids = itertools.count(1)
ACHIEVED: list[tuple[str, int]] = []


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def event(text: str, finish: str | None) -> bytes:
    payload = {"id": "cmpl-stub", "object": "text_completion", "model": "tiny",
               "choices": [{"index": 0, "text": text, "finish_reason": finish}]}
    return chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            read_at = time.perf_counter()
            if head.startswith(b"GET /v1/models"):
                body = b'{"object": "list", "data": [{"id": "tiny", "object": "model"}]}'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                continue
            rid = f"stub-{next(_ids)}"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\nx-request-id: " + rid.encode()
                         + b"\r\n\r\n")
            first = loop.create_future()
            loop.call_at(loop.time() + args.delay_ms / 1000 - (time.perf_counter() - read_at),
                         first.set_result, None)
            await first
            writer.write(event(" t0", None))
            ACHIEVED.append((rid, round((time.perf_counter() - read_at) * 1e6)))
            for i in range(1, args.tokens):
                await asyncio.sleep(args.interval_ms / 1000)
                writer.write(event(f" t{i}", None))
            writer.write(event("", "length") + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(args: argparse.Namespace) -> None:
    server = await asyncio.start_server(lambda r, w: serve(r, w, args), "127.0.0.1",
                                        args.port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()
    Path(args.log).write_text("".join(f"{rid} {us}\n" for rid, us in ACHIEVED))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="delayed SSE stub")
    parser.add_argument("--port", type=int, default=18191)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--interval-ms", type=float, default=50.0)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--log", required=True)
    asyncio.run(main(parser.parse_args()))
