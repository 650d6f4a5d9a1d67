"""warm_up: a started engine's first request, and the clear error when it fails."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from llmdrill.stack.processes import ServiceStartError
from llmdrill.stack.warmup import warm_up

pytestmark = pytest.mark.unit


@contextmanager
def _engine(status: int, seen: list[dict[str, object]]) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", 0))
            seen.append({"path": self.path, **json.loads(self.rfile.read(length))})
            body = b'{"error": {"message": "EngineCore encountered an issue"}}'
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_ordinary_completion_is_sent_first() -> None:
    seen: list[dict[str, object]] = []
    with _engine(200, seen) as url:
        warm_up(url + "/", "tiny")
    [request] = seen
    assert request["path"] == "/v1/completions" and request["model"] == "tiny"
    # Not a 2-token prompt: that first request is what killed a fresh CPU worker.
    assert len(str(request["prompt"]).split()) >= 20


def test_an_engine_that_fails_it_is_named_with_its_answer() -> None:
    with _engine(500, []) as url, pytest.raises(ServiceStartError) as caught:
        warm_up(url, "tiny")
    assert f"{url}/v1/completions answered 500" in str(caught.value)
    assert "EngineCore" in str(caught.value)


def test_an_engine_that_is_gone_is_named() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ServiceStartError, match=f"127.0.0.1:{port}/v1/completions"):
        warm_up(f"http://127.0.0.1:{port}", "tiny", timeout=5)
