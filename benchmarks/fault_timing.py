"""Fault timing: how late `llmdrill run` applies and reverts a fault against its schedule,
under full load, beside the floor (the Toxiproxy API calls alone).

A Toxiproxy server of its own (the one `make stack` builds, API on 127.0.0.1:18192) proxies
127.0.0.1:18193 to the nginx SSE stub of load_throughput.py (core 0). `llmdrill run`
(core 1) drives 8 users with no think time through the proxy while its phases alternate two
latency toxics: every phase boundary reverts one and applies the other. Printed: how long
after each phase's scheduled start its fault was applied, and after the scheduled end it
was reverted (p50, p99, max over every boundary), the goal being 50 ms; beside them, the
time of the bare API calls (add a toxic, remove it) from this process, which no harness
can beat.

    .venv/bin/python benchmarks/fault_timing.py            # 20 phases of 1 s
    .venv/bin/python benchmarks/fault_timing.py --short    # 6 phases of 0.5 s; make test

It exits non-zero only when something could not run; the figures are printed, not judged.
Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import load_throughput  # noqa: E402
from load_throughput import CLIENT_CPU, run_llmdrill, service, sse_stub  # noqa: E402

STUB_PORT = load_throughput.PORT

API_PORT, LISTEN_PORT = 18192, 18193


@contextmanager
def toxiproxy(work: Path) -> Iterator[str]:
    stack = Path(os.environ.get("LLMDRILL_STACK_DIR", HERE.parent / ".stack"))
    binary = stack / "bin" / "toxiproxy-server"
    if not binary.exists():
        raise SystemExit(f"{binary} is missing; run `make stack`")
    url = f"http://127.0.0.1:{API_PORT}"
    with service("toxiproxy", [str(binary), "-host", "127.0.0.1", "-port", str(API_PORT)],
                 work / "toxiproxy.log",
                 lambda: httpx.get(f"{url}/version", timeout=2).raise_for_status()):
        yield url


def api_floor(url: str, rounds: int) -> tuple[list[float], list[float]]:
    """Seconds of a bare add-toxic and remove-toxic call, on a proxy of its own."""
    adds, removes = [], []
    with httpx.Client(base_url=url, timeout=10) as client:
        client.post("/proxies", json={"name": "floor", "listen": "127.0.0.1:0",
                                      "upstream": f"127.0.0.1:{STUB_PORT}"}).raise_for_status()
        for _ in range(rounds):
            began = time.perf_counter()
            client.post("/proxies/floor/toxics", json={
                "name": "t", "type": "latency", "stream": "downstream",
                "attributes": {"latency": 20}}).raise_for_status()
            adds.append(time.perf_counter() - began)
            began = time.perf_counter()
            client.delete("/proxies/floor/toxics/t").raise_for_status()
            removes.append(time.perf_counter() - began)
        client.delete("/proxies/floor")
    return adds, removes


def scenario(api: str, phases: int, seconds: float) -> str:
    lines = [
        "apiVersion: llmdrill/v1",
        "kind: Scenario",
        "metadata: {name: fault-timing}",
        f'target: {{base_url: "http://127.0.0.1:{LISTEN_PORT}", model: tiny}}',
        f'toxiproxy: {{default: {{url: "{api}"}}}}',
        "faults:",
    ]
    for name, latency in (("even", "20ms"), ("odd", "40ms")):
        lines.append(f"  {name}: {{toxiproxy: {{proxy: bench, listen: "
                     f'"127.0.0.1:{LISTEN_PORT}", upstream: "127.0.0.1:{STUB_PORT}", '
                     f"toxic: latency, latency: {latency}}}}}")
    lines += [
        "load:",
        "  users: 8",
        "  spawn_rate: 8",
        "  wait: 0s",
        "  requests:",
        "    - {name: bench, api: completions, stream: true, prompt_tokens: 16, "
        "max_tokens: 16}",
        "  retries: {max_attempts: 1}",
        "phases:",
        "  - {name: warm, duration: 1s}",
    ]
    for i in range(phases):
        lines.append(f"  - {{name: p{i}, duration: {seconds:g}s, "
                     f"faults: [{'even' if i % 2 == 0 else 'odd'}]}}")
    lines += ["checks:",
              "  - {name: served, phase: warm, slo: {min_requests: 1}}"]
    return "\n".join(lines) + "\n"


def harness(api: str, phases: int, seconds: float, work: Path
            ) -> tuple[list[float], list[float], float]:
    """Lateness of each apply (after the phase's scheduled start) and revert (after its
    scheduled end), in seconds, and the run's requests/s."""
    run = run_llmdrill(scenario(api, phases, seconds), work, phases * seconds + 180,
                       must_pass=False)
    result = json.loads((run / "result.json").read_text())
    planned = {p["name"]: (p["planned_start"], p["planned_end"]) for p in result["phases"]}
    with sqlite3.connect(run / "evidence.db") as db:
        events = [(ts, kind, json.loads(detail)) for ts, kind, detail in db.execute(
            "SELECT ts, kind, detail FROM events WHERE kind IN "
            "('fault_applied', 'fault_reverted') ORDER BY ts")]
    applies, reverts = [], []
    for i in range(phases):
        start, end = planned[f"p{i}"]
        fault = "even" if i % 2 == 0 else "odd"
        applied = [ts for ts, kind, d in events
                   if kind == "fault_applied" and d.get("fault") == fault]
        reverted = [ts for ts, kind, d in events
                    if kind == "fault_reverted" and d.get("fault") == fault]
        if not applied or not reverted:
            raise SystemExit(f"phase p{i}: no apply or revert of {fault} recorded")
        # The same fault comes back every other phase: the event nearest the schedule.
        applies.append(min(applied, key=lambda ts: abs(ts - start)) - start)
        reverts.append(min(reverted, key=lambda ts: abs(ts - end)) - end)
    stats = result["stats"]
    requests = sum(int(s.get("requests", 0)) for s in stats.values())
    return applies, reverts, requests / (phases * seconds + 1)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--short", action="store_true", help="6 phases of 0.5 s (make test)")
    args = parser.parse_args(argv)
    phases, seconds = (6, 0.5) if args.short else (20, 1.0)
    with tempfile.TemporaryDirectory(prefix="llmdrill-bench-faults-") as tmp:
        work = Path(tmp)
        with sse_stub(work / "stub"), toxiproxy(work) as api:
            adds, removes = api_floor(api, 50)
            (work / "run").mkdir()
            applies, reverts, rate = harness(api, phases, seconds, work / "run")
    print(f"fault timing: {phases} phase boundaries of {seconds:g}s, 8 users with no think "
          f"time through Toxiproxy ({rate:.0f} req/s), harness on core {CLIENT_CPU}; ms")
    print(f"{'':<40}{'p50':>9}{'p99':>9}{'max':>9}")
    for name, values in (("llmdrill: applied after schedule", applies),
                         ("llmdrill: reverted after schedule", reverts),
                         ("floor: bare add-toxic call", adds),
                         ("floor: bare remove-toxic call", removes)):
        ms = [v * 1000 for v in values]
        print(f"{name:<40}{pct(ms, .5):>9.1f}{pct(ms, .99):>9.1f}{max(ms):>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
