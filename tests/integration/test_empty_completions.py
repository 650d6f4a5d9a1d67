"""A gateway that answers 200 with empty completions (a stream of only `data: [DONE]`, a
JSON body with no choices) is failing every request: the load counts them as errors of
class `empty`, so an error-rate SLO fails. The same scaffold answering real-looking
completions passes, so the rule does not flag normal answers."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import llmdrill
from tests.integration.hostile import MODELS, Handler, _head, _read_request, _serve_in_thread

pytestmark = [pytest.mark.integration, pytest.mark.no_engine]

SCENARIO = """
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: empty-completions}
target: {base_url: "http://127.0.0.1:PORT", model: tiny}
load:
  users: 2
  wait: 50ms
  requests:
    - {api: completions, stream: true, max_tokens: 8}
    - {api: chat, stream: false, max_tokens: 8}
  timeouts: {connect: 2s, read: 2s, total: 4s}
  retries: {max_attempts: 1}
phases: [{name: p, duration: 5s}]
checks:
  - {name: error-rate, phase: p, slo: {error_rate: {max: 0.01}, min_requests: 10}}
"""

STREAM_EMPTY = b"data: [DONE]\n\n"
WHOLE_EMPTY = b'{"id":"x","object":"chat.completion","choices":[]}'
STREAM_OK = (b'data: {"id":"c","choices":[{"index":0,"text":"hi"}]}\n\n'
             b'data: {"id":"c","choices":[{"index":0,"text":"!","finish_reason":"length"}]}\n\n'
             b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,'
             b'"completion_tokens":2,"total_tokens":5}}\n\n'
             b"data: [DONE]\n\n")
WHOLE_OK = (b'{"id":"x","object":"chat.completion","choices":[{"index":0,"message":'
            b'{"role":"assistant","content":"hi!"},"finish_reason":"length"}],'
            b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}')


def _handler(stream_body: bytes, whole_body: bytes) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                line = await _read_request(reader)
                if line.startswith(b"GET /v1/models"):
                    body, kind = MODELS, "application/json"
                elif line.startswith(b"POST /v1/completions"):  # the streamed shape
                    body, kind = stream_body, "text/event-stream"
                else:
                    body, kind = whole_body, "application/json"
                writer.write(_head("200 OK", {"content-type": kind,
                                              "content-length": str(len(body))}) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            return
        finally:
            writer.close()
    return handle


def _run(tmp_path: Path, stream_body: bytes, whole_body: bytes
         ) -> tuple[int, dict[str, Any], str]:
    with _serve_in_thread(_handler(stream_body, whole_body)) as port:
        path = tmp_path / "empty.yaml"
        path.write_text(SCENARIO.replace("PORT", str(port)))
        proc = llmdrill("run", str(path), "--out", str(tmp_path / "reports"),
                        env=dict(os.environ), timeout=120)
    result = json.loads(next((tmp_path / "reports").glob("*/result.json")).read_text())
    return proc.returncode, result, proc.stdout + proc.stderr


def test_empty_200s_fail_an_error_rate_slo(tmp_path: Path) -> None:
    code, result, output = _run(tmp_path, STREAM_EMPTY, WHOLE_EMPTY)
    assert "Traceback" not in output
    check = result["checks"][0]
    assert code == 1 and check["status"] == "failed", (check, output[-2000:])
    classes = set(result["stats"]["p"]["errors_by_class"]) - {"interrupted"}
    assert classes == {"empty"}, classes


def test_real_looking_completions_pass(tmp_path: Path) -> None:
    _code, result, output = _run(tmp_path, STREAM_OK, WHOLE_OK)
    check = result["checks"][0]
    assert check["status"] == "passed", (check, output[-2000:])
    assert not set(result["stats"]["p"]["errors_by_class"]) - {"interrupted"}
