"""The harness reads the load's sample lines once and keeps them as written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmdrill.load.config import LoadConfig
from llmdrill.load.runner import LocustProcess
from llmdrill.model.evidence import EvidenceStore

pytestmark = pytest.mark.unit


def test_sample_lines_are_read_once_torn_lines_wait_and_garbage_is_skipped(tmp_path: Path
                                                                          ) -> None:
    samples = tmp_path / "samples.jsonl"
    samples.write_text('{"start":1.0,"end":2.0,"status":200}\nnot json\n[1]\n{"start":3')
    load = LocustProcess(LoadConfig(base_url="http://127.0.0.1:1", model="m",
                                    samples_path=str(samples)), 1, 1, 1, tmp_path)
    lines, records = load.read_new_samples()
    assert lines == ['{"start":1.0,"end":2.0,"status":200}']
    assert records == [{"start": 1.0, "end": 2.0, "status": 200}]
    with samples.open("a") as fh:
        fh.write(',"end":4.0}\n')
    assert load.read_new_samples()[1] == [{"start": 3, "end": 4.0}]
    assert load.read_new_samples() == ([], [])
    load.close()


def test_the_store_keeps_the_line_as_written_and_still_masks_secrets(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path / "evidence.db", secrets=["sk-secret"])
    line = '{"start":1.0,"end":2.0,"error_type":"echo sk-secret"}'
    store.add_requests([json.loads(line)], [line])
    store.add_requests([{"start": 3.0, "end": 4.0}])  # no line: encoded here
    rows = store._db.execute("SELECT start, end, record FROM requests ORDER BY start").fetchall()
    assert rows[0] == (1.0, 2.0, '{"start":1.0,"end":2.0,"error_type":"echo ***"}')
    assert json.loads(rows[1][2]) == {"start": 3.0, "end": 4.0}
    store.close()
