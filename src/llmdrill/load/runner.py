"""Start and stop Locust in its own process, and follow the samples it writes.

Locust is gevent-based and monkey-patches the interpreter, so it never runs inside the
harness process. The harness talks to it through a config file and reads one JSON line
per request from the samples file as it grows.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from llmdrill.load import locustfile_path
from llmdrill.load.config import (
    LOAD_STARTED,
    WORKER_LOST,
    WORKER_STARTED,
    LoadConfig,
    process_samples_glob,
)

LOCAL_WORKERS_WAIT = 60  # s: how long the master waits for the processes it forked


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Follower:
    """Reads one samples file as it grows; a torn last line waits for the rest."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[bytes] | None = None
        self._partial = b""

    def read(self) -> list[bytes]:
        if self._fh is None:
            if not self.path.exists():
                return []
            self._fh = self.path.open("rb")
        chunk = self._partial + self._fh.read()
        lines = chunk.split(b"\n")
        self._partial = lines.pop()
        return lines

    def close(self) -> None:
        if self._fh:
            self._fh.close()


def _parsed(line: bytes) -> dict[str, Any] | None:
    """A samples line as a record; None for a blank line, garbage or a torn line."""
    if not line:
        return None
    try:  # orjson: a quarter of json's time, most of the harness's reading
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


class LocustProcess:
    """Locust in a process of its own; with `processes` > 1, Locust's distributed mode on
    this machine (`--processes`: a master and that many workers, each a process and a core
    of its own), every worker writing its samples beside the master's."""

    def __init__(self, config: LoadConfig, users: int, spawn_rate: float, run_time: float,
                 workdir: Path, processes: int = 1, remote_workers: int = 0,
                 master: tuple[str, int, float] = ("127.0.0.1", 5557, 120.0)) -> None:
        self.config = config
        self.processes = processes
        self.remote_workers = remote_workers
        self.master = master  # bind address, port, how long to wait for remote workers
        self.started: dict[str, Any] | None = None  # the master's LOAD_STARTED record
        self.lost_workers: list[dict[str, Any]] = []  # the master's WORKER_LOST records
        self.lost_reported = 0  # how many of them the harness filed as events
        self.workers: dict[str, dict[str, Any]] = {}  # WORKER_STARTED records, by Locust id
        self.users = users
        self.spawn_rate = spawn_rate
        # A safety net: Locust stops by itself even if the harness dies without stopping it.
        self.run_time = max(1, int(run_time + 30))
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        samples = Path(config.samples_path)
        self._followers = {samples: _Follower(samples)}

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "locust", "-f", str(locustfile_path()), "--headless",
            "-u", str(self.users), "-r", str(self.spawn_rate), "-t", f"{self.run_time}s",
            "--host", self.config.base_url, "--only-summary", "--loglevel", "WARNING",
            "--stop-timeout", "0", "--exit-code-on-error", "0",
            "--csv", str(self.workdir / "locust"),
        ]
        if self.remote_workers:
            bind, port_number, wait = self.master
            cmd += ["--master", "--expect-workers", str(self.remote_workers),
                    "--master-bind-host", bind, "--master-bind-port", str(port_number),
                    "--expect-workers-max-wait", f"{max(1, int(wait))}"]
        elif self.processes > 1:
            # The master listens on the loopback only, on a port of this run's own (two
            # runs side by side must not meet), and gives up on workers that never come.
            port = str(free_port())
            cmd += ["--processes", str(self.processes), "--master-bind-host", "127.0.0.1",
                    "--master-bind-port", port, "--master-port", port,
                    "--expect-workers-max-wait", str(LOCAL_WORKERS_WAIT)]
        return cmd

    def start(self) -> None:
        config_path = (self.workdir / "load-config.json").resolve()
        self.config.dump(config_path)
        Path(self.config.samples_path).touch()
        env = {**os.environ, "LLMDRILL_LOAD_CONFIG": str(config_path),
               "LLMDRILL_HARNESS_PID": str(os.getpid())}
        cmd = self.command()
        self._log = (self.workdir / "locust.log").open("wb")
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
            start_new_session=True,  # our Ctrl-C must not reach it before we stop it in order
        )

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the load: SIGTERM lets users record their in-flight requests, then kill."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        if self._log:
            self._log.close()

    def _discover(self) -> None:
        samples = Path(self.config.samples_path)
        if self.processes > 1 or self.remote_workers:
            for path in samples.parent.glob(process_samples_glob(self.config.samples_path)):
                if path not in self._followers:
                    self._followers[path] = _Follower(path)

    def read_new_samples(self) -> list[dict[str, Any]]:
        """The requests written since the last call, by every process of the load (a torn
        last line waits for more), each line parsed: for the live statistics and
        guardrails. The master's word that a worker was lost goes to `lost_workers`."""
        self._discover()
        out: list[dict[str, Any]] = []
        for follower in self._followers.values():
            for line in follower.read():
                record = _parsed(line)
                if record is None:
                    continue
                kind = record.get("kind")
                if kind == LOAD_STARTED:
                    self.started = record
                    continue
                if kind == WORKER_STARTED:
                    self.workers[str(record.get("worker"))] = record
                    continue
                if kind == WORKER_LOST:
                    started = self.workers.get(str(record.get("worker")), {})
                    self.lost_workers.append({**record, "pid": started.get("pid"),
                                              "host": started.get("host")})
                    continue
                out.append(record)
        return out

    def recorded(self, batch: int = 1024) -> Iterator[list[dict[str, Any]]]:
        """Every request the load recorded, read again from the start of each samples
        file, in batches: the run's evidence is written from them once the load has
        stopped. While it runs, the harness only tails them for its live statistics, so
        the core the load shares with it is spent on load, not on SQLite (see decision
        0015). A torn last line (a writer killed mid-line) is left out."""
        self._discover()
        for path in list(self._followers):
            if not path.exists():
                continue
            out: list[dict[str, Any]] = []
            with path.open("rb") as fh:
                for line in fh:
                    record = _parsed(line)
                    if record is not None and "kind" not in record:
                        out.append(record)
                        if len(out) >= batch:
                            yield out
                            out = []
            if out:
                yield out

    def close(self) -> None:
        for follower in self._followers.values():
            follower.close()

    def discard_samples(self) -> None:
        """Deletes the samples files once the load has stopped and every line of them is
        in the run's evidence: the requests are then on disk once, in evidence.db."""
        for path in self._followers:
            path.unlink(missing_ok=True)
