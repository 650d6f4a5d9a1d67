"""Background services of the test stacks: start one in a session of its own with its log
and pid file, tell whether it still runs, stop its whole process group. Shared by the local,
Docker and Kubernetes stacks so each start and stop behaves the same way."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from llmdrill.procfs import group_members
from llmdrill.stack import StackError


class ServiceStartError(StackError):
    """A service exited or stayed unhealthy during start-up (the message names its log)."""


def alive(pid: int) -> bool:
    """Running, not a zombie (a process this one started is its child: reap it)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass  # not our child
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def group_alive(pgid: int) -> bool:
    """Any process of the group still runs (vLLM's EngineCore can outlive its API server,
    the group's leader). Zombies do not count: a service another running process started
    (the test session starting the Kubernetes node, stopped by a drill's command) stays a
    zombie until that process reaps it, and waiting for it would take the whole grace."""
    alive(pgid)  # reaps the leader if it is our exited child
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return bool(group_members(pgid))


def tail(path: Path, chars: int = 2000) -> str:
    """The end of a log, for an error message ('' when there is no log)."""
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def read_pid(pidfile: Path) -> int | None:
    """The pid a pid file names if that process still runs, else None."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def spawn(cmd: list[str], log_path: Path, pidfile: Path, *, env: dict[str, str] | None = None,
          cwd: Path | None = None, nice: int = 0) -> subprocess.Popen[bytes]:
    """Starts cmd in a session of its own (so stop() reaches its children), appending to
    its log under a header line, and records its pid. With `nice`, it and every process
    it starts run at that lower CPU priority."""
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]  # nice execs cmd: the pid stays the same
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                start_new_session=True)
    pidfile.write_text(str(proc.pid))
    if nice:
        _nice_session(proc.pid, nice)
    return proc


def _nice_session(pid: int, nice: int) -> None:
    """With the kernel's autogroup scheduling (Debian's default), a process's nice value
    only ranks it within its session, and a new session is a new group with a share of
    the CPU equal to every other group's: the group itself must be niced for the service
    to yield to the rest of the machine."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n")


def wait_healthy(name: str, healthy: Callable[[], bool], running: Callable[[], bool],
                 timeout: float, log_path: Path, poll: float = 0.5) -> None:
    """Waits until healthy(); fails at once, with the log's last lines, when the service
    exits, and names the log when it stays unhealthy past the timeout."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if healthy():
            return
        if not running():
            raise ServiceStartError(f"{name} exited during start-up (log: {log_path}); "
                                    f"last lines:\n{tail(log_path)}")
        time.sleep(poll)
    raise ServiceStartError(f"{name} did not become healthy within {timeout:.0f}s "
                            f"(log: {log_path})")


def stop(pid: int, grace: float = 20.0, *, group: bool = True) -> None:
    """SIGTERM, then SIGKILL after the grace period; the process group when group (a
    service started by spawn leads its own), else the process alone."""
    send = os.killpg if group else os.kill
    running = group_alive if group else alive
    with contextlib.suppress(ProcessLookupError):
        send(pid, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and running(pid):
        time.sleep(0.2)
    if running(pid):
        with contextlib.suppress(ProcessLookupError):
            send(pid, signal.SIGKILL)
        deadline = time.time() + 10
        while time.time() < deadline and running(pid):
            time.sleep(0.2)


def stop_pidfile(pidfile: Path, grace: float = 20.0, *, group: bool = True) -> bool:
    """Stops what a pid file names (its whole group when group) and removes the file;
    False when nothing of it ran."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        pidfile.unlink(missing_ok=True)
        return False
    pidfile.unlink(missing_ok=True)
    if not (group_alive(pid) if group else alive(pid)):
        return False
    stop(pid, grace, group=group)
    return True


def answers(url: str, timeout: float = 2.0) -> bool:
    """A health URL answers 200 (anything else, or no answer, is not healthy)."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def python_home(venv: Path) -> Path:
    """The Python installation a venv was made from (pyvenv.cfg's home): what a container
    running the engine's venv must mount beside it."""
    cfg = venv / "pyvenv.cfg"
    if not cfg.exists():
        raise StackError(f"{venv} is not a venv; run `make stack` (it installs vLLM)")
    for line in cfg.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home":
            home = Path(value.strip()).resolve()
            # .../versions/3.11.7/bin -> mount the whole installation, not only bin/
            return home.parent if home.name == "bin" else home
    raise StackError(f"{cfg} names no home")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Two installs at once (two make jobs, two sessions) build once, not twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
