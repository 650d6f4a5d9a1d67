"""Start and stop Locust in its own process, and follow the samples it writes.

Locust is gevent-based and monkey-patches the interpreter, so it never runs inside the
harness process. The harness talks to it through a config file and reads one JSON line
per request from the samples file as it grows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import orjson

from llmdrill.load import locustfile_path
from llmdrill.load.config import LoadConfig


class LocustProcess:
    def __init__(self, config: LoadConfig, users: int, spawn_rate: float, run_time: float,
                 workdir: Path) -> None:
        self.config = config
        self.users = users
        self.spawn_rate = spawn_rate
        # A safety net: Locust stops by itself even if the harness dies without stopping it.
        self.run_time = max(1, int(run_time + 30))
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._samples: IO[str] | None = None
        self._partial = ""

    def start(self) -> None:
        config_path = (self.workdir / "load-config.json").resolve()
        self.config.dump(config_path)
        Path(self.config.samples_path).touch()
        env = {**os.environ, "LLMDRILL_LOAD_CONFIG": str(config_path),
               "LLMDRILL_HARNESS_PID": str(os.getpid())}
        cmd = [
            sys.executable, "-m", "locust", "-f", str(locustfile_path()), "--headless",
            "-u", str(self.users), "-r", str(self.spawn_rate), "-t", f"{self.run_time}s",
            "--host", self.config.base_url, "--only-summary", "--loglevel", "WARNING",
            "--stop-timeout", "0", "--exit-code-on-error", "0",
            "--csv", str(self.workdir / "locust"),
        ]
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

    def read_new_samples(self) -> tuple[list[str], list[dict[str, Any]]]:
        """The sample lines written since the last call (a torn last line waits for more),
        and each parsed: the evidence keeps the line as written instead of encoding the
        record again."""
        if self._samples is None:
            path = Path(self.config.samples_path)
            if not path.exists():
                return [], []
            self._samples = path.open(encoding="utf-8")
        chunk = self._partial + self._samples.read()
        lines = chunk.split("\n")
        self._partial = lines.pop()
        kept: list[str] = []
        out: list[dict[str, Any]] = []
        for line in lines:
            if line:
                try:  # orjson: a quarter of json's time, most of the harness's ingest
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    kept.append(line)
                    out.append(record)
        return kept, out

    def close(self) -> None:
        if self._samples:
            self._samples.close()
