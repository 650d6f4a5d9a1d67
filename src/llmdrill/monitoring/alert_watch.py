"""Watches the alerting stack for the alert checks: which alert rules Prometheus has
loaded, and every change of an alert's state in Prometheus and in Alertmanager.

Events written to the evidence store:
- `alert_rules` {names} once Prometheus answered its rules API, or {error} if it did not;
- `alert_state` {source, alert, state, labels} on every change of an alert's state
  (Prometheus: inactive/pending/firing; Alertmanager: inactive/active/suppressed/
  unprocessed), the first poll included, so a check knows the state at any moment;
- `alert_poll` {source, ok, error?} when a source starts or stops answering.
Recording changes, not every poll, keeps the evidence small on long runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from llmdrill.model.events import EventKind
from llmdrill.monitoring.prometheus import (
    AlertStates,
    MonitoringError,
    alert_rule_names,
    alertmanager_alerts,
    prometheus_alerts,
)

Record = Callable[[float, str, dict[str, Any]], None]


class AlertWatcher:
    def __init__(self, prometheus: str | None, alertmanager: str | None, interval: float,
                 record: Record) -> None:
        self.sources: dict[str, tuple[str, Callable[[str], AlertStates]]] = {}
        if prometheus:
            self.sources["prometheus"] = (prometheus, prometheus_alerts)
        if alertmanager:
            self.sources["alertmanager"] = (alertmanager, alertmanager_alerts)
        self.prometheus = prometheus
        self.interval = interval
        self._record = record
        self._states: dict[tuple[str, str], str] = {}
        self._ok: dict[str, bool] = {}
        self._rules_known = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="alert-watch", daemon=True)

    def start(self) -> None:
        self.poll_once()  # the state at the start is known before the first phase begins
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self.poll_once()  # the state at the end, after the last revert

    def poll_once(self) -> None:
        now = time.time()
        if self.prometheus and not self._rules_known:
            try:
                names = alert_rule_names(self.prometheus)
                self._record(now, EventKind.ALERT_RULES, {"names": names})
                self._rules_known = True
            except MonitoringError as exc:
                if "rules" not in self._ok:  # say it once, keep trying
                    self._record(now, EventKind.ALERT_RULES, {"error": str(exc)})
                    self._ok["rules"] = False
        for source, (url, fetch) in self.sources.items():
            try:
                states = fetch(url)
            except MonitoringError as exc:
                self._health(source, False, now, str(exc))
                continue
            self._health(source, True, time.time(), None)
            self._changes(source, states, time.time())

    def _health(self, source: str, ok: bool, now: float, error: str | None) -> None:
        if self._ok.get(source) != ok:
            self._ok[source] = ok
            self._record(now, EventKind.ALERT_POLL, {"source": source, "ok": ok}
                         | ({"error": error} if error else {}))

    def _changes(self, source: str, states: AlertStates, now: float) -> None:
        seen = set()
        for name, (state, labels) in states.items():
            seen.add(name)
            if self._states.get((source, name)) != state:
                self._states[(source, name)] = state
                self._record(now, EventKind.ALERT_STATE,
                             {"source": source, "alert": name, "state": state,
                              "labels": labels})
        for (src, name), state in list(self._states.items()):
            if src == source and name not in seen and state != "inactive":
                self._states[(src, name)] = "inactive"
                self._record(now, EventKind.ALERT_STATE,
                             {"source": source, "alert": name, "state": "inactive",
                              "labels": {}})

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.poll_once()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
