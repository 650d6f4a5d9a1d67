"""Docker faults: containers restarted, killed, stopped, paused, squeezed (memory, CPU) or
given a memory hog, through the Docker Engine API.

Like every fault, the way back is computed and journaled before the change: a plain JSON
action that `llmdrill cleanup` or the watchdog (other processes, maybe after a kill -9 of
the harness) can carry out alone:
- pause          -> unpause (if still paused);
- stop           -> start (unless running or restarting);
- kill, restart  -> start, unless running or being restarted by its restart policy;
- memory, cpu    -> the limits read before the change are written back;
- hog            -> the hog process is killed, and the container started if the OOM it
                    caused left it stopped (it was running when the hog began);
- oom_score_adj  -> (memory, hog) the scores read before are written back, unless the
                    container restarted since (its processes are new ones then).
Every Docker call has a deadline (the client's timeout; stop/restart add their grace).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Required, TypedDict

from pydantic import Field, model_validator

from llmdrill.faults.base import (
    EnvironmentProblem,
    baseline_before,
    cut_or_retried,
    fault_window,
    parse_signal,
    share_text,
)
from llmdrill.model.events import EventKind
from llmdrill.model.verdict import FaultEffect
from llmdrill.plugin import FaultBackend
from llmdrill.probes.docker_events import KIND as EVENT_KIND
from llmdrill.probes.docker_events import DockerEventRecorder
from llmdrill.scenario.fields import (
    Strict,
)
from llmdrill.scenario.units import Duration, PositiveInt, Size

if TYPE_CHECKING:
    from llmdrill.model.context import RunContext
    from llmdrill.model.records import Evidence, RequestRecord


# --- the spec: the YAML under this key ----------------------------------------


class DockerTarget(Strict):
    """Which containers a Docker fault acts on: one by name, or every one with labels."""

    name: str | None = Field(default=None, description="Container name (or id).")
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Labels a container must all carry to be targeted; every match is.",
    )

    @model_validator(mode="after")
    def _one(self) -> DockerTarget:
        if (self.name is None) == (not self.labels):
            raise ValueError("give exactly one of name or labels")
        return self


DockerAction = Literal["restart", "kill", "stop", "pause", "memory", "cpu", "hog"]


class DockerFault(Strict):
    """A change to containers through the Docker Engine API, journaled before it is made
    and reverted after: unpause, start what was stopped or killed, restore limits, end
    the hog."""

    action: DockerAction = Field(
        description="restart, kill (a signal), stop, pause, memory (squeeze the limit), "
        "cpu (a CPU quota) or hog (a memory hog run inside the container).",
    )
    target: DockerTarget = Field(description="The container(s): by name or by labels.")
    docker_host: str | None = Field(
        default=None,
        description="Docker Engine address (default: $DOCKER_HOST, else the local socket).",
    )
    signal: str = Field(default="SIGKILL", description="kill: the signal sent.")
    via: Literal["process", "engine"] = Field(
        default="process",
        description="kill: `process` signals the container's main process from the host, "
        "like a crash (its restart policy applies; needs a local engine); `engine` asks "
        "Docker (`docker kill`), which Docker treats as a deliberate stop: no restart.",
    )
    grace: Duration = Field(
        default=10.0, description="stop and restart: wait after SIGTERM before SIGKILL."
    )
    memory: Size | None = Field(
        default=None,
        description="memory: the squeezed limit; hog: how much memory the hog fills.",
    )
    cpus: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="cpu: the CPU quota, in CPUs (0.5: half a core)."
    )
    restore: Literal["exact", "host_memory"] = Field(
        default="exact",
        description="memory: Docker cannot remove a memory limit once set. `exact` refuses "
        "to squeeze a container without one; `host_memory` restores it to the host's "
        "total memory (no limit in practice, but `docker inspect` shows the number).",
    )
    hog_command: list[str] | None = Field(
        default=None,
        description="hog: the command run inside the container; {size} is replaced by the "
        "byte count (default: python3 filling `memory` bytes, then sleeping).",
    )
    max_containers: PositiveInt = Field(
        default=1,
        description="Blast radius: the fault is refused if more containers match.",
    )
    timeout: Duration = Field(
        default=30.0, description="Deadline of each Docker API call (stop/restart: + grace)."
    )
    oom_score_adj: Annotated[int, Field(ge=1, le=1000)] | None = Field(
        default=None,
        description="memory, hog: before the change, raise the oom_score_adj of the "
        "container's processes to this (1-1000, through `docker exec ... sh`), so the "
        "kernel's OOM killer picks the engine rather than the hog; the old values are "
        "journaled and written back at revert (unless the container restarted meanwhile).",
    )

    @model_validator(mode="after")
    def _needs(self) -> DockerFault:
        if self.action in ("memory", "hog") and self.memory is None:
            raise ValueError(f"action {self.action} needs memory (e.g. '512MiB')")
        if self.action == "cpu" and self.cpus is None:
            raise ValueError("action cpu needs cpus (e.g. 0.5)")
        if self.action == "memory" and self.memory is not None and self.memory < 6 * 1024**2:
            raise ValueError("Docker refuses a memory limit under 6MiB")
        if self.oom_score_adj is not None and self.action not in ("memory", "hog"):
            raise ValueError("oom_score_adj goes with action memory or hog")
        return self


BACKEND = "docker"


class DockerRevert(TypedDict, total=False):
    """The journal's way back from a Docker fault, for every container it touched."""

    backend: Required[str]
    op: Required[Literal["unpause", "start", "update", "kill_hog"]]
    host: Required[str]  # the Docker Engine
    containers: Required[list[str]]  # ids
    names: dict[str, str]  # id -> name, for messages
    limits: dict[str, dict[str, Any]]  # update: id -> the limits to write back
    command: list[str]  # kill_hog: the hog's command line, to find it
    start: bool  # kill_hog: start the container if the OOM killer stopped it
    oom_score_adj: int  # the score the fault raised processes to
    scores: dict[str, dict[str, Any]]  # id -> {started_at, pids: {pid: the score before}}

