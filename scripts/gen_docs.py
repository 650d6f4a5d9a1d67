"""Regenerate docs/scenario-reference.md and docs/scenario.schema.json from the models.

Run: .venv/bin/python scripts/gen_docs.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The reference documents llmdrill's own kinds, whatever plugins are installed here.
os.environ["LLMDRILL_PLUGINS"] = "off"

from llmdrill.scenario.docs import render_reference, suite_schema_text, write_schema_file

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "scenario-reference.md"
SCHEMA = ROOT / "docs" / "scenario.schema.json"
SUITE_SCHEMA = ROOT / "docs" / "suite.schema.json"


def main() -> int:
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(render_reference(), encoding="utf-8")
    write_schema_file(SCHEMA)
    SUITE_SCHEMA.write_text(suite_schema_text(), encoding="utf-8")
    for path in (REFERENCE, SCHEMA, SUITE_SCHEMA):
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
