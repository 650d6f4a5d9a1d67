"""Verdicts that cannot lie: each shipped scenario, run with its fault aimed where the
traffic is not, is never a pass (the healthy passes are in each drill's own test file).

- cancel-storm and kv-pressure: the clients (the storm, the flood and the load) go to a stub
  OpenAI server that streams tokens, while metrics_url is the real vLLM: the engine whose
  gauges are judged never sees a wave or the flood;
- alerts: the `down` toxic goes on a second Toxiproxy proxy that no client uses (as in
  test_fault_missed.py), and the Prometheus of this test watches that proxy as the gateway,
  so every alert check passes: only the fault's effect can tell that the traffic never
  felt the outage;
- caps (no fault): a stub that answers 200 to everything, so nothing ever reaches caps
  that refuse.
The Docker ones (node-restart, oom) are in test_docker_missed.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmdrill.faults.toxiproxy_client import ToxiproxyClient
from llmdrill.monitoring.rules import render
from tests.integration.conftest import REPO, Stack, llmdrill
from tests.integration.hostile import MODELS, Handler, _head, _serve_in_thread
from tests.integration.monitoring import Monitoring, monitoring

pytestmark = pytest.mark.integration

SCENARIOS = REPO / "scenarios"
TOKEN_S = 0.02  # the stub streams one token per choice every 20 ms
MAX_STUB_TOKENS = 2000  # per stream: a storm stream asks for up to 4 x 460


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- a stub OpenAI server -------------------------------------------------------------------


def _event(obj: dict[str, Any]) -> bytes:
    data = b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _choice(chat: bool, index: int, text: str, finish: str | None = None) -> dict[str, Any]:
    if chat:
        return {"index": index, "delta": {"content": text} if text else {},
                "finish_reason": finish}
    return {"index": index, "text": text, "finish_reason": finish}


async def _stream(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, chat: bool,
                  tokens: int, n: int, prompt: int) -> bool:
    """An SSE answer of `tokens` tokens for each of `n` choices, paced like an engine; stops
    (False) when the client leaves: its FIN shows as EOF in the reader (the transport reads
    on its own), its RST as an error on write."""
    writer.write(_head("200 OK", {"content-type": "text/event-stream",
                                  "transfer-encoding": "chunked"}))
    for _ in range(tokens):
        if reader.at_eof():
            return False
        for i in range(n):
            writer.write(_event({"id": "stub", "choices": [_choice(chat, i, "x")]}))
        await writer.drain()
        await asyncio.sleep(TOKEN_S)
    for i in range(n):
        writer.write(_event({"id": "stub", "choices": [_choice(chat, i, "", "length")]}))
    writer.write(_event({"id": "stub", "choices": [], "usage": {
        "prompt_tokens": prompt, "completion_tokens": tokens * n,
        "total_tokens": prompt + tokens * n}}))
    data = b"data: [DONE]\n\n"
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n")
    await writer.drain()
    return True


def _whole(chat: bool, tokens: int, n: int, prompt: int) -> bytes:
    text = "x" * tokens
    choices = [{"index": i, "message": {"role": "assistant", "content": text},
                "finish_reason": "length"} if chat else
               {"index": i, "text": text, "finish_reason": "length"} for i in range(n)]
    return json.dumps({"id": "stub", "object": "chat.completion" if chat else "text_completion",
                       "choices": choices, "usage": {
                           "prompt_tokens": prompt, "completion_tokens": tokens * n,
                           "total_tokens": prompt + tokens * n}}).encode()


EMPTY_STREAM = b"data: [DONE]\n\n"


def stub_handler(empty: bool = False) -> Handler:
    """GET /v1/models the model list, any other GET (health) 200; every POST a 200 with a
    completion of max_tokens tokens (streamed when asked), whatever it asked for: no cap,
    no context length, no refusal. `empty`: every completion a 200 without a token."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in
                           (line.partition(b":") for line in lines[1:]) if k}
                length = int(headers.get(b"content-length", b"0") or 0)
                raw = await reader.readexactly(length) if length else b""
                close = headers.get(b"connection", b"").lower() == b"close"
                method, path = [*lines[0].split(), b"", b""][:2]
                if method != b"POST":
                    body = MODELS if path.startswith(b"/v1/models") else b"{}"
                    writer.write(_head("200 OK", {"content-type": "application/json",
                                                  "content-length": str(len(body))}) + body)
                    await writer.drain()
                    if close:
                        return
                    continue
                try:
                    req = json.loads(raw)
                    assert isinstance(req, dict)
                except (ValueError, AssertionError):
                    req = {}  # broken JSON gets its 200 like everything else
                chat = b"/chat/" in path
                stream = bool(req.get("stream"))
                try:
                    tokens = max(1, min(int(req.get("max_tokens") or 16), MAX_STUB_TOKENS))
                    n = max(1, min(int(req.get("n") or 1), 4))
                except (TypeError, ValueError):
                    tokens, n = 16, 1
                if empty:
                    body, kind = ((EMPTY_STREAM, "text/event-stream") if stream else
                                  (b'{"id":"stub","choices":[]}', "application/json"))
                    writer.write(_head("200 OK", {"content-type": kind,
                                                  "content-length": str(len(body))}) + body)
                    await writer.drain()
                elif stream:
                    if not await _stream(writer, reader, chat, tokens, n, 16) or close:
                        return
                else:
                    await asyncio.sleep(TOKEN_S * tokens)
                    body = _whole(chat, tokens, n, 16)
                    writer.write(_head("200 OK", {"content-type": "application/json",
                                                  "content-length": str(len(body))}) + body)
                    await writer.drain()
                if close:
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError,
                OSError):
            return
        finally:
            # The server's loop may be closed already (the test is over): nothing to close.
            with contextlib.suppress(RuntimeError):
                writer.close()
    return handle


