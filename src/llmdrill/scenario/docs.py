"""The scenario reference (Markdown) and schema file, generated from the JSON Schema.

`scripts/gen_docs.py` writes docs/scenario-reference.md and docs/scenario.schema.json;
a unit test fails when the committed files differ from what this module renders now.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from llmdrill.scenario import units
from llmdrill.scenario.fields import NAME_PATTERN
from llmdrill.scenario.models import CHECK_KINDS
from llmdrill.scenario.schema import scenario_json_schema
from llmdrill.scenario.suite import Suite

Schema = dict[str, Any]

ROOT = "Scenario"
SUITE = "Suite"
_REF_PREFIX = "#/$defs/"

# What a type's rules say that no single field can.
_NOTES = {
    ROOT: "The top level of a scenario file.",
    SUITE: "The top level of a game-day suite file (`kind: Suite`): scenarios run in "
    "order as one game day, with one summary. `llmdrill run`, `validate` and `plan` take "
    "it; a folder walk skips it. Editors: `# yaml-language-server: "
    "$schema=../docs/suite.schema.json`.",
    "Check": "Set exactly one kind: " + ", ".join(f"`{k}`" for k in CHECK_KINDS) + ".",
}

# How the unit types look in the schema; a property that has all these keys is one of them.
_UNIT_SCHEMAS: dict[str, Schema] = {
    "duration": TypeAdapter(units.Duration).json_schema(),
    "size": TypeAdapter(units.Size).json_schema(),
    "fraction": TypeAdapter(units.Fraction).json_schema(),
}
_UNIT_DESCRIPTIONS = {s.get("description") for s in _UNIT_SCHEMAS.values()}


def _unit(prop: Schema) -> str | None:
    for name, unit_schema in _UNIT_SCHEMAS.items():
        if all(prop.get(k) == v for k, v in unit_schema.items() if k != "description"):
            return name
    return None


def _anchor(name: str) -> str:
    return name.lower()


def _link(ref: str) -> str:
    name = ref.removeprefix(_REF_PREFIX)
    return f"[{name}](#{_anchor(name)})"


def _code(value: Any) -> str:
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{json.dumps(value)}`"


def _non_null(prop: Schema) -> list[Schema]:
    return [p for p in prop.get("anyOf", []) if p.get("type") != "null"]


def _bounds(prop: Schema) -> str:
    parts = []
    if "exclusiveMinimum" in prop:
        parts.append(f"> {prop['exclusiveMinimum']}")
    if "minimum" in prop:
        parts.append(f"≥ {prop['minimum']}")
    if "exclusiveMaximum" in prop:
        parts.append(f"< {prop['exclusiveMaximum']}")
    if "maximum" in prop:
        parts.append(f"≤ {prop['maximum']}")
    return f" ({', '.join(parts)})" if parts else ""


def type_name(prop: Schema) -> str:
    """A property's type in words: 'duration', 'list of name', 'one of: a, b', links."""
    unit = _unit(prop)
    if unit:
        return unit
    if "$ref" in prop:
        return _link(prop["$ref"])
    if "anyOf" in prop:
        members = _non_null(prop)
        return " or ".join(type_name(p) for p in members) if members else "null"
    if "oneOf" in prop:
        kinds = ", ".join(type_name(p) for p in prop["oneOf"])
        by = prop.get("discriminator", {}).get("propertyName")
        return f"one of: {kinds}" + (f" (picked by `{by}`)" if by else "")
    if "const" in prop:
        return f"exactly {_code(prop['const'])}"
    if "enum" in prop:
        return "one of: " + ", ".join(_code(v) for v in prop["enum"])
    kind = prop.get("type")
    if kind == "array":
        items = prop.get("items")
        return f"list of {type_name(items)}" if items else "list"
    if kind == "object":
        return _map_name(prop)
    if kind == "string" and prop.get("pattern") == NAME_PATTERN:
        return "name"
    if kind in ("integer", "number"):
        return f"{kind}{_bounds(prop)}"
    if kind == "boolean":
        return "boolean"
    if kind == "string":
        return "string"
    return "any"


def _map_name(prop: Schema) -> str:
    keys = "name"
    names = prop.get("propertyNames", {})
    if "enum" in names:
        keys = "(" + type_name(names) + ")"
    values: Schema | None = None
    patterns = prop.get("patternProperties")
    if patterns:
        pattern, values = next(iter(patterns.items()))
        keys = "name" if pattern == NAME_PATTERN else "string"
    elif isinstance(prop.get("additionalProperties"), dict):
        values = prop["additionalProperties"]
        keys = keys if "enum" in names else "string"
    if values is None:
        return "mapping"
    return f"map of {keys} to {type_name(values)}"


def default_text(prop: Schema) -> str:
    """The default as a user would write it in the file, or '' when there is none."""
    if "default" not in prop:
        return ""
    value = prop["default"]
    if value is None:
        return ""
    unit = _unit(prop) or next((u for p in _non_null(prop) if (u := _unit(p))), None)
    if unit == "duration" and isinstance(value, (int, float)):
        return _code(units.format_duration(value))
    if isinstance(value, bool):
        return _code("true" if value else "false")
    return _code(value)


