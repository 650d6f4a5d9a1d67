"""Memory of a run: the RSS of every process of `llmdrill run` (the harness, Locust, the
fault watchdog) as requests pile up, and what a request costs on disk.

`llmdrill run` (core 1) drives the nginx SSE stub of load_throughput.py (core 0) with 8
users and no think time. Every 0.5 s each process of the run is read from /proc (the
harness and its descendants); printed per process: RSS at a quarter, half and three
quarters of the load, at its end, and the peak (which includes the verdict, when the
harness reads the evidence back), beside the requests done by then; then the bytes per
request of evidence.db and samples.jsonl (which a run deletes once evidence.db holds every
request; kept here to count them). The goal (the load-generation issue): every
process flat in the number of requests, at most 100 MB after a million.

    .venv/bin/python benchmarks/memory.py                  # 120 s of load
    .venv/bin/python benchmarks/memory.py --seconds 400    # about a million requests
    .venv/bin/python benchmarks/memory.py --short          # 5 s; run by make test

It exits non-zero only when the run could not be measured; figures are printed, not
judged. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from load_throughput import CLIENT_CPU, SCENARIO, USERS, _pinned, sse_stub  # noqa: E402

from llmdrill.procfs import PROC, read_proc  # noqa: E402

INTERVAL_S = 0.5
MB = 1024 * 1024


@dataclass
class Sample:
    at: float
    samples_bytes: int  # the size of samples.jsonl: requests done, in bytes
    rss: dict[str, int] = field(default_factory=dict)  # per process role, bytes


def role(argv: tuple[str, ...], pid: int, harness: int) -> str | None:
    text = " ".join(argv)
    if pid == harness:
        return "harness"
    if "locust" in text:
        return "Locust"
    if "watchdog" in text:
        return "watchdog"
    return None


def rss_bytes(pid: int) -> int:
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_processes(harness: int) -> dict[str, list[int]]:
    """The run's processes by role: the harness and its descendants (the watchdog starts a
    session of its own, but stays the harness's child)."""
    procs = [p for p in (read_proc(int(e.name)) for e in PROC.iterdir() if e.name.isdigit())
             if p is not None and not p.ended]
    children: dict[int, list[int]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p.pid)
    argv = {p.pid: p.argv for p in procs}
    found: dict[str, list[int]] = {}
    todo = [harness]
    while todo:
        pid = todo.pop()
        name = role(argv.get(pid, ()), pid, harness)
        if name:
            found.setdefault(name, []).append(pid)
        todo.extend(children.get(pid, []))
    return found


def measure(url: str, seconds: float, work: Path) -> tuple[list[Sample], Path, float, float]:
    """Runs the drill, sampling RSS; the samples, the run folder, and the load's start and
    end (epoch seconds, from the run's phase)."""
    path = work / "scenario.yaml"
    path.write_text(SCENARIO.format(url=url, users=USERS, seconds=seconds, processes=1))
    out = work / "reports"
    cmd = [sys.executable, "-m", "llmdrill.cli", "run", str(path), "--out", str(out),
           "--quiet", "--no-history", "--keep-samples"]  # kept to count, deleted by default
    log = (work / "run.log").open("wb")
    proc = subprocess.Popen(_pinned(CLIENT_CPU, cmd), stdout=log, stderr=subprocess.STDOUT)
    samples: list[Sample] = []
    deadline = time.time() + seconds + 600
    try:
        while proc.poll() is None:
            if time.time() > deadline:
                raise SystemExit("llmdrill run did not end")
            found = sorted(out.glob("*/samples.jsonl"))
            sample = Sample(time.time(), found[0].stat().st_size if found else 0)
            for name, pids in run_processes(proc.pid).items():
                sample.rss[name] = sum(rss_bytes(pid) for pid in pids)
            samples.append(sample)
            time.sleep(INTERVAL_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    runs = [p.parent for p in out.glob("*/result.json")]
    if not runs:
        raise SystemExit(f"llmdrill run wrote no result: "
                         f"{(work / 'run.log').read_text(errors='replace')[-2000:]}")
    result = json.loads((runs[0] / "result.json").read_text())
    phase = next(p for p in result["phases"] if p["name"] == "run")
    return samples, runs[0], float(phase["start"]), float(phase["end"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--short", action="store_true", help="5 s of load (make test)")
    parser.add_argument("--seconds", type=float, default=120.0, help="of load")
    args = parser.parse_args(argv)
    seconds = 5.0 if args.short else args.seconds
    with tempfile.TemporaryDirectory(prefix="llmdrill-bench-memory-") as tmp:
        work = Path(tmp)
        with sse_stub(work / "stub") as url:
            samples, run, start, end = measure(url, seconds, work)
        lines = sum(1 for _ in (run / "samples.jsonl").open("rb"))
        disk = {name: (run / name).stat().st_size for name in ("evidence.db", "samples.jsonl")}
    if not lines or not samples:
        raise SystemExit("the run recorded no request")
    per_line = disk["samples.jsonl"] / lines
    marks = [("25%", start + 0.25 * (end - start)), ("50%", start + 0.5 * (end - start)),
             ("75%", start + 0.75 * (end - start)), ("load end", end)]
    print(f"memory of a run: {USERS} users, no think time, {seconds:g}s of load, "
          f"{lines} requests, harness and Locust on core {CLIENT_CPU}; RSS in MB "
          f"(requests done by then)")
    header = "".join(f"{name:>18}" for name, _ in marks)
    print(f"{'process':<10}{header}{'peak':>10}")
    for name in ("harness", "Locust", "watchdog"):
        cells = []
        for _, at in marks:
            near = min(samples, key=lambda s: abs(s.at - at))
            done = int(near.samples_bytes / per_line)
            cells.append(f"{near.rss.get(name, 0) / MB:>8.1f} ({done:>7})")
        peak = max(s.rss.get(name, 0) for s in samples) / MB
        print(f"{name:<10}{''.join(f'{c:>18}' for c in cells)}{peak:>10.1f}")
    print(f"on disk: evidence.db {disk['evidence.db'] / lines:.0f} B/request, samples.jsonl "
          f"{per_line:.0f} B/request")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
