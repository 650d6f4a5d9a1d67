"""Process faults: a server run as local processes (the local stack's vLLM replicas) sent a
signal through its pid file: killed (SIGKILL, SIGTERM, ...), hung (SIGSTOP: its port still
accepts connections, nothing answers) or sent any other signal (SIGHUP, SIGUSR1).

The pid file names a process that leads its process group (a service started in a session
of its own, as the stacks start theirs). The fault reaches the whole group (vLLM: the API
server, `VLLM::EngineCore` and its worker), that process alone, or those of the group's
processes whose name matches (the engine dead, the API server alive).

Like every fault, the way back is computed and journaled before the change: a plain JSON
action (`ProcessRevert`) that `llmdrill cleanup` or the watchdog, in another process maybe
after a kill -9 of the harness, can carry out alone. Every process is recorded with its
start time (/proc/PID/stat), so a pid the kernel has since given to another process is
never signalled:
- a stop signal (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU) -> SIGCONT to the recorded processes
  still there;
- a signal that ends processes (SIGKILL, SIGTERM, SIGINT, SIGQUIT, SIGABRT, SIGSEGV, ...)
  -> what is left of the group is ended (SIGTERM, SIGKILL after a grace: an API server
  that outlived its engine would keep the restart from starting a new one), then the
  scenario's `restart` command is run (no shell, in a session of its own, bounded by
  `restart_timeout`, its output in a log beside the journal);
- any other signal -> nothing; or, when a `restart` is given and a recorded process has
  ended since (SIGHUP's default is to end), the same as above.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from signal import Signals
from typing import IO, TYPE_CHECKING, Annotated, Any, Literal, Required, TypedDict

from pydantic import Field, field_validator, model_validator

from llmdrill.faults.base import (
    EnvironmentProblem,
    baseline_before,
    cut_or_retried,
    fault_window,
    parse_signal,
    share_text,
)
from llmdrill.model.verdict import FaultEffect
from llmdrill.plugin import FaultBackend
from llmdrill.procfs import (
    GONE,
    PROC,
    Proc,
    group_members,
    lineage,
    read_proc,
    running,
    state_of,
)
from llmdrill.scenario.fields import Strict
from llmdrill.scenario.units import Duration

if TYPE_CHECKING:
    from llmdrill.model.context import RunContext
    from llmdrill.model.records import Evidence


BACKEND = "process"

# Signals whose default action stops a process: reverted with SIGCONT.
STOP_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})
# Signals sent to end a process (a crash, a kill, a shutdown): reverted with `restart`.
# SIGHUP, SIGUSR1, SIGALRM... end a process by default too, but servers commonly handle
# them (reload, dump state): they count as "other" and need no `restart`.
ENDING_SIGNALS = frozenset({
    signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGABRT,
    signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGTRAP,
    signal.SIGSYS})
# The kernel discards these for a process group with no parent in its session (a service
# started in a session of its own): only SIGSTOP stops such a server.
TERMINAL_STOP_SIGNALS = frozenset({signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})

SignalKind = Literal["stop", "end", "other"]


def signal_kind(sig: Signals) -> SignalKind:
    if sig in STOP_SIGNALS:
        return "stop"
    return "end" if sig in ENDING_SIGNALS else "other"


# --- the spec: the YAML under this key ----------------------------------------


def _argv_item(value: Any) -> Any:
    # `--replicas, 2` in YAML is a number; an argv item is its text.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


class ProcessFault(Strict):
    """A signal sent to a server run as local processes, found through its pid file; a
    stop is reverted with SIGCONT, an ending signal by running `restart`."""

    pidfile: str = Field(
        description="The pid file of the server (e.g. the local stack's "
        "`.stack/run/replica-0.pid`); a relative path is relative to the scenario file's "
        "folder. Its process must run and, unless scope is `process`, lead its process "
        "group (a service started in a session of its own).",
    )
    signal: str | int = Field(
        default="SIGKILL",
        description="The signal sent, by name (SIGKILL, TERM) or number (9). SIGSTOP "
        "hangs the server (its port still accepts connections; nothing answers) until "
        "the revert's SIGCONT; SIGKILL, SIGTERM, SIGINT, SIGQUIT, SIGABRT, SIGSEGV, ... "
        "end it and need `restart`; others (SIGHUP, SIGUSR1) are only sent.",
    )
    scope: Literal["group", "process"] = Field(
        default="group",
        description="`group`: every process of the group the pid file's process leads; "
        "`process`: that process alone.",
    )
    match: str | None = Field(
        default=None,
        description="Only the processes of the group whose name (comm) or command line "
        "contains this text, e.g. `VLLM::EngineCore` (the engine dies, the API server "
        "lives on). With scope `group`.",
    )
    restart: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None,
        min_length=1,
        description="How to bring the server back, run by the revert after a signal that "
        "ended processes: an argv list, run without a shell, in the harness's working "
        "folder (`llmdrill` as the first item runs this llmdrill: `python -m llmdrill`). "
        "It must be idempotent (`llmdrill up` is): a retried revert runs it again.",
    )
    restart_timeout: Duration = Field(
        default=300.0, description="Longest the restart command may take.")

    @field_validator("restart", mode="before")
    @classmethod
    def _argv(cls, value: Any) -> Any:
        return [_argv_item(v) for v in value] if isinstance(value, list) else value

    @field_validator("signal")
    @classmethod
    def _signal(cls, value: str | int) -> str:
        try:
            return parse_signal(str(value)).name
        except ValueError:
            raise ValueError(f"unknown signal '{value}' (a name like SIGKILL or a number "
                             "like 9)") from None

    @model_validator(mode="after")
    def _needs(self) -> ProcessFault:
        if not self.pidfile.strip():
            raise ValueError("pidfile is empty")
        if self.match is not None and not self.match:
            raise ValueError("match is empty: give text the process names contain")
        if self.match is not None and self.scope == "process":
            raise ValueError("match picks among the processes of the group; it goes with "
                             "scope: group (the default)")
        if self.restart_timeout <= 0:
            raise ValueError("restart_timeout must be more than 0s")
        kind = signal_kind(self.signum)
        if kind == "end" and self.restart is None:
            raise ValueError(
                f"a {self.signal} cannot be undone without `restart`: give the command that "
                "brings the server back, run when the fault is reverted (an argv list, e.g. "
                "restart: [llmdrill, up])")
        if kind == "stop" and self.restart is not None:
            raise ValueError(f"restart is not used with {self.signal}: its revert sends "
                             "SIGCONT to the stopped processes")
        return self

    @property
    def signum(self) -> Signals:
        return parse_signal(str(self.signal))


RevertOp = Literal["cont", "restart", "restart_if_gone", "none"]


class ProcessRevert(TypedDict, total=False):
    """The journal's way back from a process fault. Processes are keyed by pid (as text)
    with their start time (clock ticks since boot, /proc/PID/stat): the pair names one
    process for good, where a pid alone may be reused."""

    backend: Required[str]
    op: Required[RevertOp]
    signal: Required[str]  # the signal sent, by name
    pidfile: Required[str]
    pgid: Required[int]  # the group the pid file's process leads
    scope: Required[str]  # group or process
    match: str | None
    pids: Required[dict[str, int]]  # the processes signalled: pid -> start time
    group: dict[str, int]  # the whole group when it was found: ended before a restart
    names: dict[str, str]  # pid -> name, for messages
    restart: list[str]  # the command as the scenario gives it
    cwd: str  # where it runs: the harness's working folder
    restart_timeout: float
    # How long the whole revert may take (leftovers stopped, then the restart): the runner
    # journals it so the watchdog does not start a second restart meanwhile.
    revert_timeout: float
    log: str  # the restart's output, beside the journal


SIGNAL_EVENT = "process_signal"  # apply sent the signal: fault, signal, pgid, sent, names, ...
STATE_EVENT = "process_state"  # the processes read back after it: fault, when, states
WATCH_S = {"end": 5.0, "stop": 2.0, "other": 0.5}  # how long apply watches the signal act
POLL_S = 0.05
LEFTOVER_GRACE_S = 10.0  # revert: SIGTERM to what is left of the group, then SIGKILL
KILL_WAIT_S = 5.0
TAIL_CHARS = 1500
SHOWN_NAMES = 3


def names_text(names: list[str]) -> str:
    shown = names[:SHOWN_NAMES] + (["..."] if len(names) > SHOWN_NAMES else [])
    return ", ".join(shown)


def shown_path(path: str) -> str:
    """A path as a reader finds it: relative to the working folder when inside it."""
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(Path.cwd()))
    return path


# --- finding the targets -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Found:
    leader: Proc  # the pid file's process
    group: list[Proc]  # every process of the group it leads (or it alone)
    targets: list[Proc]  # those the signal is sent to


def read_pidfile(path: Path) -> int:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise EnvironmentProblem(f"pid file {path} does not exist: is the server "
                                 "started?") from None
    except OSError as exc:
        raise EnvironmentProblem(f"cannot read pid file {path}: {exc}") from None
    if not text.isdigit():
        raise EnvironmentProblem(f"pid file {path} does not hold a pid ({text[:40]!r})")
    return int(text)


def find_targets(spec: ProcessFault, pidfile: Path, root: Path = PROC) -> Found:
    """The processes the fault acts on, or EnvironmentProblem saying why it must not."""
    pid = read_pidfile(pidfile)
    if pid <= 1:
        raise EnvironmentProblem(f"pid file {pidfile} names pid {pid}: refused (that is "
                                 "the system's init, or every process of a group)")
    leader = read_proc(pid, root)
    if leader is None or leader.ended:
        raise EnvironmentProblem(f"the process of pid file {pidfile} (pid {pid}) is not "
                                 "running: is the server started?")
    leads = leader.pgrp == pid
    if spec.scope == "group" and not leads:
        raise EnvironmentProblem(
            f"pid {pid} ({leader.name}) of pid file {pidfile} does not lead its process "
            f"group ({leader.pgrp}): use scope: process, or start the server in a session "
            "of its own")
    # The group is recorded with scope process too: killing an API server alone leaves
    # its engine behind, which the revert ends before the restart.
    group = group_members(pid, root) if leads else [leader]
    if spec.scope == "process":
        targets = [leader]
    else:
        targets = group if spec.match is None else [p for p in group if p.matches(spec.match)]
    if not targets:
        listed = ", ".join(f"{p.name} ({p.pid})" for p in group)
        raise EnvironmentProblem(f"no process of group {pid} (pid file {pidfile}) has "
                                 f"'{spec.match}' in its name or command line; its "
                                 f"processes: {listed}")
    # The whole group, whatever is signalled: an ending signal's revert ends the rest.
    ours = lineage(root)
    for proc in group:
        if proc.pid in ours:
            raise EnvironmentProblem(
                f"pid file {pidfile} leads to pid {proc.pid} ({ours[proc.pid]}), which is "
                "this harness or one of its parents: signalling it would end the drill "
                "itself")
        with contextlib.suppress(ProcessLookupError):
            try:
                os.kill(proc.pid, 0)
            except PermissionError:
                raise EnvironmentProblem(
                    f"not allowed to signal pid {proc.pid} ({proc.name}) of pid file "
                    f"{pidfile}: it belongs to another user") from None
    return Found(leader, group, targets)


def restart_argv(command: list[str]) -> list[str]:
    """The restart command as run: `llmdrill` is this llmdrill (`python -m llmdrill`), so
    it runs where the venv's bin is not on PATH (the watchdog, a cleanup from cron)."""
    if command and command[0] == "llmdrill":
        return [sys.executable, "-m", "llmdrill", *command[1:]]
    return list(command)


