"""The process backend: its spec through the scenario loader, its revert action, how it
judges its effect, and its real behaviour on throwaway local processes (each started in a
session of its own with a pid file in tmp_path, as the stacks start their servers, and
killed at teardown)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from llmdrill.faults import process as pb
from llmdrill.faults.base import EnvironmentProblem, revert
from llmdrill.faults.process import ProcessFault, ProcessInjector, ProcessRevert
from llmdrill.faults.registry import blast_radius, make_injector
from llmdrill.harness.progress import Progress
from llmdrill.model.context import RunContext
from llmdrill.model.evidence import EvidenceStore
from llmdrill.model.records import Evidence, FaultEvent
from llmdrill.scenario.errors import ScenarioError
from llmdrill.scenario.loader import load_scenario
from llmdrill.scenario.models import Fault, Scenario

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0
WAIT_S = 20.0  # generous: a busy 2-core machine

# A server with two children in its group: `sleep`, and a Python whose command line
# carries FAKE-ENGINE (as vLLM's engine carries VLLM::EngineCore). The marker is built at
# run time so the parent's own command line does not contain it.
GROUP_PY = """\
import pathlib, subprocess, sys, time
subprocess.Popen(["sleep", "120"])
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "FAKE-" + "ENGINE"])
pathlib.Path(sys.argv[1]).write_text("ready")
time.sleep(120)
"""


def wait_until(check: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


Spawn = Callable[..., tuple[subprocess.Popen[bytes], Path]]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Starts a throwaway server in a session of its own and writes its pid file; every
    process of its group is killed (continued first, if stopped) at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], name: str = "server", ready: Path | None = None
              ) -> tuple[subprocess.Popen[bytes], Path]:
        proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(proc)
        pidfile = tmp_path / f"{name}.pid"
        pidfile.write_text(f"{proc.pid}\n")
        if ready is not None:
            assert wait_until(ready.exists), "the throwaway server did not start"
        return proc, pidfile

    yield start
    for proc in started:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        proc.wait(timeout=WAIT_S)


def sleeper(spawn: Spawn, name: str = "server") -> tuple[subprocess.Popen[bytes], Path]:
    return spawn(["sleep", "120"], name)


def group(spawn: Spawn, tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    ready = tmp_path / "ready"
    return spawn([sys.executable, "-c", GROUP_PY, str(ready)], "group", ready)


def state(pid: int) -> str:
    proc = pb.read_proc(pid)
    return pb.GONE if proc is None or proc.ended else proc.state


def start_time(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def run_ctx(tmp_path: Path, spec: dict[str, Any], name: str = "f"
            ) -> tuple[RunContext, ProcessInjector]:
    scenario = Scenario.model_validate({
        "apiVersion": "llmdrill/v1", "kind": "Scenario", "metadata": {"name": "proc"},
        "target": {"base_url": "http://127.0.0.1:9", "model": "tiny"},
        "faults": {name: {"process": spec}},
        "phases": [{"name": "p", "duration": "10s", "faults": [name]}],
    })
    store = EvidenceStore(tmp_path / "evidence.db")
    ctx = RunContext("run-1", scenario, store, {}, Progress(quiet=True), tmp_path)
    injector = make_injector(ctx, name, scenario.faults[name])
    assert isinstance(injector, ProcessInjector)
    return ctx, injector


def evidence_of(ctx: RunContext, name: str, applied: float, reverted: float | None
                ) -> Evidence:
    assert ctx.store is not None
    return ctx.store.load([], [FaultEvent(name, applied, reverted)], reverted)


def marker_restart(marker: Path) -> list[str]:
    """A restart command that appends a line to `marker` (so a second run shows)."""
    code = "import sys\nwith open(sys.argv[1], 'a') as f:\n    f.write('up\\n')"
    return [sys.executable, "-c", code, str(marker)]


# --- the scenario format -----------------------------------------------------------------


def test_a_process_fault_is_a_fault_backend() -> None:
    fault = Fault.model_validate({"process": {"pidfile": "x.pid", "signal": "stop"}})
    assert fault.backend == "process"
    assert isinstance(fault.spec, ProcessFault)
    assert fault.spec.signal == "SIGSTOP" and fault.spec.scope == "group"
    assert blast_radius(fault) == 1
    assert fault.kind.label is not None and fault.kind.label(fault.spec) == "process SIGSTOP"


def test_signals_by_name_or_number_and_argv_numbers_as_text() -> None:
    spec = ProcessFault.model_validate({"pidfile": "x", "signal": 9,
                                        "restart": ["llmdrill", "up", "--replicas", 2]})
    assert spec.signal == "SIGKILL" and spec.signum == signal.SIGKILL
    assert spec.restart == ["llmdrill", "up", "--replicas", "2"]
    assert ProcessFault.model_validate({"pidfile": "x", "signal": "hup"}).signal == "SIGHUP"


@pytest.mark.parametrize(("spec", "message"), [
    ({"pidfile": "x", "signal": "SIGNOPE"}, "unknown signal 'SIGNOPE'"),
    ({"pidfile": "x", "signal": 0}, "unknown signal '0'"),
    ({"pidfile": "x"}, r"a SIGKILL cannot be undone without `restart`"),
    ({"pidfile": "x", "signal": "TERM"}, r"a SIGTERM cannot be undone without `restart`"),
    ({"pidfile": "x", "signal": "SIGSEGV"}, "cannot be undone without `restart`"),
    ({"pidfile": "x", "signal": "STOP", "restart": ["a"]}, "restart is not used with SIGSTOP"),
    ({"pidfile": "x", "signal": "HUP", "scope": "process", "match": "e"}, "scope: group"),
    ({"pidfile": "x", "signal": "HUP", "match": ""}, "match is empty"),
    ({"pidfile": " ", "signal": "HUP"}, "pidfile is empty"),
    ({"pidfile": "x", "restart": []}, "at least 1 item"),
    ({"pidfile": "x", "restart": [""]}, "at least 1 character"),
    ({"pidfile": "x", "restart": ["a"], "restart_timeout": "0s"}, "more than 0s"),
    ({"pidfile": "x", "signal": "HUP", "scope": "all"}, "'group' or 'process'"),
])
def test_invalid_process_faults_are_refused(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ProcessFault.model_validate(spec)


def test_signals_that_need_no_revert_need_no_restart() -> None:
    for sig in ("SIGHUP", "SIGUSR1", "SIGSTOP", "SIGTSTP", "SIGCONT"):
        ProcessFault.model_validate({"pidfile": "x", "signal": sig})
    assert pb.signal_kind(signal.SIGHUP) == "other"
    assert pb.signal_kind(signal.SIGQUIT) == "end"
    assert pb.signal_kind(signal.SIGTTIN) == "stop"


BASE = """\
apiVersion: llmdrill/v1
kind: Scenario
metadata:
  name: drill