DEFAULT_HOST = "unix:///var/run/docker.sock"
REVERT_TIMEOUT = 30.0
CPU_PERIOD_US = 100_000  # the kernel's default CFS period
MIN_CPU_QUOTA_US = 1_000  # the kernel refuses a quota under 1 ms
HOG_CHECK_S = 1.0  # how long apply watches a hog for "command not found"
# The default hog: touches every page of `size` bytes (so they are really used), sleeps.
HOG_PY = ("import sys, time\nb = bytearray(int(sys.argv[1]))\n"
          "for i in range(0, len(b), 4096):\n    b[i] = 1\ntime.sleep(86400)")
# Container states in which nothing needs starting at revert time.
UP_STATES = ("running", "restarting", "paused")
STATE_EVENT = EventKind.DOCKER_STATE  # a container's state, as inspected when its fault ends
HOG_EVENT = EventKind.DOCKER_HOG  # whether the hog was running once apply stopped watching it
# oom_score_adj of every process in the container, read, raised and written back through
# `docker exec sh` (so it works for a remote engine too); the exec'd shell skips itself.
# Raising needs no privilege; writing back the old (lower) value is allowed down to the
# process's oom_score_adj_min, which is where it started.
READ_SCORES_SH = ('for d in /proc/[0-9]*; do p=${d#/proc/}; [ "$p" = "$$" ] && continue; '
                  'a=$(cat "$d/oom_score_adj" 2>/dev/null) && echo "$p $a"; done; true')
RAISE_SCORES_SH = ('for d in /proc/[0-9]*; do [ "${d#/proc/}" = "$$" ] && continue; '
                   'echo "$1" > "$d/oom_score_adj" 2>/dev/null; done; true')
RESTORE_SCORES_SH = ('while [ $# -gt 1 ]; do echo "$2" > "/proc/$1/oom_score_adj" '
                     '2>/dev/null; shift 2; done; true')


def docker_host(configured: str | None = None) -> str:
    return configured or os.environ.get("DOCKER_HOST") or DEFAULT_HOST


@contextlib.contextmanager
def connect(host: str, timeout: float) -> Iterator[Any]:
    """A Docker client whose every call has `timeout`; unreachable -> EnvironmentProblem."""
    import docker

    try:
        client = docker.DockerClient(base_url=host, timeout=max(1, round(timeout)))
    except docker.errors.DockerException as exc:
        raise EnvironmentProblem(f"Docker Engine at {host} is unreachable ({exc})") from None
    try:
        yield client
    finally:
        client.close()


