"""Polls the guardrails that ask a monitoring server (PromQL, alerts) in a thread, so the
phase loop only reads the latest answers and never waits on Prometheus."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from llmdrill.monitoring.prometheus import MonitoringError, alert_firing, promql_value
from llmdrill.scenario.models import Scenario

POLL_S = 2.0


class GuardPoller:
    def __init__(self, scenario: Scenario, on_error: Callable[[str], None]) -> None:
        self.scenario = scenario
        self._on_error = on_error
        # guard key -> (breached now?, what was seen)
        self.latest: dict[str, tuple[bool, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="guard-poller", daemon=True)

    @property
    def needed(self) -> bool:
        return any(g.abort_if.promql or g.abort_if.alert for g in self.scenario.guardrails)

    def start(self) -> None:
        if self.needed:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def poll_once(self) -> None:
        for i, guard in enumerate(self.scenario.guardrails):
            rules = guard.abort_if
            try:
                if rules.promql is not None and self.scenario.prometheus is not None:
                    value = promql_value(self.scenario.prometheus.url, rules.promql.query)
                    over = value is not None and (
                        (rules.promql.above is not None and value > rules.promql.above)
                        or (rules.promql.below is not None and value < rules.promql.below))
                    self.latest[f"{i}.promql"] = (over, f"{rules.promql.query} = {value}")
                if rules.alert is not None:
                    endpoint = (self.scenario.prometheus if rules.alert.source == "prometheus"
                                else self.scenario.alertmanager)
                    if endpoint is not None:
                        firing = alert_firing(endpoint.url, rules.alert.name,
                                              rules.alert.source)
                        self.latest[f"{i}.alert"] = (firing, f"alert {rules.alert.name} "
                                                     f"{'firing' if firing else 'not firing'}")
            except MonitoringError as exc:
                # Blind is not breached: the run goes on, and the evidence says why.
                self._on_error(str(exc))

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.poll_once()
            self._stop.wait(max(0.0, POLL_S - (time.monotonic() - started)))