def restart_problem(command: list[str], cwd: str) -> str | None:
    """Why the restart command could not be started from `cwd`, or None."""
    first = command[0]
    if first == "llmdrill":
        return None  # this very package, run by this interpreter
    if os.sep in first:
        path = Path(cwd) / first
        return None if os.access(path, os.X_OK) and path.is_file() else (
            f"the restart command {first} is not an executable file (from {cwd})")
    return None if shutil.which(first) else f"the restart command '{first}' is not on PATH"


def revert_op(spec: ProcessFault) -> RevertOp:
    kind = signal_kind(spec.signum)
    if kind == "stop":
        return "cont"
    if kind == "end":
        return "restart"
    return "none" if spec.restart is None else "restart_if_gone"


def revert_action(spec: ProcessFault, pidfile: str, found: Found, cwd: str,
                  log: str | None) -> ProcessRevert:
    """The journal's way back for `spec` sent to what `find_targets` found."""
    action = ProcessRevert(
        backend=BACKEND, op=revert_op(spec), signal=spec.signum.name, pidfile=pidfile,
        pgid=found.leader.pgrp,
        scope=spec.scope, match=spec.match,
        pids={str(p.pid): p.start for p in found.targets},
        group={str(p.pid): p.start for p in found.group},
        names={str(p.pid): p.name for p in found.group},
    )
    if spec.restart is not None:
        action["restart"] = list(spec.restart)
        action["cwd"] = cwd
        action["restart_timeout"] = spec.restart_timeout
        action["revert_timeout"] = spec.restart_timeout + LEFTOVER_GRACE_S + 5.0
        if log is not None:
            action["log"] = log
    return action