def fmt_size(n: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B"


def target_text(target: DockerTarget, limit: int) -> str:
    if target.name is not None:
        return f"container '{target.name}'"
    labels = ",".join(f"{k}={v}" for k, v in sorted(target.labels.items()))
    return f"containers labelled {labels} (at most {limit})"


# --- pure planning (unit-tested) ------------------------------------------------------


def memory_limits(host_config: dict[str, Any], restore: str, host_memory: int) -> dict[str, int]:
    """The memory limits to write back at revert time. Docker cannot remove a limit once
    set (`update` refuses 0 or -1 for memory), so an unlimited container either is
    refused (restore: exact) or gets the host's whole memory back (restore: host_memory)."""
    memory = int(host_config.get("Memory") or 0)
    swap = int(host_config.get("MemorySwap") or 0)
    if memory > 0:
        # Swap 0 means "Docker's default" and cannot be written back; -1 (unlimited) is
        # what that default amounts to on a host without swap.
        return {"Memory": memory, "MemorySwap": swap if swap != 0 else -1}
    if restore != "host_memory":
        raise EnvironmentProblem(
            "the container has no memory limit, and Docker cannot remove one once set; "
            "give it a limit, or set restore: host_memory to put back the host's total "
            "memory after the drill"
        )
    return {"Memory": host_memory, "MemorySwap": -1}


def cpu_limits(host_config: dict[str, Any]) -> dict[str, int]:
    """The CPU quota to write back: the old one, or -1 (no quota) for none."""
    if int(host_config.get("NanoCpus") or 0):
        raise EnvironmentProblem(
            "the container's CPUs are limited with --cpus (NanoCpus), which Docker does "
            "not let a CPU quota change; llmdrill squeezes with the CFS quota"
        )
    quota = int(host_config.get("CpuQuota") or 0)
    period = int(host_config.get("CpuPeriod") or 0)
    return {"CpuQuota": quota if quota != 0 else -1,
            "CpuPeriod": period if period != 0 else CPU_PERIOD_US}


def squeezed_limits(spec: DockerFault) -> dict[str, int]:
    if spec.action == "memory":
        assert spec.memory is not None
        # Swap equal to memory: no swap, so the squeeze really bites.
        return {"Memory": spec.memory, "MemorySwap": spec.memory}
    assert spec.cpus is not None
    quota = max(MIN_CPU_QUOTA_US, round(spec.cpus * CPU_PERIOD_US))
    return {"CpuQuota": quota, "CpuPeriod": CPU_PERIOD_US}


_UPDATE_KWARGS = {"Memory": "mem_limit", "MemorySwap": "memswap_limit",
                  "CpuQuota": "cpu_quota", "CpuPeriod": "cpu_period"}


def update_kwargs(limits: dict[str, int]) -> dict[str, int]:
    return {_UPDATE_KWARGS[k]: v for k, v in limits.items()}


def not_ready(action: str, attrs: dict[str, Any]) -> str | None:
    """Why a container cannot take this fault now, or None."""
    state = attrs.get("State") or {}
    status = str(state.get("Status", "unknown"))
    if action in ("memory", "cpu"):
        return None  # limits can change in any state
    if status != "running":
        return f"it is {status}, not running"
    return None


def hog_command(spec: DockerFault, marker: str) -> list[str]:
    assert spec.memory is not None
    if spec.hog_command:
        return [part.replace("{size}", str(spec.memory)) for part in spec.hog_command]
    return ["python3", "-c", HOG_PY, str(spec.memory), marker]


def parse_scores(output: str) -> dict[str, int]:
    """`pid score` lines (READ_SCORES_SH's output) -> {pid: score}; junk lines skipped."""
    scores: dict[str, int] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].lstrip("-").isdigit():
            scores[parts[0]] = int(parts[1])
    return scores


def restore_args(pids: dict[str, int], raised: int) -> list[str]:
    """Arguments for RESTORE_SCORES_SH: the processes whose score was changed."""
    return [item for pid, old in sorted(pids.items(), key=lambda p: int(p[0]))
            if old != raised for item in (pid, str(old))]


def revert_action(spec: DockerFault, host: str, containers: list[dict[str, Any]],
                  marker: str, host_memory: int,
                  scores: dict[str, dict[str, int]] | None = None) -> DockerRevert:
    """The journal's way back for `spec` applied to `containers` (their inspect data);
    `scores`: each container's processes' oom_score_adj before the change."""
    ids = [str(c["Id"]) for c in containers]
    action = DockerRevert(
        backend=BACKEND, op="start", host=host, containers=ids,
        names={str(c["Id"]): str(c.get("Name", "")).lstrip("/") for c in containers},
    )
    if spec.action == "pause":
        action["op"] = "unpause"
    elif spec.action in ("stop", "kill", "restart"):
        action["op"] = "start"
    elif spec.action == "memory":
        action["op"] = "update"
        action["limits"] = {str(c["Id"]): memory_limits(c.get("HostConfig") or {},
                                                        spec.restore, host_memory)
                            for c in containers}
    elif spec.action == "cpu":
        action["op"] = "update"
        action["limits"] = {str(c["Id"]): cpu_limits(c.get("HostConfig") or {})
                            for c in containers}
    else:
        action["op"] = "kill_hog"
        action["command"] = hog_command(spec, marker)
        action["start"] = True
    if spec.oom_score_adj is not None:
        action["oom_score_adj"] = spec.oom_score_adj
        action["scores"] = {
            str(c["Id"]): {"started_at": str((c.get("State") or {}).get("StartedAt", "")),
                           "pids": (scores or {}).get(str(c["Id"]), {})}
            for c in containers}
    return action


