"""The caps drill on the real vLLM: it passes direct and through a healthy nginx gateway,
and fails through gateways that turn 400s into 500s or strip error bodies, and when a
request id is required that the engine does not give."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import REPO, Stack, llmdrill
from tests.integration.gateway import (
    HEALTHY,
    STRIPS_ERROR_BODIES,
    TURNS_400_INTO_500,
    nginx_gateway,
)

pytestmark = pytest.mark.integration

SCENARIO = REPO / "scenarios" / "caps.yaml"
CHECK = "caps-enforced"
FOUR_HUNDREDS = ("prompt_over_context", "max_tokens_over_cap", "max_tokens_zero",
                 "max_tokens_negative", "malformed_json")


def run_caps(stack: Stack, tmp_path: Path, target: str, **env: str
             ) -> tuple[int, dict[str, dict[str, Any]], str]:
    out = tmp_path / "reports"
    proc = llmdrill("run", str(SCENARIO), "--out", str(out),
                    env=stack.env(LLMDRILL_TARGET_URL=target, **env))
    runs = [p for p in out.iterdir() if p.is_dir()] if out.exists() else []
    assert len(runs) == 1, proc.stdout + proc.stderr
    result = json.loads((runs[0] / "result.json").read_text())
    checks = {c["name"]: c for c in result["checks"]}
    return proc.returncode, checks, proc.stdout + proc.stderr


def test_passes_against_vllm_directly(stack: Stack, tmp_path: Path) -> None:
    code, checks, output = run_caps(stack, tmp_path, stack.vllm_url)
    assert code == 0, output
    caps = checks[CHECK]
    assert caps["status"] == "passed", caps["summary"]
    cases = caps["observed"]["cases"]
    assert {n: c["status"] for n, c in cases.items()} == {
        **dict.fromkeys(FOUR_HUNDREDS, 400), "unknown_model": 404}
    assert caps["observed"]["rounds"] == 2 and caps["observed"]["health_failed"] == 0
    assert "512" in cases["prompt_over_context"]["message_excerpt"]
    # The report holds the message, never the prompt that was sent.
    assert " hi hi " not in json.dumps(caps)
    assert checks["after-still-serving"]["status"] == "passed"


def test_passes_through_a_healthy_gateway(stack: Stack, tmp_path: Path) -> None:
    with nginx_gateway(tmp_path / "nginx", 18082, HEALTHY) as url:
        code, checks, output = run_caps(stack, tmp_path, url)
    assert code == 0, output
    assert checks[CHECK]["status"] == "passed", checks[CHECK]["summary"]


def test_fails_through_a_gateway_that_turns_400_into_500(stack: Stack, tmp_path: Path
                                                         ) -> None:
    with nginx_gateway(tmp_path / "nginx", 18083, TURNS_400_INTO_500) as url:
        code, checks, output = run_caps(stack, tmp_path, url)
    assert code == 1, output
    caps = checks[CHECK]
    assert caps["status"] == "failed"
    for case in FOUR_HUNDREDS:
        assert f"{case}: got 500 (expected " in caps["summary"], caps["summary"]
        assert caps["observed"]["cases"][case]["status"] == 500
    # 404 passes untouched, and the engine itself kept serving behind the gateway.
    assert caps["observed"]["cases"]["unknown_model"]["ok"]
    assert caps["observed"]["health_failed"] == 0
    assert CHECK in output


def test_fails_through_a_gateway_that_strips_error_bodies(stack: Stack, tmp_path: Path
                                                          ) -> None:
    with nginx_gateway(tmp_path / "nginx", 18084, STRIPS_ERROR_BODIES) as url:
        code, checks, output = run_caps(stack, tmp_path, url)
    assert code == 1, output
    caps = checks[CHECK]
    assert caps["status"] == "failed"
    # Statuses are fine (404 became 400, which unknown_model accepts); the bodies are not:
    # nginx answers `return 400 ''` with its own HTML error page.
    for case in (*FOUR_HUNDREDS, "unknown_model"):
        assert (f"{case}: error body is not JSON" in caps["summary"]
                or f"{case}: error body is empty" in caps["summary"]), caps["summary"]
        assert caps["observed"]["cases"][case]["status"] == 400


def test_required_request_id_that_vllm_does_not_send_fails(stack: Stack, tmp_path: Path
                                                           ) -> None:
    # vLLM 0.32 puts no request id in error bodies; require the place it does not use.
    probe = httpx.post(f"{stack.vllm_url}/v1/chat/completions", timeout=10,
                       json={"model": "tiny", "max_tokens": 0,
                             "messages": [{"role": "user", "content": "hi"}]})
    assert probe.status_code == 400
    sends_header = "x-request-id" in probe.headers
    where = "body" if sends_header else "header"
    code, checks, output = run_caps(stack, tmp_path, stack.vllm_url, REQUEST_ID=where)
    assert code == 1, output
    caps = checks[CHECK]
    assert caps["status"] == "failed"
    wanted = ("no request id in the error body" if sends_header
              else "no request id in header 'x-request-id'")
    assert f"prompt_over_context: {wanted}" in caps["summary"], caps["summary"]
    assert all(not c["ok"] for c in caps["observed"]["cases"].values())
