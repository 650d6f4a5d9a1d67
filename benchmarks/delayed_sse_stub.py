"""A streaming-completions stub whose first token event comes a fixed delay after the
request, for the TTFT measurement-fidelity benchmark (ttft_bias.py).

Every POST gets its response headers at once (with an `x-request-id` of its own), its
first token event `--delay-ms` after the request reached the stub's socket, then one more
token event every `--interval-ms` until `--tokens`, a finish chunk and `[DONE]`. Nothing
else is served but GET /v1/models.

The delay is measured from the kernel's arrival stamp of the request (SO_TIMESTAMPNS on
the last segment that completed it), not from when the stub's loop got round to reading
it: at 256 streams a burst of requests waits in the socket buffers while the loop writes
other streams' tokens, and that wait is the stub's, not the client's. The stub keeps, per
request, the delay it actually achieved: arrival stamp to the first event handed to the
kernel. The loop polls through the last millisecond before a timer (epoll waits in whole
milliseconds), so that is tens of microseconds over the delay, more when many streams are
due at once. The benchmark subtracts it from what each client measured, so the figure
left is the client's own measurement error. On SIGTERM it writes `<id> <delay_us>` lines
to `--log`.

Why a selectors loop over non-blocking sockets and not asyncio: asyncio's streams do not
hand over a socket's ancillary data, and the arrival stamp is the point of the stub.

    python benchmarks/delayed_sse_stub.py --port 18191 --log /tmp/stub.log

Traffic stays on 127.0.0.1. Standard library only (the benchmark pins it to a core).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import selectors
import signal
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

SO_TIMESTAMPNS = 35  # Linux; SCM_TIMESTAMPNS has the same value
ANCILLARY = socket.CMSG_SPACE(16)
MODELS = b'{"object": "list", "data": [{"id": "tiny", "object": "model"}]}'


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def event(text: str, finish: str | None) -> bytes:
    payload = {"id": "cmpl-stub", "object": "text_completion", "model": "tiny",
               "choices": [{"index": 0, "text": text, "finish_reason": finish}]}
    return chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")


@dataclass
class Connection:
    sock: socket.socket
    inbox: bytes = b""
    outbox: bytearray = field(default_factory=bytearray)
    arrived: float = 0.0  # the kernel's stamp of the last bytes read
    busy: bool = False  # a stream is being answered; the next request waits in the inbox
    closed: bool = False


@dataclass(order=True)
class Due:
    at: float
    seq: int
    conn: Connection = field(compare=False)
    rid: str = field(compare=False)
    index: int = field(compare=False)  # the token event to send
    arrived: float = field(compare=False)


class Stub:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.delay, self.interval = args.delay_ms / 1000, args.interval_ms / 1000
        self.selector = selectors.EpollSelector()
        self.timers: list[Due] = []
        self.ids = itertools.count(1)
        self.seq = itertools.count()
        self.achieved: list[tuple[str, int]] = []
        self.running = True
        self.events = [event(f" t{i}", None) for i in range(args.tokens)]
        self.tail = event("", "length") + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"

    def listen(self) -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.args.port))
        server.listen(1024)
        server.setblocking(False)
        self.selector.register(server, selectors.EVENT_READ, None)

    def run(self) -> None:
        while self.running:
            # Never blocks long: a signal (PEP 475) resumes the wait rather than end it.
            # epoll waits in whole milliseconds, rounded up: the last millisecond before a
            # timer is polled (timeout 0), so events go out on time, not up to 1 ms late.
            timeout = 0.2
            if self.timers:
                left = self.timers[0].at - time.time()
                timeout = min(timeout, left - 0.001) if left > 0.001 else 0.0
            for key, mask in self.selector.select(timeout):
                if key.data is None:
                    self.accept(key.fileobj)  # type: ignore[arg-type]
                    continue
                conn: Connection = key.data
                if mask & selectors.EVENT_READ:
                    self.read(conn)
                if mask & selectors.EVENT_WRITE and not conn.closed:
                    self.flush(conn)
            now = time.time()
            while self.timers and self.timers[0].at <= now:
                self.fire(heapq.heappop(self.timers))
                now = time.time()

    def accept(self, server: socket.socket) -> None:
        while True:
            try:
                sock, _ = server.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.selector.register(sock, selectors.EVENT_READ, Connection(sock))

    def read(self, conn: Connection) -> None:
        try:
            data, ancillary, _, _ = conn.sock.recvmsg(65536, ANCILLARY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close(conn)
            return
        if not data:
            self.close(conn)
            return
        conn.arrived = time.time()  # fallback: no stamp came with these bytes
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                sec, nsec = struct.unpack("qq", payload[:16])
                conn.arrived = sec + nsec / 1e9
        conn.inbox += data
        self.answer(conn)

    def answer(self, conn: Connection) -> None:
        while not conn.busy and not conn.closed:
            end = conn.inbox.find(b"\r\n\r\n")
            if end < 0:
                return
            head = conn.inbox[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(conn.inbox) < end + 4 + length:
                return  # the body is still on its way; its last bytes carry the stamp
            conn.inbox = conn.inbox[end + 4 + length:]
            if head.startswith(b"GET /v1/models"):
                self.send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(MODELS), MODELS))
                continue
            rid = f"stub-{next(self.ids)}"
            conn.busy = True
            self.send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                      b"Transfer-Encoding: chunked\r\nx-request-id: " + rid.encode()
                      + b"\r\n\r\n")
            heapq.heappush(self.timers, Due(conn.arrived + self.delay, next(self.seq), conn,
                                            rid, 0, conn.arrived))

    def fire(self, due: Due) -> None:
        conn = due.conn
        if conn.closed:
            return
        self.send(conn, self.events[due.index])
        if due.index == 0:
            self.achieved.append((due.rid, round((time.time() - due.arrived) * 1e6)))
        if due.index + 1 < len(self.events):
            heapq.heappush(self.timers, Due(due.at + self.interval, next(self.seq), conn,
                                            due.rid, due.index + 1, due.arrived))
            return
        self.send(conn, self.tail)
        conn.busy = False
        self.answer(conn)  # a request that came while this stream ran

    def send(self, conn: Connection, data: bytes) -> None:
        if conn.closed:
            return
        if conn.outbox:
            conn.outbox += data
            return
        try:
            sent = conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close(conn)
            return
        if sent < len(data):
            conn.outbox += data[sent:]
            self.selector.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)

    def flush(self, conn: Connection) -> None:
        try:
            sent = conn.sock.send(conn.outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close(conn)
            return
        del conn.outbox[:sent]
        if not conn.outbox:
            self.selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def close(self, conn: Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.selector.unregister(conn.sock)
        conn.sock.close()


def main(args: argparse.Namespace) -> None:
    stub = Stub(args)

    def stop(*_: object) -> None:
        stub.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    stub.listen()
    try:
        stub.run()
    finally:
        Path(args.log).write_text("".join(f"{rid} {us}\n" for rid, us in stub.achieved))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="delayed SSE stub")
    parser.add_argument("--port", type=int, default=18191)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--interval-ms", type=float, default=50.0)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--log", required=True)
    main(parser.parse_args())