def describe_found(spec: ProcessFault, pidfile: str, found: Found | None) -> str:
    sig, where = spec.signum.name, f"from {shown_path(pidfile)}"
    if found is None:
        what = ("the process group led by" if spec.scope == "group" else "the process of")
        text = f"{sig} to {what} the pid in {shown_path(pidfile)}"
        return text + (f" (its processes matching '{spec.match}')" if spec.match else "")
    names = [p.name for p in found.targets]
    count = f"{len(names)} process{'es' if len(names) != 1 else ''}"
    if spec.scope == "process":
        return f"{sig} to process {found.leader.pid} ({found.leader.name}) {where}"
    if spec.match is not None:
        return (f"{sig} to the processes of group {found.leader.pid} matching "
                f"'{spec.match}' ({count}: {names_text(names)}) {where}")
    return f"{sig} to process group {found.leader.pid} ({count}: {names_text(names)}) {where}"


# --- the injector --------------------------------------------------------------------------


class ProcessInjector:
    backend = BACKEND

    def __init__(self, ctx: RunContext, fault_name: str, spec: ProcessFault) -> None:
        self.ctx = ctx
        self.fault_name = fault_name
        self.spec = spec
        self.pidfile = os.path.abspath(Path(spec.pidfile).expanduser())
        self._found: Found | None = None
        self._sent: list[Proc] = []
        self._began = 0.0  # when the signal was sent
        self._watcher: threading.Thread | None = None
        self._prepared = 0

    def describe(self) -> str:
        return describe_found(self.spec, self.pidfile, self._found)

    def preflight(self) -> list[str]:
        found = find_targets(self.spec, Path(self.pidfile))
        lines = [f"process: {describe_found(self.spec, self.pidfile, found)}"]
        for proc in found.targets:
            lines.append(f"  target pid {proc.pid} {proc.name} (state {proc.state})")
        if self.spec.restart is not None:
            cwd = os.getcwd()
            problem = restart_problem(self.spec.restart, cwd)
            if problem is not None:
                raise EnvironmentProblem(f"{problem}; fault '{self.fault_name}' (pid file "
                                         f"{self.pidfile}) could not be reverted")
            lines.append(f"  revert: `{' '.join(self.spec.restart)}` (in {cwd}, within "
                         f"{self.spec.restart_timeout:g}s)")
        elif revert_op(self.spec) == "cont":
            lines.append("  revert: SIGCONT")
        if self.spec.signum in TERMINAL_STOP_SIGNALS and found.leader.pgrp == found.leader.pid:
            lines.append(f"  note: the kernel discards {self.spec.signum.name} for a group "
                         "with no parent in its session (a service started in a session of "
                         "its own); SIGSTOP always stops")
        return lines

    def prepare(self) -> ProcessRevert:
        # Found again: what preflight saw may have changed since.
        self._found = find_targets(self.spec, Path(self.pidfile))
        self._prepared += 1
        log = None
        if self.spec.restart is not None:
            # One log per application (a fault applied in two phases is reverted twice).
            log = str(self.ctx.run_dir.absolute()
                      / f"restart-{self.fault_name}-{self._prepared}.log")
        return revert_action(self.spec, self.pidfile, self._found, os.getcwd(), log)

    def apply(self) -> None:
        found = self._found
        if found is None:
            raise RuntimeError("apply() before prepare()")
        sig = self.spec.signum
        began = time.time()
        sent, ended = deliver(sig, found, whole_group=self.spec.scope == "group"
                              and self.spec.match is None)
        self._sent, self._began = sent, began
        store = self.ctx.store
        if store is not None:
            store.add_event(began, SIGNAL_EVENT, {
                "fault": self.fault_name, "signal": sig.name, "pidfile": self.pidfile,
                "pgid": found.leader.pgrp, "scope": self.spec.scope, "match": self.spec.match,
                "sent": [p.pid for p in sent], "ended_before": [p.pid for p in ended],
                "names": {str(p.pid): p.name for p in found.group}})
        if not sent:
            raise EnvironmentProblem(f"the processes of pid file {self.pidfile} ended before "
                                     f"the {sig.name} could be sent")
        # Watched beside the run, not here: the journal's `applied` (the fault's time in
        # every check) is the moment of the signal, not of the last process ending (a
        # server that drains at SIGTERM takes seconds to exit).
        self._watcher = threading.Thread(target=self._watch, args=(signal_kind(sig),),
                                         name=f"watch-{self.fault_name}", daemon=True)
        self._watcher.start()

    def _watch(self, kind: SignalKind) -> None:
        """Reads the processes back until the signal has acted on all of them (ended, or
        stopped) or a few seconds passed, and records what it saw: the fault's evidence."""
        deadline = self._began + WATCH_S[kind]
        while True:
            states = {p.pid: state_of(p.pid, p.start) for p in self._sent}
            if time.time() >= deadline or settled(kind, list(states.values())):
                break
            time.sleep(POLL_S)
        self._record(states, "after_signal")

    def _record(self, states: dict[int, str], when: str) -> None:
        store = self.ctx.store
        if store is not None:
            now = time.time()
            store.add_event(now, STATE_EVENT, {
                "fault": self.fault_name, "when": when, "after_s": round(now - self._began, 3),
                "states": {str(pid): s for pid, s in states.items()}})

    def stop(self, timeout: float = 30.0) -> None:
        """Nothing runs here; the processes are read back once more at the fault's end (a
        server that drains before it obeys SIGTERM ends later than apply watches)."""
        if self._watcher is not None:
            self._watcher.join(timeout=max(WATCH_S.values()) + 1.0)
        if self._sent:
            states = {p.pid: state_of(p.pid, p.start) for p in self._sent}
            self._record(states, "fault_end")

    def effect(self, evidence: Evidence) -> FaultEffect:
        """What the processes read back after the signal show (see `judge_process`)."""
        return judge_process(self.spec, self.fault_name, evidence)