# --- the host's view of a container's processes ------------------------------------------


def local_pid(attrs: dict[str, Any]) -> int | None:
    """The container's main process as this host sees it, if the harness shares the
    engine's PID namespace (a local engine); None otherwise. The check reads the
    process's cgroup, which names the container: a PID from a remote engine or another
    namespace would be some other process of ours."""
    pid = int((attrs.get("State") or {}).get("Pid") or 0)
    return pid if pid > 0 and pid_in_container(pid, str(attrs.get("Id", ""))) else None


def pid_in_container(pid: int, container_id: str) -> bool:
    try:
        cgroups = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    return bool(container_id) and container_id in cgroups


# --- the injector --------------------------------------------------------------------------


class DockerInjector:
    backend = BACKEND

    def __init__(self, ctx: RunContext, fault_name: str, spec: DockerFault) -> None:
        self.ctx = ctx
        self.fault_name = fault_name
        self.spec = spec
        self.host = docker_host(spec.docker_host)
        radius = ctx.scenario.safety.max_blast_radius
        self.limit = min(spec.max_containers, radius) if radius else spec.max_containers
        self.marker = f"llmdrill-hog-{ctx.run_id}-{fault_name}"
        self._targets: list[dict[str, Any]] = []
        self._recorder: DockerEventRecorder | None = None

    def describe(self) -> str:
        spec = self.spec
        what = target_text(spec.target, self.limit)
        grace = f"{spec.grace:g}s"
        text = {
            "restart": f"restart {what} (SIGTERM, SIGKILL after {grace})",
            "stop": f"stop {what} (SIGTERM, SIGKILL after {grace})",
            "pause": f"pause {what}",
            "memory": f"squeeze the memory limit of {what} to {fmt_size(spec.memory or 0)}",
            "cpu": f"limit {what} to {spec.cpus:g} CPUs (CFS quota)" if spec.cpus else "",
            "hog": f"run a {fmt_size(spec.memory or 0)} memory hog inside {what}",
        }.get(spec.action)
        if text is None:  # kill
            if spec.via == "process":
                text = (f"send {spec.signal} to the main process of {what} from the host "
                        "(a crash: its restart policy applies)")
            else:
                text = f"docker kill --signal {spec.signal} {what} (Docker will not restart it)"
        return f"{text} [docker {self.host}]"

    def _resolve(self, client: Any) -> list[Any]:
        import docker

        target = self.spec.target
        if target.name is not None:
            try:
                found = [client.containers.get(target.name)]
            except docker.errors.NotFound:
                raise EnvironmentProblem(
                    f"no container named '{target.name}' at {self.host}") from None
        else:
            labels = [f"{k}={v}" for k, v in sorted(target.labels.items())]
            found = client.containers.list(all=True, filters={"label": labels})
            if not found:
                raise EnvironmentProblem(
                    f"no container at {self.host} carries the labels {', '.join(labels)}")
        if len(found) > self.limit:
            names = ", ".join(sorted(c.name for c in found)[:10])
            raise EnvironmentProblem(
                f"fault '{self.fault_name}' would touch {len(found)} containers ({names}), "
                f"over its blast radius of {self.limit} (max_containers / "
                "safety.max_blast_radius)")
        return found

    def _check(self, containers: list[Any]) -> None:
        spec = self.spec
        for c in containers:
            reason = not_ready(spec.action, c.attrs)
            if reason:
                raise EnvironmentProblem(
                    f"cannot {spec.action} container '{c.name}': {reason}")
            if spec.action == "kill" and spec.via == "process" and local_pid(c.attrs) is None:
                raise EnvironmentProblem(
                    f"cannot see the main process of container '{c.name}' from here (a "
                    "remote engine, or the harness in another PID namespace); use "
                    "via: engine, which Docker treats as a deliberate stop (no restart)")
        if spec.action == "kill":
            try:
                parse_signal(spec.signal)
            except ValueError as exc:
                raise EnvironmentProblem(str(exc)) from None

    def preflight(self) -> list[str]:
        with connect(self.host, self.spec.timeout) as client:
            version = client.version().get("Version", "?")
            containers = self._resolve(client)
            self._check(containers)
            lines = [f"Docker {version} at {self.host}: {self.describe()}"]
            for c in containers:
                policy = ((c.attrs.get("HostConfig") or {}).get("RestartPolicy") or {})
                lines.append(f"  target {c.name} ({c.short_id}, {c.status}, restart policy "
                             f"'{policy.get('Name') or 'no'}')")
            if self.spec.action in ("memory", "cpu"):
                self._plan(containers, client)  # refuses what could not be restored
        return lines

    def _plan(self, containers: list[Any], client: Any) -> DockerRevert:
        host_memory = 0
        if self.spec.action == "memory":
            host_memory = int(client.info().get("MemTotal") or 0)
        scores = None
        if self.spec.oom_score_adj is not None:
            scores = {str(c.id): self._read_scores(c) for c in containers}
        return revert_action(self.spec, self.host, [c.attrs for c in containers], self.marker,
                             host_memory, scores)

    def _read_scores(self, container: Any) -> dict[str, int]:
        code, out = container.exec_run(["sh", "-c", READ_SCORES_SH], stdout=True,
                                       stderr=False)
        scores = parse_scores(out.decode(errors="replace") if out else "")
        if code != 0 or not scores:
            raise EnvironmentProblem(
                f"cannot read the oom_score_adj of the processes in container "
                f"'{container.name}' (exec sh exited {code}); is there a shell in it?")
        return scores

    def prepare(self) -> DockerRevert:
        # Resolved again: what preflight saw may have changed since.
        with connect(self.host, self.spec.timeout) as client:
            containers = self._resolve(client)
            self._check(containers)
            self._targets = [c.attrs for c in containers]
            return self._plan(containers, client)

    def apply(self) -> None:
        spec = self.spec
        ids = [str(a["Id"]) for a in self._targets]
        store = self.ctx.store
        with connect(self.host, spec.timeout) as client:
            containers = [client.containers.get(cid) for cid in ids]
            # Taken after the client is set up (which can take a second on a busy host):
            # checks measure from this moment, the nearest we get to the change itself.
            began = time.time()
            if store is not None:
                store.add_event(began, EventKind.DOCKER_ACTION, {
                    "fault": self.fault_name, "action": spec.action,
                    "containers": [c.name for c in containers]})
                self._recorder = DockerEventRecorder(self.host, ids, store.add_event,
                                                     since=began, fault=self.fault_name)
                self._recorder.start()
            for container in containers:
                self._apply_one(client, container)

    def _apply_one(self, client: Any, container: Any) -> None:
        spec = self.spec
        grace = max(0, round(spec.grace))
        if spec.action == "pause":
            container.pause()
        elif spec.action == "stop":
            container.stop(timeout=grace)
        elif spec.action == "restart":
            container.restart(timeout=grace)
        elif spec.action == "kill" and spec.via == "engine":
            container.kill(signal=parse_signal(spec.signal).name)
        elif spec.action == "kill":
            pid = local_pid(container.attrs)
            if pid is None:
                raise EnvironmentProblem(f"container '{container.name}' has no main process "
                                         "this host can see")
            os.kill(pid, parse_signal(spec.signal))
        elif spec.action in ("memory", "cpu"):
            self._raise_scores(container)
            container.update(**update_kwargs(squeezed_limits(spec)))
        else:
            self._raise_scores(container)  # before the hog starts: it keeps its own score
            self._start_hog(client, container)

    def _raise_scores(self, container: Any) -> None:
        if self.spec.oom_score_adj is None:
            return
        code, _ = container.exec_run(["sh", "-c", RAISE_SCORES_SH, "sh",
                                      str(self.spec.oom_score_adj)])
        if code != 0:
            raise EnvironmentProblem(f"raising oom_score_adj in container '{container.name}' "
                                     f"failed (exit {code})")

    def _start_hog(self, client: Any, container: Any) -> None:
        command = hog_command(self.spec, self.marker)
        exec_id = client.api.exec_create(container.id, command, stdout=False, stderr=False)
        client.api.exec_start(exec_id["Id"], detach=True)
        deadline = time.time() + HOG_CHECK_S
        while time.time() < deadline:
            info = client.api.exec_inspect(exec_id["Id"])
            if not info.get("Running") and info.get("ExitCode") in (126, 127):
                raise EnvironmentProblem(
                    f"the hog could not run in container '{container.name}' (exit "
                    f"{info.get('ExitCode')}: is '{command[0]}' there?); set hog_command")
            time.sleep(0.1)
        store = self.ctx.store
        if store is not None:  # evidence that the hog ran, for effect()
            info = client.api.exec_inspect(exec_id["Id"])
            store.add_event(time.time(), HOG_EVENT, {
                "fault": self.fault_name, "container": container.name,
                "running": bool(info.get("Running")), "exit_code": info.get("ExitCode")})

    def stop(self, timeout: float = 30.0) -> None:
        """The change itself is the journal's to revert; only the event recorder runs.
        Each container's state is recorded as it stands (State.OOMKilled is evidence the
        event stream may have missed; a restart clears it)."""
        if self._recorder is not None:
            self._recorder.stop(min(timeout, 5.0))
            self._recorder = None
            self._record_states()

    def _record_states(self) -> None:
        store = self.ctx.store
        if store is None or not self._targets:
            return
        try:
            with connect(self.host, min(self.spec.timeout, 10.0)) as client:
                for attrs in self._targets:
                    info = client.api.inspect_container(str(attrs["Id"]))
                    detail = state_detail(info, self.fault_name)
                    if self.spec.action in ("memory", "cpu"):
                        # The limits as they stand while the squeeze is on: read back.
                        detail |= limits_detail(info)
                    store.add_event(time.time(), STATE_EVENT, detail)
        except Exception as exc:  # evidence lost, never the run (nor the revert)
            store.add_event(time.time(), STATE_EVENT,
                            {"fault": self.fault_name, "error": f"{type(exc).__name__}: {exc}"})

    def effect(self, evidence: Evidence) -> FaultEffect:
        """What the engine's events and the containers' states read back show (see
        `judge_docker`)."""
        return judge_docker(self.spec, self.fault_name, evidence)


