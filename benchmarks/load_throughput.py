"""Load generation throughput: llmdrill's load against the bare Locust it is built on.

Both drive the same stub for the same time with the same users and no think time: an
nginx that answers every streaming completion with a fixed 18-event SSE body (16 tokens, a
finish chunk, [DONE]); nginx is pinned to core 0 and serves far more than either client
can send, the clients to core 1, one after the other, as the load-generation issue's table
was measured. Printed: requests/s and SSE events/s of each, and llmdrill's ratio to raw
Locust (the goal is 1.0x or better). Raw Locust and llmdrill take turns, three rounds in
the full mode: this VM's speed drifts by ±15% from one run to the next, and the ratio
printed is the median of the rounds' own. The full mode also runs `vllm bench serve` (the
engine's own load tool, from the local stack's engine venv) against the same stub, at
concurrency 8: the goal is 2x its rate.

Then two load processes (Locust's distributed mode) on both cores: the goal is 1.8x one.
The stub has no core of its own then: it shares core 0 with the load, and what it takes
is measured (its CPU seconds from /proc over the requests it served, times the rate) and
printed beside the plain ratio, with the rate per core left to the load. Last, one load
process and two are run again with each held to half a core by a cgroup of its own
(cpu_budget.py), the stub, Locust's master and the harness outside them: the scale-out of
the load processes where nothing else is the limit, as on a machine with a core for each.

    .venv/bin/python benchmarks/load_throughput.py            # 20 s per client and round
    .venv/bin/python benchmarks/load_throughput.py --short    # 3 s each; run by make test

It exits non-zero only when a client could not run at all (a benchmark that rots fails
`make test`); slow figures are printed, not judged. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import cpu_budget  # beside this script (its folder is the first on sys.path)
import httpx

from llmdrill.model.evidence import RequestLog

HERE = Path(__file__).resolve().parent
PORT = 18190
USERS = 8
EVENTS_PER_REQUEST = 18  # 16 token chunks, the finish chunk, [DONE]
CLIENT_CPU, STUB_CPU = "1", "0"
# Each load process's CPU in the budgeted comparison: with two of them, a core is left to
# the stub, Locust's master and the harness, so none of those is the limit.
BUDGET_CORES = 0.5
STEADY_AFTER_S = 1.0
BUDGET_MIN_S = 8.0  # the short mode's 3 s would be mostly Locust starting on half a core


def sse_body() -> str:
    def chunk(text: str, finish: str | None) -> str:
        return "data: " + json.dumps({
            "id": "cmpl-bench", "object": "text_completion", "model": "tiny",
            "choices": [{"index": 0, "text": text, "finish_reason": finish}]}) + "\n\n"
    tokens = "".join(chunk(f" t{i}", None) for i in range(16))
    return tokens + chunk("", "length") + "data: [DONE]\n\n"


NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {run}/nginx.pid;
error_log stderr warn;  # the service log (benchmarks' service())
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location = /v1/models {{
            default_type application/json;
            return 200 '{{"object": "list", "data": [{{"id": "tiny", "object": "model"}}]}}';
        }}
        location /v1/ {{
            default_type text/event-stream;
            return 200 '{body}';
        }}
    }}
}}
"""


def _pinned(cpu: str, cmd: list[str]) -> list[str]:
    taskset = shutil.which("taskset")
    return [taskset, "-c", cpu, *cmd] if taskset and (os.cpu_count() or 1) > 1 else cmd


@contextmanager
def service(name: str, cmd: list[str], log: Path, ready: Callable[[], object],
            timeout: float = 20.0) -> Iterator[None]:
    """Runs cmd in a session of its own (its output to `log`) while the block runs: waits
    until `ready()` stops raising httpx.HTTPError, and stops the session (SIGTERM) at the
    end. The benchmarks' stubs and Toxiproxy all start this way."""
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + timeout
        while True:
            try:
                ready()
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"{name} did not start: "
                                     f"{log.read_text(errors='replace')[-2000:]}") from None
                time.sleep(0.1)
        yield
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)


@contextmanager
def sse_stub(run: Path) -> Iterator[str]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise SystemExit("nginx is not installed (make test installs nginx-light)")
    run.mkdir(parents=True, exist_ok=True)
    conf = run / "nginx.conf"
    conf.write_text(NGINX_CONF.format(run=run, port=PORT, body=sse_body()))
    url = f"http://127.0.0.1:{PORT}"

    def ready() -> None:
        got = httpx.post(f"{url}/v1/completions", json={}, timeout=2)
        if got.text.count("data:") != EVENTS_PER_REQUEST:
            raise SystemExit(f"the stub answers {got.text[:200]!r}")

    with service("the nginx stub", _pinned(STUB_CPU, [nginx, "-c", str(conf), "-p", str(run)]),
                 run / "nginx.log", ready):
        yield url


