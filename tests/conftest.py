"""Shared test settings: keep llmdrill's state (journal pointers) inside the test run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMDRILL_STATE_DIR", str(tmp_path / "state"))


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("LLMDRILL_STACK_DIR", str(REPO / ".stack"))