def state_detail(info: dict[str, Any], fault: str) -> dict[str, Any]:
    state = info.get("State") or {}
    return {"fault": fault, "container": str(info.get("Name", "")).lstrip("/"),
            "status": state.get("Status"), "oom_killed": bool(state.get("OOMKilled")),
            "exit_code": state.get("ExitCode"), "restart_count": info.get("RestartCount"),
            "started_at": state.get("StartedAt"), "finished_at": state.get("FinishedAt")}


def limits_detail(info: dict[str, Any]) -> dict[str, Any]:
    host = info.get("HostConfig") or {}
    return {"memory": int(host.get("Memory") or 0),
            "cpu_quota": int(host.get("CpuQuota") or 0),
            "cpu_period": int(host.get("CpuPeriod") or 0)}


# --- did the fault land? ---------------------------------------------------------------------

# pause: a request started while paused counts when it failed or lasted this much longer.
PAUSE_SLOWER_S = 1.0
WRONG_TARGET = ("wrong container or label? (the clients may be served by another one)")


def _parse_time(text: Any) -> float | None:
    """Docker's RFC 3339 time (nanoseconds, Z) as epoch seconds; None when unset."""
    from datetime import datetime

    value = str(text or "")
    if not value or value.startswith("0001-"):
        return None
    main, _, frac = value.rstrip("Z").partition(".")
    try:
        base = datetime.fromisoformat(main + "+00:00").timestamp()
    except ValueError:
        return None
    digits = "".join(c for c in frac if c.isdigit())
    return base + (float("0." + digits) if digits else 0.0)


