"""The load user's check that a kept-alive connection can carry the next request: right
about the connection, and it never leaves the user's greenlet (the request's start is
already stamped; a switch to the hub there is counted as the server's time)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import gevent
import gevent.select
import pytest

from llmdrill.load import wire
from llmdrill.load.wire import WireClient, socket_alive

pytestmark = pytest.mark.unit


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    try:
        yield client, peer
    finally:
        for sock in (client, peer, server):
            sock.close()


def _settle() -> None:
    time.sleep(0.05)  # loopback delivery is immediate; a margin for a busy machine


def test_an_idle_connection_is_alive(pair: tuple[socket.socket, socket.socket]) -> None:
    client, _ = pair
    assert socket_alive(client)


def test_a_connection_the_server_closed_is_not(pair: tuple[socket.socket, socket.socket]
                                               ) -> None:
    client, peer = pair
    peer.close()
    _settle()
    assert not socket_alive(client)


def test_a_connection_with_bytes_left_unread_is_not(
        pair: tuple[socket.socket, socket.socket]) -> None:
    client, peer = pair
    peer.sendall(b"the rest of an earlier answer")
    _settle()
    assert not socket_alive(client)


def test_a_closed_socket_and_none_are_not() -> None:
    sock = socket.socket()
    sock.close()
    assert not socket_alive(sock)
    assert not socket_alive(None)


def test_the_check_does_not_switch_to_the_hub(pair: tuple[socket.socket, socket.socket]
                                             ) -> None:
    # gevent's select (what a monkey-patched `select.select` is) sleeps(0) even with a zero
    # timeout: a greenlet ready to run would run here, between the start stamp and the send.
    client, _ = pair
    ran: list[int] = []
    other = gevent.spawn(ran.append, 1)
    try:
        assert socket_alive(client)
        assert not ran
        gevent.select.select([client], [], [], 0.0)
        assert ran  # the contrast: gevent's own select let the other greenlet run
    finally:
        other.kill()


def test_both_pools_of_the_wire_client_use_it(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[object] = []

    def alive(sock: object) -> bool:
        asked.append(sock)
        return True

    monkeypatch.setattr(wire, "socket_alive", alive)
    for url in ("http://127.0.0.1:9", "https://127.0.0.1:9"):
        assert WireClient(url, {}, 1.0, 1.0).pool._is_socket_alive(url) is True
    assert asked == ["http://127.0.0.1:9", "https://127.0.0.1:9"]
