"""The locustfile the harness starts Locust with (`locust -f` this file), and that
`llmdrill load-worker` starts a remote worker with.

Three roles, by Locust's runner:
- alone (one load process) or a worker forked by `--processes`: the configuration comes
  from the file the harness wrote (LLMDRILL_LOAD_CONFIG) and samples go to files the
  harness reads;
- the master of distributed mode: runs no user; it hands the configuration to workers
  (as a custom option, which Locust sends with every spawn message), writes what remote
  workers send, and reports a worker that stops sending heartbeats;
- a remote worker (another machine, no configuration file): it takes the configuration
  from the spawn message and sends its samples to the master.
"""

from __future__ import annotations

import gc
import os
import socket
import time
from pathlib import Path
from typing import IO, Any, cast

import gevent
from locust import events
from locust.runners import STATE_MISSING, MasterRunner, WorkerRunner

from llmdrill.load.config import (
    LOAD_STARTED,
    SAMPLES_MESSAGE,
    WORKER_LOST,
    WORKER_STARTED,
    process_samples_path,
)
from llmdrill.load.openai_user import CONFIG_ENV, OpenAIUser, _config, _Sink, configure_remote

LOCAL = bool(os.environ.get(CONFIG_ENV))
_sink: _Sink | None = _config()[1] if LOCAL else None


class DrillUser(OpenAIUser):
    # Timeouts (connect; read, also the stream idle timeout; total) and retries are the
    # user's own, from the configuration: see OpenAIUser.on_start.
    abstract = False


def _flush() -> None:
    if _sink is not None:
        _sink.flush()


def _watch_parent(environment: Any, parent: int) -> None:
    # If the harness dies (even kill -9), this process is re-parented: stop the load
    # instead of hammering the target until --run-time runs out. A worker of Locust's
    # distributed mode (--processes) watches its master the same way.
    while True:
        gevent.sleep(0.5)
        if os.getppid() != parent:
            if environment.runner is not None:
                environment.runner.quit()
            _flush()
            os._exit(0)


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _options(parser: Any) -> None:
    parser.add_argument("--llmdrill-load", default="", include_in_web_ui=False,
                        help="llmdrill's load configuration, as JSON (set by the master)")


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def _on_quitting(**_kwargs: Any) -> None:
    _flush()  # the requests that Locust's stop interrupted, recorded as such


def _write_control(record: dict[str, Any]) -> None:
    assert _sink is not None
    _sink.write(record)
    _sink.flush()


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
                _write_control({"kind": WORKER_LOST, "worker": worker.id, "at": time.time(),
                                "workers": runner.worker_count})


class _RemoteSamples:
    """On the master: each remote worker's sample batches, appended to a file of its own
    beside the master's samples, where the harness reads them."""

    def __init__(self, samples_path: str) -> None:
        self.samples_path = samples_path
        self.files: dict[str, IO[bytes]] = {}

    def __call__(self, environment: Any, msg: Any, **_kwargs: Any) -> None:
        node = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(msg.node_id))
        out = self.files.get(node)
        if out is None:
            path = process_samples_path(self.samples_path, node)
            out = self.files[node] = open(path, "ab", buffering=0)  # noqa: SIM115
        data = msg.data
        out.write(data if isinstance(data, bytes) else str(data).encode())


def _start_master(environment: Any) -> None:
    runner = environment.runner
    cfg, _ = _config()
    if environment.parsed_options is not None:  # sent to every worker with its users
        environment.parsed_options.llmdrill_load = Path(os.environ[CONFIG_ENV]).read_text()
    runner.register_message(SAMPLES_MESSAGE, _RemoteSamples(cfg.samples_path))
    gevent.spawn(_watch_workers, runner)


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def _on_test_start(environment: Any, **_kwargs: Any) -> None:
    global _sink
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        _write_control({"kind": LOAD_STARTED, "workers": runner.worker_count,
                        "at": time.time()})
    elif isinstance(runner, WorkerRunner) and not LOCAL and _sink is None:
        text = getattr(environment.parsed_options, "llmdrill_load", "")
        if not text:
            raise RuntimeError("the master sent no llmdrill load configuration: is it an "
                               "`llmdrill run` with load.remote_workers?")
        # Locust's messages are msgpack: the batch travels as bytes.
        _sink = configure_remote(text, lambda batch: runner.send_message(
            SAMPLES_MESSAGE, cast(Any, batch)))
        _announce(runner)


@events.test_stop.add_listener  # type: ignore[untyped-decorator]
def _on_test_stop(**_kwargs: Any) -> None:
    # Every user has stopped and recorded what it had in flight. On a worker, Locust
    # fires this before it tells the master it stopped: the last batch goes now, ahead of
    # that message on the same connection, not on the flusher's next tick, after it, when
    # the master may already be quitting.
    _flush()


@events.spawning_complete.add_listener  # type: ignore[untyped-decorator]
def _on_spawning_complete(**_kwargs: Any) -> None:
    # Every user, greenlet and connection exists now and lives until the load stops: out
    # of the collector's sight (gc.freeze moves them, without a walk), a full collection
    # no longer walks them all while requests wait for the core.
    gc.freeze()


def _announce(runner: WorkerRunner) -> None:
    """A worker's first record: its Locust id, pid and host, to name it if it is lost."""
    assert _sink is not None
    _sink.write({"kind": WORKER_STARTED, "worker": runner.client_id, "pid": os.getpid(),
                 "host": socket.gethostname()})
    _sink.flush()


@events.init.add_listener  # type: ignore[untyped-decorator]
def _on_init(environment: Any, **_kwargs: Any) -> None:
    if int(os.environ.get("LLMDRILL_HARNESS_PID", "0")):
        gevent.spawn(_watch_parent, environment, os.getppid())
    if isinstance(environment.runner, MasterRunner):
        _start_master(environment)
    if isinstance(environment.runner, WorkerRunner) and LOCAL:
        _announce(environment.runner)
