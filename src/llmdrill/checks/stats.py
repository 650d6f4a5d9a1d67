"""Client-side request statistics: the numbers checks compare and reports show.

Pure functions over `RequestRecord`s; nothing here knows about phases or scenarios.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

from llmdrill.model.quantiles import Quantiles, percentile_of_sorted
from llmdrill.model.records import RequestRecord, WindowedRequests
from llmdrill.model.result import ClientPoint, RequestStats


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (q in 0..100) with linear interpolation between ranks.

    Same definition as numpy's default ("linear"), so numbers match what people get
    when they recompute them from the raw records. None for no values: a missing
    measurement must never look like a zero.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    return percentile_of_sorted(sorted(values), q)


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


class _Tally:
    """Running statistics of requests with an outcome, one request at a time: counts and
    sums, percentiles from `Quantiles` (exact, then a sketch). Memory does not grow with
    the number of requests."""

    def __init__(self) -> None:
        self.requests = 0
        self.succeeded = 0
        self.unfinished = 0
        self.by_class: Counter[str] = Counter()
        self.by_type: Counter[str] = Counter()
        self.ttft = Quantiles()
        self.e2e = Quantiles()
        self.decode = Quantiles()
        self.output_tokens = 0
        self.retried = 0
        self.first_start = math.inf
        self.last_end = -math.inf

    def add(self, r: RequestRecord) -> None:
        # A request the load stopped (its end, an abort) has no outcome: counted apart, not
        # as an error of the phase it happened to be in.
        if not r.finished:
            self.unfinished += 1
            return
        self.requests += 1
        self.output_tokens += r.output_tokens
        if r.attempts > 1:
            self.retried += 1
        self.first_start = min(self.first_start, r.start)
        self.last_end = max(self.last_end, r.end)
        if r.error_class is not None:
            self.by_class[r.error_class] += 1
            self.by_type[f"{r.error_class}:{r.error_type}"] += 1
            return
        self.succeeded += 1
        if r.ttft is not None:
            self.ttft.add(r.ttft)
        self.e2e.add(r.end - r.start)
        if (speed := request_tokens_per_s(r)) is not None:
            self.decode.add(speed)

    def stats(self, window_s: float | None) -> RequestStats:
        if not self.requests:
            return RequestStats(unfinished_at_stop=self.unfinished)
        failed = self.requests - self.succeeded
        span = window_s
        if span is None or span <= 0:
            span = self.last_end - self.first_start
        return RequestStats(
            requests=self.requests,
            succeeded=self.succeeded,
            failed=failed,
            error_rate=failed / self.requests,
            errors_by_class=dict(sorted(self.by_class.items())),
            errors_by_type=dict(sorted(self.by_type.items())),
            ttft_p50_s=self.ttft.percentile(50),
            ttft_p95_s=self.ttft.percentile(95),
            ttft_p99_s=self.ttft.percentile(99),
            e2e_p95_s=self.e2e.percentile(95),
            output_tokens=self.output_tokens,
            tokens_per_s=self.output_tokens / span if span > 0 else None,
            request_tokens_per_s_p50=self.decode.percentile(50),
            retried=self.retried,
            unfinished_at_stop=self.unfinished,
        )


def request_stats(records: Iterable[RequestRecord], window_s: float | None = None) -> RequestStats:
    """Summary statistics of a set of requests, read once, in memory that does not grow
    with their number (a run's log streams from evidence.db).

    `window_s` is the time the throughput is spread over (normally the phase length);
    without it the span from the first start to the last end is used. Requests the load
    stopped (not `finished`) are only counted, in `unfinished_at_stop`.
    """
    tally = _Tally()
    for r in records:
        tally.add(r)
    return tally.stats(window_s)


def client_series(
    records: Iterable[RequestRecord], t0: float, t_end: float, bucket_s: float = 1.0
) -> list[ClientPoint]:
    """Per-bucket client measures, bucketed by request END time, `t` = seconds since t0.

    End time is when an outcome became known, so an outage shows up where the errors
    land. Every bucket from t0 to t_end is present, empty ones with requests=0, so
    charts show gaps instead of drawing a line across them. Read in order of end (a run's
    log is), each bucket is summed up as soon as the next one begins: only one bucket's
    values are in memory at a time.
    """
    if bucket_s <= 0:
        raise ValueError(f"bucket_s must be more than 0, got {bucket_s}")
    if t_end <= t0:
        return []
    ordered: Iterable[RequestRecord] = (records.by_end() if isinstance(records, WindowedRequests)
                                        else sorted(records, key=lambda r: r.end))
    count = math.ceil((t_end - t0) / bucket_s)
    points: list[ClientPoint] = []
    requests = tokens = 0
    ttfts = Quantiles()
    errors: Counter[str] = Counter()

    def close_bucket() -> None:
        nonlocal requests, tokens, ttfts, errors
        points.append(ClientPoint(t=round(len(points) * bucket_s, 6), requests=requests,
                                  ttft_p95_s=ttfts.percentile(95),
                                  tokens_per_s=tokens / bucket_s,
                                  errors=dict(sorted(errors.items()))))
        requests = tokens = 0
        ttfts = Quantiles()
        errors = Counter()

    for r in ordered:
        if not t0 <= r.end <= t_end:
            continue
        # A request ending exactly at t_end belongs to the last bucket, not a new one.
        index = min(int((r.end - t0) // bucket_s), count - 1)
        while len(points) < index:
            close_bucket()
        requests += 1
        tokens += r.output_tokens
        if r.error_class is not None:
            errors[r.error_class] += 1
        elif r.ttft is not None:
            ttfts.add(r.ttft)
    while len(points) < count:
        close_bucket()
    return points
