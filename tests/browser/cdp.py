"""Headless Chromium driven over the Chrome DevTools Protocol, just enough to open a local
page and watch it: console errors, exceptions, network requests, DOM queries, screenshots.

Chromium listens on a port it picks itself (`--remote-debugging-port=0`) and writes it to
DevToolsActivePort in its profile folder; we talk to the browser endpoint over one
websocket and to the page through a flattened session (`sessionId` on every message).
The flags keep a browser on a closed network from calling home: without the background
networking ones it stalls on, or logs errors about, services it cannot reach.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio",
    "--remote-debugging-port=0",
)
START_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 30.0


class CdpError(RuntimeError):
    """Chromium did not start, answered with an error, or did not answer in time."""


@dataclass
class PageLog:
    """What a page did while it was open: console errors and exceptions, requests."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def take(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.errors.append(f"exception: {details.get('text')} "
                               f"{details.get('exception', {}).get('description', '')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = [a.get("value", a.get("description")) for a in params.get("args", [])]
            self.errors.append(f"console.{params['type']}: {args}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"log ({entry.get('source')}): {entry.get('text')} "
                               f"{entry.get('url', '')}")
        elif method == "Network.requestWillBeSent":
            self.requests.append(str(params.get("request", {}).get("url")))


class Chromium:
    """One headless browser with one page; use as a context manager."""

    def __init__(self, binary: str, profile: Path, width: int = 1200, height: int = 900
                 ) -> None:
        self.binary, self.profile = binary, profile
        self.width, self.height = width, height
        self._proc: subprocess.Popen[bytes] | None = None
        self._ws: websocket.WebSocket | None = None
        self._next_id = 0
        self._events: list[tuple[str, dict[str, Any]]] = []
        self.session = ""
        self.log = PageLog()

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Chromium:
        self.profile.mkdir(parents=True, exist_ok=True)
        stderr = (self.profile.parent / "chromium.stderr").open("wb")
        self._proc = subprocess.Popen(
            [self.binary, *FLAGS, f"--user-data-dir={self.profile}",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
            start_new_session=True)  # its own group: every helper process goes with it
        stderr.close()
        try:
            self._connect()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def _connect(self) -> None:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise CdpError(f"chromium exited with {self._proc.returncode} before "
                               f"listening; see {self.profile.parent / 'chromium.stderr'}")
            if time.monotonic() > deadline:
                raise CdpError(f"chromium wrote no {port_file} in {START_TIMEOUT_S:.0f}s")
            time.sleep(0.1)
        port, path = port_file.read_text().split()[:2]
        # No Origin header: Chromium refuses websocket origins it was not told to allow.
        self._ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}",
                                               timeout=CALL_TIMEOUT_S, suppress_origin=True)
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=None)
        attached = self.call("Target.attachToTarget",
                             {"targetId": target["targetId"], "flatten": True}, session=None)
        self.session = attached["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1,
                   "mobile": False})
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.call(f"{domain}.enable")

    # -- protocol -------------------------------------------------------------------------

    def call(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = "") -> dict[str, Any]:
        """Send one command (to the page's session unless session=None) and wait for its
        answer; events that arrive meanwhile are logged and kept."""
        assert self._ws is not None
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method,
                                   "params": params or {}}
        if session is not None:
            message["sessionId"] = session or self.session
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while time.monotonic() < deadline:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CdpError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))
        raise CdpError(f"{method}: no answer in {CALL_TIMEOUT_S:.0f}s")

    def _receive(self) -> dict[str, Any]:
        assert self._ws is not None
        message = json.loads(self._ws.recv())
        if "method" in message:
            params = message.get("params", {})
            self._events.append((message["method"], params))
            self.log.take(message["method"], params)
        return dict(message)

    def wait_event(self, method: str, timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        """The first event of this name not yet waited for (past or future)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, (name, params) in enumerate(self._events):
                if name == method:
                    del self._events[: i + 1]
                    return params
            if time.monotonic() > deadline:
                raise CdpError(f"no {method} in {timeout:.0f}s")
            self._receive()

    # -- what a test does -----------------------------------------------------------------

    def open(self, url: str) -> None:
        """Navigate and wait for the load event, with a fresh log for this page."""
        self.log = PageLog()
        self._events.clear()
        answer = self.call("Page.navigate", {"url": url})
        if answer.get("errorText"):
            raise CdpError(f"cannot open {url}: {answer['errorText']}")
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        answer = self.call("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True})
        if "exceptionDetails" in answer:
            raise CdpError(f"evaluate failed: {answer['exceptionDetails'].get('text')}")
        return answer.get("result", {}).get("value")

    def screenshot(self, path: Path) -> Path:
        """The whole page (not only the viewport) as a PNG."""
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        shot = self.call("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": self.width, "height": height, "scale": 1}})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path
