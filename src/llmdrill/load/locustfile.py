"""The locustfile the harness starts Locust with (`locust -f` this file).

The concrete user class is made here, once the configuration (from LLMDRILL_LOAD_CONFIG)
is known: its wait time comes from the scenario.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import gevent
from locust import events
from locust.runners import STATE_MISSING, MasterRunner, WorkerRunner

from llmdrill.load.config import WORKER_LOST, WORKER_STARTED
from llmdrill.load.openai_user import OpenAIUser, _config

_sink = _config()[1]


class DrillUser(OpenAIUser):
    # Timeouts (connect; read, also the stream idle timeout; total) and retries are the
    # user's own, from the configuration: see OpenAIUser.on_start.
    abstract = False


def _watch_parent(environment: Any, parent: int) -> None:
    # If the harness dies (even kill -9), this process is re-parented: stop the load
    # instead of hammering the target until --run-time runs out. A worker of Locust's
    # distributed mode (--processes) watches its master the same way.
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


def _watch_workers(runner: MasterRunner) -> None:
    """On the master of Locust's distributed mode: a worker that stops sending heartbeats
    (killed, crashed, cut off) is written into the samples for the harness to report. Its
    requests in flight are lost with it, so the run cannot be judged as if it were whole."""
    reported: set[str] = set()
    while True:
        gevent.sleep(0.5)
        for worker in list(runner.clients.values()):
            if worker.state == STATE_MISSING and worker.id not in reported:
                reported.add(worker.id)
                _sink.write({"kind": WORKER_LOST, "worker": worker.id, "at": time.time(),
                             "workers": runner.worker_count})
                _sink.flush()


@events.init.add_listener  # type: ignore[untyped-decorator]
def _on_init(environment: Any, **_kwargs: Any) -> None:
    if int(os.environ.get("LLMDRILL_HARNESS_PID", "0")):
        gevent.spawn(_watch_parent, environment, os.getppid())
    if isinstance(environment.runner, MasterRunner):
        gevent.spawn(_watch_workers, environment.runner)
    if isinstance(environment.runner, WorkerRunner):  # names the worker in a loss report
        _sink.write({"kind": WORKER_STARTED, "worker": environment.runner.client_id,
                     "pid": os.getpid(), "host": socket.gethostname()})
        _sink.flush()
