"""parse_metrics: one scrape's text into samples."""

from __future__ import annotations

import pytest

from llmdrill.probes.engine_metrics import parse_metrics

pytestmark = pytest.mark.unit

# HAProxy's exporter says "no value" with NaN (a server's check status when never checked).
TEXT = """\
# HELP haproxy_backend_current_queue Number of current queued connections
# TYPE haproxy_backend_current_queue gauge
haproxy_backend_current_queue{proxy="replicas"} 3
# HELP haproxy_server_check_status Status of last health check
# TYPE haproxy_server_check_status gauge
haproxy_server_check_status{proxy="replicas",server="replica-0"} NaN
"""


def test_samples_keep_name_labels_value_and_time() -> None:
    [queue] = [s for s in parse_metrics(TEXT, 12.5) if s.name == "haproxy_backend_current_queue"]
    assert (queue.ts, queue.value, queue.labels) == (12.5, 3.0, {"proxy": "replicas"})


def test_nan_samples_are_left_out() -> None:
    # A NaN cannot be summed or compared, and SQLite stores it as NULL: a run whose
    # target exported one once crashed when charting the engine's series.
    names = {s.name for s in parse_metrics(TEXT, 1.0)}
    assert names == {"haproxy_backend_current_queue"}