def settled(kind: SignalKind, states: list[str]) -> bool:
    """Whether the signal has done all it visibly can: every process ended (an ending
    signal) or stopped (a stop); another signal's effect is only read back at the end."""
    if kind == "end":
        return all(s == GONE for s in states)
    if kind == "stop":
        return all(s in ("T", "t") for s in states)
    return False


def deliver(sig: Signals, found: Found, whole_group: bool
            ) -> tuple[list[Proc], list[Proc]]:
    """Sends the signal: to the whole group at once when it is the target (so a child
    forked since it was found gets it too), else to each target. Returns the processes it
    was sent to and those that had ended since they were found."""
    alive = [p for p in found.targets if running(p.pid, p.start) is not None]
    ended = [p for p in found.targets if p not in alive]
    leader = found.leader
    if whole_group and running(leader.pid, leader.start) is not None:
        try:
            os.killpg(leader.pid, sig)
        except ProcessLookupError:
            return [], found.targets
        return alive, ended
    sent = []
    for proc in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
            sent.append(proc)
    return sent, [p for p in found.targets if p not in sent]


def make_process_fault(ctx: RunContext, name: str, spec: ProcessFault) -> ProcessInjector:
    return ProcessInjector(ctx, name, spec)


# --- did the fault land? ---------------------------------------------------------------------

