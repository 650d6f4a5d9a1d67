"""The raw anchor of the TTFT benchmark (ttft_bias.py): a bare Locust FastHttpUser that
times its own request to the first SSE `data:` bytes, keyed by the stub's x-request-id,
and writes `<id> <ttft_us>` lines to $TTFT_LOG when the run ends."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from locust import FastHttpUser, constant, events, task

BODY = json.dumps({"model": "tiny", "prompt": "x " * 16, "max_tokens": 20, "stream": True})
HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}
SEEN: list[tuple[str, int]] = []


class TimedStreamingUser(FastHttpUser):
    wait_time = constant(0)
    max_retries = 0

    @task
    def completion(self) -> None:
        started = time.perf_counter()
        first: float | None = None
        with self.client.post("/v1/completions", data=BODY, headers=HEADERS, stream=True,
                              catch_response=True) as resp:
            rid = resp.headers.get("x-request-id") if resp.headers else None
            raw = resp._response
            # Byte by byte until the first event (read(n) waits for n bytes), then in bulk.
            seen = b""
            while b"data:" not in seen and (byte := raw.read(1)):
                seen += byte
            if b"data:" in seen:
                first = time.perf_counter()
            while raw.read(64 * 1024):
                pass
            if first is not None and rid:
                SEEN.append((str(rid), round((first - started) * 1e6)))
                resp.success()
            else:
                resp.failure("no events")


def _write(**_: Any) -> None:
    path = os.environ.get("TTFT_LOG")
    if path:
        with open(path, "w") as f:
            f.writelines(f"{rid} {us}\n" for rid, us in SEEN)


events.quitting.add_listener(_write)  # type: ignore[no-untyped-call]
