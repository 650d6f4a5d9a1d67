"""Fuzzing through the command line: `llmdrill validate` on malformed files never shows a
traceback and always exits 2 naming the file and a line."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from llmdrill.cli import app
from tests.conftest import REPO, count

pytestmark = pytest.mark.unit

SPIKE = (REPO / "scenarios" / "timeout-spike.yaml").read_text()
LINES = SPIKE.splitlines()


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder) / "drill.yaml"


def _validate(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(app, ["validate", str(path)])
    count("CLI fuzz examples")
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    if result.exit_code != 0:
        assert result.exit_code == 2, result.output
        assert f"{path}" in result.output


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(line=st.integers(0, len(LINES) - 1), junk=st.text(max_size=30))
def test_a_line_replaced_by_junk(scratch: Path, line: int, junk: str) -> None:
    lines = list(LINES)
    lines[line] = junk
    _validate(scratch, "\n".join(lines))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(line=st.integers(0, len(LINES) - 1), indent=st.integers(-4, 4))
def test_a_line_indented_wrongly(scratch: Path, line: int, indent: int) -> None:
    lines = list(LINES)
    lines[line] = (" " * max(indent, 0)) + lines[line][max(-indent, 0):]
    _validate(scratch, "\n".join(lines))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.one_of(st.integers(), st.floats(allow_nan=True), st.text(max_size=12),
                       st.booleans(), st.none(), st.lists(st.integers(), max_size=3)))
def test_every_field_of_a_phase_given_a_wrong_value(scratch: Path, value: object) -> None:
    data = yaml.safe_load(SPIKE)
    data["phases"][1]["duration"] = value
    data["load"]["users"] = value
    _validate(scratch, yaml.safe_dump(data))
