"""The Docker backend's pure logic (revert planning, limits, events) and the node-restart
checks (stream_recovery, warm_up) on synthetic evidence. No Docker Engine needed: the
reverter runs against a fake client."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from pydantic import ValidationError

from llmdrill.checks import evaluate_check
from llmdrill.faults import docker_backend as db
from llmdrill.faults.base import EnvironmentProblem, revert
from llmdrill.faults.docker_backend import DockerFault
from llmdrill.model.records import Evidence, PhaseWindow, RequestRecord
from llmdrill.model.result import CheckResult
from llmdrill.probes.docker_events import event_detail
from llmdrill.scenario.models import Check, Fault, Scenario
from llmdrill.stack.docker_stack import DockerStack, DockerStackConfig, busybox_rootfs

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0


def fault(**kw: Any) -> DockerFault:
    return DockerFault.model_validate({"target": {"name": "engine"}, **kw})


# --- the scenario format -----------------------------------------------------------------


def test_a_docker_fault_is_a_fault_backend() -> None:
    f = Fault.model_validate({"docker": {"action": "pause", "target": {"labels": {"a": "b"}}}})
    assert f.backend == "docker"
    assert isinstance(f.spec, DockerFault)


@pytest.mark.parametrize(("spec", "message"), [
    ({"action": "memory", "target": {"name": "x"}}, "action memory needs memory"),
    ({"action": "hog", "target": {"name": "x"}}, "action hog needs memory"),
    ({"action": "cpu", "target": {"name": "x"}}, "action cpu needs cpus"),
    ({"action": "memory", "target": {"name": "x"}, "memory": "1MiB"}, "under 6MiB"),
    ({"action": "pause", "target": {}}, "exactly one of name or labels"),
    ({"action": "pause", "target": {"name": "x", "labels": {"a": "b"}}}, "exactly one"),
    ({"action": "explode", "target": {"name": "x"}}, "action"),
    ({"action": "cpu", "target": {"name": "x"}, "cpus": 0}, "greater than 0"),
    ({"action": "pause", "target": {"name": "x"}, "grace": 5}, "needs a unit"),
])
def test_invalid_docker_faults_are_refused(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DockerFault.model_validate(spec)


def scenario(checks: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "llmdrill/v1", "kind": "Scenario", "metadata": {"name": "n"},
        "target": {"base_url": "http://127.0.0.1:18100", "model": "tiny"},
        "faults": {"crash": {"docker": {"action": "kill", "target": {"name": "engine"}}}},
        "phases": [{"name": "baseline", "duration": "10s"},
                   {"name": "crash", "duration": "60s", "faults": ["crash"]}],
        "checks": checks,
    }


def test_node_checks_parse_and_cross_references_are_checked() -> None:
    ok = Scenario.model_validate(scenario([
        {"phase": "crash", "stream_recovery": {"fault": "crash", "deadline": "5s"}},
        {"phase": "crash", "warm_up": {"baseline_phase": "baseline", "healthy_within": "60s",
                                       "first_token_within": "70s", "ttft_within": "80s"}},
    ]))
    assert [c.kind for c in ok.checks] == ["stream_recovery", "warm_up"]
    with pytest.raises(ValidationError) as err:
        Scenario.model_validate(scenario([
            {"phase": "crash", "stream_recovery": {"fault": "nope"}},
            {"phase": "crash", "warm_up": {"baseline_phase": "nope", "healthy_within": "1s",
                                           "first_token_within": "1s", "ttft_within": "1s"}},
        ]))
    text = str(err.value)
    assert "unknown fault 'nope' (defined: crash)" in text
    assert "unknown phase 'nope'" in text


# --- revert planning -----------------------------------------------------------------------


def attrs(cid: str = "c1", name: str = "engine", status: str = "running",
          **host_config: Any) -> dict[str, Any]:
    return {"Id": cid, "Name": f"/{name}", "State": {"Status": status, "Pid": 0},
            "HostConfig": host_config}


def test_memory_limits_put_back_what_was_read() -> None:
    assert db.memory_limits({"Memory": 6 << 30, "MemorySwap": 12 << 30}, "exact", 0) == {
        "Memory": 6 << 30, "MemorySwap": 12 << 30}
    # Swap 0 (Docker's default) cannot be written back: unlimited swap is its meaning.
    assert db.memory_limits({"Memory": 1 << 30, "MemorySwap": 0}, "exact", 0) == {
        "Memory": 1 << 30, "MemorySwap": -1}


def test_an_unlimited_container_is_refused_unless_host_memory_restore_is_chosen() -> None:
    with pytest.raises(EnvironmentProblem, match=r"no memory limit.*restore: host_memory"):
        db.memory_limits({"Memory": 0}, "exact", 24 << 30)
    assert db.memory_limits({"Memory": 0}, "host_memory", 24 << 30) == {
        "Memory": 24 << 30, "MemorySwap": -1}


def test_cpu_limits_restore_no_quota_as_minus_one_and_refuse_nano_cpus() -> None:
    assert db.cpu_limits({}) == {"CpuQuota": -1, "CpuPeriod": 100_000}
    assert db.cpu_limits({"CpuQuota": 50_000, "CpuPeriod": 200_000}) == {
        "CpuQuota": 50_000, "CpuPeriod": 200_000}
    with pytest.raises(EnvironmentProblem, match="NanoCpus"):
        db.cpu_limits({"NanoCpus": 500_000_000})


def test_squeezed_limits() -> None:
    assert db.squeezed_limits(fault(action="memory", memory="64MiB")) == {
        "Memory": 64 << 20, "MemorySwap": 64 << 20}
    assert db.squeezed_limits(fault(action="cpu", cpus=0.25)) == {
        "CpuQuota": 25_000, "CpuPeriod": 100_000}
    assert db.squeezed_limits(fault(action="cpu", cpus=0.001))["CpuQuota"] == 1_000
    assert db.update_kwargs({"Memory": 1, "MemorySwap": 2, "CpuQuota": 3, "CpuPeriod": 4}) == {
        "mem_limit": 1, "memswap_limit": 2, "cpu_quota": 3, "cpu_period": 4}


@pytest.mark.parametrize(("action", "extra", "op"), [
    ("pause", {}, "unpause"),
    ("stop", {}, "start"),
    ("kill", {}, "start"),
    ("restart", {}, "start"),
    ("memory", {"memory": "64MiB"}, "update"),
    ("cpu", {"cpus": 0.5}, "update"),
    ("hog", {"memory": "64MiB"}, "kill_hog"),
])
def test_every_action_has_a_plain_json_way_back(action: str, extra: dict[str, Any],
                                                op: str) -> None:
    spec = fault(action=action, **extra)
    containers = [attrs("c1", "a", Memory=1 << 30, MemorySwap=2 << 30),
                  attrs("c2", "b", Memory=1 << 30, MemorySwap=2 << 30)]
    action_ = db.revert_action(spec, "unix:///x.sock", containers, "marker-1", 0)
    assert json.loads(json.dumps(action_)) == action_
    assert action_["backend"] == "docker" and action_["op"] == op
    assert action_["containers"] == ["c1", "c2"]
    assert action_["names"] == {"c1": "a", "c2": "b"}
    if op == "update":
        assert set(action_["limits"]) == {"c1", "c2"}
    if op == "kill_hog":
        assert action_["command"][-2:] == [str(64 << 20), "marker-1"]


def test_hog_command_substitutes_the_size() -> None:
    spec = fault(action="hog", memory="1MiB", hog_command=["sh", "-c", "fill {size}"])
    assert db.hog_command(spec, "m") == ["sh", "-c", f"fill {1 << 20}"]
    default = db.hog_command(fault(action="hog", memory="1MiB"), "m")
    assert default[0] == "python3" and default[-1] == "m"
    compile(default[2], "hog", "exec")  # the default hog is valid Python


def test_only_running_containers_take_process_faults() -> None:
    assert db.not_ready("pause", attrs(status="running")) is None
    assert db.not_ready("pause", attrs(status="paused")) == "it is paused, not running"
    assert db.not_ready("kill", attrs(status="exited")) == "it is exited, not running"
    assert db.not_ready("memory", attrs(status="exited")) is None


def test_signals_and_texts() -> None:
    assert db.parse_signal("SIGKILL") is signal.SIGKILL
    assert db.parse_signal("term") is signal.SIGTERM
    assert db.parse_signal("9") is signal.SIGKILL
    with pytest.raises(ValueError, match="unknown signal 'SIGNOPE'"):
        db.parse_signal("SIGNOPE")
    assert db.fmt_size(64 << 20) == "64MiB"
    assert db.fmt_size(1000) == "1000B"
    spec = fault(action="pause", target={"labels": {"b": "2", "a": "1"}})
    assert db.target_text(spec.target, 3) == "containers labelled a=1,b=2 (at most 3)"


def test_a_pid_is_ours_only_if_its_cgroup_names_the_container() -> None:
    import os

    # This test process is in no container: its cgroup cannot name one.
    assert not db.pid_in_container(os.getpid(), "f" * 64)
    assert db.local_pid({"Id": "f" * 64, "State": {"Pid": os.getpid()}}) is None
    assert db.local_pid({"Id": "abc", "State": {"Pid": 0}}) is None


# --- the reverter, against a fake engine -------------------------------------------------------


class FakeContainer:
    def __init__(self, cid: str, state: dict[str, Any], calls: list[str],
                 fail: str | None = None) -> None:
        self.id = cid
        self.attrs: dict[str, Any] = {"Id": cid, "State": state, "ExecIDs": []}
        self.calls = calls
        self.fail = fail

    def _call(self, what: str) -> None:
        self.calls.append(f"{what} {self.id}")
        if self.fail == what:
            raise docker.errors.APIError("boom", explanation=f"cannot {what}")

    def unpause(self) -> None:
        self._call("unpause")

    def start(self) -> None:
        self._call("start")

    def update(self, **kw: Any) -> None:
        self._call(f"update {sorted(kw.items())}")


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
        assert timeout > 0  # every call has a deadline
        yield FakeClient(containers)

    monkeypatch.setattr(db, "connect", connect)
    return containers


def test_unpause_only_what_is_still_paused(fake_engine: dict[str, FakeContainer]) -> None:
    calls: list[str] = []
    fake_engine["a"] = FakeContainer("a", {"Paused": True, "Running": True}, calls)
    fake_engine["b"] = FakeContainer("b", {"Paused": False, "Running": True}, calls)
    revert({"backend": "docker", "op": "unpause", "host": "h", "containers": ["a", "b", "gone"]})
    assert calls == ["unpause a"]


def test_start_leaves_running_and_restarting_containers_alone(
        fake_engine: dict[str, FakeContainer]) -> None:
    calls: list[str] = []
    fake_engine["up"] = FakeContainer("up", {"Running": True, "Status": "running"}, calls)
    fake_engine["policy"] = FakeContainer("policy", {"Restarting": True,
                                                     "Status": "restarting"}, calls)
    fake_engine["dead"] = FakeContainer("dead", {"Status": "exited"}, calls)
    revert({"backend": "docker", "op": "start", "host": "h",
            "containers": ["up", "policy", "dead"]})
    assert calls == ["start dead"]


def test_update_writes_back_the_recorded_limits(fake_engine: dict[str, FakeContainer]) -> None:
    calls: list[str] = []
    fake_engine["a"] = FakeContainer("a", {"Running": True}, calls)
    revert({"backend": "docker", "op": "update", "host": "h", "containers": ["a"],
            "limits": {"a": {"Memory": 10, "MemorySwap": -1}}})
    assert calls == ["update [('mem_limit', 10), ('memswap_limit', -1)] a"]


def test_one_failure_does_not_stop_the_others_and_is_raised(
        fake_engine: dict[str, FakeContainer]) -> None:
    calls: list[str] = []
    fake_engine["a"] = FakeContainer("a", {"Status": "exited"}, calls, fail="start")
    fake_engine["b"] = FakeContainer("b", {"Status": "exited"}, calls)
    with pytest.raises(EnvironmentProblem, match="could not revert docker start on x: "
                       "cannot start"):
        revert({"backend": "docker", "op": "start", "host": "h", "containers": ["a", "b"],
                "names": {"a": "x"}})
    assert calls == ["start a", "start b"]


def test_an_unknown_op_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown Docker revert op 'dance'"):
        revert({"backend": "docker", "op": "dance", "host": "h", "containers": []})


# --- the event stream ------------------------------------------------------------------------


def raw(action: str, **attributes: str) -> dict[str, Any]:
    return {"Type": "container", "Action": action, "timeNano": int((T0 + 1.5) * 1e9),
            "Actor": {"ID": "0123456789abcdef", "Attributes": {"name": "engine", **attributes}}}


def test_events_become_evidence_details() -> None:
    ts, died = event_detail(raw("die", exitCode="137"), "crash") or (0.0, {})
    assert ts == pytest.approx(T0 + 1.5)
    assert died == {"action": "die", "container": "engine", "id": "0123456789ab",
                    "exit_code": 137, "fault": "crash"}
    _ts, detail = event_detail(raw("health_status: healthy")) or (0, {})
    assert detail["action"] == "health_status" and detail["health"] == "healthy"
    _, killed = event_detail(raw("kill", signal="9")) or (0, {})
    assert killed["signal"] == 9
    assert event_detail(raw("oom")) is not None
    assert event_detail(raw("exec_start: wget -q")) is None  # health check noise
    assert event_detail({"Type": "network", "Action": "connect"}) is None


# --- stream_recovery and warm_up on synthetic evidence ---------------------------------------

KILL = 30.0  # seconds after T0: the crash phase starts here
PHASES = [PhaseWindow("baseline", T0, T0 + KILL),
          PhaseWindow("crash", T0 + KILL, T0 + 110, faults=("crash",))]


def rec(start: float, duration: float = 1.0, *, error: str | None = None, ttft: float = 0.2,
        tokens: int = 16, attempts: int = 1, finished: bool = True) -> RequestRecord:
    return RequestRecord(start=T0 + start, end=T0 + start + duration,
                         ttft=None if error else ttft, error_class=error,
                         output_tokens=tokens if not error else tokens // 2,
                         attempts=attempts, finished=finished)


def polls(check: str, down: float, back: float | None, end: float = 110.0,
          step: float = 0.5) -> list[tuple[float, str, dict[str, Any]]]:
    """Health polls of `check` every `step` s: ok before `down`, failing until `back`."""
    out = []
    t = KILL - 1
    while t < end:
        ok = t < down or (back is not None and t >= back)
        out.append((T0 + t, "recovery_poll", {"check": check, "ok": ok, "at": T0 + t + 0.01}))
        t += step
    return out


def world(requests: list[RequestRecord], check: str, *, down: float = KILL + 0.1,
          back: float | None = KILL + 40, token_at: float | None = KILL + 41,
          applied: bool = True, die_at: float | None = KILL + 0.06) -> Evidence:
    events: list[tuple[float, str, dict[str, Any]]] = []
    if applied:
        events += [(T0 + KILL + 0.02, "docker_action", {"fault": "crash", "action": "kill"}),
                   (T0 + KILL + 0.05, "fault_applied", {"fault": "crash"})]
    if applied and die_at is not None:
        events += [(T0 + die_at, "docker_event", {"action": "die", "container": "engine",
                                                  "exit_code": 137, "fault": "crash"})]
    events += polls(check, down, back)
    if token_at is not None:
        events.append((T0 + token_at - 0.3, "token_probe",
                       {"check": check, "ok": True, "first_token_at": T0 + token_at}))
    return Evidence(requests=requests, phases=PHASES, events=sorted(events, key=lambda e: e[0]))


def steady(start: float, end: float, step: float = 0.5, **kw: Any) -> list[RequestRecord]:
    out, t = [], start
    while t < end:
        out.append(rec(t, **kw))
        t += step
    return out


def retried_through(back: float = KILL + 40) -> list[RequestRecord]:
    """A retrying client: streams cut at the kill, requests sent while down succeed late."""
    return (steady(0, KILL - 1)
            + [rec(KILL - 0.5, 0.55, error="incomplete_stream"),
               rec(KILL - 0.3, 0.4, error="reset", tokens=0)]
            + [rec(KILL + 0.2 + i, back - KILL + 1 - i, attempts=20) for i in range(4)]
            + steady(back + 1, 109))


def judge(check: dict[str, Any], ev: Evidence) -> CheckResult:
    spec = Check.model_validate({"name": "c", "phase": "crash", **check})
    return evaluate_check(spec, 0, ev)


SR = {"stream_recovery": {"deadline": "5s"}}
WU = {"warm_up": {"baseline_phase": "baseline", "healthy_within": "60s",
                  "first_token_within": "65s", "ttft_within": "75s", "slack": 0.05}}


def test_stream_recovery_passes_when_streams_are_cut_cleanly_and_retries_get_through() -> None:
    result = judge(SR, world(retried_through(), "c"))
    assert result.status == "passed", result.summary
    o = result.observed
    assert o["in_flight"] == 2 and o["in_flight_cut_cleanly"] == 2
    assert o["retryable"] == 4 and o["retryable_succeeded"] == 4
    assert o["healthy_after_s"] == pytest.approx(39.99)
    assert o["docker_events"][0]["action"] == "die"


def test_a_client_without_retries_fails_stream_recovery() -> None:
    no_retry = [*steady(0, KILL - 1), rec(KILL - 0.5, 0.55, error="incomplete_stream"),
                *steady(KILL + 0.2, KILL + 40, step=0.1, error="connect", duration=0.002),
                *steady(KILL + 41, 109)]
    result = judge(SR, world(no_retry, "c"))
    assert result.status == "failed"
    assert "requests sent while the engine was down succeeded" in result.summary
    assert "connect" in result.summary


def test_an_engine_that_never_comes_back_fails_both_checks() -> None:
    requests = [*steady(0, KILL - 1), rec(KILL - 0.5, 0.55, error="incomplete_stream")]
    for check in (SR, WU):
        result = judge(check, world(requests, "c", back=None, token_at=None))
        assert result.status == "failed"
        assert "did not come back" in result.summary
        assert "restart policy" in result.summary


def test_a_stream_that_hangs_or_times_out_fails() -> None:
    hung = [*retried_through(), rec(KILL - 0.2, 30.0, error="timeout")]
    result = judge(SR, world(hung, "c"))
    assert result.status == "failed"
    assert "1/3 requests in flight hung past 5s" in result.summary
    unclear = [*retried_through(), rec(KILL - 0.2, 2.0, error="timeout")]
    result = judge(SR, world(unclear, "c"))
    assert result.status == "failed"
    assert "unclear error" in result.summary
    open_ = [*retried_through(), rec(KILL - 0.2, 80, error="interrupted", finished=False)]
    assert judge(SR, world(open_, "c")).observed["in_flight_hung"] == 1


def test_streams_begun_after_the_kill_and_cut_by_a_death_the_polls_only_bracket() -> None:
    """A node restart behind a gateway, as recorded on the test cluster: no `die` event;
    the stop command began at the kill, the replicas died 2.6-2.9s later, one after the
    other; the first failed poll (2.75s) caught the first, the second's streams (sent at
    2.36-2.70s) were cut at 2.89s. They were in flight at a death, not sent while down."""
    cut_late = [rec(KILL + 2.36, 0.53, error="incomplete_stream"),
                rec(KILL + 2.69, 0.20, error="incomplete_stream")]
    ev = world([*retried_through(), *cut_late], "c", down=KILL + 2.75, die_at=None)
    result = judge(SR, ev)
    assert result.status == "passed", result.summary
    assert result.observed["in_flight"] == 4 and result.observed["retryable"] == 4
    # Still judged as in flight: a stream cut long after the kill hangs past the deadline.
    late = [*retried_through(), rec(KILL + 2.36, 9.0, error="incomplete_stream")]
    result = judge(SR, world(late, "c", down=KILL + 2.75, die_at=None))
    assert result.status == "failed" and "hung past 5s" in result.summary
    # A request refused while down is no stream: it must be retried through.
    refused = [*retried_through(), rec(KILL + 3.0, 0.01, error="http_5xx", tokens=0)]
    result = judge(SR, world(refused, "c", down=KILL + 2.75, die_at=None))
    assert result.status == "failed" and "clients do not retry" in result.summary


def test_a_fault_that_missed_the_engine_is_inconclusive() -> None:
    # No `die` and every poll answered: nothing shows the engine went down.
    result = judge(SR, world(steady(0, 109), "c", down=999, back=None, die_at=None))
    assert result.status == "inconclusive"
    assert "no evidence the engine went down" in result.summary


def test_no_fault_no_polls_no_requests_in_flight_are_inconclusive() -> None:
    result = judge(SR, world(retried_through(), "c", applied=False))
    assert result.status == "inconclusive" and "no evidence of a kill" in result.summary
    result = judge(SR, world(retried_through(), "other-check"))
    assert result.status == "inconclusive" and "no health polls" in result.summary
    quiet = [r for r in retried_through() if not (r.start < T0 + KILL < r.end)]
    result = judge(SR, world(quiet, "c"))
    assert result.status == "inconclusive" and "0 requests were in flight" in result.summary


def test_the_kill_time_is_the_docker_call_not_the_end_of_apply() -> None:
    ev = world(retried_through(), "c")
    result = judge(SR, ev)
    assert result.observed["kill_at_s"] == pytest.approx(0.02)


def test_warm_up_reports_and_bounds_each_time() -> None:
    result = judge(WU, world(retried_through(), "c"))
    assert result.status == "passed", result.summary
    o = result.observed
    assert o["healthy_after_s"] == pytest.approx(39.99)
    assert o["first_token_after_s"] == pytest.approx(40.98)
    assert 39.9 <= o["ttft_back_after_s"] <= 42
    assert o["baseline_ttft_p95_s"] == pytest.approx(0.2)


def test_warm_up_fails_when_too_slow_or_never_warm() -> None:
    slow = dict(WU["warm_up"], healthy_within="30s", first_token_within="30s")
    result = judge({"warm_up": slow}, world(retried_through(), "c"))
    assert result.status == "failed"
    assert "healthy only 39.99s after the kill (limit 30s)" in result.summary
    assert "first token only 40.98s" in result.summary
    never = world(retried_through(), "c", token_at=None)
    never.events.append((T0 + KILL + 41, "token_probe",
                         {"check": "c", "ok": False, "first_token_at": None}))
    result = judge(WU, never)
    assert result.status == "failed"
    assert "no probe request streamed a token" in result.summary
    cold = steady(0, KILL - 1) + steady(KILL + 41, 109, ttft=2.0)
    result = judge(WU, world(cold, "c"))
    assert result.status == "failed" and "TTFT never came back" in result.summary


def test_ttft_back_uses_only_requests_sent_after_healthy() -> None:
    # Requests retried through the outage have huge TTFTs (measured from their first
    # attempt); they must not hold the warm-up open.
    requests = retried_through()
    requests += [RequestRecord(start=T0 + KILL + 1, end=T0 + KILL + 42, ttft=41.0,
                               output_tokens=16, attempts=30)]
    result = judge(WU, world(requests, "c"))
    assert result.status == "passed", result.summary


def test_requests_sent_while_the_engine_dies_are_caught_by_the_kill_not_retryable() -> None:
    # The dying server still accepts connections until its last process is gone (the
    # container's die event), then closes them unanswered: the load calls that protocol.
    # A request sent then that is refused and retried through is a retryable one.
    dying = [*retried_through(), rec(KILL + 0.1, 0.04, error="protocol", tokens=0)]
    result = judge(SR, world(dying, "c", die_at=KILL + 0.3))
    assert result.status == "passed", result.summary
    o = result.observed
    assert o["died_after_s"] == pytest.approx(0.28)
    assert o["in_flight"] == 3 and o["in_flight_by_class"]["protocol"] == 1
    assert o["retryable"] == 4 and o["retryable_succeeded"] == 4
    # Without the die event the first failed health poll marks the death.
    ev = world(dying, "c", die_at=KILL + 0.3)
    ev.events = [e for e in ev.events if e[1] != "docker_event"]
    assert judge(SR, ev).observed["died_after_s"] == pytest.approx(0.48)


# --- the local Docker stack's pure parts ------------------------------------------------------


def test_the_base_image_is_busybox_with_its_applets(tmp_path: Path) -> None:
    fake = tmp_path / "busybox"
    fake.write_bytes(b"\x7fELF not really")
    with tarfile.open(fileobj=io.BytesIO(busybox_rootfs(fake))) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["bin/busybox"].isfile()
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "busybox"
    assert members["bin/wget"].issym()  # the container's health check
    assert members["tmp"].isdir() and members["tmp"].mode == 0o1777


def test_the_vllm_container_mounts_host_paths_read_only_at_the_same_place(
        tmp_path: Path) -> None:
    venv = tmp_path / "vllm-venv"
    venv.mkdir()
    (venv / "pyvenv.cfg").write_text("home = /opt/python/3.11.7/bin\nversion = 3.11.7\n")
    stack = DockerStack(DockerStackConfig(root=tmp_path, host="unix:///x", vllm_port=18100,
                                          container="c", restart="on-failure", cpu_bind="1"))
    spec = stack.vllm_spec()
    ro = {k for k, v in spec["volumes"].items() if v == {"bind": k, "mode": "ro"}}
    assert {"/usr", "/lib", "/lib64", "/etc", "/opt/python/3.11.7", str(venv)} <= ro
    assert spec["volumes"][str(tmp_path / "run" / "docker-vllm-cache")]["mode"] == "rw"
    assert spec["network_mode"] == "host" and spec["cpuset_cpus"] == "1"
    assert spec["restart_policy"] == {"Name": "on-failure"}
    assert "--port" in spec["command"] and "18100" in spec["command"]
    assert spec["environment"]["VLLM_CPU_OMP_THREADS_BIND"] == "1"
    assert spec["mem_limit"] == spec["memswap_limit"]  # limited: memory drills restore it
    assert spec["healthcheck"]["test"][-1] == "http://127.0.0.1:18100/health"