# stop: a request started while stopped counts when it failed or lasted this much longer.
STOP_SLOWER_S = 1.0


def judge_process(spec: ProcessFault, fault: str, evidence: Evidence) -> FaultEffect:
    """Whether the signal reached the processes, from what apply and stop recorded:

    an ending signal landed when a signalled process was read back gone (every one, or the
    detail names those left); a stop signal when one was read back stopped (state T);
    another signal when it was delivered (what the server makes of it is not observed).
    No record of the signal or of the processes read back after it: unknown.
    """
    if fault_window(evidence, fault) is None:
        return FaultEffect(None, "the fault has no apply time in the evidence")
    sent_events = [(ts, d) for ts, d in evidence.events_of(SIGNAL_EVENT)
                   if d.get("fault") == fault]
    if not sent_events:
        return FaultEffect(None, "no signal was recorded as sent for the fault: no evidence "
                                 "either way")
    began, first = sent_events[0]
    sig = str(first.get("signal", spec.signum.name))
    names: dict[str, str] = {}
    sent: list[str] = []
    for _, d in sent_events:
        names |= {str(k): str(v) for k, v in (d.get("names") or {}).items()}
        sent += [str(p) for p in d.get("sent") or [] if str(p) not in sent]
    if not sent:
        return FaultEffect(False, f"the {sig} reached no process: they had ended before it")
    plural = "es" if len(sent) != 1 else ""
    who = f"{len(sent)} process{plural} ({names_text([names.get(p, p) for p in sent])})"
    states = [(ts, {str(k): str(v) for k, v in (d.get("states") or {}).items()})
              for ts, d in evidence.events_of(STATE_EVENT) if d.get("fault") == fault]
    if not states:
        return FaultEffect(None, f"{sig} was sent to {who}, but they were not read back "
                                 "after it: no evidence either way")
    kind = signal_kind(parse_signal(sig))
    if kind == "end":
        return _judge_end(sig, who, sent, names, states, began, evidence, fault)
    if kind == "stop":
        return _judge_stop(sig, who, sent, states, evidence, fault)
    gone = {p for _, s in states for p, state in s.items() if state == GONE}
    tail = f"; {len(gone)} of them ended after it" if gone else ""
    return FaultEffect(True, f"{sig} was delivered to {who}{tail}; what the server does with "
                             "it is not observed")