target:
  base_url: http://127.0.0.1:8000
  model: tiny
phases:
  - {name: p, duration: 10s, faults: [f]}
faults:
  f:
    process:
"""


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, env={})
    return [str(issue).replace(str(tmp_path) + "/", "") for issue in info.value.issues]


def test_bad_input_is_reported_with_file_line_and_column(tmp_path: Path) -> None:
    text = BASE + "      pidfile: run/x.pid\n      signal: SIGNOPE\n"
    assert problems(tmp_path, text) == [
        "scenario.yaml:14:7: faults.f.process.signal: unknown signal 'SIGNOPE' (a name "
        "like SIGKILL or a number like 9)"]
    text = BASE + "      pidfile: run/x.pid\n      signal: SIGKILL\n"
    found = problems(tmp_path, text)
    assert len(found) == 1
    assert found[0].startswith("scenario.yaml:12:5: faults.f.process: a SIGKILL cannot be "
                               "undone without `restart`: ")
    text = BASE + "      pidfile: run/x.pid\n      restrat: [llmdrill, up]\n"
    assert problems(tmp_path, text) == [
        "scenario.yaml:14:7: faults.f.process.restrat: unknown key 'restrat'; did you mean "
        "'restart'? (valid keys: pidfile, signal, scope, match, restart, restart_timeout)"]


def test_the_loader_anchors_a_relative_pidfile_to_the_scenarios_folder(tmp_path: Path
                                                                       ) -> None:
    folder = tmp_path / "drills"
    folder.mkdir()
    path = folder / "scenario.yaml"
    path.write_text(BASE + "      pidfile: ${STACK:-../.stack}/run/replica-0.pid\n"
                    "      signal: SIGSTOP\n")
    spec = load_scenario(path, env={}).faults["f"].spec
    assert isinstance(spec, ProcessFault)
    assert spec.pidfile == str(folder / "../.stack/run/replica-0.pid")
    spec = load_scenario(path, env={"STACK": "/srv/stack"}).faults["f"].spec
    assert isinstance(spec, ProcessFault)
    assert spec.pidfile == "/srv/stack/run/replica-0.pid"


# --- finding the processes and the revert action ---------------------------------------------


def test_the_revert_action_records_each_process_with_its_start_time(
        spawn: Spawn, tmp_path: Path) -> None:
    proc, pidfile = group(spawn, tmp_path)
    _, injector = run_ctx(tmp_path, {"pidfile": str(pidfile), "signal": "SIGKILL",
                                     "restart": ["llmdrill", "up"], "restart_timeout": "2m"})
    action: ProcessRevert = injector.prepare()
    assert json.loads(json.dumps(action)) == action  # plain JSON, for the journal
    pids = sorted(int(p) for p in action["pids"])
    assert len(pids) == 3 and pids[0] == proc.pid
    assert action["pids"] == {str(p): start_time(p) for p in pids} == action["group"]
    assert action["backend"] == "process" and action["op"] == "restart"
    assert action["signal"] == "SIGKILL" and action["pgid"] == proc.pid
    assert action["scope"] == "group" and action["match"] is None
    assert action["pidfile"] == str(pidfile)
    assert action["restart"] == ["llmdrill", "up"] and action["restart_timeout"] == 120.0
    assert action["cwd"] == os.getcwd()
    assert action["log"] == str(tmp_path / "restart-f-1.log")
    assert len(action["names"]) == 3 and "sleep" in action["names"].values()
    text = injector.describe()
    assert text.startswith(f"SIGKILL to process group {proc.pid} (3 processes: ")
    assert text.endswith(f"from {pb.shown_path(str(pidfile))}")
    assert pb.restart_argv(["llmdrill", "up"]) == [sys.executable, "-m", "llmdrill", "up"]
    assert pb.restart_argv(["make", "up"]) == ["make", "up"]


def test_stop_and_other_signals_plan_their_own_way_back(spawn: Spawn, tmp_path: Path) -> None:
    _, pidfile = sleeper(spawn)
    ops = {}
    for sig, extra in (("SIGSTOP", {}), ("SIGHUP", {}),
                       ("SIGHUP", {"restart": ["true"]}), ("SIGTERM", {"restart": ["true"]})):
        spec = ProcessFault.model_validate({"pidfile": str(pidfile), "signal": sig, **extra})
        ops[f"{sig}{'+restart' if extra else ''}"] = pb.revert_op(spec)
    assert ops == {"SIGSTOP": "cont", "SIGHUP": "none", "SIGHUP+restart": "restart_if_gone",
                   "SIGTERM+restart": "restart"}


def test_match_picks_only_the_matching_processes_of_the_group(
        spawn: Spawn, tmp_path: Path) -> None:
    _, pidfile = group(spawn, tmp_path)
    marker = tmp_path / "restarted"
    ctx, injector = run_ctx(tmp_path, {"pidfile": str(pidfile), "signal": "SIGKILL",
                                       "match": "FAKE-ENGINE",
                                       "restart": marker_restart(marker)})
    action = injector.prepare()
    assert len(action["pids"]) == 1 and len(action["group"]) == 3
    engine = int(next(iter(action["pids"])))
    others = [int(p) for p in action["group"] if int(p) != engine]
    assert "FAKE-ENGINE" in Path(f"/proc/{engine}/cmdline").read_text()
    assert "matching 'FAKE-ENGINE' (1 process: python" in injector.describe()
    applied = time.time()
    injector.apply()
    injector.stop()  # the run calls it at the fault's end: the watch is read back
    assert state(engine) == pb.GONE
    assert all(state(p) != pb.GONE for p in others)  # the "API server" lives on
    revert(action)
    # The rest of the group is ended before the restart: a restart starts from nothing.
    assert all(state(p) == pb.GONE for p in others)
    assert marker.read_text() == "up\n"
    effect = injector.effect(evidence_of(ctx, "f", applied, time.time()))
    assert effect.landed is True, effect.detail
    assert "SIGKILL was sent to 1 process (python" in effect.detail


def test_scope_process_signals_the_leader_alone_and_records_its_group(
        spawn: Spawn, tmp_path: Path) -> None:
    proc, pidfile = group(spawn, tmp_path)
    _, injector = run_ctx(tmp_path, {"pidfile": str(pidfile), "signal": "SIGSTOP",
                                     "scope": "process"})
    action = injector.prepare()
    assert list(action["pids"]) == [str(proc.pid)] and len(action["group"]) == 3
    assert injector.describe().startswith(f"SIGSTOP to process {proc.pid} (python")
    children = [int(p) for p in action["group"] if int(p) != proc.pid]
    injector.apply()
    injector.stop()  # the run calls it at the fault's end: the watch is read back
    assert state(proc.pid) == "T"
    assert all(state(p) in ("S", "R") for p in children)
    revert(action)
    assert wait_until(lambda: state(proc.pid) in ("S", "R"))


def test_a_pidfile_of_a_dead_or_missing_process_is_an_environment_problem(
        spawn: Spawn, tmp_path: Path) -> None:
    proc, pidfile = sleeper(spawn)
    proc.kill()
    proc.wait(timeout=WAIT_S)
    _, injector = run_ctx(tmp_path, {"pidfile": str(pidfile), "signal": "SIGSTOP"})
    with pytest.raises(EnvironmentProblem, match=rf"pid file {pidfile} \(pid {proc.pid}\) "
                                                 "is not running"):
        injector.preflight()
    with pytest.raises(EnvironmentProblem, match=str(pidfile)):
        injector.prepare()
    missing = tmp_path / "none.pid"
    _, injector = run_ctx(tmp_path, {"pidfile": str(missing), "signal": "SIGSTOP"})
    with pytest.raises(EnvironmentProblem, match=rf"pid file {missing} does not exist"):
        injector.preflight()
    pidfile.write_text("garbage")
    _, injector = run_ctx(tmp_path, {"pidfile": str(pidfile), "signal": "SIGSTOP"})
    with pytest.raises(EnvironmentProblem, match="does not hold a pid"):
        injector.preflight()


@pytest.mark.parametrize("who", ["init", "self", "parent"])
def test_init_this_process_and_its_parents_are_refused(tmp_path: Path, who: str) -> None:
    pid = {"init": 1, "self": os.getpid(), "parent": os.getppid()}[who]
    pidfile = tmp_path / "x.pid"
    pidfile.write_text(str(pid))
    _, injector = run_ctx(tmp_path, {"pidfile": str(pidfile), "signal": "SIGSTOP",
                                     "scope": "process"})
    message = "refused" if who == "init" else "this harness or one of its parents"
    with pytest.raises(EnvironmentProblem, match=message):
        injector.prepare()


def test_a_group_is_refused_when_the_pid_does_not_lead_it(spawn: Spawn, tmp_path: Path) -> None:
    _, pidfile = group(spawn, tmp_path)
    child = next(p.pid for p in pb.group_members(int(pidfile.read_text()))
                 if p.comm == "sleep")
    pidfile.write_text(str(child))
    _, injector = run_ctx(tmp_path, {"pidfile": str(pidfile), "signal": "SIGSTOP"})
    with pytest.raises(EnvironmentProblem, match="does not lead its process group"):
        injector.prepare()
    _, injector = run_ctx(tmp_path, {"pidfile": str(pidfile), "signal": "SIGSTOP",
                                     "scope": "process"})
    assert list(injector.prepare()["pids"]) == [str(child)]


def test_no_match_in_the_group_names_its_processes(spawn: Spawn, tmp_path: Path) -> None:
    _, pidfile = sleeper(spawn)
    _, injector = run_ctx(tmp_path, {"pidfile": str(pidfile), "signal": "SIGSTOP",
                                     "match": "VLLM::EngineCore"})
    with pytest.raises(EnvironmentProblem, match=r"no process of group \d+ .* has "
                                                 r"'VLLM::EngineCore'.*sleep \(\d+\)"):
        injector.prepare()


def test_preflight_says_what_it_would_do_and_finds_the_restart_command(
        spawn: Spawn, tmp_path: Path) -> None:
    proc, pidfile = sleeper(spawn)
    _, injector = run_ctx(tmp_path, {"pidfile": str(pidfile), "signal": "SIGTERM",
                                     "restart": ["llmdrill", "up"]})
    lines = injector.preflight()
    assert lines[0] == (f"process: SIGTERM to process group {proc.pid} (1 process: sleep) "
                        f"from {pb.shown_path(str(pidfile))}")
    assert f"target pid {proc.pid} sleep" in lines[1]
    assert "revert: `llmdrill up`" in lines[2]
    assert state(proc.pid) in ("S", "R")  # preflight changes nothing
    _, injector = run_ctx(tmp_path, {"pidfile": str(pidfile), "signal": "SIGTERM",
                                     "restart": ["no-such-command-x", "up"]})
    with pytest.raises(EnvironmentProblem, match=r"'no-such-command-x' is not on PATH.*"
                                                 rf"pid file {pidfile}"):
        injector.preflight()


# --- real signals, real reverts ---------------------------------------------------------------


def test_sigstop_hangs_the_group_and_the_revert_continues_it(
        spawn: Spawn, tmp_path: Path) -> None:
    _, pidfile = group(spawn, tmp_path)
    ctx, injector = run_ctx(tmp_path, {"pidfile": str(pidfile), "signal": "SIGSTOP"})
    action = injector.prepare()
    assert action["op"] == "cont"
    pids = [int(p) for p in action["pids"]]
    applied = time.time()
    injector.apply()
    injector.stop()  # the run calls it at the fault's end: the watch is read back
    assert all(state(p) == "T" for p in pids)
    injector.stop()
    revert(action)
    assert wait_until(lambda: all(state(p) in ("S", "R") for p in pids))
    revert(action)  # idempotent
    assert all(state(p) in ("S", "R") for p in pids)
    effect = injector.effect(evidence_of(ctx, "f", applied, time.time()))
    assert effect.landed is True, effect.detail
    assert "3 of 3 read back stopped (state T)" in effect.detail


def test_sigtstp_is_discarded_by_a_server_in_a_session_of_its_own(
        spawn: Spawn, tmp_path: Path) -> None:
    proc, pidfile = sleeper(spawn)
    ctx, injector = run_ctx(tmp_path, {"pidfile": str(pidfile), "signal": "SIGTSTP"})
    assert any("discards SIGTSTP" in line for line in injector.preflight())
    action = injector.prepare()
    applied = time.time()
    injector.apply()
    injector.stop()  # the run calls it at the fault's end: the watch is read back
    assert state(proc.pid) in ("S", "R")  # still running: the stop was discarded
    revert(action)
    effect = injector.effect(evidence_of(ctx, "f", applied, time.time()))
    assert effect.landed is False
    assert "none was read back stopped; the kernel discards SIGTSTP" in effect.detail


def test_sigkill_ends_the_group_and_the_revert_runs_the_restart_once(
        spawn: Spawn, tmp_path: Path) -> None:
    proc, pidfile = group(spawn, tmp_path)
    marker = tmp_path / "restarted"
    ctx, injector = run_ctx(tmp_path, {"pidfile": str(pidfile), "signal": "SIGKILL",
                                       "restart": marker_restart(marker)})
    action = injector.prepare()
    pids = [int(p) for p in action["pids"]]
    applied = time.time()
    injector.apply()
    injector.stop()  # the run calls it at the fault's end: the watch is read back
    assert all(state(p) == pb.GONE for p in pids)
    assert pb.group_members(proc.pid) == []
    assert not marker.exists()
    injector.stop()
    revert(json.loads(json.dumps(action)))  # as the journal hands it over
    assert marker.read_text() == "up\n"
    assert (tmp_path / "restart-f-1.log").exists()
    revert(action)  # the watchdog or a cleanup after the harness: not run again
    assert marker.read_text() == "up\n"
    effect = injector.effect(evidence_of(ctx, "f", applied, time.time()))
    assert effect.landed is True, effect.detail
    assert "SIGKILL was sent to 3 processes" in effect.detail
    assert "all were read back gone within" in effect.detail
    assert pb.markers(evidence_of(ctx, "f", applied, None), applied)[0][1] == "SIGKILL group"


def test_a_revert_in_a_fresh_process_continues_a_stopped_server(
        spawn: Spawn, tmp_path: Path) -> None:
    proc, pidfile = sleeper(spawn)
    _, injector = run_ctx(tmp_path, {"pidfile": str(pidfile), "signal": "SIGSTOP"})
    action = injector.prepare()
    injector.apply()
    injector.stop()  # the run calls it at the fault's end: the watch is read back
    assert state(proc.pid) == "T"
    code = ("import json, sys\nfrom llmdrill.faults.base import revert\n"
            "revert(json.loads(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", code, json.dumps(action)], check=True,
                   timeout=60)
    assert wait_until(lambda: state(proc.pid) in ("S", "R"))


def test_a_recycled_pid_is_never_signalled(spawn: Spawn, tmp_path: Path) -> None:
    proc, pidfile = sleeper(spawn)
    os.kill(proc.pid, signal.SIGSTOP)
    assert wait_until(lambda: state(proc.pid) == "T")
    # The recorded process had another start time: this pid now belongs to someone else.
    other = {str(proc.pid): start_time(proc.pid) + 1}
    action = ProcessRevert(backend="process", op="cont", signal="SIGSTOP",
                           pidfile=str(pidfile), pgid=proc.pid, scope="group", match=None,
                           pids=other, group=other)
    revert(action)
    time.sleep(0.3)
    assert state(proc.pid) == "T"
    marker = tmp_path / "restarted"
    action = ProcessRevert(backend="process", op="restart", signal="SIGKILL",
                           pidfile=str(pidfile), pgid=proc.pid, scope="group", match=None,
                           pids=other, group=other, restart=marker_restart(marker),
                           cwd=str(tmp_path), restart_timeout=60.0)
    revert(action)
    assert state(proc.pid) == "T"  # not ended as a leftover of the recorded group
    assert marker.read_text() == "up\n"


def test_another_signal_restarts_only_when_a_process_ended(spawn: Spawn, tmp_path: Path
                                                           ) -> None:
    proc, pidfile = sleeper(spawn)
    marker = tmp_path / "restarted"
    ctx, injector = run_ctx(tmp_path, {"pidfile": str(pidfile), "signal": "SIGUSR1",
                                       "scope": "process", "restart": marker_restart(marker)})
    action = injector.prepare()
    assert action["op"] == "restart_if_gone"
    revert(action)  # nothing was sent: the server runs, nothing to bring back
    assert not marker.exists()
    applied = time.time()
    injector.apply()  # sleep does not handle SIGUSR1: its default ends it
    injector.stop()  # the run calls it at the fault's end: the watch is read back
    assert state(proc.pid) == pb.GONE
    revert(action)
    assert marker.read_text() == "up\n"
    effect = injector.effect(evidence_of(ctx, "f", applied, time.time()))
    assert effect.landed is True
    assert "SIGUSR1 was delivered to 1 process (sleep); 1 of them ended" in effect.detail


# --- the restart command ---------------------------------------------------------------------


def restart_action(tmp_path: Path, command: list[str], timeout: float = 60.0,
                   log: bool = True) -> ProcessRevert:
    action = ProcessRevert(backend="process", op="restart", signal="SIGKILL",
                           pidfile=str(tmp_path / "gone.pid"), pgid=999_999_999,
                           scope="group", match=None, pids={}, group={}, restart=command,
                           cwd=str(tmp_path), restart_timeout=timeout)
    if log:
        action["log"] = str(tmp_path / "run" / "restart.log")
    return action


def test_a_failed_restart_names_the_command_its_exit_code_and_its_last_output(
        tmp_path: Path) -> None:
    code = "import sys\nprint('engine would not start')\nsys.exit(3)"
    command = [sys.executable, "-c", code]
    for log in (True, False):
        with pytest.raises(EnvironmentProblem) as info:
            revert(restart_action(tmp_path, command, log=log))
        text = str(info.value)
        assert text.startswith(f"restart `{' '.join(command)}` exited with code 3")
        assert "engine would not start" in text
    assert "engine would not start" in (tmp_path / "run" / "restart.log").read_text()


def test_a_restart_past_its_timeout_is_killed_and_named(tmp_path: Path) -> None:
    started = time.time()
    with pytest.raises(EnvironmentProblem, match=r"restart `sleep 60` did not finish within "
                                                 r"1s \(log: "):
        revert(restart_action(tmp_path, ["sleep", "60"], timeout=1.0))
    assert time.time() - started < 30


def test_a_restart_command_that_does_not_exist_is_named(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentProblem, match="restart `no-such-command-x` could not start"):
        revert(restart_action(tmp_path, ["no-such-command-x"]))


def test_llmdrill_as_the_command_is_this_llmdrill(tmp_path: Path) -> None:
    revert(restart_action(tmp_path, ["llmdrill", "--version"]))
    assert "llmdrill 0.1.0" in (tmp_path / "run" / "restart.log").read_text()


# --- did it land? (synthetic evidence) ---------------------------------------------------------


def judged(spec: dict[str, Any], events: list[tuple[float, str, dict[str, Any]]],
           faults: list[FaultEvent] | None = None) -> tuple[bool | None, str]:
    ev = Evidence(faults=[FaultEvent("f", T0, T0 + 30)] if faults is None else faults,
                  run_end=T0 + 40, events=events)
    effect = pb.judge_process(ProcessFault.model_validate({"pidfile": "x", **spec}), "f", ev)
    return effect.landed, effect.detail


def sent(sig: str, pids: list[int]) -> tuple[float, str, dict[str, Any]]:
    return (T0, pb.SIGNAL_EVENT, {"fault": "f", "signal": sig, "pidfile": "/r/replica-0.pid",
                                  "sent": pids, "names": {str(p): f"p{p}" for p in pids}})


def states(t: float, **by_pid: str) -> tuple[float, str, dict[str, Any]]:
    return (T0 + t, pb.STATE_EVENT, {"fault": "f", "when": "after_signal",
                                     "states": {k.lstrip("p"): v for k, v in by_pid.items()}})


def test_the_effect_fails_closed_without_evidence() -> None:
    term = {"signal": "SIGTERM", "restart": ["true"]}
    assert judged(term, [], faults=[])[0] is None
    landed, detail = judged(term, [])
    assert landed is None and "no signal was recorded" in detail
    landed, detail = judged(term, [sent("SIGTERM", [1, 2])])
    assert landed is None and "not read back" in detail
    other = [(T0, pb.SIGNAL_EVENT, {"fault": "g", "signal": "SIGTERM", "sent": [1]})]
    assert judged(term, other)[0] is None  # another fault's signal


def test_an_ending_signal_landed_when_the_processes_were_read_back_gone() -> None:
    term = {"signal": "SIGTERM", "restart": ["true"]}
    landed, detail = judged(term, [sent("SIGTERM", [1, 2]), states(0.2, p1="gone", p2="gone")])
    assert landed is True and "all were read back gone within 0.2s" in detail
    # Slow to obey (a draining server): gone only when the fault ended.
    landed, detail = judged(term, [sent("SIGTERM", [1, 2]), states(5, p1="S", p2="gone"),
                                   states(30, p1="gone", p2="gone")])
    assert landed is True and "within 30.0s" in detail
    landed, detail = judged(term, [sent("SIGTERM", [1, 2]), states(5, p1="S", p2="gone")])
    assert landed is True and "1 of them ended, p1 still ran" in detail
    landed, detail = judged(term, [sent("SIGTERM", [1, 2]), states(5, p1="S", p2="S")])
    assert landed is False and "caught or ignored" in detail
    landed, detail = judged(term, [sent("SIGTERM", [])])
    assert landed is False and "reached no process" in detail


def test_a_stop_landed_when_a_process_was_read_back_stopped() -> None:
    landed, detail = judged({"signal": "SIGSTOP"}, [sent("SIGSTOP", [1]), states(0.1, p1="T")])
    assert landed is True and "1 of 1 read back stopped" in detail
    assert "no client request started meanwhile" in detail
    landed, detail = judged({"signal": "SIGSTOP"}, [sent("SIGSTOP", [1]), states(2, p1="S")])
    assert landed is False and "none was read back stopped" in detail
    assert "discards" not in detail  # only the terminal stop signals are discarded