def stub_cpu_seconds(run: Path) -> float:
    """CPU seconds the nginx stub (master and workers) has used so far, from /proc: what
    it takes from the core it shares with a load process."""
    hz = os.sysconf("SC_CLK_TCK")
    master = (run / "nginx.pid").read_text().strip()
    total = 0.0
    for pid in (master, *Path(f"/proc/{master}/task/{master}/children").read_text().split()):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / hz  # utime, stime
    return total


@contextmanager
def stub_cpu(run: Path) -> Iterator[list[float]]:
    """The CPU seconds the stub used while the block ran (one value, set on exit)."""
    got: list[float] = []
    before = stub_cpu_seconds(run)
    yield got
    got.append(stub_cpu_seconds(run) - before)


def raw_locust(url: str, seconds: float, work: Path) -> float:
    """Requests/s of a bare FastHttpUser (Locust's own count over the run time)."""
    prefix = work / "raw"
    cmd = [sys.executable, "-m", "locust", "-f", str(HERE / "raw_locustfile.py"),
           "--headless", "-u", str(USERS), "-r", str(USERS), "-t", f"{seconds:g}s",
           "--host", url, "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "0",
           "--csv", str(prefix)]
    done = subprocess.run(_pinned(CLIENT_CPU, cmd), capture_output=True, text=True,
                          timeout=seconds + 60)
    stats = Path(f"{prefix}_stats.csv")
    if not stats.exists():
        raise SystemExit(f"raw Locust did not run: {done.stderr[-2000:]}")
    with stats.open() as f:
        total = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    if int(total["Failure Count"]):
        raise SystemExit(f"raw Locust saw {total['Failure Count']} failures")
    return int(total["Request Count"]) / seconds


SCENARIO = """\
apiVersion: llmdrill/v1
kind: Scenario
metadata: {{name: load-throughput}}
target: {{base_url: "{url}", model: tiny}}
load:
  users: {users}
  processes: {processes}
  spawn_rate: {users}
  wait: 0s
  requests:
    - {{name: bench, api: completions, stream: true, prompt_tokens: 16, max_tokens: 16}}
  retries: {{max_attempts: 1}}
phases:
  - {{name: run, duration: {seconds:g}s}}
checks:
  - {{name: served, phase: run, slo: {{error_rate: {{max: 0.0}}, min_requests: 10}}}}
"""


def llmdrill_command(scenario: str, work: Path) -> tuple[list[str], Path]:
    """The `llmdrill run` command of a scenario text (written to `work`), and the folder
    its reports go to."""
    path = work / "scenario.yaml"
    path.write_text(scenario)
    out = work / "reports"
    return [sys.executable, "-m", "llmdrill.cli", "run", str(path), "--out", str(out),
            "--quiet", "--no-history"], out


def run_llmdrill(scenario: str, work: Path, timeout: float, *, must_pass: bool = True,
                 cpus: str = CLIENT_CPU) -> Path:
    """`llmdrill run` of a scenario text on the client core; the run's folder (result.json,
    evidence.db). Exits when it wrote no result, or did not pass and `must_pass`."""
    cmd, out = llmdrill_command(scenario, work)
    done = subprocess.run(_pinned(cpus, cmd), capture_output=True, text=True,
                          timeout=timeout)
    results = list(out.glob("*/result.json"))
    if not results or (must_pass and done.returncode != 0):
        raise SystemExit(f"llmdrill run failed ({done.returncode}): "
                         f"{(done.stdout + done.stderr)[-2000:]}")
    return results[0].parent


def llmdrill_load(url: str, seconds: float, work: Path, processes: int = 1,
                  cpus: str = CLIENT_CPU) -> tuple[float, int]:
    """Requests/s of `llmdrill run` (harness and Locust on `cpus`), recording every request
    as the checks need it: requests in the phase over the phase's length; and how many
    requests the run sent in all (the load starts a moment before the phase and ends a
    moment after). With `processes` > 1, Locust's distributed mode, USERS users a worker
    process."""
    run = run_llmdrill(SCENARIO.format(url=url, users=USERS * processes, seconds=seconds,
                                       processes=processes), work, seconds + 120, cpus=cpus)
    result = json.loads((run / "result.json").read_text())
    phase = next(p for p in result["phases"] if p["name"] == "run")
    rate = int(result["stats"]["run"]["requests"]) / float(phase["end"] - phase["start"])
    return rate, len(RequestLog(run / "evidence.db"))