def _judge_end(sig: str, who: str, sent: list[str], names: dict[str, str],
               states: list[tuple[float, dict[str, str]]], began: float,
               evidence: Evidence, fault: str) -> FaultEffect:
    gone_at: dict[str, float] = {}
    for ts, s in states:
        for pid, state in s.items():
            if state == GONE:
                gone_at.setdefault(pid, ts)
    if not gone_at:
        return FaultEffect(False, f"{sig} was sent to {who}, but none of them had ended by "
                                  "the fault's end: the signal was caught or ignored (a "
                                  "server draining on SIGTERM can take longer than its phase)")
    traffic = _traffic_text(evidence, fault)
    left = [p for p in sent if p not in gone_at]
    if left:
        return FaultEffect(True, f"{sig} was sent to {who}; {len(gone_at)} of them ended, "
                                 f"{', '.join(names.get(p, p) for p in left)} still ran at "
                                 f"the fault's end{traffic}")
    last = max(gone_at.values()) - began
    return FaultEffect(True, f"{sig} was sent to {who}; all were read back gone within "
                             f"{max(0.0, last):.1f}s{traffic}")


def _judge_stop(sig: str, who: str, sent: list[str],
                states: list[tuple[float, dict[str, str]]], evidence: Evidence,
                fault: str) -> FaultEffect:
    stopped = {p for _, s in states for p, state in s.items() if state in ("T", "t")}
    if not stopped:
        note = ""
        if parse_signal(sig) in TERMINAL_STOP_SIGNALS:
            note = (f"; the kernel discards {sig} for a process group with no parent in its "
                    "session (a service started in a session of its own): use SIGSTOP")
        return FaultEffect(False, f"{sig} was sent to {who}, but none was read back "
                                  f"stopped{note}")
    stalled = _stalled_text(evidence, fault)
    return FaultEffect(True, f"{sig} was sent to {who}; {len(stopped)} of {len(sent)} read back "
                             f"stopped (state T){stalled}")


