"""The run's optional helpers (load generator, metrics scraper, guard poller, webhook
receiver, alert watcher, watchdog, active probes) behind one start/stop lifecycle.

Each is started through `Services.start` and stopped, on every exit path, in the reverse
order of its start: the teardown order is the start order read backwards, in one place.
A helper that fails to stop is reported and the others are still stopped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, TypeVar


class Service(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=Service)


class Services:
    """Started helpers, stopped last-in first-out by `close()` (or leaving the `with`)."""

    def __init__(self, on_stop_error: Callable[[str, Exception], None] | None = None) -> None:
        self._stack = contextlib.ExitStack()
        self._on_stop_error = on_stop_error
        self.running: list[str] = []

    def start(self, name: str, service: S) -> S:
        """Start `service`; once started (not before) it will be stopped by close()."""
        service.start()
        self.running.append(name)
        self._stack.callback(self._stop, name, service)
        return service

    def _stop(self, name: str, service: Service) -> None:
        try:
            service.stop()
        except Exception as exc:  # teardown goes on: the other helpers must stop too
            if self._on_stop_error is None:
                raise
            self._on_stop_error(name, exc)
        finally:
            self.running.remove(name)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class Callbacks:
    """A service made of two functions, for helpers whose start or stop is more than one
    call (a process whose last output must be read as it stops)."""

    def __init__(self, start: Callable[[], None], stop: Callable[[], None]) -> None:
        self._start, self._stop = start, stop

    def start(self) -> None:
        self._start()

    def stop(self) -> None:
        self._stop()
