"""The load user's HTTP/1.1 client: a keep-alive connection of geventhttpclient (its
connection pool for connects, timeouts and TLS; its C parser for the answer) and a request
head built once per user.

Locust's FastHttpSession builds, validates and merges every request's headers, resolves
the URL, keeps a cookie jar and wraps the answer in two layers before a byte is read:
measured, half of the load process's time went there, and llmdrill reached only 0.63x the
requests a bare FastHttpUser sends. The load user asks one kind of request over and over,
so the head is formatted once and the body is the only thing that changes (see
docs/decisions/0014-load-wire-client.md). What Locust's session gave that an API client
needs is kept: cookies a gateway sets for stickiness are sent back, and Locust's request
event still fires so its own statistics stay true.

Runs in the Locust process (gevent); the harness never imports it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import gevent.monkey
import gevent.ssl
from geventhttpclient.connectionpool import ConnectionPool, SSLConnectionPool
from geventhttpclient.response import HTTPSocketPoolResponse

from llmdrill.load.transport import stamp_arrivals

BLOCK_SIZE = 64 * 1024

# The system's select, never gevent's: gevent's yields to the hub even with a zero
# timeout (so one greenlet cannot monopolise the loop).
_select = gevent.monkey.get_original("select", "select")


def socket_alive(sock: Any) -> bool:
    """Whether a kept-alive connection can carry the next request: open, and nothing to
    read while idle (a FIN, or bytes the last answer left). geventhttpclient's own check
    asks gevent's select, which switches to the hub: the user had already stamped the
    request's start, and the other users ran before it was sent (measured: the first
    requests of 256 users reached the server 1.3 to 17 ms after their start, counted as
    TTFT). This check does not leave the user's greenlet."""
    if sock is None:
        return False
    try:
        if sock.fileno() < 0:
            return False
        readable, _, _ = _select([sock], [], [], 0.0)
        return not readable
    except (OSError, ValueError):
        return False


class _QuietAliveCheck:
    """geventhttpclient's pools with socket_alive as their kept-alive check."""

    def _is_socket_alive(self, sock: Any) -> bool:
        return socket_alive(sock)


class _Pool(_QuietAliveCheck, ConnectionPool):
    pass


class _SSLPool(_QuietAliveCheck, SSLConnectionPool):
    pass


def _unverified_context() -> gevent.ssl.SSLContext:
    # The load generator has always accepted any certificate (Locust's FastHttpUser
    # default): a staging gateway with a self-signed certificate must still get load.
    return gevent.ssl._create_unverified_context()


class WireClient:
    """One user's connection to the target: `post()` sends a request and hands back the
    answer with its headers read and its body unread."""

    def __init__(self, base_url: str, headers: dict[str, str], connect_timeout: float,
                 network_timeout: float) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        tls = url.scheme == "https"
        port = url.port or (443 if tls else 80)
        host = url.hostname
        self.base_path = url.path.rstrip("/")
        host_header = f"[{host}]" if ":" in host else host
        if port != (443 if tls else 80):
            host_header += f":{port}"
        self._static = "".join(f"{k}: {v}\r\n" for k, v in
                               {"Host": host_header, "User-Agent": "llmdrill",
                                **headers}.items())
        self.cookies: dict[str, str] = {}
        self._sock: object | None = None  # the connection last used, and whether the
        self._stamped = False  # kernel stamps its arrivals (transport.stamp_arrivals)
        self._cookie_header = ""
        pool_args: dict[str, Any] = {
            "size": 1, "network_timeout": network_timeout,
            "connection_timeout": connect_timeout,
        }
        self.pool: ConnectionPool
        if tls:
            self.pool = _SSLPool(host, port, host, port, ssl_options={
                "server_hostname": host}, ssl_context_factory=_unverified_context,
                insecure=True, **pool_args)
        else:
            self.pool = _Pool(host, port, host, port, **pool_args)

    def head(self, path: str, length: int) -> bytes:
        return (f"POST {self.base_path}{path} HTTP/1.1\r\n{self._static}{self._cookie_header}"
                f"Content-Length: {length}\r\n\r\n").encode("latin-1")

    def connect(self) -> None:
        """Opens the user's connection before its first request, so that request's TTFT
        does not carry the connect, nor the wait for the core while Locust spawns the
        other users (measured: the first request of each of 256 users 66 ms late at p50,
        every later one under 5 ms). A failure is left for the first request to meet and
        record as its own error."""
        try:
            sock = self.pool.get_socket()
        except Exception:
            return
        self._sock, self._stamped = sock, stamp_arrivals(sock)
        self.pool.return_socket(sock)

    def post(self, path: str, body: bytes) -> HTTPSocketPoolResponse:
        """Sends the request on the user's connection (a new one when the last was closed)
        and reads the answer's head. The caller releases the answer (`release()`): a body
        read to its end puts the connection back, anything else closes it."""
        request = self.head(path, len(body)) + body
        sock = self.pool.get_socket()
        if sock is not self._sock:  # a new connection: ask the kernel to stamp arrivals
            self._sock, self._stamped = sock, stamp_arrivals(sock)
        try:
            sock.sendall(request)
        except BaseException:
            self.pool.release_socket(sock)
            raise
        # The parser reads the head; on failure it releases the socket itself.
        resp = HTTPSocketPoolResponse(sock, self.pool, block_size=BLOCK_SIZE, method="POST")
        resp.llmdrill_stamped = self._stamped  # type: ignore[attr-defined]  # for read_lines
        self._keep_cookies(resp)
        return resp

    def _keep_cookies(self, resp: HTTPSocketPoolResponse) -> None:
        # A gateway's sticky-session cookie goes back on the next requests, as a
        # browser-like client would send it; attributes (path, expiry) are not tracked.
        found = resp.info().getlist("set-cookie")
        if not found:
            return
        for value in found:
            name, sep, rest = str(value).partition("=")
            if sep and name.strip():
                self.cookies[name.strip()] = rest.split(";", 1)[0].strip()
        self._cookie_header = "Cookie: " + "; ".join(
            f"{k}={v}" for k, v in self.cookies.items()) + "\r\n"

    def close(self) -> None:
        self.pool.close()
