"""The locustfile the harness starts Locust with (`locust -f` this file).

The concrete user class is made here, once the configuration (from LLMDRILL_LOAD_CONFIG)
is known: its wait time comes from the scenario.
"""

from __future__ import annotations

import os
from typing import Any

import gevent
from locust import events

from llmdrill.load.openai_user import OpenAIUser, _config

_sink = _config()[1]


class DrillUser(OpenAIUser):
    # Timeouts (connect; read, also the stream idle timeout; total) and retries are the
    # user's own, from the configuration: see OpenAIUser.on_start.
    abstract = False


def _watch_parent(environment: Any, parent: int) -> None:
    # If the harness dies (even kill -9), this process is re-parented: stop the load
    # instead of hammering the target until --run-time runs out.
    while True:
        gevent.sleep(0.5)
        if os.getppid() != parent:
            if environment.runner is not None:
                environment.runner.quit()
            _sink.flush()
            os._exit(0)


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def _on_quitting(**_kwargs: Any) -> None:
    _sink.flush()  # the requests that Locust's stop interrupted, recorded as such


@events.init.add_listener  # type: ignore[untyped-decorator]
def _on_init(environment: Any, **_kwargs: Any) -> None:
    parent = int(os.environ.get("LLMDRILL_HARNESS_PID", "0"))
    if parent:
        gevent.spawn(_watch_parent, environment, parent)