@contextmanager
def stub(empty: bool = False) -> Iterator[str]:
    with _serve_in_thread(stub_handler(empty)) as port:
        yield f"http://127.0.0.1:{port}"


# --- running a scenario ---------------------------------------------------------------------


def run(scenario: str, env: dict[str, str], tmp_path: Path, timeout: float = 300
        ) -> tuple[int, dict[str, Any], str]:
    out = tmp_path / "reports"
    proc = llmdrill("run", str(SCENARIOS / scenario), "--out", str(out), env=env,
                    timeout=timeout)
    runs = [p for p in out.iterdir() if p.is_dir()] if out.exists() else []
    assert len(runs) == 1, proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads((runs[0] / "result.json").read_text())
    return proc.returncode, result, proc.stdout[-3000:] + proc.stderr[-3000:]


def statuses(result: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in result["checks"]}


def summaries(result: dict[str, Any]) -> str:
    return json.dumps({c["name"]: [c["status"], c["summary"]] for c in result["checks"]}
                      | {f"fault {f['name']}": [f["effect"], f["effect_detail"]]
                         for f in result["faults"]}
                      | {"_status": [result["status"], result.get("abort_reason")]}, indent=1)


def engine_idle(stack: Stack, within: float = 60.0) -> bool:
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            text = httpx.get(stack.metrics_url, timeout=5).text
        except httpx.HTTPError:
            time.sleep(1)
            continue
        busy = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith(("vllm:num_requests_running{", "vllm:num_requests_waiting{"))]
        if busy and not any(busy):
            return True
        time.sleep(0.5)
    return False


# --- cancel-storm ---------------------------------------------------------------------------


def test_cancel_storm_against_a_stub_the_scraped_engine_never_sees_is_not_a_pass(
    stack: Stack, tmp_path: Path
) -> None:
    with stub() as url:
        code, result, output = run("cancel-storm.yaml",
                                   stack.env(LLMDRILL_TARGET_URL=url), tmp_path)
    told = summaries(result) + output
    faults = {f["name"]: f for f in result["faults"]}
    assert set(faults) == {"drop-midstream", "drop-while-queued"}, told
    for fault in faults.values():
        assert fault["applied_at"] and fault["reverted_at"] and not fault["revert_error"]
        # The stub answered every wave (200, tokens) but the engine's running+waiting never
        # rose: judge_storm calls each wave one the engine never saw.
        assert fault["effect"] == "missed", told
        assert "never saw" in fault["effect_detail"], told
    assert code == 4 and result["status"] == "inconclusive", told
    assert "drop-midstream" in (result["abort_reason"] or ""), told
    assert engine_idle(stack)


# --- kv-pressure ----------------------------------------------------------------------------

PRESSURE_CHECKS = {"flood-kv-cache-filled", "flood-requests-queued", "flood-preemptions"}


def test_kv_pressure_with_the_flood_on_a_stub_is_not_a_pass(
    stack: Stack, tmp_path: Path
) -> None:
    with stub() as url:
        code, result, output = run("kv-pressure.yaml",
                                   stack.env(LLMDRILL_TARGET_URL=url,
                                             LLMDRILL_METRICS_URL=stack.metrics_url),
                                   tmp_path)
    told = summaries(result) + output
    (fault,) = result["faults"]
    assert fault["applied_at"] and fault["reverted_at"] and not fault["revert_error"]
    # Every flood request was answered (by the stub), and the scraped engine's queue
    # stayed where it was: judge_flood says the engine never saw the flood.
    assert fault["effect"] == "missed", told
    assert "never saw the flood" in fault["effect_detail"], told
    # The checks that prove the pressure was real fail on an engine nothing reached, so the
    # run is `failed` (exit 1), which outranks the fault's `inconclusive`.
    checks = statuses(result)
    assert {n for n in PRESSURE_CHECKS if checks[n] == "failed"} == PRESSURE_CHECKS, told
    assert code == 1 and result["status"] == "failed", told
    assert engine_idle(stack)


# --- caps -----------------------------------------------------------------------------------