def judge_docker(spec: DockerFault, fault: str, evidence: Evidence) -> FaultEffect:
    """Whether the fault's containers show it, from the evidence the backend recorded:

    kill, restart, stop: a `die` event of a targeted container (or its state read back at
    the fault's end: not running, or started again after the fault began); pause: the
    container paused (event or state) and requests started meanwhile stalled or failed;
    memory, hog: an `oom` event or OOMKilled state, else the squeezed limit read back
    (memory) or the hog seen running (hog); cpu: only the setting can be shown, so the CFS
    quota read back. No record at all (the event stream and the inspect both lost): unknown.
    """
    window = fault_window(evidence, fault)
    if window is None:
        return FaultEffect(None, "the fault has no apply time in the evidence")
    mine = [(ts, k, d) for ts, k, d in evidence.events if d.get("fault") == fault]
    began = min((ts for ts, k, _ in mine if k == EventKind.DOCKER_ACTION), default=window.start)
    events = [(ts, d) for ts, k, d in mine if k == EVENT_KIND]
    hogs = [d for _, k, d in mine if k == HOG_EVENT]
    actions = [str(d.get("action")) for _, d in events]
    states = [d for _, d in evidence.events_of(STATE_EVENT)
              if d.get("fault") == fault and "error" not in d]
    names = sorted({str(d.get("container")) for _, d in events} | {
        str(d.get("container")) for d in states}) or ["?"]
    who = ", ".join(f"'{n}'" for n in names)
    if not events and not states and not hogs:
        return FaultEffect(None, "no Docker event and no container state was recorded for "
                                 "the fault (the event stream or the inspect failed): no "
                                 "evidence either way")
    action = spec.action
    seen_events = ", ".join(sorted(set(actions))) or "none"
    if action in ("kill", "restart", "stop"):
        dies = [(ts, d) for ts, d in events if d.get("action") == "die"]
        untouched = _traffic_untouched(evidence, window)
        if dies and untouched:
            # It went down, but the traffic never noticed: not the container it uses.
            return FaultEffect(False, f"{who} died, but {untouched}: the clients do not go "
                                      f"through it; {WRONG_TARGET}")
        if dies:
            ts, d = dies[0]
            code = d.get("exit_code")
            return FaultEffect(True, f"{len(dies)} die event(s) of {who} while the fault was "
                                     f"on, the first {max(0.0, ts - began):.1f}s after the "
                                     f"{action}" + (f" (exit code {code})" if code is not None
                                                    else "") + _cut_text(evidence, window))
        moved = [d for d in states if d.get("status") not in ("running", None)
                 or (_parse_time(d.get("started_at")) or 0.0) >= began - 1.0]
        if moved:
            d = moved[0]
            return FaultEffect(True, f"no die event recorded, but container "
                                     f"'{d.get('container')}' read back {d.get('status')} "
                                     f"(started at {d.get('started_at')}) at the fault's end"
                                     + _cut_text(evidence, window))
        return FaultEffect(False, f"no die event of {who} (events: {seen_events}) and it read "
                                  f"back running since before the {action}: the signal was "
                                  f"ignored or caught, or it is the {WRONG_TARGET}")
    if action == "pause":
        paused = "pause" in actions or any(d.get("status") == "paused" for d in states)
        if not paused:
            return FaultEffect(False, f"no pause event of {who} (events: {seen_events}) and "
                                      "it did not read back paused")
        inside = evidence.requests_started_in(window.start, window.end)
        if not inside:
            return FaultEffect(True, f"{who} paused (event/state read back); no client "
                                     "request started meanwhile to show its effect")
        base = baseline_before(evidence.requests, window.start)
        hit = [r for r in inside if not r.ok or r.attempts > 1 or (
            (b := base.of(base.duration, r.shape)) is not None
            and r.duration >= b + PAUSE_SLOWER_S)
            or (b is None and r.duration >= PAUSE_SLOWER_S)]
        counted = (f"{share_text(len(hit), len(inside))} started while {who} was paused "
                   f"failed or took >= {PAUSE_SLOWER_S:g}s longer than before")
        if hit:
            return FaultEffect(True, counted)
        return FaultEffect(False, f"{counted}: {who} paused but the traffic did not stall; "
                                  f"{WRONG_TARGET}")
    ooms = [(ts, d) for ts, d in events if d.get("action") == "oom"]
    killed = [d for d in states if d.get("oom_killed")]
    if action in ("memory", "hog") and (ooms or killed):
        what = (f"{len(ooms)} oom event(s) of {who}" if ooms
                else f"{who} read back OOMKilled")
        return FaultEffect(True, f"{what} while the fault was on")
    if action == "hog":
        running = [d for d in hogs if d.get("running")]
        if running:
            return FaultEffect(True, f"the hog ran in {who} (seen running after "
                                     f"{HOG_CHECK_S:g}s); no OOM followed")
        codes = ", ".join(str(d.get("exit_code")) for d in hogs) or "not recorded"
        return FaultEffect(False, f"no OOM in {who} and the hog was not running after "
                                  f"{HOG_CHECK_S:g}s (exit {codes}): it ended early or never "
                                  "filled its memory")
    want = squeezed_limits(spec)
    key, field = (("Memory", "memory") if action == "memory" else ("CpuQuota", "cpu_quota"))
    read = [d for d in states if field in d]
    if not read:
        return FaultEffect(None, f"the {action} limit of {who} was not read back "
                                 f"(events: {seen_events}); no evidence either way")
    held = [d for d in read if d.get(field) == want[key]]
    unit = fmt_size(want[key]) if action == "memory" else f"{want[key]} us per {CPU_PERIOD_US} us"
    if len(held) == len(read):
        tail = ("; no OOM followed" if action == "memory" else
                "; only the setting can be shown, not its effect on the engine")
        return FaultEffect(True, f"the {action} limit of {who} read back as {unit} while the "
                                 f"fault was on{tail}")
    got = ", ".join(f"{d.get('container')}: {d.get(field)}" for d in read)
    return FaultEffect(False, f"the {action} limit read back as {got}, not {unit}")


