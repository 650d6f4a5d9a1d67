"""The locustfile the harness starts Locust with (`locust -f` this file).

Timeouts are class attributes of FastHttpUser, so the concrete user class is made here,
once the configuration (from LLMDRILL_LOAD_CONFIG) is known.
"""

from __future__ import annotations

import os
from typing import Any

import gevent
from locust import events

from llmdrill.load.openai_user import OpenAIUser, _config

_cfg, _ = _config()


class DrillUser(OpenAIUser):
    abstract = False
    connection_timeout = _cfg.connect_timeout
    network_timeout = _cfg.read_timeout  # also the stream idle timeout: any single read
    max_retries = 0  # retries are ours, with jitter and a count in the record
    concurrency = 1


def _watch_parent(environment: Any, parent: int) -> None:
    # If the harness dies (even kill -9), this process is re-parented: stop the load
    # instead of hammering the target until --run-time runs out.
    while True:
        gevent.sleep(0.5)
        if os.getppid() != parent:
            if environment.runner is not None:
                environment.runner.quit()
            os._exit(0)


@events.init.add_listener  # type: ignore[untyped-decorator]
def _on_init(environment: Any, **_kwargs: Any) -> None:
    parent = int(os.environ.get("LLMDRILL_HARNESS_PID", "0"))
    if parent:
        gevent.spawn(_watch_parent, environment, parent)
