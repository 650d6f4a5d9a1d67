"""API keys: read from the environment or a file, never from a scenario or a flag."""

from __future__ import annotations

import os
from pathlib import Path

from llmdrill.errors import LlmdrillError
from llmdrill.scenario.models import Target


class SecretMissing(LlmdrillError):
    pass


def api_key(target: Target) -> str | None:
    if target.api_key_env:
        value = os.environ.get(target.api_key_env)
        if not value:
            raise SecretMissing(
                f"target.api_key_env names {target.api_key_env}, which is not set"
            )
        return value
    if target.api_key_file:
        try:
            return Path(target.api_key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecretMissing(
                f"target.api_key_file {target.api_key_file} cannot be read: {exc.strerror}"
            ) from None
    return None


def auth_headers(target: Target) -> dict[str, str]:
    key = api_key(target)
    return {"Authorization": f"Bearer {key}"} if key else {}


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
