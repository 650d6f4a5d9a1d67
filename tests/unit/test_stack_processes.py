"""The stacks' shared service start/stop: a spawned service leads its own process group,
stop reaches every process of it (even when its leader is gone), and a start-up failure
names the log with its last lines."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from llmdrill.stack import StackError, processes
from llmdrill.stack.apt import AptError

pytestmark = pytest.mark.unit


def _wait_for(predicate: object, timeout: float = 20.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(0.05)
    return False


def test_spawn_records_the_pid_and_stop_ends_the_service(tmp_path: Path) -> None:
    pidfile = tmp_path / "svc.pid"
    proc = processes.spawn(["sleep", "300"], tmp_path / "svc.log", pidfile, cwd=tmp_path)
    assert processes.read_pid(pidfile) == proc.pid
    assert os.getpgid(proc.pid) == proc.pid  # a session, so a group, of its own
    assert "sleep 300" in (tmp_path / "svc.log").read_text()  # the header names the command
    assert processes.stop_pidfile(pidfile, grace=5)
    assert not processes.alive(proc.pid)
    assert not pidfile.exists()
    assert not processes.stop_pidfile(pidfile)  # nothing left: idempotent


def test_spawn_with_nice_lowers_the_service_priority_and_keeps_its_pid(tmp_path: Path) -> None:
    """The local engine runs below the harness's priority; its pid file still names it."""
    pidfile = tmp_path / "svc.pid"
    proc = processes.spawn(["sleep", "300"], tmp_path / "svc.log", pidfile, nice=7)
    try:
        assert _wait_for(lambda: os.getpriority(os.PRIO_PROCESS, proc.pid)
                         == os.getpriority(os.PRIO_PROCESS, 0) + 7)
        assert processes.read_pid(pidfile) == proc.pid
        autogroup = Path(f"/proc/{proc.pid}/autogroup")
        if autogroup.exists():  # the kernel schedules by session: the session is niced
            assert autogroup.read_text().split()[-1] == "7"
        assert _wait_for(lambda: Path(f"/proc/{proc.pid}/comm").read_text().strip()
                         == "sleep")  # nice exec'd the command in place
    finally:
        processes.stop_pidfile(pidfile, grace=5)


def test_stop_reaches_a_child_that_outlived_its_leader(tmp_path: Path) -> None:
    """vLLM's EngineCore can outlive the API server that leads its group."""
    child_pidfile = tmp_path / "child.pid"
    script = (f"import subprocess, pathlib; p = subprocess.Popen(['sleep', '300']); "
              f"pathlib.Path({str(child_pidfile)!r}).write_text(str(p.pid))")
    pidfile = tmp_path / "leader.pid"
    leader = processes.spawn([sys.executable, "-c", script], tmp_path / "l.log", pidfile)
    assert _wait_for(lambda: child_pidfile.exists() and child_pidfile.read_text())
    child = int(child_pidfile.read_text())
    leader.wait(timeout=20)
    assert not processes.alive(leader.pid)
    assert processes.group_alive(leader.pid)
    assert processes.stop_pidfile(pidfile, grace=5)
    assert _wait_for(lambda: not processes.group_alive(leader.pid))
    assert not processes.alive(child)


def test_a_service_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    pidfile = tmp_path / "stubborn.pid"
    script = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
    proc = processes.spawn([sys.executable, "-c", script], tmp_path / "s.log", pidfile)
    time.sleep(0.5)  # let it install its handler
    started = time.time()
    assert processes.stop_pidfile(pidfile, grace=1)
    assert not processes.alive(proc.pid)
    assert time.time() - started < 15


def test_wait_healthy_names_the_log_of_a_service_that_exits(tmp_path: Path) -> None:
    log = tmp_path / "bad.log"
    script = "print('port already in use'); raise SystemExit(3)"
    proc = processes.spawn([sys.executable, "-c", script], log, tmp_path / "bad.pid")
    with pytest.raises(StackError) as caught:
        processes.wait_healthy("bad", lambda: False, lambda: proc.poll() is None, 30, log,
                               poll=0.05)
    assert str(log) in str(caught.value)
    assert "port already in use" in str(caught.value)


def test_wait_healthy_times_out_with_the_log_named(tmp_path: Path) -> None:
    log = tmp_path / "slow.log"
    with pytest.raises(processes.ServiceStartError, match="did not become healthy within"):
        processes.wait_healthy("slow", lambda: False, lambda: True, 0.3, log, poll=0.05)


def test_wait_healthy_returns_once_healthy(tmp_path: Path) -> None:
    calls = iter([False, False, True])
    processes.wait_healthy("ok", lambda: next(calls), lambda: True, 10, tmp_path / "x.log",
                           poll=0.01)


def test_read_pid_of_a_missing_or_garbled_or_dead_pidfile(tmp_path: Path) -> None:
    pidfile = tmp_path / "x.pid"
    assert processes.read_pid(pidfile) is None
    pidfile.write_text("not a pid")
    assert processes.read_pid(pidfile) is None
    assert not processes.stop_pidfile(pidfile)
    assert not pidfile.exists()


def test_file_lock_serialises_two_holders(tmp_path: Path) -> None:
    lock = tmp_path / "sub" / ".lock"
    order: list[str] = []

    def second() -> None:
        with processes.file_lock(lock):
            order.append("second")

    with processes.file_lock(lock):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        order.append("first")
    thread.join(10)
    assert order == ["first", "second"]


def test_stack_errors_are_llmdrill_errors_with_exit_code_2() -> None:
    assert issubclass(processes.ServiceStartError, StackError)
    assert issubclass(AptError, StackError)
    assert StackError("x").exit_code == 2


def test_python_home_reads_the_venv_config(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    venv.mkdir()
    with pytest.raises(StackError, match="is not a venv"):
        processes.python_home(venv)
    (venv / "pyvenv.cfg").write_text(f"home = {tmp_path}/py/bin\nversion = 3.11.7\n")
    assert processes.python_home(venv) == (tmp_path / "py").resolve()
    (venv / "pyvenv.cfg").write_text("version = 3.11.7\n")
    with pytest.raises(StackError, match="names no home"):
        processes.python_home(venv)


def test_answers_is_false_when_nothing_listens() -> None:
    assert not processes.answers("http://127.0.0.1:9/health", timeout=1)


def test_a_zombie_in_the_group_is_not_alive(tmp_path: Path) -> None:
    """A service whose exited leader its (still running) parent has not reaped: stopping
    it from another process must not wait out the grace period."""
    script = ("import subprocess, sys, time; "
              "p = subprocess.Popen(['sleep', '0.2'], start_new_session=True); "
              "print(p.pid, flush=True); time.sleep(30)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        deadline = time.time() + 10
        while time.time() < deadline and "Z" not in Path(
                f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]:
            time.sleep(0.05)
        assert not processes.group_alive(child)
        began = time.time()
        processes.stop(child, grace=20)
        assert time.time() - began < 5
    finally:
        parent.kill()
        parent.wait()
