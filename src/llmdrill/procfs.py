"""Processes as /proc shows them: who runs in a process group, in what state, since when.

Shared by the stack (is a service's group still running?) and the `process` fault backend
(what to signal, and whether the signal took). A pid with its start time names one process
for good: the kernel may give the pid to another process later.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
COMM_LEN = 15  # the kernel truncates a process's name (comm) to 15 characters
GONE = "gone"  # a process's state once it ended (or became a zombie)


@dataclass(frozen=True, slots=True)
class Proc:
    pid: int
    start: int  # clock ticks after boot; with the pid, it names one process for good
    state: str  # R, S, D, T (stopped), t, Z (zombie), ...
    ppid: int
    pgrp: int
    comm: str
    argv: tuple[str, ...]

    @property
    def name(self) -> str:
        """The process's name: its comm, or argv[0] when comm is argv[0] cut at 15
        characters (vLLM's `VLLM::EngineCore` title shows as `VLLM::EngineCor`)."""
        first = os.path.basename(self.argv[0]) if self.argv else ""
        if len(self.comm) >= COMM_LEN and first.startswith(self.comm):
            return first
        return self.comm

    @property
    def ended(self) -> bool:
        return self.state in ("Z", "X")

    def matches(self, text: str) -> bool:
        return text in self.comm or text in self.name or text in " ".join(self.argv)


def read_proc(pid: int, root: Path = PROC) -> Proc | None:
    """The process with this pid, or None when there is none."""
    try:
        stat = (root / str(pid) / "stat").read_text(errors="replace")
    except OSError:
        return None
    head, _, rest = stat.rpartition(")")
    fields = rest.split()
    if len(fields) < 20:
        return None
    try:
        argv = (root / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        argv = []
    return Proc(pid=pid, start=int(fields[19]), state=fields[0], ppid=int(fields[1]),
                pgrp=int(fields[2]), comm=head.partition("(")[2],
                argv=tuple(a.decode(errors="replace") for a in argv if a))


def running(pid: int, start: int, root: Path = PROC) -> Proc | None:
    """The process if it still runs (a zombie has ended) and is the one recorded."""
    proc = read_proc(pid, root)
    if proc is None or proc.ended or proc.start != start:
        return None
    return proc


def group_members(pgid: int, root: Path = PROC) -> list[Proc]:
    """The processes of a group that still run, by pid."""
    found = []
    for entry in root.iterdir():
        if entry.name.isdigit():
            proc = read_proc(int(entry.name), root)
            if proc is not None and proc.pgrp == pgid and not proc.ended:
                found.append(proc)
    return sorted(found, key=lambda p: p.pid)


def lineage(root: Path = PROC) -> dict[int, str]:
    """This process and its ancestors up to pid 1, by pid: signalling any of them would
    end the drill itself."""
    found: dict[int, str] = {1: "init"}
    pid = os.getpid()
    while pid > 1 and pid not in found:
        proc = read_proc(pid, root)
        found[pid] = proc.name if proc else "?"
        pid = proc.ppid if proc else 1
    return found


def state_of(pid: int, start: int, root: Path = PROC) -> str:
    proc = running(pid, start, root)
    return GONE if proc is None else proc.state


