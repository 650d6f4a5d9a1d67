from __future__ import annotations

import pytest

from llmdrill.checks.stats import client_series, percentile, request_stats
from llmdrill.model.records import RequestRecord

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0


def rec(
    start: float,
    duration: float,
    *,
    ttft: float | None = 0.1,
    error: str | None = None,
    error_type: str | None = None,
    tokens: int = 10,
    attempts: int = 1,
) -> RequestRecord:
    return RequestRecord(
        start=T0 + start,
        end=T0 + start + duration,
        ttft=None if error else ttft,
        error_class=error,
        error_type=error_type,
        output_tokens=tokens,
        attempts=attempts,
    )


# --- percentile ---------------------------------------------------------------------


def test_percentile_of_nothing_is_none() -> None:
    assert percentile([], 50) is None


def test_percentile_single_value() -> None:
    assert percentile([3.0], 0) == 3.0
    assert percentile([3.0], 99) == 3.0


def test_percentile_interpolates_linearly_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # order must not matter
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 95) == pytest.approx(3.85)  # rank 2.85
    assert percentile(values, 100) == 4.0


def test_percentile_rejects_q_outside_0_100() -> None:
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], 101)


# --- request_stats ------------------------------------------------------------------


def test_request_stats_empty() -> None:
    stats = request_stats([], 10.0)
    assert stats.requests == 0
    assert stats.error_rate is None
    assert stats.ttft_p95_s is None
    assert stats.tokens_per_s is None


def test_request_stats_counts_and_error_keys() -> None:
    records = [
        rec(0, 1.0, ttft=0.1),
        rec(1, 1.0, ttft=0.3, attempts=2),
        rec(2, 0.5, error="http_5xx", error_type="InternalServerError", tokens=0),
        rec(3, 0.5, error="http_5xx", error_type="InternalServerError", tokens=0),
        rec(4, 0.5, error="timeout", tokens=0, attempts=3),
    ]
    stats = request_stats(records, 10.0)
    assert (stats.requests, stats.succeeded, stats.failed) == (5, 2, 3)
    assert stats.error_rate == pytest.approx(0.6)
    assert stats.errors_by_class == {"http_5xx": 2, "timeout": 1}
    assert stats.errors_by_type == {"http_5xx:InternalServerError": 2, "timeout:None": 1}
    assert stats.retried == 2
    # TTFT percentiles only over successes.
    assert stats.ttft_p50_s == pytest.approx(0.2)
    assert stats.e2e_p95_s == pytest.approx(1.0)


def test_request_stats_tokens_per_s_uses_window_or_span() -> None:
    records = [rec(0, 2.0, tokens=20), rec(2, 2.0, tokens=20)]
    assert request_stats(records, 10.0).tokens_per_s == pytest.approx(4.0)
    # No window: first start (0) .. last end (4).
    assert request_stats(records, None).tokens_per_s == pytest.approx(10.0)
    assert request_stats(records, 0.0).tokens_per_s == pytest.approx(10.0)


def test_request_tokens_per_s_excludes_ttft_and_falls_back_to_duration() -> None:
    with_ttft = rec(0, 2.0, ttft=1.0, tokens=10)  # 10 tokens over 1 s of decode
    without_ttft = rec(0, 2.0, ttft=None, tokens=30)  # 30 tokens over 2 s
    only_ttft = rec(0, 1.0, ttft=1.0, tokens=40)  # decode time 0: use the 1 s duration
    stats = request_stats([with_ttft, without_ttft, only_ttft], 10.0)
    assert stats.request_tokens_per_s_p50 == pytest.approx(15.0)  # median of 10, 15, 40


# --- client_series ------------------------------------------------------------------


def test_client_series_buckets_by_end_and_keeps_empty_buckets() -> None:
    records = [
        rec(0.0, 0.5, ttft=0.2, tokens=5),  # ends 0.5 -> bucket 0
        rec(0.2, 0.6, ttft=0.4, tokens=5),  # ends 0.8 -> bucket 0
        rec(0.0, 3.2, error="reset", tokens=0),  # ends 3.2 -> bucket 3
        rec(2.0, 2.0, tokens=7),  # ends exactly at t_end -> last bucket
        rec(5.0, 1.0),  # ends after t_end: not shown
    ]
    points = client_series(records, T0, T0 + 4.0)
    assert [p.t for p in points] == [0.0, 1.0, 2.0, 3.0]
    assert [p.requests for p in points] == [2, 0, 0, 2]
    assert points[0].ttft_p95_s == pytest.approx(0.39)
    assert points[0].tokens_per_s == pytest.approx(10.0)
    assert points[1].ttft_p95_s is None and points[1].errors == {}
    assert points[3].errors == {"reset": 1}
    assert points[3].tokens_per_s == pytest.approx(7.0)


def test_client_series_wider_buckets_scale_tokens_per_s() -> None:
    points = client_series([rec(0, 1.0, tokens=10)], T0, T0 + 3.0, bucket_s=2.0)
    assert [p.t for p in points] == [0.0, 2.0]
    assert points[0].tokens_per_s == pytest.approx(5.0)


def test_client_series_empty_range() -> None:
    assert client_series([rec(0, 1.0)], T0, T0) == []


# --- requests the load stopped ------------------------------------------------------


def _stopped(start: float) -> RequestRecord:
    return RequestRecord(start=T0 + start, end=T0 + start + 1.0, error_class="interrupted",
                         error_type="stopped", finished=False)


def test_requests_the_load_stopped_are_counted_apart_not_as_errors() -> None:
    stats = request_stats([rec(0, 1.0), rec(1, 1.0, error="http_5xx"), _stopped(2),
                           _stopped(3)])
    assert (stats.requests, stats.succeeded, stats.failed) == (2, 1, 1)
    assert stats.error_rate == 0.5
    assert stats.errors_by_class == {"http_5xx": 1}
    assert stats.unfinished_at_stop == 2


def test_a_phase_with_only_stopped_requests_has_no_figures_but_their_count() -> None:
    stats = request_stats([_stopped(0)])
    assert stats.requests == 0 and stats.error_rate is None
    assert stats.unfinished_at_stop == 1
