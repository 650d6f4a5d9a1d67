"""The anchor llmdrill's load is measured against: a bare Locust FastHttpUser that posts a
streaming completion and counts the SSE `data:` events, recording nothing else."""

from __future__ import annotations

import json

from locust import FastHttpUser, constant, task

BODY = json.dumps({"model": "tiny", "prompt": "x " * 16, "max_tokens": 16, "stream": True})
HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}


class RawStreamingUser(FastHttpUser):
    wait_time = constant(0)
    max_retries = 0

    @task
    def completion(self) -> None:
        events = 0
        with self.client.post("/v1/completions", data=BODY, headers=HEADERS, stream=True,
                              catch_response=True) as resp:
            raw = resp._response
            while chunk := raw.read(64 * 1024):  # as it arrives; no line splitting, no JSON
                events += chunk.count(b"data:")
            if events:
                resp.success()
            else:
                resp.failure("no events")
