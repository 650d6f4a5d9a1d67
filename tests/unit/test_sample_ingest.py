"""The harness reads the load's sample lines once and keeps them as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmdrill.load.config import LoadConfig
from llmdrill.load.runner import LocustProcess
from llmdrill.model.evidence import EvidenceStore, RequestLog
from llmdrill.model.records import RequestRecord

pytestmark = pytest.mark.unit


def test_sample_lines_are_read_once_torn_lines_wait_and_garbage_is_skipped(tmp_path: Path
                                                                          ) -> None:
    samples = tmp_path / "samples.jsonl"
    samples.write_text('{"start":1.0,"end":2.0,"status":200}\nnot json\n[1]\n{"start":3')
    load = LocustProcess(LoadConfig(base_url="http://127.0.0.1:1", model="m",
                                    samples_path=str(samples)), 1, 1, 1, tmp_path)
    assert load.read_new_samples() == [{"start": 1.0, "end": 2.0, "status": 200}]
    with samples.open("a") as fh:
        fh.write(',"end":4.0}\n')
    assert load.read_new_samples() == [{"start": 3, "end": 4.0}]
    assert load.read_new_samples() == []
    load.close()


def test_the_store_keeps_each_field_in_a_column_and_masks_secrets(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path / "evidence.db", secrets=["sk-secret"])
    store.add_requests([{"start": 1.0, "end": 2.0, "error_class": "http_4xx",
                         "error_type": "echo sk-secret", "unknown_key": 1}])
    store.add_requests([{"start": 3.0, "end": 4.0, "ttft": [1]}])  # garbage: left out
    rows = store._db.execute(
        'SELECT "start", "end", error_type, ttft FROM requests ORDER BY "start"').fetchall()
    assert rows == [(1.0, 2.0, "echo ***", None), (3.0, 4.0, None, None)]
    store.close()


def test_a_run_log_streams_its_records_and_answers_windows(tmp_path: Path) -> None:
    folder = tmp_path / "odd ?#% name"  # a URI opens the log read-only: quoted
    folder.mkdir()
    store = EvidenceStore(folder / "evidence.db")
    store.add_requests([{"start": float(i), "end": i + 1.5, "shape": "a" if i % 2 else "b",
                         "stream": False, "finished": i != 3, "ttft": 0.1}
                        for i in range(10)])
    evidence = store.load([], [], None)
    store.close()  # the log reads the file on its own
    log = evidence.requests
    assert isinstance(log, RequestLog)
    assert len(log) == 10 and [r.start for r in log] == [float(i) for i in range(10)]
    assert log[0] == RequestRecord(0.0, 1.5, stream=False, ttft=0.1, shape="b")
    assert log[-1].start == 9.0 and log[3].finished is False
    assert [r.start for r in evidence.requests_started_in(2.0, 5.0)] == [2.0, 3.0, 4.0]
    assert [r.start for r in evidence.requests_overlapping(4.0, 5.0)] == [3.0, 4.0]
    assert [r.start for r in log.started_in(0, 6).of_shapes(["a"])] == [1.0, 3.0, 5.0]
    assert [r.end for r in log.by_end()] == sorted(r.end for r in log)
    with pytest.raises(IndexError):
        log[10]


def test_the_evidence_is_read_again_from_every_file_once_the_load_stops(tmp_path: Path
                                                                       ) -> None:
    samples = tmp_path / "samples.jsonl"
    samples.write_text('{"kind":"load_started","at":1.0}\n{"start":1.0,"end":2.0}\n')
    load = LocustProcess(LoadConfig(base_url="http://127.0.0.1:1", model="m",
                                    samples_path=str(samples)), 4, 4, 1, tmp_path, processes=2)
    worker = tmp_path / "samples-w7.jsonl"
    worker.write_text('{"start":3.0,"end":4.0}\ngarbage\n{"start":5.0,"end":6.0}\n{"sta')
    assert len(load.read_new_samples()) == 3  # what the live statistics saw
    batches = list(load.recorded(batch=1))
    assert sorted(r["start"] for batch in batches for r in batch) == [1.0, 3.0, 5.0]
    assert all(batch for batch in batches)  # control records, garbage and torn lines left out
    load.discard_samples()
    assert not samples.exists() and not worker.exists()
    load.close()
