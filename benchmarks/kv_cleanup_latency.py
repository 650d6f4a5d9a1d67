"""KV-cleanup detection latency: how long after an engine really frees its KV cache the
kv_cache_cleanup check of `llmdrill run` dates the cleanup, per scrape interval.

A stub engine of our own (kv_stub.py, standard-library asyncio, pinned to core 0) streams
a token every 50 ms and keeps the vLLM gauges the check reads (running requests, KV-cache
usage) from its own bookkeeping. When the last stream in flight has lost its client it
holds them for a fixed 200 ms, then drops them to the baseline in one step and records
that moment: the true cleanup. `llmdrill run` (core 1) drives a cancel storm against it
(waves of 4 streams, chat and completions, reset 0.6 s after they were sent) with the
kv_cache_cleanup check on the storm phase, once per scrape interval
(telemetry.scrape_interval); the waves are spaced so that their drops fall at points
evenly spread over the scrape cycle. Printed per interval, over the waves: the check's
cleanup moment (the drop plus its reported cleanup_s) minus the stub's true cleanup (p50,
max), and when the first scrape that read the clean gauges started, after the true
cleanup (p50, max): the rest is the check's dating rule (a reading counts from the start
of the next scrape, when it had certainly been answered), about one interval. The goal is
0.5 s, the scrape interval permitting.

    .venv/bin/python benchmarks/kv_cleanup_latency.py            # 10 waves at 100ms-1s
    .venv/bin/python benchmarks/kv_cleanup_latency.py --short    # 3 waves at 200ms, 500ms

It exits non-zero only when a run could not be measured (no result, no wave with a
cleanup time, no true cleanup to match); the figures are printed, not judged. Traffic
stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from load_throughput import CLIENT_CPU, STUB_CPU, _pinned, run_llmdrill, service  # noqa: E402

PORT = 18194
HOLD_S = 0.2  # the stub's time from the last client leaving to the cache's release
STREAMS = 4
ABORT_S = 0.6
GOAL_S = 0.5
CHECK = "cleanup"
KV_SERIES = "vllm:kv_cache_usage_perc"


@contextmanager
def kv_stub(work: Path) -> Iterator[str]:
    cmd = [sys.executable, str(HERE / "kv_stub.py"), "--port", str(PORT),
           "--hold-ms", f"{HOLD_S * 1000:g}", "--log", str(work / "frees.jsonl")]
    url = f"http://127.0.0.1:{PORT}"
    with service("the KV stub", _pinned(STUB_CPU, cmd), work / "stub.out",
                 lambda: httpx.get(f"{url}/metrics", timeout=2).raise_for_status()):
        yield url


def wave_interval(scrape: float, waves: int) -> float:
    """Seconds between wave starts: the drop, the hold, then room for the check's scrapes
    after the drop (it wants 3) and before the next wave (its baseline). Whole scrape
    intervals plus 1/waves of one, so that the drops fall on points evenly spread over the
    scrape cycle: with a multiple of the interval every wave drops at the same point of it
    (the scraper and the storm both keep to their schedules), and the figures show that
    one point (measured: 290 ms for each of 3 waves at 200 ms)."""
    cycles = math.ceil(max(2.0, ABORT_S + HOLD_S + 5 * scrape) / scrape)
    return round((cycles + 1 / waves) * scrape, 3)


def scenario(url: str, scrape: float, waves: int) -> str:
    every = wave_interval(scrape, waves)
    return f"""\
apiVersion: llmdrill/v1
kind: Scenario
metadata: {{name: kv-cleanup-latency}}
target: {{base_url: "{url}", model: tiny, metrics_url: "{url}/metrics"}}
telemetry: {{scrape_interval: {scrape * 1000:g}ms}}
faults:
  storm:
    cancel_storm: {{streams: {STREAMS}, prompt_tokens: 16, max_tokens: 400,
                   abort_after: {{delay: {ABORT_S * 1000:g}ms}}, close: reset,
                   waves: {waves}, interval: {every * 1000:.0f}ms}}
load: {{users: 0}}
phases:
  - {{name: baseline, duration: 1.5s}}
  - {{name: storm, duration: {waves * every * 1000:.0f}ms, faults: [storm]}}
  - {{name: after, duration: 1.5s}}
checks:
  - name: {CHECK}
    phase: storm
    kv_cache_cleanup: {{within: 5s}}
