"""Unreachable, hanging and garbage-speaking targets: exit 2, the endpoint named, fast."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, Stack, llmdrill

pytestmark = pytest.mark.integration

SCENARIO = (REPO / "scenarios" / "timeout-spike.yaml").read_text()


def _serve(handler: object) -> Iterator[int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    port = server.getsockname()[1]
    stop = threading.Event()
    conns: list[socket.socket] = []

    def loop() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conns.append(conn)
            if callable(handler):
                handler(conn)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join()
    for c in conns:
        c.close()
    server.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """Accepts connections and never answers."""
    yield from _serve(None)


@pytest.fixture
def garbage_port() -> Iterator[int]:
    def answer(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nnot json!")
    yield from _serve(answer)


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(stack: Stack, tmp_path: Path, target: str) -> tuple[int, str, float]:
    path = tmp_path / "drill.yaml"
    path.write_text(SCENARIO)
    started = time.time()
    proc = llmdrill("run", str(path), "--out", str(tmp_path / "reports"),
                    env=stack.env(LLMDRILL_TARGET_URL=target), timeout=120)
    return proc.returncode, proc.stdout + proc.stderr, time.time() - started


def test_unreachable_target(clean_proxy: Stack, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_unused_port()}"
    code, output, _ = _run(clean_proxy, tmp_path, url)
    assert code == 2, output
    assert f"{url}/v1/models is unreachable" in output
    assert "Traceback" not in output


def test_target_that_never_answers(clean_proxy: Stack, tmp_path: Path, silent_port: int) -> None:
    url = f"http://127.0.0.1:{silent_port}"
    code, output, took = _run(clean_proxy, tmp_path, url)
    assert code == 2, output
    assert f"{url}/v1/models did not answer within 5s" in output
    assert took < 60
    assert "Traceback" not in output


def test_target_that_sends_garbage(clean_proxy: Stack, tmp_path: Path, garbage_port: int) -> None:
    url = f"http://127.0.0.1:{garbage_port}"
    code, output, _ = _run(clean_proxy, tmp_path, url)
    assert code == 2, output
    assert "did not answer with an OpenAI model list" in output
    assert "Traceback" not in output


def test_unreachable_toxiproxy(clean_proxy: Stack, tmp_path: Path) -> None:
    path = tmp_path / "drill.yaml"
    path.write_text(SCENARIO)
    url = f"http://127.0.0.1:{_unused_port()}"
    proc = llmdrill("plan", str(path), "--check", env=clean_proxy.env(LLMDRILL_TOXIPROXY_URL=url))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"Toxiproxy at {url} is unreachable" in proc.stderr


def test_plan_check_on_healthy_stack(clean_proxy: Stack) -> None:
    proc = llmdrill("plan", str(REPO / "scenarios" / "timeout-spike.yaml"), "--check",
                    env=clean_proxy.env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "serves 'tiny'" in proc.stdout
    assert clean_proxy.toxics() == []
