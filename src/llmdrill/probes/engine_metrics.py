"""Scrape an engine's Prometheus /metrics endpoint on an interval, in a thread.

Parsing uses prometheus_client's own text parser. A scrape that fails is recorded as an
event (the evidence of an engine that went away), never raised.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from llmdrill.model.records import MetricSample

MAX_SCRAPE_BYTES = 8 << 20


def parse_metrics(text: str, ts: float) -> list[MetricSample]:
    """The samples of one scrape. NaN values are left out: an exporter's way of saying
    "no value" (HAProxy's for a server never checked), they cannot be summed or compared,
    and SQLite would store them as NULL."""
    samples: list[MetricSample] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            value = float(sample.value)
            if not math.isnan(value):
                samples.append(MetricSample(ts, sample.name, value, dict(sample.labels)))
    return samples


def scrape_once(client: httpx.Client, url: str, deadline: float = 5.0) -> list[MetricSample]:
    from llmdrill.probes.http import bounded_get

    ts = time.time()
    resp = bounded_get(url, client=client, deadline=deadline, max_bytes=MAX_SCRAPE_BYTES)
    if resp.status_code != 200:
        raise ValueError(f"HTTP {resp.status_code}")
    if resp.truncated:
        raise ValueError(f"metrics body over {MAX_SCRAPE_BYTES} bytes")
    return parse_metrics(resp.text, ts)


class MetricsScraper:
    def __init__(
        self,
        url: str,
        sink: Callable[[list[MetricSample]], None],
        on_error: Callable[[str], None],
        interval: float = 1.0,
        timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.interval = interval
        self._sink = sink
        self._on_error = on_error
        self._stop = threading.Event()
        self._client = httpx.Client(timeout=timeout)
        self._thread = threading.Thread(target=self._loop, name="metrics-scraper", daemon=True)
        self.scrapes = 0
        self.failures = 0
        self.latest: dict[str, float] = {}
        self.last_ok = time.time()  # the preflight scrape just succeeded

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._client.close()

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                samples = scrape_once(self._client, self.url)
            except Exception as exc:
                self.failures += 1
                self._on_error(f"scrape of {self.url} failed: {type(exc).__name__}: {exc}")
            else:
                self.scrapes += 1
                self.last_ok = time.time()
                self._sink(samples)
                latest: dict[str, float] = {}
                for s in samples:
                    latest[s.name] = latest.get(s.name, 0.0) + s.value
                self.latest = latest
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))