"""


@dataclass
class Setting:
    scrape: float
    waves: int
    detected: list[float]  # check's cleanup moment - true cleanup, per measured wave
    scraped: list[float]  # start of the first clean scrape - true cleanup
    noticed: list[float]  # the stub saw the last client leave - the storm's drop
    status: str


def measure(url: str, scrape: float, waves: int, work: Path) -> Setting:
    seconds = 3 + waves * wave_interval(scrape, waves)
    run = run_llmdrill(scenario(url, scrape, waves), work, seconds + 120, must_pass=False)
    result = json.loads((run / "result.json").read_text())
    check = next((c for c in result.get("checks", []) if c.get("name") == CHECK), None)
    if check is None:
        raise SystemExit(f"scrape {scrape:g}s: the run has no check '{CHECK}'")
    reported = check.get("observed", {}).get("waves") or []
    with sqlite3.connect(run / "evidence.db") as db:
        drops = sorted((json.loads(d) for (d,) in db.execute(
            "SELECT detail FROM events WHERE kind = 'storm_wave'")),
            key=lambda d: float(d["started_at"]))
        scrapes = [ts for (ts,) in db.execute(
            "SELECT DISTINCT ts FROM metrics WHERE name = ? ORDER BY ts", (KV_SERIES,))]
    frees: list[dict[str, Any]] = httpx.get(f"{url}/truth", timeout=5).json()["frees"]
    if len(reported) != len(drops):
        raise SystemExit(f"scrape {scrape:g}s: the check reports {len(reported)} waves, "
                         f"the storm recorded {len(drops)} ({check.get('summary')})")
    out = Setting(scrape, len(drops), [], [], [], str(check.get("status")))
    for wave, drop in zip(reported, drops, strict=True):
        started, dropped = float(drop["started_at"]), float(drop["dropped_at"])
        truth = next((f for f in frees if f["busy_since"] is not None
                      and started <= f["busy_since"] <= dropped), None)
        if truth is None or wave.get("cleanup_s") is None:
            continue  # no true cleanup (the wave never reached the stub), or none reported
        freed = float(truth["freed_at"])
        detected = dropped + float(wave["cleanup_s"])
        out.detected.append(detected - freed)
        # The clean reading: the last scrape started before the moment the check dated it
        # by (the start of the next scrape).
        read = [ts for ts in scrapes if ts < detected - 1e-4]
        if read:
            out.scraped.append(read[-1] - freed)
        out.noticed.append(float(truth["last_gone"]) - dropped)
    if not out.detected:
        raise SystemExit(f"scrape {scrape:g}s: no wave could be measured: {check.get('status')}"
                         f", {check.get('summary')}")
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def ms(values: list[float], q: float | None) -> str:
    if not values:
        return "-"
    return f"{(max(values) if q is None else pct(values, q)) * 1000:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--short", action="store_true",
                        help="3 waves at 200ms and 500ms scrapes (make test)")
    parser.add_argument("--waves", type=int, help="per scrape interval (default 10; 3 short)")
    parser.add_argument("--intervals", help="scrape intervals in ms, comma-separated "
                        "(default 100,200,500,1000; 200,500 short)")
    args = parser.parse_args(argv)
    waves = args.waves or (3 if args.short else 10)
    intervals = [float(v) / 1000 for v in
                 (args.intervals or ("200,500" if args.short else "100,200,500,1000"))
                 .split(",")]
    settings = []
    with tempfile.TemporaryDirectory(prefix="llmdrill-bench-kv-") as tmp:
        work = Path(tmp)
        with kv_stub(work) as url:
            for scrape in intervals:
                (work / f"run-{scrape:g}").mkdir()
                settings.append(measure(url, scrape, waves, work / f"run-{scrape:g}"))
    print(f"kv cleanup detection: {waves} cancel-storm waves of {STREAMS} streams (reset "
          f"{ABORT_S:g}s after sending) per scrape interval; the stub frees its KV cache "
          f"{HOLD_S * 1000:g} ms after the last client left; harness on core {CLIENT_CPU}, "
          f"stub on core {STUB_CPU}; ms after the true cleanup")
    print(f"{'scrape interval':<17}{'waves':>7}{'detected p50':>14}{'max':>7}"
          f"{'read p50':>10}{'max':>7}{'goal':>7}  check")
    for s in settings:
        print(f"{s.scrape * 1000:>6g} ms{'':<8}{len(s.detected):>3}/{s.waves:<3}"
              f"{ms(s.detected, 0.5):>14}{ms(s.detected, None):>7}"
              f"{ms(s.scraped, 0.5):>10}{ms(s.scraped, None):>7}"
              f"{GOAL_S * 1000:>7.0f}  {s.status}")
    noticed = [n for s in settings for n in s.noticed]
    print(f"detected: the check's cleanup moment (drop + cleanup_s); read: the start of the "
          f"first scrape that saw it clean. Goal: within {GOAL_S * 1000:.0f} ms, the scrape "
          f"interval permitting. The stub saw the last client leave {ms(noticed, 0.5)} ms "
          f"after the storm's drop (p50; max {ms(noticed, None)}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
