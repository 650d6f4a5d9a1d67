"""Run the README's first command, `make demo`, exactly as a user would, and check it.

From the repository root: the demo must exit 0 and print the path of a report that exists,
in a run folder holding every report a run writes. `make test` runs this, so the first
command a user types cannot break silently.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
EXPECTED = ("report.html", "result.json", "junit.xml", "summary.md")
RUN_FILES = (*EXPECTED, "evidence.db", "journal.jsonl")
TOXIPROXY = os.environ.get("LLMDRILL_TOXIPROXY_URL", "http://127.0.0.1:18474")


def spike_problems(reports: Path) -> list[str]:
    """The demo's timeout-spike run, read as the integration tests read a drill: it passed
    on the healthy stack, and for the right reasons (the spike reached the traffic, was
    reverted, left no toxic; the evidence and the suite's JUnit are complete)."""
    runs = sorted(reports.glob("*-timeout-spike"))
    if not runs:
        return [f"no timeout-spike run in {reports}"]
    run = runs[-1]
    result = json.loads((run / "result.json").read_text())
    stats = result.get("stats", {})
    fault = (result.get("faults") or [{}])[0]
    problems = [what for what, bad in [
        (f"timeout-spike status {result.get('status')}", result.get("status") != "passed"),
        ("result schema", result.get("schema") != "llmdrill.result/v1"),
        ("no engine version", not result.get("versions", {}).get("engine")),
        ("a check did not pass", {c["status"] for c in result["checks"]} != {"passed"}),
        # The spike really happened: TTFT in it well above the baseline's.
        ("the spike did not show in TTFT", stats.get("spike", {}).get("ttft_p95_s", 0)
         <= stats.get("baseline", {}).get("ttft_p95_s", 0) + 1),
        ("too few baseline requests", stats.get("baseline", {}).get("requests", 0) <= 20),
        ("the spike was not applied and reverted cleanly", not (
            fault.get("applied_at") and fault.get("reverted_at")) or fault.get("revert_error")),
        ("no KV cache series", not result.get("series", {}).get("engine", {}).get(
            "kv_cache_usage")),
    ] if bad]
    problems += [f"{run.name} lacks {name}" for name in RUN_FILES if not (run / name).exists()]
    suite = ET.parse(reports / "junit.xml").getroot()
    names = {c.get("name") for c in suite.iter("testcase")}
    missing = [c["name"] for c in result["checks"] if not any(c["name"] in (n or "")
                                                               for n in names)]
    if missing:
        problems.append(f"the suite's JUnit lacks {', '.join(missing)}")
    try:
        proxies = httpx.get(f"{TOXIPROXY}/proxies", timeout=10).json()
        left = [name for name, p in proxies.items() if p.get("toxics")]
        if left:
            problems.append(f"toxics left behind on {', '.join(left)}")
    except (httpx.HTTPError, ValueError) as exc:
        problems.append(f"Toxiproxy at {TOXIPROXY} did not answer: {exc}")
    return problems
TIMEOUT_S = 1800


def main() -> int:
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    try:
        proc = subprocess.run(["make", "demo"], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"demo-check: `make demo` did not finish in {TIMEOUT_S} s", file=sys.stderr)
        return 1
    print(proc.stdout, end="")
    took = time.monotonic() - started
    problems = []
    if proc.returncode != 0:
        problems.append(f"`make demo` exited {proc.returncode}")
    found = re.findall(r"^Reports: (\S+)$", proc.stdout, re.MULTILINE)
    if not found:
        problems.append("`make demo` printed no 'Reports: <path>' line")
    else:
        report = Path(found[-1])
        if not report.is_file():
            problems.append(f"the printed report {report} does not exist")
        missing = [name for name in EXPECTED if not (report.parent / name).is_file()]
        if missing:
            problems.append(f"{report.parent} lacks {', '.join(missing)}")
        if report.is_file():
            problems += spike_problems(report.parent.parent)
    if problems:
        print("demo-check FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    print(f"demo-check: `make demo` passed in {took:.0f} s; report {found[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
