"""A deliberately broken gateway: a TCP relay in front of the real vLLM that keeps reading
the upstream answer after its client left.

Whatever the client does (FIN, RST, or simply stops reading), the relay never closes its
upstream connection early: it keeps the stream open and reads it to the end, so the engine
sees a client that is still there and generates for nobody. That is the failure a cancel
storm is meant to catch (a gateway or sidecar that does not propagate client disconnects),
built so that it happens every time; nginx's `proxy_ignore_client_abort on` does it only
for some ways of leaving (its own write errors close the upstream).

When the relay stops it closes every upstream connection, so the engine is freed before
the next test.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

CHUNK = 65536


class LingeringRelay:
    def __init__(self, port: int, upstream_host: str, upstream_port: int) -> None:
        self.port = port
        self.upstream = (upstream_host, upstream_port)
        self.loop = asyncio.new_event_loop()
        self.upstreams: set[asyncio.StreamWriter] = set()
        self.client_gone = 0  # connections whose client left before the upstream answered
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="lingering-relay")

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(timeout=10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port,
                                                  backlog=1024)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self.upstreams):
            writer.transport.abort()  # the engine sees the disconnect and frees its work
        self.upstreams.clear()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
                     ) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.transport.abort()
            return
        self.upstreams.add(up_w)
        forward = asyncio.create_task(self._client_to_upstream(client_r, up_w))
        try:
            await self._upstream_to_client(up_r, client_w)
        finally:
            forward.cancel()
            self.upstreams.discard(up_w)
            up_w.transport.abort()
            client_w.transport.abort()

    @staticmethod
    async def _client_to_upstream(client_r: asyncio.StreamReader,
                                  up_w: asyncio.StreamWriter) -> None:
        # The bug, part one: the client's FIN or RST is not passed on (no half-close, no
        # close); the upstream connection stays open as if the client were still there.
        with contextlib.suppress(OSError):
            while data := await client_r.read(CHUNK):
                up_w.write(data)
                await up_w.drain()

    async def _upstream_to_client(self, up_r: asyncio.StreamReader,
                                  client_w: asyncio.StreamWriter) -> None:
        # The bug, part two: when writing to the client fails, keep reading the upstream
        # answer to its end anyway. The connection ends only when the engine closes it
        # (its keep-alive timeout once the answer is done).
        client_ok = True
        while True:
            try:
                data = await up_r.read(CHUNK)
            except OSError:
                return
            if not data:
                return
            if client_ok:
                try:
                    client_w.write(data)
                    await asyncio.wait_for(client_w.drain(), timeout=1.0)
                except (OSError, TimeoutError):
                    client_ok = False
                    self.client_gone += 1
                    client_w.transport.abort()


@contextmanager
def lingering_gateway(port: int, upstream: str = "127.0.0.1:18000") -> Iterator[str]:
    """Start the relay on 127.0.0.1:port; yield its URL; close everything on exit."""
    host, _, up_port = upstream.rpartition(":")
    relay = LingeringRelay(port, host, int(up_port))
    relay.start()
    url = f"http://127.0.0.1:{port}"
    try:
        httpx.get(f"{url}/v1/models", timeout=10).raise_for_status()
        yield url
    finally:
        relay.stop()
