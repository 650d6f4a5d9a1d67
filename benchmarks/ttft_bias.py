"""TTFT measurement fidelity: what each client measures against a stub whose first token
comes 50 ms after the request.

The stub (delayed_sse_stub.py, pinned to core 0) answers every streaming completion with
its headers at once, a first token event 50 ms after the request reached its socket (the
kernel's arrival stamp), then 19 more every 50 ms (streams of about a second, so 256 users
hold 256 streams open). It records the delay it actually achieved per request, arrival
stamp to first event sent, and tags each response with an x-request-id. Three clients on
core 1, one after the other, at 8 and at 256 concurrent streams: `llmdrill run` (its
recorded TTFT per request), a bare Locust FastHttpUser timing its own first `data:` bytes,
and an aiohttp client doing the same. Printed per client: TTFT minus 50 ms (p50, p99,
max), and the client's own error: TTFT minus the delay the stub achieved for that very
request (p50, p99), which leaves out the stub's own lateness (tens of microseconds; more
when many streams are due at once).

    .venv/bin/python benchmarks/ttft_bias.py            # 15 s per client and concurrency
    .venv/bin/python benchmarks/ttft_bias.py --short    # 3 s each; run by make test

It exits non-zero only when a client could not run at all or measured nothing; the
figures are printed, not judged. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from load_throughput import CLIENT_CPU, STUB_CPU, _pinned, run_llmdrill, service  # noqa: E402

from llmdrill.model.evidence import RequestLog  # noqa: E402

PORT = 18191
DELAY_MS = 50.0
TOKENS = 20
CONCURRENCY = (8, 256)

Pairs = dict[str, int]  # request id -> microseconds


def read_pairs(path: Path) -> Pairs:
    pairs: Pairs = {}
    if path.exists():
        for line in path.read_text().splitlines():
            rid, _, value = line.partition(" ")
            if value:
                pairs[rid] = int(value)
    return pairs


@contextmanager
def delayed_stub(work: Path, log: Path) -> Iterator[str]:
    cmd = [sys.executable, str(HERE / "delayed_sse_stub.py"), "--port", str(PORT),
           "--delay-ms", str(DELAY_MS), "--tokens", str(TOKENS), "--log", str(log)]
    url = f"http://127.0.0.1:{PORT}"
    with service("the delayed stub", _pinned(STUB_CPU, cmd), work / "stub.out",
                 lambda: httpx.get(f"{url}/v1/models", timeout=2).raise_for_status()):
        yield url


def raw_locust(url: str, users: int, seconds: float, work: Path) -> Pairs:
    log = work / "locust.ttft"
    cmd = [sys.executable, "-m", "locust", "-f", str(HERE / "ttft_locustfile.py"),
           "--headless", "-u", str(users), "-r", str(users), "-t", f"{seconds:g}s",
           "--host", url, "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "5"]
    done = subprocess.run(_pinned(CLIENT_CPU, cmd), capture_output=True, text=True,
                          timeout=seconds + 90, env={**os.environ, "TTFT_LOG": str(log)})
    pairs = read_pairs(log)
    if not pairs:
        raise SystemExit(f"raw Locust measured nothing: {done.stderr[-2000:]}")
    return pairs


async def _aiohttp_run(url: str, users: int, seconds: float) -> Pairs:
    import aiohttp

    body = {"model": "tiny", "prompt": "x " * 16, "max_tokens": TOKENS, "stream": True}
    seen: Pairs = {}
    stop_at = time.perf_counter() + seconds

    async def user(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            first = None
            async with session.post(f"{url}/v1/completions", json=body) as resp:
                rid = resp.headers.get("x-request-id")
                async for line in resp.content:
                    if first is None and line.startswith(b"data:"):
                        first = time.perf_counter()
            if first is not None and rid:
                seen[rid] = round((first - started) * 1e6)

    connector = aiohttp.TCPConnector(limit=users)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(user(session) for _ in range(users)))
    return seen


def aiohttp_client(url: str, users: int, seconds: float, work: Path) -> Pairs:
    """In a process of its own on the client core, as the others."""
    log = work / "aiohttp.ttft"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--aiohttp-client", url,
           str(users), str(seconds), str(log)]
    done = subprocess.run(_pinned(CLIENT_CPU, cmd), capture_output=True, text=True,
                          timeout=seconds + 90)
    pairs = read_pairs(log)
    if not pairs:
        raise SystemExit(f"the aiohttp client measured nothing: {done.stderr[-2000:]}")
    return pairs


SCENARIO = """\
apiVersion: llmdrill/v1
kind: Scenario
metadata: {{name: ttft-bias}}
target: {{base_url: "{url}", model: tiny}}
load:
  users: {users}
  spawn_rate: {users}
  wait: 0s
  requests:
    - {{name: bench, api: completions, stream: true, prompt_tokens: 16, max_tokens: {tokens}}}
  retries: {{max_attempts: 1}}
