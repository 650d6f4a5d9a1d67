"""The committed scenario reference and JSON Schema match what the models generate now."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from llmdrill.scenario.docs import (
    render_reference,
    schema_text,
    section_order,
    suite_json_schema,
    suite_schema_text,
    type_name,
)
from llmdrill.scenario.schema import scenario_json_schema

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parents[2] / "docs"
REGENERATE = "run .venv/bin/python scripts/gen_docs.py"


@pytest.mark.parametrize(
    ("name", "render"),
    [("scenario-reference.md", render_reference), ("scenario.schema.json", schema_text),
     ("suite.schema.json", suite_schema_text)],
)
def test_committed_file_is_fresh(name: str, render: Callable[[], str]) -> None:
    path = DOCS / name
    assert path.exists(), f"docs/{name} is missing: {REGENERATE}"
    assert path.read_text(encoding="utf-8") == render(), f"docs/{name} is stale: {REGENERATE}"


def test_schema_file_is_the_json_schema() -> None:
    assert json.loads(schema_text()) == scenario_json_schema()


def test_reference_covers_every_type_scenario_first() -> None:
    schema = scenario_json_schema()
    order = section_order(schema)
    assert order[0] == "Scenario"
    assert sorted(order[1:]) == sorted(schema["$defs"])
    # Breadth first: what the top level refers to comes before what those types refer to.
    assert order.index("Fault") < order.index("Check") < order.index("LatencyToxic")
    assert order.index("Check") < order.index("SloCheck") < order.index("DurationBound")
    reference = render_reference()
    for name in order:
        assert f"\n## {name}\n" in reference
    # The game-day suite format too, after the scenario's.
    suite_order = section_order(suite_json_schema(), "Suite")
    assert suite_order[0] == "Suite" and "Notify" in suite_order
    for name in suite_order:
        assert f"\n## {name}\n" in reference
    assert reference.index("\n## Scenario\n") < reference.index("\n## Suite\n")


@pytest.mark.parametrize(
    ("prop", "expected"),
    [
        ({"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s|m|h)$"}, "duration"),
        ({"type": "string", "pattern": r"^\d+(B|KiB|MiB|GiB)$"}, "size"),
        ({"type": "number", "minimum": 0, "maximum": 1}, "fraction"),
        ({"type": "array", "items": {"$ref": "#/$defs/Phase"}}, "list of [Phase](#phase)"),
        ({"enum": ["chat", "completions"], "type": "string"}, "one of: `chat`, `completions`"),
        ({"anyOf": [{"$ref": "#/$defs/Bound"}, {"type": "null"}]}, "[Bound](#bound)"),
        ({"type": "integer", "exclusiveMinimum": 0}, "integer (> 0)"),
        ({"const": "llmdrill/v1", "type": "string"}, "exactly `llmdrill/v1`"),
    ],
)
def test_type_names(prop: dict[str, object], expected: str) -> None:
    assert type_name(prop) == expected
