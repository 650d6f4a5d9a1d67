"""An API key planted in the environment appears in no output: not in the terminal, the
reports, result.json, the evidence database, the journal or any log, even when the target
echoes it back in its error bodies."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tests.integration.conftest import Stack, llmdrill
from tests.integration.hostile import echoing_server

pytestmark = pytest.mark.integration

SCENARIO = """
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: secret-canary}
target:
  base_url: "${TARGET}"
  model: tiny
  api_key_env: LLMDRILL_CANARY_KEY
toxiproxy: {default: {url: "${LLMDRILL_TOXIPROXY_URL}"}}
faults:
  slow: {toxiproxy: {proxy: vllm, toxic: latency, stream: upstream, latency: 100ms}}
load:
  users: 2
  requests: [{api: chat, stream: true, prompt_tokens: 16, max_tokens: 8}]
phases:
  - {name: a, duration: 3s, faults: [slow]}
checks:
  - name: caps
    phase: a
    caps_enforced: {context_length: 512}
  - {name: slo, phase: a, slo: {error_rate: {max: 0.5}}}
"""


def _scan(root: Path, key: str) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and key.encode() in path.read_bytes():
            found.append(str(path.relative_to(root)))
    return found


@pytest.mark.parametrize("where", ["real-engine", "echoing-target"])
def test_planted_key_is_written_nowhere(clean_proxy: Stack, tmp_path: Path, where: str) -> None:
    key = "sk-canary-" + secrets.token_hex(16)
    path = tmp_path / "canary.yaml"
    path.write_text(SCENARIO)
    out = tmp_path / "reports"
    env = clean_proxy.env(LLMDRILL_CANARY_KEY=key, LLMDRILL_STATE_DIR=str(tmp_path / "state"))
    if where == "real-engine":
        proc = llmdrill("run", str(path), "--out", str(out), env={**env,
                        "TARGET": clean_proxy.proxy_url})
    else:
        with echoing_server() as port:
            proc = llmdrill("run", str(path), "--out", str(out),
                            env={**env, "TARGET": f"http://127.0.0.1:{port}"})
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    assert key not in proc.stdout + proc.stderr
    assert (next(p for p in out.iterdir() if p.is_dir()) / "result.json").exists()
    assert _scan(tmp_path, key) == []
    if where == "echoing-target":  # the echoed key was kept, redacted
        assert "Bearer ***" in next(out.glob("*/result.json")).read_text()
    print(f"\n{where}: searched {sum(1 for p in tmp_path.rglob('*') if p.is_file())} files "
          "for the key: none holds it")
