"""The run's helpers stop in the reverse order of their start, on every exit path, and one
that fails to stop does not keep the others running (harness/services.py)."""

from __future__ import annotations

import pytest

from llmdrill.harness.services import Callbacks, Services

pytestmark = pytest.mark.unit


class Recorder:
    def __init__(self, log: list[str], name: str, fail_stop: bool = False,
                 fail_start: bool = False) -> None:
        self.log, self.name = log, name
        self.fail_stop, self.fail_start = fail_stop, fail_start

    def start(self) -> None:
        if self.fail_start:
            raise RuntimeError(f"{self.name} cannot start")
        self.log.append(f"start {self.name}")

    def stop(self) -> None:
        self.log.append(f"stop {self.name}")
        if self.fail_stop:
            raise RuntimeError(f"{self.name} cannot stop")


def test_helpers_stop_in_reverse_order_of_their_start() -> None:
    log: list[str] = []
    with Services() as services:
        for name in ("watchdog", "scraper", "guard poller", "load"):
            services.start(name, Recorder(log, name))
        assert services.running == ["watchdog", "scraper", "guard poller", "load"]
    assert log[4:] == ["stop load", "stop guard poller", "stop scraper", "stop watchdog"]
    assert services.running == []


def test_an_exception_in_the_run_still_stops_every_started_helper() -> None:
    log: list[str] = []
    with pytest.raises(KeyboardInterrupt), Services() as services:
        services.start("scraper", Recorder(log, "scraper"))
        services.start("load", Recorder(log, "load"))
        raise KeyboardInterrupt
    assert log[-2:] == ["stop load", "stop scraper"]


def test_a_helper_that_fails_to_start_is_not_stopped_but_the_earlier_ones_are() -> None:
    log: list[str] = []
    services = Services()
    services.start("scraper", Recorder(log, "scraper"))
    with pytest.raises(RuntimeError, match="cannot start"):
        services.start("webhook", Recorder(log, "webhook", fail_start=True))
    services.close()
    assert log == ["start scraper", "stop scraper"]


def test_a_helper_that_fails_to_stop_is_reported_and_the_others_still_stop() -> None:
    log: list[str] = []
    failed: list[tuple[str, str]] = []
    services = Services(lambda name, exc: failed.append((name, str(exc))))
    services.start("watchdog", Recorder(log, "watchdog"))
    services.start("alert watcher", Recorder(log, "alert watcher", fail_stop=True))
    services.start("load", Recorder(log, "load"))
    services.close()
    assert log[3:] == ["stop load", "stop alert watcher", "stop watchdog"]
    assert failed == [("alert watcher", "alert watcher cannot stop")]


def test_callbacks_make_a_helper_of_two_functions() -> None:
    log: list[str] = []
    with Services() as services:
        services.start("load", Callbacks(lambda: log.append("up"), lambda: log.append("down")))
    assert log == ["up", "down"]