def steady_rate(run: Path) -> float:
    """Requests/s from the first request's start plus STEADY_AFTER_S to the end of the
    phase: the processes' start (Locust's import, workers connecting) left out, so one
    process and two are compared on the load they keep up."""
    result = json.loads((run / "result.json").read_text())
    phase = next(p for p in result["phases"] if p["name"] == "run")
    with sqlite3.connect(f"file:{run / 'evidence.db'}?mode=ro", uri=True) as db:
        (first,) = db.execute('SELECT min("start") FROM requests').fetchone()
        begin, end = float(first) + STEADY_AFTER_S, float(phase["end"])
        (count,) = db.execute('SELECT count(*) FROM requests WHERE "start" >= ? AND '
                              '"start" < ?', (begin, end)).fetchone()
    return float(count) / (end - begin)


def budgeted_load(url: str, seconds: float, work: Path, processes: int,
                  cores: float) -> tuple[float, list[float]]:
    """`llmdrill run` with each load process held to `cores` of CPU by a cgroup of its own
    (the harness, Locust's master and the stub outside them, on both cores): the steady
    requests/s, and the share of scheduling periods each budget ran out in (near 1: the
    budget, not the stub or the master, held the process back)."""
    cmd, out = llmdrill_command(SCENARIO.format(url=url, users=USERS * processes,
                                                seconds=seconds, processes=processes), work)
    with cpu_budget.budgets(f"llmdrill-bench-{os.getpid()}", processes, cores) as held:
        run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
        placed: set[int] = set()
        deadline = time.time() + 60
        while len(placed) < processes and run.poll() is None and time.time() < deadline:
            locust = [c for c in cpu_budget.children(run.pid) if "locust" in
                      cpu_budget.cmdline(c)]
            # One process: Locust itself. More: the workers Locust's master forks.
            load = locust if processes == 1 else [
                w for m in locust for w in cpu_budget.children(m)]
            for pid in load:
                if pid not in placed and len(placed) < processes:
                    held[len(placed)].add(pid)
                    placed.add(pid)
            time.sleep(0.02)
        output, _ = run.communicate(timeout=seconds + 120)
        used = [b.throttled() for b in held]
    results = list(out.glob("*/result.json"))
    if len(placed) < processes or not results or run.returncode != 0:
        raise SystemExit(f"budgeted llmdrill run failed ({run.returncode}, {len(placed)} of "
                         f"{processes} load processes placed): {output[-2000:]}")
    return steady_rate(results[0].parent), used


