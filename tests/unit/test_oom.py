"""The OOM drill's pure parts: the oom_score_adj option (read, journal, write back), the
hog's revert starting a container its OOM left stopped, and the oom_observed check on
synthetic evidence. No Docker Engine: the reverter runs against a fake client."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import docker
import pytest
from pydantic import ValidationError

from llmdrill.checks import evaluate_check
from llmdrill.faults import docker_backend as db
from llmdrill.faults.base import revert
from llmdrill.faults.docker_backend import DockerFault
from llmdrill.model.records import Evidence, PhaseWindow
from llmdrill.model.result import CheckResult
from llmdrill.scenario.models import Check

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0


def fault(**kw: Any) -> DockerFault:
    return DockerFault.model_validate({"target": {"name": "engine"}, **kw})


# --- oom_score_adj -----------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "message"), [
    ({"action": "pause", "oom_score_adj": 1000}, "oom_score_adj goes with action memory or hog"),
    ({"action": "hog", "memory": "1GiB", "oom_score_adj": 0}, "greater than or equal to 1"),
    ({"action": "hog", "memory": "1GiB", "oom_score_adj": 1001}, "less than or equal to 1000"),
])
def test_oom_score_adj_is_checked(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        fault(**spec)


def test_scores_are_parsed_and_only_changed_ones_written_back() -> None:
    out = "1 0\n33 -500\n34 1000\njunk\n55 x\n\n"
    assert db.parse_scores(out) == {"1": 0, "33": -500, "34": 1000}
    assert db.restore_args({"33": -500, "1": 0, "34": 1000}, 1000) == ["1", "0", "33", "-500"]


def test_the_journal_keeps_the_old_scores_and_when_the_container_started() -> None:
    spec = fault(action="hog", memory="1GiB", oom_score_adj=1000)
    c = {"Id": "c1", "Name": "/engine", "State": {"Status": "running", "StartedAt": "T1"}}
    action = db.revert_action(spec, "unix:///x.sock", [c], "m", 0, {"c1": {"1": 0, "7": 0}})
    assert json.loads(json.dumps(action)) == action
    assert action["op"] == "kill_hog" and action["start"] is True
    assert action["oom_score_adj"] == 1000
    assert action["scores"] == {"c1": {"started_at": "T1", "pids": {"1": 0, "7": 0}}}
    plain = db.revert_action(fault(action="memory", memory="1GiB"), "h",
                             [{**c, "HostConfig": {"Memory": 2 << 30}}], "m", 0)
    assert "scores" not in plain


def test_the_shell_scripts_are_valid_sh() -> None:
    import shutil
    import subprocess

    sh = shutil.which("sh")
    assert sh is not None
    for script in (db.READ_SCORES_SH, db.RAISE_SCORES_SH, db.RESTORE_SCORES_SH):
        assert subprocess.run([sh, "-n", "-c", script], check=False).returncode == 0
    # Reading is harmless: on this host it lists processes and their scores.
    out = subprocess.run([sh, "-c", db.READ_SCORES_SH], capture_output=True, text=True,
                         check=True).stdout
    assert db.parse_scores(out)


class FakeContainer:
    def __init__(self, cid: str, state: dict[str, Any], calls: list[str]) -> None:
        self.id = cid
        self.name = cid
        self.attrs: dict[str, Any] = {"Id": cid, "State": state, "ExecIDs": []}
        self.calls = calls

    def start(self) -> None:
        self.calls.append(f"start {self.id}")

    def reload(self) -> None:
        self.calls.append(f"reload {self.id}")

    def exec_run(self, cmd: list[str], **_: Any) -> tuple[int, bytes]:
        self.calls.append(f"exec {self.id} {' '.join(cmd[3:])}")
        return 0, b""


class FakeClient:
    def __init__(self, containers: dict[str, FakeContainer]) -> None:
        self.containers = self
        self._by_id = containers

    def get(self, cid: str) -> FakeContainer:
        if cid not in self._by_id:
            raise docker.errors.NotFound("gone")
        return self._by_id[cid]


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeContainer]:
    containers: dict[str, FakeContainer] = {}

    @contextlib.contextmanager
    def connect(host: str, timeout: float) -> Iterator[FakeClient]:
        yield FakeClient(containers)

    monkeypatch.setattr(db, "connect", connect)
    return containers


def hog_action(**extra: Any) -> dict[str, Any]:
    return {"backend": "docker", "op": "kill_hog", "host": "h", "command": ["python3", "x"],
            "containers": ["a"], "start": True, **extra}


def test_the_hog_revert_starts_a_container_its_oom_left_stopped(
        fake_engine: dict[str, FakeContainer]) -> None:
    calls: list[str] = []
    fake_engine["a"] = FakeContainer("a", {"Status": "exited", "Running": False}, calls)
    revert(hog_action())
    assert calls == ["start a"]
    calls.clear()
    fake_engine["a"] = FakeContainer("a", {"Status": "restarting", "Restarting": True}, calls)
    revert(hog_action())
    assert calls == []  # its restart policy is on it


def test_scores_are_written_back_only_to_the_same_processes(
        fake_engine: dict[str, FakeContainer]) -> None:
    calls: list[str] = []
    saved = {"a": {"started_at": "T1", "pids": {"1": 0, "9": -100, "12": 1000}}}
    fake_engine["a"] = FakeContainer("a", {"Status": "running", "Running": True,
                                           "StartedAt": "T1"}, calls)
    revert(hog_action(scores=saved, oom_score_adj=1000))
    assert calls == ["reload a", "exec a sh 1 0 9 -100"]
    calls.clear()
    # Restarted since (by its policy, after the OOM): these are other processes now.
    fake_engine["a"].attrs["State"]["StartedAt"] = "T2"
    revert(hog_action(scores=saved, oom_score_adj=1000))
    assert calls == ["reload a"]


def test_the_state_at_the_end_is_kept_as_evidence() -> None:
    info = {"Name": "/engine", "RestartCount": 2,
            "State": {"Status": "exited", "OOMKilled": True, "ExitCode": 0,
                      "StartedAt": "s", "FinishedAt": "f"}}
    assert db.state_detail(info, "hog") == {
        "fault": "hog", "container": "engine", "status": "exited", "oom_killed": True,
        "exit_code": 0, "restart_count": 2, "started_at": "s", "finished_at": "f"}


# --- oom_observed --------------------------------------------------------------------------------

PHASES = [PhaseWindow("baseline", T0, T0 + 20),
          PhaseWindow("oom", T0 + 20, T0 + 120, faults=("squeeze", "hog"))]


def ev(*events: tuple[float, str, dict[str, Any]]) -> Evidence:
    base = [(T0 + 20.01, "docker_action", {"fault": "squeeze", "action": "memory"}),
            (T0 + 20.1, "docker_action", {"fault": "hog", "action": "hog"}),
            (T0 + 20.12, "docker_event", {"action": "update", "container": "engine",
                                          "fault": "squeeze"})]
    return Evidence(phases=PHASES, events=sorted([*base, *events], key=lambda e: e[0]))


def docker_event(at: float, action: str, fault: str = "hog", **kw: Any
                 ) -> tuple[float, str, dict[str, Any]]:
    return (T0 + at, "docker_event", {"action": action, "container": "engine", "fault": fault,
                                      **kw})


def judge(spec: dict[str, Any], evidence: Evidence) -> CheckResult:
    return evaluate_check(Check.model_validate({"name": "o", "phase": "oom",
                                                "oom_observed": spec}), 0, evidence)


OOM_RESTART = (docker_event(28.7, "oom"), docker_event(28.7, "oom", fault="squeeze"),
               docker_event(29.5, "die", exit_code=0), docker_event(29.6, "start"))


def test_an_oom_that_took_the_engine_down_passes_with_its_times() -> None:
    result = judge({"fault": "hog", "within": "30s", "container_died": True}, ev(*OOM_RESTART))
    assert result.status == "passed", result.summary
    assert result.summary == ("1 OOM event(s), the first 8.6s after fault 'hog'; the "
                              "container died 9.4s after the fault (exit 0); started again "
                              "9.5s after the fault")
    assert result.observed["oom_events"] == 1  # the same event seen by both faults
    assert result.observed["first_oom_after_s"] == pytest.approx(8.6)


def test_no_oom_fails_and_says_what_was_seen() -> None:
    result = judge({"fault": "hog"}, ev(docker_event(25, "health_status", health="healthy")))
    assert result.status == "failed"
    assert result.summary == (
        "no OOM: the kernel killed nothing in the containers of fault 'hog' in phase 'oom' "
        "(no `oom` event, State.OOMKilled false; container events seen: health_status 1); "
        "the memory pressure was not enough: squeeze the limit lower or give the hog more "
        "memory")


def test_a_late_oom_or_only_the_hog_killed_fails_when_asked() -> None:
    late = judge({"fault": "hog", "within": "5s"}, ev(*OOM_RESTART))
    assert late.status == "failed"
    assert late.summary.startswith("the first OOM came 8.6s after fault 'hog' (limit 5s)")
    hog_only = judge({"fault": "hog", "container_died": True}, ev(docker_event(28.7, "oom")))
    assert hog_only.status == "failed"
    assert "the container did not die after the OOM" in hog_only.summary
    assert judge({"fault": "hog"}, ev(docker_event(28.7, "oom"))).status == "passed"


def test_the_oom_killed_state_counts_without_an_event() -> None:
    state = (T0 + 120.5, "docker_state", {"fault": "hog", "container": "engine",
                                          "oom_killed": True, "status": "exited"})
    result = judge({}, ev(state))
    assert result.status == "passed", result.summary
    assert result.observed["state_oom_killed"] == ["engine"]
    assert "State.OOMKilled of engine" in result.summary


def test_no_docker_fault_in_the_phase_is_no_evidence() -> None:
    bare = Evidence(phases=PHASES, events=[])
    assert judge({}, bare).status == "inconclusive"
    assert judge({}, bare).summary == ("inconclusive: no evidence of memory pressure: no "
                                       "Docker fault was applied in phase 'oom'")
    assert "fault 'other' was not applied" in judge({"fault": "other"}, ev()).summary
