"""Percentiles in bounded memory: exact for short streams, within the sketch's accuracy
past them; statistics of a run's log read from evidence.db as they stream."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from llmdrill.checks.stats import client_series, percentile, request_stats
from llmdrill.model.evidence import EvidenceStore
from llmdrill.model.quantiles import RELATIVE_ACCURACY, Quantiles
from llmdrill.model.records import RequestRecord

pytestmark = pytest.mark.unit


def test_short_streams_are_exact_with_numpys_definition() -> None:
    values = [random.Random(1).uniform(0, 10) for _ in range(999)]
    q = Quantiles(values)
    assert q.exact and len(q) == 999
    for p in (0, 1, 50, 95, 99, 100):
        assert q.percentile(p) == percentile(values, p)
    assert Quantiles().percentile(50) is None  # no values: no figure, never 0
    with pytest.raises(ValueError):
        q.percentile(101)


def test_past_the_limit_every_percentile_is_within_the_sketchs_accuracy() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(-2, 1) for _ in range(5_000)]
    q = Quantiles(limit=1_000)
    for v in values:
        q.add(v)
    assert not q.exact and len(q) == 5_000
    for p in (1, 50, 90, 95, 99):
        true = percentile(values, p)
        got = q.percentile(p)
        assert true is not None and got is not None
        assert abs(got - true) <= RELATIVE_ACCURACY * true * 1.01 + 1e-12, (p, got, true)


def test_a_check_that_would_be_failed_still_is_past_the_limit() -> None:
    # A tail the verdict rests on: 2% of requests 100x slower. The sketch must keep it.
    values = [0.05] * 9_800 + [5.0] * 200
    q = Quantiles(values, limit=500)
    p99 = q.percentile(99)
    assert p99 is not None and p99 >= 5.0 * (1 - RELATIVE_ACCURACY)
    p50 = q.percentile(50)
    assert p50 is not None and abs(p50 - 0.05) <= 0.05 * RELATIVE_ACCURACY * 1.01


def _records(n: int) -> list[dict[str, object]]:
    rng = random.Random(3)
    out: list[dict[str, object]] = []
    for i in range(n):
        start = 100.0 + i * 0.01
        failed = i % 10 == 0
        out.append({"start": start, "end": start + 0.5 + rng.random() * 0.1,
                    "ttft": None if failed else 0.1 + rng.random() * 0.05,
                    "error_class": "http_5xx" if failed else None, "error_type": "x",
                    "output_tokens": 0 if failed else 8, "finished": i != 5})
    return out


def test_statistics_of_a_run_log_equal_those_of_the_same_records_in_memory(
        tmp_path: Path) -> None:
    raws = _records(3_000)
    store = EvidenceStore(tmp_path / "evidence.db")
    store.add_requests(raws[1_500:])  # written out of order, as workers' files are read
    store.add_requests(raws[:1_500])
    evidence = store.load([], [], None)
    store.close()
    in_memory = [RequestRecord(**r) for r in raws]  # type: ignore[arg-type]
    assert request_stats(evidence.requests, 30.0) == request_stats(in_memory, 30.0)
    assert request_stats(evidence.requests_started_in(105.0, 110.0), 5.0) == \
        request_stats([r for r in in_memory if 105.0 <= r.start < 110.0], 5.0)
    series = client_series(evidence.requests, 100.0, 131.0)
    assert series == client_series(in_memory, 100.0, 131.0)
    assert len(series) == 31 and sum(p.requests for p in series) == 3_000
    assert series[5].errors == {"http_5xx": 10} and series[5].ttft_p95_s is not None


def test_client_series_keeps_empty_buckets_and_the_last_edge() -> None:
    records = [RequestRecord(0.0, 0.5, ttft=0.1), RequestRecord(0.0, 3.0, ttft=0.2)]
    series = client_series(records, 0.0, 3.0)
    assert [p.requests for p in series] == [1, 0, 1]
    assert series[1].ttft_p95_s is None and series[2].ttft_p95_s == 0.2


def test_values_folded_a_bucket_at_a_time_land_in_the_sketchs_own_buckets() -> None:
    # Quantiles groups values by bucket itself and adds each bucket's representative once:
    # it must pick the bucket the sketch would have.
    from ddsketch import DDSketch

    rng = random.Random(11)
    values = [rng.lognormvariate(0, 3) for _ in range(20_000)] + [0.0, 0.0]
    folded = Quantiles(values, limit=10)
    direct = DDSketch(relative_accuracy=RELATIVE_ACCURACY)
    for v in values:
        direct.add(v)
    for p in (0, 1, 25, 50, 75, 99, 100):
        assert folded.percentile(p) == pytest.approx(direct.get_quantile_value(p / 100),
                                                     rel=1e-9, abs=1e-12)
