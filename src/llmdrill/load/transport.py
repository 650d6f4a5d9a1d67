"""Transport-level helpers of the load generator that need no Locust: classifying a
failed attempt, and reading the bounded lines of a streamed body.

Kept apart from openai_user.py because importing Locust monkey-patches the interpreter;
these can be imported (and unit-tested) anywhere.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import gevent
from geventhttpclient.response import HTTPConnectionClosed
from geventhttpclient.useragent import ConnectionError as GhcConnectionError


def classify_exception(exc: BaseException, got_response: bool) -> tuple[str, str]:
    """Error class and type of a transport failure; the type is the exception's name."""
    # geventhttpclient wraps the real cause (a timeout, a refused connection) in
    # RetriesExceeded(original=...): classify the cause, not the wrapper.
    for _ in range(5):
        inner = getattr(exc, "original", None)
        if not isinstance(inner, BaseException):
            break
        exc = inner
    name = type(exc).__name__
    if isinstance(exc, (gevent.Timeout, TimeoutError, socket.timeout)):
        return "timeout", name
    if isinstance(exc, ConnectionRefusedError):
        return "connect", name
    # A connection the server closed without answering (a dying engine, a gateway that
    # dropped it) is a reset, retryable like one: the request never got an answer. The
    # flood's httpx client classifies the same case the same way.
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError,
                        HTTPConnectionClosed)):
        return ("incomplete_stream" if got_response else "reset"), name
    if isinstance(exc, socket.gaierror):
        return "connect", name
    if got_response:
        return "incomplete_stream", name
    if isinstance(exc, (GhcConnectionError, OSError)):
        return "connect", name
    return "protocol", name


class LineTooLong(Exception):
    pass


# Linux's SO_TIMESTAMPNS (and SCM_TIMESTAMPNS, the same value): the kernel stamps each
# segment with the wall-clock time it arrived, read back with recvmsg. Python's socket
# module does not name it.
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("qq")
_ANCILLARY = 64


def stamp_arrivals(sock: Any) -> bool:
    """Asks the kernel to stamp the arrival of what this socket receives: the time a
    token reached the machine, not the time the load process got round to reading it
    (with many streams on one core, the event loop is milliseconds late). False where
    the socket cannot (TLS sockets have no recvmsg; another OS)."""
    if not hasattr(sock, "recvmsg") or getattr(sock, "_sslobj", None) is not None:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def recv_stamped(sock: Any, size: int) -> tuple[bytes, float | None]:
    """A recv that also gives the kernel's arrival time of the data (None if none came)."""
    data, ancillary, _flags, _addr = sock.recvmsg(size, _ANCILLARY)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
            seconds, nanos = _TIMESPEC.unpack_from(payload)
            return data, seconds + nanos * 1e-9
    return data, None


def read_lines(raw: Any, limit: int, stamped: bool = False) -> tuple[list[bytes], float]:
    """Every complete line the stream has delivered so far (reading from the socket until
    there is one), without their newlines, and when they arrived; [] at the end of the
    body, whose last line comes back even without a newline. A line longer than `limit`
    raises LineTooLong. With `stamped` (a socket `stamp_arrivals` set up), the arrival
    time is the kernel's stamp of the last read that completed them; else, and for lines
    already buffered, the time they are handed over.

    geventhttpclient's own readline has no size cap and rescans its whole buffer after
    every read: a body without newlines turns it into an unbounded, CPU-bound loop that no
    timeout can interrupt. This reads the same parser buffer with a cap, and yields to
    gevent after each network read so the attempt's deadline can fire. The lines of one
    read arrived together and are handed over together: one copy and one split per read,
    not a search, a copy and a shift of the buffer per line, which cost the load
    generator a share of its rate.
    """
    buf = raw._body_buffer
    scanned = 0  # no newline before this offset: each read's bytes are searched once
    arrived: float | None = None
    while True:
        end = buf.rfind(b"\n", scanned)
        if end >= 0:
            block = bytes(buf[: end + 1])
            del buf[: end + 1]
            lines = block.split(b"\n")
            lines.pop()  # the empty tail after the last newline
            if len(block) > limit and max(map(len, lines)) > limit:
                raise LineTooLong
            return lines, arrived or time.time()
        if scanned:
            # A read that completed no line: yield before the next one, so a body that
            # never sends a newline cannot keep this greenlet (and its deadline) running.
            # A read that did complete lines returns them, and the next recv yields when
            # it has to wait.
            gevent.sleep(0)
        scanned = len(buf)
        if scanned > limit:
            raise LineTooLong
        if raw.message_complete:
            rest = bytes(buf)
            del buf[:]
            return ([rest] if rest else []), arrived or time.time()
        sock = raw._sock
        if sock is None:
            raise ConnectionResetError("connection closed mid-stream")
        if stamped:
            data, arrived = recv_stamped(sock, raw.block_size)
        else:
            data = sock.recv(raw.block_size)
        if not data:
            raw.feed(data)  # lets the parser notice a truncated body, then report EOF
            if not raw.message_complete:
                raise ConnectionResetError("connection closed mid-stream")
        else:
            raw.feed(data)