def _traffic_text(evidence: Evidence, fault: str) -> str:
    """A note of the client requests in flight while the fault was on that it cut."""
    window = fault_window(evidence, fault)
    if window is None:
        return ""
    inside = list(evidence.requests_overlapping(window.start, window.end))
    if not inside:
        return ""
    cut = [r for r in inside if cut_or_retried(r)]
    return f"; {share_text(len(cut), len(inside))} in flight meanwhile failed or were retried"


def _stalled_text(evidence: Evidence, fault: str) -> str:
    """A note of the client requests started while the processes were stopped that failed
    or took much longer than before (the server accepted them and did not answer)."""
    window = fault_window(evidence, fault)
    if window is None:
        return ""
    inside = evidence.requests_started_in(window.start, window.end)
    if not inside:
        return "; no client request started meanwhile to show its effect"
    base = baseline_before(evidence.requests, window.start)
    hit = [r for r in inside if not r.ok or r.attempts > 1 or (
        (b := base.of(base.duration, r.shape)) is not None and r.duration >= b + STOP_SLOWER_S)
        or (b is None and r.duration >= STOP_SLOWER_S)]
    return (f"; {share_text(len(hit), len(inside))} started meanwhile failed or took >= "
            f"{STOP_SLOWER_S:g}s longer than before")


def markers(evidence: Evidence, t0: float) -> list[tuple[float, str]]:
    """The signal, on the report's charts: `SIGKILL replica-0` (the pid file's name)."""
    return [(round(ts - t0, 3), f"{d.get('signal')} {Path(str(d.get('pidfile'))).stem}")
            for ts, d in evidence.events_of(SIGNAL_EVENT)]


# --- the reverter --------------------------------------------------------------------------


def revert_process(action: ProcessRevert) -> None:
    """Idempotent, and safe in any process: only the recorded processes that still run
    with their recorded start time are signalled; a restart that succeeded is not run
    again for the same action."""
    op = str(action["op"])
    if op not in ("cont", "restart", "restart_if_gone", "none"):
        raise ValueError(f"unknown process revert op '{op}'")
    if op == "cont":
        _continue(action)
    elif op == "restart" or (op == "restart_if_gone" and _any_gone(action["pids"])):
        _bring_back(action)


def _recorded(pids: dict[str, int]) -> list[Proc]:
    """The recorded processes that still run and are the ones recorded."""
    found = [running(int(pid), int(start)) for pid, start in pids.items()]
    return [p for p in found if p is not None]


def _any_gone(pids: dict[str, int]) -> bool:
    return len(_recorded(pids)) < len(pids)


def _continue(action: ProcessRevert) -> None:
    for proc in _recorded(action["pids"]):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
    # The whole group was stopped at once: a process forked just before the stop is in it
    # too. Its leader, still the one recorded, vouches for the group id.
    pgid = str(action["pgid"])
    start = (action.get("group") or {}).get(pgid)
    if (action["scope"] == "group" and not action.get("match") and start is not None
            and running(int(pgid), int(start)) is not None):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pgid), signal.SIGCONT)


def _bring_back(action: ProcessRevert) -> None:
    """Ends what is left of the recorded group, then runs the restart command; under a
    lock beside its log, so the harness and the watchdog never run it at once, and not
    again once it succeeded for this action."""
    log = action.get("log")
    if log is None:
        _end_leftovers(action)
        _run_restart(action, None)
        return
    timeout = float(action.get("restart_timeout", 300.0))
    with _exclusive(Path(log + ".lock"), timeout + LEFTOVER_GRACE_S + KILL_WAIT_S + 30.0
                    ) as lock:
        lock.seek(0)
        if lock.read().strip() == b"done":
            return  # another revert of this action (the harness, the watchdog) did it
        _end_leftovers(action)
        _run_restart(action, Path(log))
        lock.seek(0)
        lock.truncate()
        lock.write(b"done\n")
        lock.flush()