def vllm_bench(url: str, seconds: float, work: Path) -> float | None:
    """Requests/s of `vllm bench serve` (the engine's own load tool, from the local stack's
    engine venv) at concurrency 8 with 16-token random prompts: about as many prompts as
    it sends in `seconds`. None when the engine venv is not installed."""
    stack = Path(os.environ.get("LLMDRILL_STACK_DIR", HERE.parent / ".stack"))
    vllm, model = stack / "vllm-venv" / "bin" / "vllm", stack / "models" / "tiny"
    if not vllm.exists() or not (model / "tokenizer.json").exists():
        return None
    prompts = max(200, int(1900 * seconds))  # it ran about 1,900 req/s here
    cmd = [str(vllm), "bench", "serve", "--backend", "openai", "--base-url", url,
           "--endpoint", "/v1/completions", "--model", "tiny", "--tokenizer", str(model),
           "--dataset-name", "random", "--random-input-len", "16", "--random-output-len",
           "16", "--num-prompts", str(prompts), "--max-concurrency", str(USERS),
           "--request-rate", "inf", "--disable-tqdm"]
    done = subprocess.run(_pinned(CLIENT_CPU, cmd), capture_output=True, text=True,
                          timeout=seconds * 10 + 300, cwd=work,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
                               "DO_NOT_TRACK": "1"})
    for line in done.stdout.splitlines():
        if line.startswith("Request throughput (req/s):"):
            return float(line.split(":")[1])
    raise SystemExit(f"vllm bench serve did not report: {(done.stdout + done.stderr)[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--short", action="store_true", help="3 s per client (make test)")
    parser.add_argument("--seconds", type=float, default=20.0, help="per client")
    parser.add_argument("--no-vllm-bench", action="store_true",
                        help="leave out the `vllm bench serve` anchor (the short mode does)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="raw Locust and llmdrill run, one after the other, this many "
                             "times (the short mode: once); the medians are printed")
    args = parser.parse_args(argv)
    seconds = 3.0 if args.short else args.seconds
    rounds = 1 if args.short else max(1, args.rounds)
    raws: list[float] = []
    ourses: list[float] = []
    with tempfile.TemporaryDirectory(prefix="llmdrill-bench-") as tmp:
        work = Path(tmp)
        with sse_stub(work / "stub") as url:
            # Alternating, so a slow spell of this shared VM (±15% from one 20 s run to
            # the next) weighs on both clients, and the ratio is each round's, medianed.
            for n in range(rounds):
                (work / f"raw{n}").mkdir()
                raws.append(raw_locust(url, seconds, work / f"raw{n}"))
                (work / f"llmdrill{n}").mkdir()
                ourses.append(llmdrill_load(url, seconds, work / f"llmdrill{n}")[0])
            raw, ours = statistics.median(raws), statistics.median(ourses)
            ratio = statistics.median(o / r for o, r in zip(ourses, raws, strict=True))
            # Two load processes get both cores; the nginx stub shares core 0 with them
            # (it serves far more than both send, but not for free: what it uses of core 0
            # is measured, and the load had the rest).
            (work / "two").mkdir()
            with stub_cpu(work / "stub") as cpu:
                two, sent = llmdrill_load(url, seconds, work / "two", processes=2,
                                          cpus="0,1")
            # The stub's CPU a request, times the rate: its share of a core while the
            # load ran (it does next to nothing outside the load).
            share = cpu[0] / sent * two
            # The same, each load process held to the same CPU budget: the stub, the
            # master and the harness have a core left to them, and are not the limit.
            budgeted = None
            why_not = cpu_budget.available()
            if why_not is None:
                budgeted = []
                for n in (1, 2):
                    (work / f"budget{n}").mkdir()
                    budgeted.append(budgeted_load(url, max(seconds, BUDGET_MIN_S),
                                                  work / f"budget{n}", n, BUDGET_CORES))
            bench = None
            if not (args.short or args.no_vllm_bench):
                (work / "vllm").mkdir()
                bench = vllm_bench(url, seconds, work / "vllm")
    print(f"load throughput: {USERS} users, no think time, {seconds:g}s each, client on "
          f"core {CLIENT_CPU}, nginx SSE stub ({EVENTS_PER_REQUEST} events) on core {STUB_CPU}; "
          f"raw and llmdrill alternated {rounds} time(s), medians")
    print(f"{'client':<44}{'req/s':>10}{'events/s':>12}{'vs raw':>9}")
    rows = [("raw Locust FastHttpUser (counts events)", raw),
            ("llmdrill run (records every request)", ours)]
    if bench is not None:
        rows.append(("vllm bench serve (concurrency 8)", bench))
    for name, rate in rows:
        print(f"{name:<44}{rate:>10.0f}{rate * EVENTS_PER_REQUEST:>12.0f}{rate / raw:>8.2f}x")
    print(f"{'llmdrill run, 2 load processes (cores 0,1)':<44}{two:>10.0f}"
          f"{two * EVENTS_PER_REQUEST:>12.0f}{two / raw:>8.2f}x")
    if rounds > 1:
        print("rounds (raw, llmdrill, ratio): " + "; ".join(
            f"{r:.0f}, {o:.0f}, {o / r:.2f}x" for r, o in zip(raws, ourses, strict=True)))
    print(f"llmdrill run / raw FastHttpUser: {ratio:.2f}x (median of the rounds' ratios)")
    if bench:
        print(f"llmdrill run / vllm bench serve: {ours / bench:.2f}x")
    print(f"2 load processes / 1: {two / ours:.2f}x; the stub used {share:.2f} of core 0 "
          f"meanwhile ({cpu[0] / sent * 1e6:.0f} us a request), leaving the load "
          f"{2 - share:.2f} cores: {two / ours / (2 - share):.2f}x one process's rate per "
          "core")
    if budgeted is None:
        print(f"budgeted 1 vs 2 load processes: left out ({why_not})")
    else:
        (one_rate, one_used), (two_rate, two_used) = budgeted
        print(f"1 vs 2 load processes, each held to {BUDGET_CORES:g} core by a cgroup of its "
              "own (the stub, Locust's master and the harness outside, on both cores; "
              f"steady rate from {STEADY_AFTER_S:g}s after the first request): 1 process "
              f"{one_rate:.0f} req/s (throttled in {one_used[0]:.0%} of periods), 2 "
              f"processes {two_rate:.0f} req/s (throttled in "
              f"{', '.join(f'{u:.0%}' for u in two_used)}): {two_rate / one_rate:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
