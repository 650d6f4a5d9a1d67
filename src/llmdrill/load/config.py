"""The load configuration handed from the harness to the Locust process (a JSON file).

It holds no secret: only the *name* of the environment variable or the *path* of the file
that holds the API key, which the Locust process reads itself.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


def process_samples_path(samples_path: str, pid: int | str) -> str:
    """Where a worker process of Locust's distributed mode (`load.processes` > 1) writes
    its samples: beside the master's file, named by its pid (a remote worker's, written by
    the master, by its Locust id)."""
    path = Path(samples_path)
    return str(path.with_name(f"{path.stem}-w{pid}{path.suffix}"))


def process_samples_glob(samples_path: str) -> str:
    path = Path(samples_path)
    return f"{path.stem}-w*{path.suffix}"


# A record in the samples that is not a request: the Locust master's word that a worker
# stopped sending heartbeats (died, or lost the network). detail: worker, at, workers.
WORKER_LOST = "worker_lost"
# A worker's own word when it starts: its Locust id, pid and host. detail: worker, pid, host.
WORKER_STARTED = "worker_started"
# The master's word that the load started: every expected worker connected. detail: workers.
LOAD_STARTED = "load_started"
# The message type a remote worker's sample batches travel under, to the master.
SAMPLES_MESSAGE = "llmdrill_samples"


@dataclass(frozen=True)
class RequestShapeConfig:
    api: str = "chat"
    stream: bool = True
    prompt_tokens: int = 32
    max_tokens: int = 32
    ignore_eos: bool = True
    weight: int = 1
    name: str | None = None


@dataclass(frozen=True)
class LoadConfig:
    base_url: str
    model: str
    samples_path: str
    shapes: list[RequestShapeConfig] = field(default_factory=lambda: [RequestShapeConfig()])
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    total_timeout: float = 60.0
    max_attempts: int = 3
    backoff: float = 0.2
    max_backoff: float = 2.0
    retry_on: list[str] = field(default_factory=lambda: ["429", "5xx", "timeout", "connect"])
    wait: float = 0.0
    api_key_env: str | None = None
    api_key_file: str | None = None
    max_body_bytes: int = 1 << 20  # cap on any non-streamed body we read
    max_line_bytes: int = 1 << 20  # cap on one SSE line

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> LoadConfig:
        return cls.from_json(path.read_text())

    @classmethod
    def from_json(cls, text: str) -> LoadConfig:
        raw = json.loads(text)
        raw["shapes"] = [RequestShapeConfig(**s) for s in raw.get("shapes", [])]
        return cls(**raw)