@contextlib.contextmanager
def _exclusive(path: Path, timeout: float) -> Iterator[IO[bytes]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as handle:
        deadline = time.time() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.time() >= deadline:
                    raise EnvironmentProblem(f"another revert still holds {path} after "
                                             f"{timeout:g}s") from None
                time.sleep(0.2)
        try:
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _end_leftovers(action: ProcessRevert) -> None:
    """SIGTERM to the recorded processes of the group still running (an API server whose
    engine was killed), SIGKILL to those still there after a grace: the restart starts
    from nothing, as after a crash of the whole server."""
    left = _recorded(action.get("group") or action["pids"])
    for sig, wait in ((signal.SIGTERM, LEFTOVER_GRACE_S), (signal.SIGKILL, KILL_WAIT_S)):
        if not left:
            return
        for proc in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
        deadline = time.time() + wait
        while left and time.time() < deadline:
            time.sleep(0.1)
            left = [p for p in left if running(p.pid, p.start) is not None]
    if left:
        raise EnvironmentProblem(
            f"{', '.join(f'{p.name} ({p.pid})' for p in left)} of pid file "
            f"{action['pidfile']} still ran after SIGKILL; the restart was not run")


def _run_restart(action: ProcessRevert, log: Path | None) -> None:
    command = list(action.get("restart") or [])
    if not command:
        raise EnvironmentProblem(f"the {action['signal']} of pid file {action['pidfile']} "
                                 "has no restart command to undo it")
    argv = restart_argv(command)
    shown = " ".join(command)
    timeout = float(action.get("restart_timeout", 300.0))
    cwd = action.get("cwd")
    if cwd is not None and not Path(cwd).is_dir():
        cwd = None  # its folder is gone: the reverting process's own then
    where = f" (log: {log})" if log is not None else ""
    with _output(log) as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {shown}\n".encode())
        out.flush()
        try:
            # Output to a file, not a pipe: a server the command starts may keep its
            # inherited pipe open for ever, and reading one to its end would wait for it.
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, cwd=cwd,
                                    start_new_session=True)
        except OSError as exc:
            raise EnvironmentProblem(f"restart `{shown}` could not start: {exc}") from None
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise EnvironmentProblem(f"restart `{shown}` did not finish within {timeout:g}s"
                                     f"{where}; last output:\n{_tail(out)}") from None
        if code != 0:
            raise EnvironmentProblem(f"restart `{shown}` exited with code {code}{where}; "
                                     f"last output:\n{_tail(out)}")


@contextlib.contextmanager
def _output(log: Path | None) -> Iterator[IO[bytes]]:
    """The restart's output: appended to its log beside the journal, else (no log, or it
    cannot be written) to a temporary file that keeps it only for an error's tail."""
    with contextlib.ExitStack() as stack:
        handle: IO[bytes] | None = None
        if log is not None:
            with contextlib.suppress(OSError):
                log.parent.mkdir(parents=True, exist_ok=True)
                handle = stack.enter_context(log.open("a+b"))
        if handle is None:
            handle = stack.enter_context(tempfile.TemporaryFile("w+b"))
        yield handle


def _tail(handle: IO[bytes]) -> str:
    handle.flush()
    size = handle.seek(0, os.SEEK_END)
    handle.seek(max(0, size - TAIL_CHARS))
    return handle.read().decode(errors="replace").strip()


PROCESS = FaultBackend(
    spec=ProcessFault,
    injector=make_process_fault,
    revert=revert_process,  # type: ignore[arg-type]  # a dict from the journal
    description="A local server's processes signalled through its pid file: killed "
                "(restarted at revert), stopped (continued at revert) or sent a signal.",
    blast_radius=lambda spec: 1,  # one process group
    markers=markers,
    label=lambda spec: f"process {spec.signum.name}",
)