@pytest.mark.parametrize("empty", [False, True], ids=["answers-everything", "empty-answers"])
def test_caps_against_a_stub_that_refuses_nothing_is_not_a_pass(
    stack: Stack, tmp_path: Path, empty: bool
) -> None:
    """caps has no fault: what it needs is refusals, and a server that answers 200 to every
    over-limit request (with tokens, or with none) must fail caps_enforced."""
    with stub(empty=empty) as url:
        code, result, output = run("caps.yaml", stack.env(LLMDRILL_TARGET_URL=url), tmp_path)
    told = summaries(result) + output
    checks = {c["name"]: c for c in result["checks"]}
    assert checks["caps-enforced"]["status"] == "failed", told
    if empty:
        # A 200 without a token is an error of class `empty`: the load's SLO fails too.
        assert checks["after-still-serving"]["status"] == "failed", told
    assert code == 1 and result["status"] == "failed", told


# --- alerts ---------------------------------------------------------------------------------

UNUSED_PROXY = "llmdrill-test-unwatched-traffic"
RULES = render({"for": "1s", "for_down": "1s", "window": "10s",
                "tokens_baseline_window": "30s", "restart_window": "30s"})
ALERT_PHASES = {"BASELINE": "6s", "DOWN": "10s", "RECOVER": "10s", "ALERT_FIRE_WITHIN": "8s",
                "ALERT_RESOLVE_WITHIN": "8s", "ENGINE_DOWN_FOR": "10s"}


@pytest.fixture
def unused_proxy(clean_proxy: Stack) -> Iterator[str]:
    """A second proxy in front of the same engine, which no client of the drill uses;
    yields its listen host:port."""
    upstream = clean_proxy.vllm_url.split("://", 1)[1].rstrip("/")
    listen = f"127.0.0.1:{_free_port()}"
    with ToxiproxyClient(clean_proxy.toxiproxy_url, timeout=10) as client:
        client.delete_proxy(UNUSED_PROXY)  # a leftover of an interrupted session
        client.create_proxy(UNUSED_PROXY, listen, upstream)
    try:
        yield listen
    finally:
        with ToxiproxyClient(clean_proxy.toxiproxy_url, timeout=30) as client:
            client.delete_proxy(UNUSED_PROXY)


def _scraped(mon: Monitoring) -> bool:
    data = httpx.get(f"{mon.prometheus_url}/api/v1/query",
                     params={"query": "count(up == 1)"}, timeout=5).json()
    found = data["data"]["result"]
    return bool(found) and float(found[0]["value"][1]) >= 2  # vllm and gateway


def test_alerts_with_the_outage_on_a_proxy_no_client_uses_is_inconclusive(
    clean_proxy: Stack, unused_proxy: str, tmp_path: Path
) -> None:
    webhook = f"127.0.0.1:{_free_port()}"
    alertmanager = f"""
route: {{receiver: harness, group_by: [alertname], group_wait: 0s, group_interval: 1s,
        repeat_interval: 1h}}
receivers:
  - name: harness
    webhook_configs: [{{url: "http://{webhook}/", send_resolved: true}}]
"""
    # Prometheus watches the unused proxy as the gateway: the outage is real to it (the
    # alert fires, notifies and resolves), while the clients go through the proxy `vllm`.
    with monitoring(tmp_path / "monitoring", RULES, alertmanager_config=alertmanager,
                    gateway=unused_proxy, prometheus_port=_free_port(),
                    alertmanager_port=_free_port()) as mon:
        deadline = time.time() + 30
        while not _scraped(mon) and time.time() < deadline:
            time.sleep(0.5)
        assert _scraped(mon), "Prometheus did not scrape the engine and the unused proxy"
        env = clean_proxy.env(LLMDRILL_PROXY=UNUSED_PROXY,
                              LLMDRILL_PROMETHEUS_URL=mon.prometheus_url,
                              LLMDRILL_ALERTMANAGER_URL=mon.alertmanager_url,
                              LLMDRILL_WEBHOOK_LISTEN=webhook, **ALERT_PHASES)
        code, result, output = run("alerts.yaml", env, tmp_path)
    told = summaries(result) + output
    (fault,) = result["faults"]
    assert fault["applied_at"] and fault["reverted_at"] and not fault["revert_error"]
    # Every check passes, the alert path included: only the fault's effect shows that the
    # clients' requests (through `vllm`) never failed while the toxic was on.
    assert set(statuses(result).values()) == {"passed"}, told
    assert fault["effect"] == "missed", told
    assert UNUSED_PROXY in fault["effect_detail"], told
    assert code == 4 and result["status"] == "inconclusive", told
    assert UNUSED_PROXY in (result["abort_reason"] or ""), told
    assert clean_proxy.toxics() == [] and clean_proxy.toxics(UNUSED_PROXY) == []
    assert clean_proxy.proxy_enabled() and clean_proxy.proxy_enabled(UNUSED_PROXY)
