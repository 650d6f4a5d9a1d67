"""The kv-pressure drill end to end on the real vLLM: a flood of long requests fills its
32-block KV cache. The shipped scenario passes on the healthy engine and shows the pressure
was real; a tight queue bound and a health URL nobody answers each fail, naming the check."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from llmdrill.model.evidence import RequestLog
from tests.integration.conftest import REPO, Stack, llmdrill
from tests.integration.gateway import (
    SHEDS_LOAD_HTTP,
    SHEDS_LOAD_WITH_RETRY_AFTER,
    SHEDS_LOAD_WITHOUT_RETRY_AFTER,
    nginx_gateway,
)

pytestmark = pytest.mark.integration

SCENARIO = REPO / "scenarios" / "kv-pressure.yaml"
GATEWAY_PORT = 18086


def _env(stack: Stack) -> dict[str, str]:
    # The drill talks to the engine directly (no Toxiproxy in between).
    return stack.env(LLMDRILL_TARGET_URL=stack.vllm_url, LLMDRILL_METRICS_URL=stack.metrics_url)


def _only_run(reports: Path) -> Path:
    runs = [p for p in reports.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def _variant(tmp_path: Path, change: dict[str, dict[str, Any]],
             keep_checks: set[str] | None = None,
             phases: list[dict[str, Any]] | None = None) -> Path:
    """A copy of the shipped scenario with some check fields changed, optionally with
    fewer checks and other phases."""
    doc = yaml.safe_load(SCENARIO.read_text())
    if phases is not None:
        doc["phases"] = phases
    if keep_checks is not None:
        doc["checks"] = [c for c in doc["checks"] if c["name"] in keep_checks]
    for check in doc["checks"]:
        kind = next(k for k in check if k not in ("name", "phase", "enabled"))
        check[kind].update(change.get(check["name"], {}))
    path = tmp_path / "kv-pressure-variant.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _engine_idle(stack: Stack, within: float = 10.0) -> bool:
    deadline = time.time() + within
    while time.time() < deadline:
        text = httpx.get(stack.metrics_url, timeout=5).text
        running = [line for line in text.splitlines()
                   if line.startswith("vllm:num_requests_running{")]
        if running and all(float(line.rsplit(" ", 1)[1]) == 0 for line in running):
            return True
        time.sleep(0.2)
    return False


def test_kv_pressure_passes_on_healthy_engine_and_shows_the_pressure(
    stack: Stack, tmp_path: Path
) -> None:
    proc = llmdrill("run", str(SCENARIO), "--out", str(tmp_path / "reports"), env=_env(stack))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = _only_run(tmp_path / "reports")
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "passed"
    checks = {c["name"]: c for c in result["checks"]}
    assert {c["status"] for c in checks.values()} == {"passed"}, {
        n: c["summary"] for n, c in checks.items() if c["status"] != "passed"}
    assert "caps_enforced" in {c["kind"] for c in checks.values()}
    assert checks["recover-kv-cleaned"]["observed"]["value"] <= 0.25

    # The pressure was real: the queue formed, running requests were preempted, the cache
    # filled; and the report carries each of these numbers.
    assert checks["flood-requests-queued"]["observed"]["value"] >= 1
    assert checks["flood-preemptions"]["observed"]["value"] >= 1
    assert checks["flood-kv-cache-filled"]["observed"]["value"] >= 0.75
    queue = checks["flood-queue-bounded"]["observed"]
    assert queue["max_waiting"] >= 1 and queue["peak_at_s"] is not None
    assert "waiting peaked at" in checks["flood-queue-bounded"]["summary"]
    short = checks["flood-short-requests-served"]["observed"]
    assert short["requests"] >= 5 and short["ttft_p95_ms"] is not None
    health = checks["flood-engine-healthy"]["observed"]
    assert health["polls"] >= 5 and health["url"] == f"{stack.vllm_url}/health"
    engine = result["series"]["engine"]
    assert max(v for _, v in engine["waiting"]) >= 1
    assert engine["preemptions"][-1][1] > engine["preemptions"][0][1]

    # The flood's own requests are evidence too, under their shape name, and none of them
    # started after the fault was reverted.
    fault = result["faults"][0]
    assert fault["backend"] == "request_flood"
    assert fault["applied_at"] and fault["reverted_at"] and not fault["revert_error"]
    rows = list(RequestLog(run / "evidence.db"))
    flood = [r for r in rows if r.shape == "flood"]
    assert len(flood) > 16
    assert all(r.start <= fault["reverted_at"] for r in flood)
    assert sum(1 for r in flood if r.error_class is None) > 16
    assert any(r.shape == "short" for r in rows)
    assert _engine_idle(stack), "requests still running on the engine after the drill"


def test_tight_queue_bound_fails_naming_queue_bounded(stack: Stack, tmp_path: Path) -> None:
    # The whole drill, only the bound changed: vLLM queues what does not fit.
    path = _variant(tmp_path, {"flood-queue-bounded": {"max_waiting": 1}})
    proc = llmdrill("run", str(path), "--out", str(tmp_path / "reports"), env=_env(stack))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    result = json.loads((_only_run(tmp_path / "reports") / "result.json").read_text())
    assert result["status"] == "failed"
    checks = {c["name"]: c for c in result["checks"]}
    failed = checks["flood-queue-bounded"]
    assert failed["status"] == "failed", failed["summary"]
    assert "(> bound 1)" in failed["summary"]
    assert failed["observed"]["max_waiting"] > 1
    assert "flood-queue-bounded" in proc.stderr
    assert _engine_idle(stack)


def test_health_url_nobody_answers_fails_naming_engine_healthy(
    stack: Stack, tmp_path: Path
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = _variant(
        tmp_path, {"flood-engine-healthy": {"url": f"http://127.0.0.1:{port}/health"}},
        keep_checks={"flood-engine-healthy"},
        phases=[{"name": "baseline", "duration": "2s"},
                {"name": "flood", "duration": "6s", "faults": ["flood"]}],
    )
    began = time.monotonic()
    proc = llmdrill("run", str(path), "--out", str(tmp_path / "reports"), env=_env(stack),
                    timeout=120)
    took = time.monotonic() - began
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert took < 60, f"the run took {took:.0f}s for 8s of phases"
    result = json.loads((_only_run(tmp_path / "reports") / "result.json").read_text())
    check = result["checks"][0]
    assert (check["name"], check["status"]) == ("flood-engine-healthy", "failed")
    observed = check["observed"]
    assert observed["polls"] >= 3 and observed["failed_polls"] == observed["polls"]
    assert "health polls of" in check["summary"] and "ConnectError" in check["summary"]
    assert "flood-engine-healthy" in proc.stderr
    assert _engine_idle(stack)


@pytest.mark.parametrize("directives, passes", [
    (SHEDS_LOAD_WITH_RETRY_AFTER, True), (SHEDS_LOAD_WITHOUT_RETRY_AFTER, False),
], ids=["with-retry-after", "without-retry-after"])
def test_a_gateway_that_sheds_load_must_say_when_to_come_back(
    stack: Stack, tmp_path: Path, directives: str, passes: bool
) -> None:
    # The flood goes through an nginx that lets 4 requests through and refuses the rest
    # with 429: the engine's queue stays short, and the refusals are what is judged.
    path = _variant(
        tmp_path, {"flood-queue-bounded": {"max_waiting": 2, "require_retry_after": True}},
        keep_checks={"flood-queue-bounded"},
        phases=[{"name": "baseline", "duration": "2s"},
                {"name": "flood", "duration": "8s", "faults": ["flood"]}],
    )
    with nginx_gateway(tmp_path / "nginx", GATEWAY_PORT, directives,
                       upstream=stack.vllm_url.removeprefix("http://"),
                       http_extra=SHEDS_LOAD_HTTP) as url:
        env = stack.env(LLMDRILL_TARGET_URL=url, LLMDRILL_METRICS_URL=stack.metrics_url)
        proc = llmdrill("run", str(path), "--out", str(tmp_path / "reports"), env=env)
    result = json.loads((_only_run(tmp_path / "reports") / "result.json").read_text())
    check = result["checks"][0]
    observed = check["observed"]
    assert observed["refused_by_status"].get("429", 0) >= 1, check
    assert observed["max_waiting"] is not None and observed["max_waiting"] <= 2, check
    if passes:
        assert proc.returncode == 0 and check["status"] == "passed", check["summary"]
        assert observed["refused_without_retry_after"] == 0
    else:
        assert proc.returncode == 1 and check["status"] == "failed", check["summary"]
        assert "without Retry-After (required)" in check["summary"]
        assert "flood-queue-bounded" in proc.stderr
