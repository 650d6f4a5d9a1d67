"""Percentiles of a stream of values in bounded memory.

Exact while a stream is short, which is every drill phase of ordinary length: up to
EXACT_LIMIT values are kept (8 bytes each) and percentiles use numpy's "linear"
definition, so they match what people recompute from the raw records. Past that, the
values move into a DDSketch (Datadog's sketch: every percentile within RELATIVE_ACCURACY
of the true value, in a few kilobytes however many values come), so a soak of millions of
requests is judged in the memory of a short drill. See docs/decisions/0015.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterable

from ddsketch import DDSketch
from ddsketch.mapping import LogarithmicMapping

EXACT_LIMIT = 100_000  # 800 kB of exact values per stream
RELATIVE_ACCURACY = 0.005  # past it: each percentile within 0.5% of its true value
FOLD_EVERY = 65_536
# The sketch's buckets: value v is in bucket ceil(log_gamma(v)), whose representative value
# the mapping gives; values are grouped by bucket here and each group added once.
_MAPPING = LogarithmicMapping(RELATIVE_ACCURACY)
_LOG_GAMMA = math.log(_MAPPING.gamma)


def percentile_of_sorted(ordered: list[float] | array[float], q: float) -> float | None:
    """The q-th percentile (0..100) of values already sorted, numpy's linear definition."""
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class Quantiles:
    """A stream of values whose percentiles can be asked for at any time."""

    __slots__ = ("_buffer", "_count", "_exact", "_limit", "_sketch", "_sorted")

    def __init__(self, values: Iterable[float] = (), limit: int = EXACT_LIMIT) -> None:
        self._exact: array[float] | None = array("d")
        self._sorted = True
        self._sketch: DDSketch | None = None
        self._buffer = array("d")  # past the limit: values waiting to be folded in
        self._count = 0
        self._limit = limit
        for value in values:
            self.add(value)

    def add(self, value: float) -> None:
        self._count += 1
        if self._exact is not None:
            self._exact.append(value)
            self._sorted = False
            if len(self._exact) > self._limit:
                self._buffer, self._exact = self._exact, None
                self._sketch = DDSketch(relative_accuracy=RELATIVE_ACCURACY)
                self._fold()
        else:
            self._buffer.append(value)
            if len(self._buffer) >= FOLD_EVERY:
                self._fold()

    def _fold(self) -> None:
        """Moves the buffered values into the sketch a bucket at a time: DDSketch's add
        is Python code per call, and a run of millions of requests makes millions."""
        assert self._sketch is not None
        buckets = Counter(math.ceil(math.log(v) / _LOG_GAMMA) for v in self._buffer if v > 0)
        for key, weight in buckets.items():
            self._sketch.add(_MAPPING.value(key), weight)
        for value in self._buffer:
            if value <= 0:  # the sketch keeps zeros and negatives apart
                self._sketch.add(value)
        self._buffer = array("d")

    def __len__(self) -> int:
        return self._count

    @property
    def exact(self) -> bool:
        """Whether percentiles are exact (no more than the limit of values came)."""
        return self._exact is not None

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (q in 0..100); None for no values: a missing measurement
        must never look like a zero."""
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"percentile q must be within 0..100, got {q}")
        if self._exact is None:
            assert self._sketch is not None
            if self._buffer:
                self._fold()
            value = self._sketch.get_quantile_value(q / 100.0)
            return None if value is None else float(value)
        if not self._sorted:
            self._exact = array("d", sorted(self._exact))
            self._sorted = True
        return percentile_of_sorted(self._exact, q)