phases:
  - {{name: run, duration: {seconds:g}s}}
checks:
  - {{name: served, phase: run, slo: {{error_rate: {{max: 0.0}}, min_requests: 5}}}}
"""


def llmdrill_client(url: str, users: int, seconds: float, work: Path) -> Pairs:
    """`llmdrill run`'s own per-request TTFT, as its checks read it (evidence.db)."""
    run = run_llmdrill(SCENARIO.format(url=url, users=users, seconds=seconds, tokens=TOKENS),
                       work, seconds + 180)
    pairs: Pairs = {}
    for record in RequestLog(run / "evidence.db"):
        if record.ok and record.ttft is not None and record.request_id:
            pairs[record.request_id] = round(record.ttft * 1e6)
    if not pairs:
        raise SystemExit("llmdrill recorded no TTFT")
    return pairs


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def row(name: str, client: Pairs, stub: Pairs) -> str:
    joined = [(us, stub[rid]) for rid, us in client.items() if rid in stub]
    if not joined:
        raise SystemExit(f"{name}: no request of its matched the stub's log")
    over = [(us - DELAY_MS * 1000) / 1000 for us, _ in joined]  # ms
    own = [(us - achieved) / 1000 for us, achieved in joined]
    late = [(achieved - DELAY_MS * 1000) / 1000 for _, achieved in joined]
    return (f"{name:<34}{len(joined):>7}{pct(over, .5):>9.2f}{pct(over, .99):>9.2f}"
            f"{max(over):>9.2f}{pct(own, .5):>9.2f}{pct(own, .99):>9.2f}{pct(late, .99):>10.2f}")


CLIENTS = (("llmdrill run (recorded TTFT)", llmdrill_client),
           ("raw Locust FastHttpUser", raw_locust),
           ("aiohttp client", aiohttp_client))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--short", action="store_true", help="3 s per run (make test)")
    parser.add_argument("--seconds", type=float, default=15.0, help="per client and level")
    parser.add_argument("--aiohttp-client", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.aiohttp_client:
        url, users, seconds, log = args.aiohttp_client
        pairs = asyncio.run(_aiohttp_run(url, int(users), float(seconds)))
        Path(log).write_text("".join(f"{rid} {us}\n" for rid, us in pairs.items()))
        return 0
    seconds = 3.0 if args.short else args.seconds
    lines = []
    with tempfile.TemporaryDirectory(prefix="llmdrill-bench-ttft-") as tmp:
        for users in CONCURRENCY:
            for index, (name, client) in enumerate(CLIENTS):
                work = Path(tmp) / f"{users}-{index}"
                work.mkdir()
                stub_log = work / "stub.ttft"
                with delayed_stub(work, stub_log) as url:
                    measured = client(url, users, seconds, work)
                lines.append((users, row(name, measured, read_pairs(stub_log))))
    print(f"TTFT fidelity: stub's first token {DELAY_MS:g} ms after the request, {TOKENS} "
          f"events a stream; {seconds:g}s per run; clients on core {CLIENT_CPU}, stub on "
          f"core {STUB_CPU}; milliseconds")
    header = (f"{'client':<34}{'n':>7}{'-50 p50':>9}{'-50 p99':>9}{'-50 max':>9}"
              f"{'own p50':>9}{'own p99':>9}{'stub p99':>10}")
    for users in CONCURRENCY:
        print(f"\n{users} concurrent streams")
        print(header)
        for level, text in lines:
            if level == users:
                print(text)
    print("\n-50: TTFT minus 50 ms. own: TTFT minus the delay the stub achieved for that "
          "request (the client's own error). stub: how late the stub's timer was.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
