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


# Counts the safety tests report at the end of a run (fuzz examples, kill trials, hostile
# targets), so CI logs show how much was tried, not only that it passed.
COUNTS: dict[str, int] = {}


def count(what: str, n: int = 1) -> None:
    COUNTS[what] = COUNTS.get(what, 0) + n


def pytest_sessionfinish(session: pytest.Session) -> None:
    # Under pytest-xdist (the unit tests run on both cores) each worker hands its counts to
    # the controller, which prints the sum.
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["llmdrill_counts"] = dict(COUNTS)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    for what, n in getattr(node, "workeroutput", {}).get("llmdrill_counts", {}).items():
        count(what, n)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if COUNTS:
        terminalreporter.section("llmdrill safety counts")
        for what, n in sorted(COUNTS.items()):
            terminalreporter.write_line(f"{what}: {n}")
