"""A phase that ends once the target is back (`phases[].end_early`).

A kill or restart drill's recovery phase must last as long as the worst recovery it
allows (the replacement loading the model on a busy machine), but most recoveries are
much sooner. `BackWatcher` polls the phase's health URLs in a thread and says when the
phase may end: a failure was seen (the fault reached the target), and every URL has
answered healthy, with no failure of any, for `after` seconds since the last one.

It only ever shortens a phase to a window that holds the whole recovery plus `after`:
without a failure seen it never ends the phase, so a fault that never reached the target
keeps its full window for the checks to judge (and fail) it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx

from llmdrill.scenario.models import EndEarly

POLL_INTERVAL_S = 0.5
POLL_TIMEOUT_S = 2.0


def healthy(client: httpx.Client, url: str) -> bool:
    """A 2xx answer within the client's timeout; anything else (refused, reset, hung,
    garbage, 5xx) is a failure."""
    try:
        return client.get(url).is_success
    except (httpx.HTTPError, OSError, ValueError):
        return False


@dataclass
class BackState:
    """What the polls saw so far; `ended` judges it. Pure, so the rule is unit-tested."""

    urls: tuple[str, ...]
    after: float
    first_failed_url: str | None = None
    last_failure: float | None = None  # None: no failure seen yet
    latest: dict[str, bool] = field(default_factory=dict)  # each URL's last poll

    def saw(self, url: str, ok: bool, at: float) -> None:
        self.latest[url] = ok
        if not ok:
            if self.first_failed_url is None:
                self.first_failed_url = url
            self.last_failure = at

    def ended(self, now: float) -> str | None:
        """Why the phase may end now, or None while it must go on."""
        if self.last_failure is None:
            return None  # the fault has not shown on the target (yet)
        if not all(self.latest.get(url) for url in self.urls):
            return None
        if now - self.last_failure < self.after:
            return None
        return (f"back: {self.first_failed_url} failed at first, then every health URL "
                f"answered for {now - self.last_failure:.1f}s (end_early.after "
                f"{self.after:g}s)")


class BackWatcher:
    """The polling thread of one phase's `end_early`; a `Services` helper."""

    def __init__(self, spec: EndEarly, *, interval: float = POLL_INTERVAL_S,
                 timeout: float = POLL_TIMEOUT_S) -> None:
        self.state = BackState(tuple(spec.back), spec.after)
        self.interval, self.timeout = interval, timeout
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="end-early", daemon=True)

    def _run(self) -> None:
        # No proxy from the environment: the health URLs are the target's own.
        with httpx.Client(timeout=self.timeout, trust_env=False) as client:
            while not self._stop.is_set():
                for url in self.state.urls:
                    ok = healthy(client, url)
                    with self._lock:
                        self.state.saw(url, ok, time.time())
                self._stop.wait(self.interval)

    def ended(self, now: float) -> str | None:
        with self._lock:
            return self.state.ended(now)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout * len(self.state.urls) + 5)
