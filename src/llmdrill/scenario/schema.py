"""JSON Schema of the scenario format, for editors (yaml-language-server) and the docs."""

from __future__ import annotations

from typing import Any

from llmdrill.scenario.models import Scenario

SCHEMA_ID = "https://llmdrill.dev/schema/scenario-v1.json"


def scenario_json_schema() -> dict[str, Any]:
    schema = Scenario.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = SCHEMA_ID
    schema["title"] = "llmdrill scenario (apiVersion llmdrill/v1)"
    return schema