def _description(prop: Schema) -> str:
    text = str(prop.get("description", ""))
    if text in _UNIT_DESCRIPTIONS:
        return ""  # only the type's own description; the type column says it
    return text


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def _refs(schema: Any) -> list[str]:
    """Names of the $defs a schema refers to, in order of first reference."""
    found: list[str] = []
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(_REF_PREFIX):
                found.append(value.removeprefix(_REF_PREFIX))
            elif key != "$defs" and key != "discriminator":
                found.extend(_refs(value))
    elif isinstance(schema, list):
        for item in schema:
            found.extend(_refs(item))
    return list(dict.fromkeys(found))


def section_order(schema: Schema, root: str = ROOT) -> list[str]:
    """The root type first, then every object type breadth first, in the order referenced."""
    defs: dict[str, Schema] = schema.get("$defs", {})
    order = [root]
    queue = deque([schema])
    while queue:
        for name in _refs(queue.popleft()):
            if name not in order and name in defs:
                order.append(name)
                queue.append(defs[name])
    order.extend(sorted(set(defs) - set(order)))
    return order


def _section(name: str, model: Schema) -> list[str]:
    lines = [f"## {name}", ""]
    about = [model.get("description", "") if name not in (ROOT, SUITE) else "",
             _NOTES.get(name, "")]
    if any(about):
        lines += [_cell(" ".join(a for a in about if a)), ""]
    props: dict[str, Schema] = model.get("properties", {})
    if not props:
        return [*lines, "No fields.", ""]
    required = set(model.get("required", []))
    lines += ["| Field | Type | Required / default | Description |", "| --- | --- | --- | --- |"]
    for field, prop in props.items():
        if field in required:
            need = "**required**"
        else:
            shown = default_text(prop)
            need = f"default {shown}" if shown else "optional"
        row = (f"`{field}`", type_name(prop), need, _description(prop))
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return [*lines, ""]


def _units_intro() -> list[str]:
    doc = (units.__doc__ or "").replace("``", "`")
    paragraphs = [" ".join(p.split()) for p in doc.split("\n\n") if p.strip()]
    return [p for para in paragraphs[1:] or paragraphs for p in (para, "")]


def render_reference() -> str:
    """The scenario format reference as Markdown, generated from the JSON Schema."""
    schema = scenario_json_schema()
    defs: dict[str, Schema] = schema.get("$defs", {})
    order = section_order(schema)
    suite = suite_json_schema()
    suite_defs: dict[str, Schema] = suite.get("$defs", {})
    suite_order = section_order(suite, SUITE)
    lines = [
        "# Scenario file reference",
        "",
        "<!-- Generated by scripts/gen_docs.py from the scenario models; do not edit. -->",
        "",
        "A scenario is a YAML file with `apiVersion: llmdrill/v1` and `kind: Scenario`. "
        "Unknown keys are errors everywhere. `llmdrill validate FILE` checks a file and "
        "points at the line of every problem; `llmdrill schema` prints the JSON Schema. "
        "For completion and checks in editors, start the file with:",
        "",
        "```yaml",
        "# yaml-language-server: $schema=../docs/scenario.schema.json",
        "```",
        "",
        "## Units and conventions",
        "",
        *_units_intro(),
        "- **name**: lowercase letters, digits, `.`, `_` and `-`, starting with a letter or a "
        "digit, at most 63 characters.",
        "- **`${VAR}`** anywhere in a value is replaced by the environment variable `VAR`; "
        "`${VAR:-default}` gives a default for when it is unset or empty. An unset variable "
        'without a default is an error. Inside `[ ]` or `{ }`, quote such values: `"${VAR}"`.',
        "",
        "## Contents",
        "",
        *[f"- [{name}](#{_anchor(name)})" for name in order],
        "",
        "Game-day suites:",
        "",
        *[f"- [{name}](#{_anchor(name)})" for name in suite_order],
        "",
    ]
    for name in order:
        lines += _section(name, schema if name == ROOT else defs[name])
    for name in suite_order:
        lines += _section(name, suite if name == SUITE else suite_defs[name])
    return "\n".join(lines).rstrip("\n") + "\n"


def suite_json_schema() -> Schema:
    """The JSON Schema of a game-day suite file."""
    schema: Schema = Suite.model_json_schema()
    return schema


def suite_schema_text() -> str:
    return json.dumps(suite_json_schema(), indent=2, ensure_ascii=False) + "\n"


def schema_text() -> str:
    return json.dumps(scenario_json_schema(), indent=2, ensure_ascii=False) + "\n"


def write_schema_file(path: str | Path) -> None:
    """Write the scenario JSON Schema (indent 2), for yaml-language-server."""
    Path(path).write_text(schema_text(), encoding="utf-8")
