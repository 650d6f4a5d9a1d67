"""The Alertmanager webhook receiver the harness runs for the length of a run.

Every notification that arrives is recorded in the evidence store, one `alert_notification`
event per alert in it: when it arrived, the alert's name, firing or resolved, its labels.
Annotations, URLs and the rest of the payload are not kept: they are free text a rule
author wrote, the report does not need them, and a secret has no business there.

The standard library's threading HTTP server is enough: one local sender, a few
notifications a second at most. Bodies are capped and every socket has a timeout, so a
misbehaving sender cannot hold the run.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from llmdrill.faults.base import EnvironmentProblem
from llmdrill.model.events import EventKind

if TYPE_CHECKING:
    from llmdrill.model.records import Evidence

MAX_BODY = 1 << 20
SOCKET_TIMEOUT_S = 5.0

Record = Callable[[float, dict[str, Any]], None]


def notification_markers(evidence: Evidence, t0: float) -> list[tuple[float, str]]:
    """The notifications received, as report markers: (seconds since t0, "NAME status").

    Alertmanager sends every alert of a group in one payload and may send a group again;
    the same alert and status arriving at the same moment is one marker.
    """
    seen: set[tuple[float, str]] = set()
    for ts, detail in evidence.events_of(EventKind.ALERT_NOTIFICATION):
        name = str(detail.get("alert") or "alert")
        status = str(detail.get("status") or "notified")
        seen.add((round(ts - t0, 1), f"{name} {status}"))
    return sorted(seen)


def notifications(payload: Any, received_at: float) -> list[dict[str, Any]]:
    """The per-alert records of one webhook payload (Alertmanager's version 4 format)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
        raise ValueError("not an Alertmanager webhook payload (no alerts list)")
    out = []
    for alert in payload["alerts"]:
        if not isinstance(alert, dict):
            continue
        raw = alert.get("labels")
        labels: dict[Any, Any] = raw if isinstance(raw, dict) else {}
        out.append({
            "received_at": received_at,
            "alert": str(labels.get("alertname", "")),
            "status": str(alert.get("status") or payload.get("status") or ""),
            "labels": {str(k): str(v) for k, v in labels.items()},
            "receiver": str(payload.get("receiver", "")),
            "starts_at": str(alert.get("startsAt", "")),
            "ends_at": str(alert.get("endsAt", "")),
            "fingerprint": str(alert.get("fingerprint", "")),
        })
    return out


class _Handler(BaseHTTPRequestHandler):
    timeout = SOCKET_TIMEOUT_S
    server: _Server

    def do_POST(self) -> None:
        received_at = time.time()
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._answer(413 if length > MAX_BODY else 411)
            return
        try:
            records = notifications(json.loads(self.rfile.read(length)), received_at)
        except (ValueError, UnicodeDecodeError) as exc:
            self.server.record(received_at, {"error": f"bad notification: {exc}"[:300]},
                               "alert_webhook_error")
            self._answer(400)
            return
        for record in records:
            self.server.record(received_at, record, EventKind.ALERT_NOTIFICATION)
        self._answer(200)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # every notification is in the evidence store; stderr stays quiet


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int],
                 record: Callable[[float, dict[str, Any], str], None]) -> None:
        super().__init__(address, _Handler)
        self.record = record


class WebhookReceiver:
    """Listens on a loopback address from `start()` until `stop()` (idempotent)."""

    def __init__(self, host: str, port: int,
                 record: Callable[[float, dict[str, Any], str], None]) -> None:
        self.host, self.port, self._record = host, port, record
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            self._server = _Server((self.host, self.port), self._record)
        except OSError as exc:
            raise EnvironmentProblem(
                f"the alert webhook receiver cannot listen on {self.host}:{self.port}: "
                f"{exc.strerror or exc}") from None
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name="alert-webhook", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