# In-flight requests that must exist before "none of them was cut" says the kill missed.
UNTOUCHED_MIN_REQUESTS = 3


def _in_flight(evidence: Evidence, window: Any
               ) -> tuple[list[RequestRecord], list[RequestRecord]]:
    """The client requests open while the fault was on, and those of them it cut."""
    inside = list(evidence.requests_overlapping(window.start, window.end))
    return inside, [r for r in inside if cut_or_retried(r)]


def _traffic_untouched(evidence: Evidence, window: Any) -> str | None:
    """Why the traffic shows the fault did not reach it, or None: requests were in flight
    while it was on and not one failed on the network or was retried."""
    inside, cut = _in_flight(evidence, window)
    if len(inside) >= UNTOUCHED_MIN_REQUESTS and not cut:
        return f"0 of {len(inside)} requests in flight meanwhile failed or were retried"
    return None


def _cut_text(evidence: Evidence, window: Any) -> str:
    """A note of the client requests the fault cut (errors), for the detail."""
    inside, cut = _in_flight(evidence, window)
    if not inside:
        return ""
    return f"; {share_text(len(cut), len(inside))} in flight meanwhile failed or were retried"


def make_docker_fault(ctx: RunContext, name: str, spec: DockerFault) -> DockerInjector:
    return DockerInjector(ctx, name, spec)


