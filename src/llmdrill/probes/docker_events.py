"""The Docker Engine's event stream for a fault's containers, recorded as evidence.

While a Docker fault is applied, a thread follows `GET /events` filtered to its
containers and records each event (die, oom, kill, start, restart, pause, health_status,
...) as a `docker_event` in the evidence store, with the engine's own timestamp. Checks
read them (a die with exit code 137, an oom, the restart policy's start) and reports show
them on the timeline. Exec events (health checks run one every few seconds) are noise
and are left out.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from llmdrill.model.events import EventKind

Sink = Callable[[float, str, dict[str, Any]], None]

KIND = EventKind.DOCKER_EVENT
IGNORED_PREFIXES = ("exec_", "top", "attach", "resize", "archive-path", "extract-to-dir",
                    "copy", "commit", "export")
CONNECT_TIMEOUT = 10


def event_detail(event: dict[str, Any], fault: str | None = None
                 ) -> tuple[float, dict[str, Any]] | None:
    """(time, detail) of one raw engine event, or None for events not worth keeping."""
    if event.get("Type", "container") != "container":
        return None
    action = str(event.get("Action") or event.get("status") or "")
    if not action or action.startswith(IGNORED_PREFIXES):
        return None
    nanos = event.get("timeNano")
    ts = int(nanos) / 1e9 if nanos else float(event.get("time") or 0)
    attrs = (event.get("Actor") or {}).get("Attributes") or {}
    detail: dict[str, Any] = {
        "action": action,
        "container": str(attrs.get("name", "")),
        "id": str((event.get("Actor") or {}).get("ID") or event.get("id") or "")[:12],
    }
    if action.startswith("health_status"):
        # "health_status: healthy" -> action health_status, health healthy
        detail["action"] = "health_status"
        detail["health"] = action.partition(":")[2].strip()
    for key, name in (("exitCode", "exit_code"), ("signal", "signal")):
        if key in attrs:
            value = attrs[key]
            detail[name] = int(value) if str(value).isdigit() else value
    if fault is not None:
        detail["fault"] = fault
    return ts, detail


class DockerEventRecorder:
    """Follows the engine's events for some containers from `since` until stop()."""

    def __init__(self, host: str, containers: list[str], sink: Sink, since: float,
                 fault: str | None = None) -> None:
        self.host = host
        self.containers = list(containers)
        self.sink = sink
        self.since = since
        self.fault = fault
        self.error: str | None = None
        self.count = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._run, name="docker-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        import docker

        client = None
        try:
            client = docker.DockerClient(base_url=self.host, timeout=CONNECT_TIMEOUT)
            # The stream itself has no read timeout (it is quiet between events);
            # stop() ends it by closing its socket from this side.
            stream = client.api.events(since=int(self.since),
                                       filters={"type": "container",
                                                "container": self.containers},
                                       decode=True)
            with self._lock:
                self._stream = stream
            if self._stop.is_set():
                return
            for event in stream:
                found = event_detail(event, self.fault)
                # `since` has whole seconds: drop what came before the fault.
                if found is not None and found[0] >= self.since - 0.001:
                    self.sink(found[0], KIND, found[1])
                    self.count += 1
                if self._stop.is_set():
                    return
        except Exception as exc:  # a lost stream loses evidence, never the run
            if not self._stop.is_set():
                self.error = f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                stream, self._stream = self._stream, None
            if stream is not None:
                _close(stream)
            if client is not None:
                client.close()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            _close(stream)
        self._thread.join(timeout)


def _close(stream: Any) -> None:
    # Already closed, or closed under the reader's feet: either way it is closed.
    with contextlib.suppress(Exception):
        stream.close()
