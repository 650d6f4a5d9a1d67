"""read_lines against a stand-in for geventhttpclient's response parser: what the load
user's stream reading relies on (lines per network read, the cap, the body's end)."""

from __future__ import annotations

import socket
import time

import pytest

from llmdrill.load.transport import LineTooLong, read_lines, recv_stamped, stamp_arrivals

pytestmark = pytest.mark.unit


class FakeSocket:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.reads = 0

    def recv(self, size: int) -> bytes:
        self.reads += 1
        return self.chunks.pop(0) if self.chunks else b""


class FakeResponse:
    """The parts of geventhttpclient's HTTPSocketPoolResponse that read_lines touches: its
    body buffer, the socket, feed() and whether the body is complete."""

    block_size = 1024

    def __init__(self, chunks: list[bytes], *, complete_after: int | None = None,
                 buffered: bytes = b"") -> None:
        self._body_buffer = bytearray(buffered)
        self._sock: FakeSocket | None = FakeSocket(chunks)
        self.complete_after = complete_after
        self.message_complete = False
        self.fed = 0

    def feed(self, data: bytes) -> None:
        self._body_buffer += data
        self.fed += 1
        if data == b"" or (self.complete_after is not None and self.fed >= self.complete_after):
            self.message_complete = True


def drain(resp: FakeResponse, limit: int = 1 << 16) -> list[list[bytes]]:
    reads = []
    while lines := read_lines(resp, limit)[0]:
        reads.append(lines)
    return reads


def test_the_lines_of_one_read_come_back_together_without_newlines() -> None:
    resp = FakeResponse([b"data: a\n\ndata: b\n\n", b"data: [DONE]\n\n"], complete_after=2)
    assert drain(resp) == [[b"data: a", b"", b"data: b", b""], [b"data: [DONE]", b""]]


def test_a_line_split_across_reads_is_joined() -> None:
    resp = FakeResponse([b"data: hel", b"lo\ndata: x", b"yz\n"], complete_after=3)
    assert drain(resp) == [[b"data: hello"], [b"data: xyz"]]


def test_lines_already_buffered_are_returned_without_reading() -> None:
    resp = FakeResponse([], buffered=b"data: a\ndata: b\n")
    assert read_lines(resp, 1024)[0] == [b"data: a", b"data: b"]
    assert resp._sock is not None and resp._sock.reads == 0


def test_the_last_line_without_a_newline_comes_back_at_the_end() -> None:
    resp = FakeResponse([b"data: a\ndata: [DONE]"], complete_after=1)
    assert drain(resp) == [[b"data: a"], [b"data: [DONE]"]]


def test_a_line_over_the_cap_raises_whether_or_not_it_ended() -> None:
    endless = FakeResponse([b"x" * 600] * 10)
    with pytest.raises(LineTooLong):
        drain(endless, limit=2000)
    assert endless._sock is not None and endless._sock.reads <= 5
    ended = FakeResponse([b"data: ok\n" + b"y" * 3000 + b"\n"], complete_after=1)
    with pytest.raises(LineTooLong):
        drain(ended, limit=2000)


def test_many_short_lines_over_the_cap_together_are_fine() -> None:
    resp = FakeResponse([b"data: t\n" * 500], complete_after=1)
    assert drain(resp, limit=100) == [[b"data: t"] * 500]


def test_a_connection_closed_mid_body_is_a_reset() -> None:
    cut = FakeResponse([b"data: a\ndata: b"])  # the server closes before the body ends
    cut.complete_after = None

    def feed(data: bytes) -> None:  # EOF does not complete a chunked body
        cut._body_buffer += data

    cut.feed = feed  # type: ignore[method-assign]
    assert read_lines(cut, 1024)[0] == [b"data: a"]
    with pytest.raises(ConnectionResetError):
        read_lines(cut, 1024)
    gone = FakeResponse([])
    gone._sock = None
    with pytest.raises(ConnectionResetError):
        read_lines(gone, 1024)


def test_the_kernel_stamps_when_data_arrived_not_when_it_was_read() -> None:
    # A real loopback TCP connection: what the load's TTFT rests on when its event loop is
    # busy (the data waits in the socket while other streams are served).
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    try:
        assert stamp_arrivals(client)
        # Linux turns receive stamping on for the whole machine from a work queue the first
        # time a socket asks (net_enable_timestamp): until it has run, segments come
        # unstamped and the reader falls back to its own clock. Wait for the first stamp.
        deadline = time.monotonic() + 10
        while True:
            peer.sendall(b"x")
            data, arrived = recv_stamped(client, 4096)
            assert data == b"x"
            if arrived is not None:
                break
            assert time.monotonic() < deadline, "the kernel never stamped an arrival"
            time.sleep(0.05)
        sent = time.time()
        peer.sendall(b"data: first token\n")
        time.sleep(0.2)  # the reader is late
        data, arrived = recv_stamped(client, 4096)
        assert data == b"data: first token\n"
        assert arrived is not None
        assert sent - 0.01 <= arrived <= sent + 0.05  # when it came, not 0.2 s later
    finally:
        for sock in (client, peer, server):
            sock.close()


def test_read_lines_hands_over_the_arrival_stamp_of_its_last_read() -> None:
    resp = FakeResponse([b"data: a\n"], complete_after=1)
    before = time.time()
    lines, when = read_lines(resp, 1024)  # unstamped: the time they are handed over
    assert lines == [b"data: a"] and when >= before
