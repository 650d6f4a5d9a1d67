"""Run the README's first command, `make demo`, exactly as a user would, and check it.

From the repository root: the demo must exit 0 and print the path of a report that exists,
in a run folder holding every report a run writes. `make test` runs this, so the first
command a user types cannot break silently.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPECTED = ("report.html", "result.json", "junit.xml", "summary.md")
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
    if problems:
        print("demo-check FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    print(f"demo-check: `make demo` passed in {took:.0f} s; report {found[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
