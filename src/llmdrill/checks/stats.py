"""Client-side request statistics: the numbers checks compare and reports show.

Pure functions over `RequestRecord`s; nothing here knows about phases or scenarios.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

from llmdrill.model.records import RequestRecord
from llmdrill.model.result import ClientPoint, RequestStats


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (q in 0..100) with linear interpolation between ranks.

    Same definition as numpy's default ("linear"), so numbers match what people get
    when they recompute them from the raw records. None for no values: a missing
    measurement must never look like a zero.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    ordered = sorted(values)
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    frac = rank - low
    return ordered[low] + (ordered[high] - ordered[low]) * frac


def request_tokens_per_s(record: RequestRecord) -> float | None:
    """Decode speed one request saw: output tokens over the time after its first token.

    Counting from the first token keeps queueing and prefill out of the decode rate;
    without a usable TTFT the whole duration is the best we have.
    """
    if record.output_tokens <= 0:
        return None
    if record.ttft is not None:
        decode = record.end - record.start - record.ttft
        if decode > 0:
            return record.output_tokens / decode
    if record.duration > 0:
        return record.output_tokens / record.duration
    return None


def _ttfts(records: Iterable[RequestRecord]) -> list[float]:
    return [r.ttft for r in records if r.ok and r.ttft is not None]


def request_stats(records: Sequence[RequestRecord], window_s: float | None = None) -> RequestStats:
    """Summary statistics of a set of requests.

    `window_s` is the time the throughput is spread over (normally the phase length);
    without it the span from the first start to the last end is used. Requests the load
    stopped (not `finished`) are only counted, in `unfinished_at_stop`.
    """
    # A request the load stopped (its end, an abort) has no outcome: counted apart, not as
    # an error of the phase it happened to be in.
    unfinished = sum(1 for r in records if not r.finished)
    records = [r for r in records if r.finished]
    if not records:
        return RequestStats(unfinished_at_stop=unfinished)
    failed = [r for r in records if not r.ok]
    ok = [r for r in records if r.ok]
    by_class = Counter(r.error_class for r in failed if r.error_class is not None)
    by_type = Counter(f"{r.error_class}:{r.error_type}" for r in failed)
    ttfts = _ttfts(ok)
    output_tokens = sum(r.output_tokens for r in records)
    span = window_s
    if span is None or span <= 0:
        span = max(r.end for r in records) - min(r.start for r in records)
    per_request = [v for r in ok if (v := request_tokens_per_s(r)) is not None]
    return RequestStats(
        requests=len(records),
        succeeded=len(ok),
        failed=len(failed),
        error_rate=len(failed) / len(records),
        errors_by_class=dict(sorted(by_class.items())),
        errors_by_type=dict(sorted(by_type.items())),
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p95_s=percentile(ttfts, 95),
        ttft_p99_s=percentile(ttfts, 99),
        e2e_p95_s=percentile([r.duration for r in ok], 95),
        output_tokens=output_tokens,
        tokens_per_s=output_tokens / span if span > 0 else None,
        request_tokens_per_s_p50=percentile(per_request, 50),
        retried=sum(1 for r in records if r.attempts > 1),
        unfinished_at_stop=unfinished,
    )


def client_series(
    records: Sequence[RequestRecord], t0: float, t_end: float, bucket_s: float = 1.0
) -> list[ClientPoint]:
    """Per-bucket client measures, bucketed by request END time, `t` = seconds since t0.

    End time is when an outcome became known, so an outage shows up where the errors
    land. Every bucket from t0 to t_end is present, empty ones with requests=0, so
    charts show gaps instead of drawing a line across them.
    """
    if bucket_s <= 0:
        raise ValueError(f"bucket_s must be more than 0, got {bucket_s}")
    if t_end <= t0:
        return []
    count = math.ceil((t_end - t0) / bucket_s)
    buckets: list[list[RequestRecord]] = [[] for _ in range(count)]
    for r in records:
        if not t0 <= r.end <= t_end:
            continue
        # A request ending exactly at t_end belongs to the last bucket, not a new one.
        buckets[min(int((r.end - t0) // bucket_s), count - 1)].append(r)
    points: list[ClientPoint] = []
    for i, bucket in enumerate(buckets):
        errors = Counter(r.error_class for r in bucket if r.error_class is not None)
        points.append(
            ClientPoint(
                t=round(i * bucket_s, 6),
                requests=len(bucket),
                ttft_p95_s=percentile(_ttfts(bucket), 95),
                tokens_per_s=sum(r.output_tokens for r in bucket) / bucket_s,
                errors=dict(sorted(errors.items())),
            )
        )
    return points