# --- the reverter --------------------------------------------------------------------------


def revert_docker(action: DockerRevert) -> None:
    """Idempotent: a container that is gone, running, unpaused or already restored is left
    as it is. Every container is tried; the errors are raised together at the end."""
    import docker

    op = str(action["op"])
    if op not in ("unpause", "start", "update", "kill_hog"):
        raise ValueError(f"unknown Docker revert op '{op}'")
    names = action.get("names") or {}
    errors: list[str] = []
    with connect(str(action["host"]), REVERT_TIMEOUT) as client:
        for cid in action["containers"]:
            try:
                container = client.containers.get(cid)
            except docker.errors.NotFound:
                continue  # removed: nothing of ours is left on it
            try:
                _revert_one(op, client, container, action)
                _restore_scores(container, action)
            except (docker.errors.APIError, EnvironmentProblem, OSError) as exc:
                errors.append(f"{names.get(cid) or cid[:12]}: {_explain(exc)}")
    if errors:
        raise EnvironmentProblem(f"could not revert docker {op} on " + "; ".join(errors))


def _explain(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc)


def _revert_one(op: str, client: Any, container: Any, action: DockerRevert) -> None:
    import docker

    state = container.attrs.get("State") or {}
    if op == "unpause":
        if state.get("Paused"):
            container.unpause()
    elif op == "start":
        status = str(state.get("Status", ""))
        if state.get("Running") or state.get("Restarting") or status in UP_STATES:
            return  # up, or its restart policy is bringing it back
        try:
            container.start()
        except docker.errors.APIError as exc:
            if "restarting" not in _explain(exc).lower():
                raise
    elif op == "update":
        container.update(**update_kwargs(action["limits"][container.id]))
    else:
        _kill_hog(client, container, [str(p) for p in action["command"]])
        if action.get("start"):
            # The hog's OOM may have taken the engine down, with no policy to restart it.
            _revert_one("start", client, container, action)


def _restore_scores(container: Any, action: DockerRevert) -> None:
    saved = (action.get("scores") or {}).get(container.id)
    if not saved:
        return
    container.reload()
    state = container.attrs.get("State") or {}
    if not state.get("Running") or state.get("StartedAt") != saved.get("started_at"):
        return  # stopped, or restarted: the processes whose scores we raised are gone
    args = restore_args({str(k): int(v) for k, v in saved["pids"].items()},
                        int(action.get("oom_score_adj") or 0))
    if args:
        code, _ = container.exec_run(["sh", "-c", RESTORE_SCORES_SH, "sh", *args])
        if code != 0:
            raise EnvironmentProblem(f"writing back oom_score_adj failed (exit {code})")


def _kill_hog(client: Any, container: Any, command: list[str]) -> None:
    """Kills the running execs of the container that run exactly the hog's command."""
    if not (container.attrs.get("State") or {}).get("Running"):
        return  # the container's processes, the hog with them, are gone
    for exec_id in container.attrs.get("ExecIDs") or []:
        try:
            info = client.api.exec_inspect(exec_id)
        except Exception:
            continue  # ended and cleaned up meanwhile
        config = info.get("ProcessConfig") or {}
        ran = [str(config.get("entrypoint", "")), *[str(a) for a in config.get("arguments") or []]]
        if not info.get("Running") or ran != command:
            continue
        pid = int(info.get("Pid") or 0)
        if pid <= 0 or not pid_in_container(pid, container.id):
            raise EnvironmentProblem(
                f"the hog (exec {exec_id[:12]}) runs, but its process is not visible from "
                "this host; kill it inside the container")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


DOCKER = FaultBackend(
    spec=DockerFault,
    injector=make_docker_fault,
    revert=revert_docker,  # type: ignore[arg-type]
    description="A container restarted, killed, stopped, paused or squeezed.",
    # The containers it touches are counted when they are matched (prepare refuses more
    # than safety.max_blast_radius); before that, one fault is one target.
)
