"""A freshly started engine's first request, sent by the stack before anyone else's.

Measured here (vLLM 0.32.0, CPU build): a replica whose very first request had a 2-token
prompt lost its worker to SIGILL three times in three restarts ("Worker proc VllmWorker-0
died unexpectedly (exit code: -4)"); after a first request of a few dozen tokens, 2-token
prompts were served. So the stack warms every engine it starts with an ordinary request,
and a drill's probe is never an engine's first forward pass.
"""

from __future__ import annotations

import httpx

from llmdrill.stack.processes import ServiceStartError

# About 30 tokens for the tiny model's tokenizer: an ordinary prompt's shape.
PROMPT = ("The engine was started by the drill stack and is being warmed up with one "
          "ordinary request before any drill sends its own traffic to it.")


def warm_up(base_url: str, model: str, timeout: float = 120.0) -> None:
    """One short completion; a failure names the engine and what it answered."""
    url = f"{base_url.rstrip('/')}/v1/completions"
    body = {"model": model, "prompt": PROMPT, "max_tokens": 4, "ignore_eos": True}
    try:
        resp = httpx.post(url, json=body, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ServiceStartError(f"warm-up request to {url} failed: {exc!r}") from exc
    if resp.status_code != 200:
        raise ServiceStartError(f"warm-up request to {url} answered {resp.status_code}: "
                                f"{resp.text[:200]}")
