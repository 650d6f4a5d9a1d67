"""CPU budgets for the benchmarks: a cgroup per load process, holding it to the same share
of a core, so one process and two can be compared where neither the stub nor the master
is the limit (on this 2-core machine the stub would otherwise share a core with a worker).

Linux only, as root (the benchmarks run from `make test` as root). cgroup v2 (`cpu.max`)
or v1 (`cpu.cfs_quota_us`), whichever the machine mounts; `available()` says why not when
neither can be used, and the benchmark then leaves the budgeted comparison out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PERIOD_US = 100_000
V2_ROOT = Path("/sys/fs/cgroup")
V1_ROOT = Path("/sys/fs/cgroup/cpu")


def _root() -> tuple[Path, int] | None:
    if (V2_ROOT / "cgroup.controllers").exists():
        if "cpu" in (V2_ROOT / "cgroup.controllers").read_text().split():
            return V2_ROOT, 2
        return None
    if (V1_ROOT / "cpu.cfs_quota_us").exists():
        return V1_ROOT, 1
    return None


def available() -> str | None:
    """None when budgets can be set here, else why not."""
    if _root() is None:
        return "no cgroup cpu controller mounted"
    if os.geteuid() != 0:
        return "not root (cgroups need it)"
    return None


class Budget:
    """One cgroup: at most `cores` of CPU time (a fraction of a core is fine)."""

    def __init__(self, name: str, cores: float) -> None:
        found = _root()
        if found is None:
            raise RuntimeError("no cgroup cpu controller")
        root, self.version = found
        if self.version == 2:
            # The cpu controller must be on for the root's children.
            control = root / "cgroup.subtree_control"
            if "cpu" not in control.read_text().split():
                control.write_text("+cpu")
        self.path = root / name
        self.path.mkdir(exist_ok=True)
        quota = int(cores * PERIOD_US)
        if self.version == 2:
            (self.path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))

    def add(self, pid: int) -> None:
        """Moves the process, every thread of it, into the budget."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def throttled(self) -> float:
        """The share of its scheduling periods in which the budget ran out (from cpu.stat,
        v1 and v2 alike): near 1, the budget was what held its processes back."""
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines()
                    if len(line.split()) == 2)
        periods = int(stat.get("nr_periods", 0))
        return int(stat.get("nr_throttled", 0)) / periods if periods else 0.0

    def remove(self) -> None:
        for _ in range(50):  # the processes in it have exited, or are about to
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


@contextmanager
def budgets(prefix: str, count: int, cores: float) -> Iterator[list[Budget]]:
    made = [Budget(f"{prefix}-{i}", cores) for i in range(count)]
    try:
        yield made
    finally:
        for budget in made:
            budget.remove()


def children(pid: int) -> list[int]:
    """The direct children of a process, from /proc."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
