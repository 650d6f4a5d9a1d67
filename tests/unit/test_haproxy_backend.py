"""The haproxy backend: its spec, its revert action, how it judges its effect, and what it
says to HAProxy's runtime API, against a fake runtime API on a unix socket (a thread that
answers `show stat`, `show servers state` and `show cli level` in HAProxy 2.6's formats and
records the `set server` commands it is sent)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from llmdrill.faults import haproxy as hb
from llmdrill.faults.base import EnvironmentProblem, revert
from llmdrill.faults.haproxy import HaproxyFault, HaproxyInjector
from llmdrill.faults.registry import blast_radius, make_injector
from llmdrill.harness.progress import Progress
from llmdrill.model.context import RunContext
from llmdrill.model.evidence import EvidenceStore
from llmdrill.model.records import ENGINE_LABEL, Evidence, FaultEvent, MetricSample
from llmdrill.scenario.errors import ScenarioError
from llmdrill.scenario.loader import load_scenario
from llmdrill.scenario.models import Fault, Scenario

pytestmark = pytest.mark.unit

PROXY = "replicas"

# HAProxy 2.6's stats CSV header (`show stat`): the base fields, then its modules' (ssl, h2).
STAT_HEADER = (
    "pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,"
    "wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,"
    "throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,"
    "check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,"
    "req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,"
    "lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,"
    "agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,"
    "agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,"
    "intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,"
    "qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,"
    "need_conn_est,uweight,agg_server_status,agg_server_check_status,agg_check_status,-,"
    "ssl_sess,ssl_reused_sess,ssl_failed_handshake,h2_headers_rcvd,h2_data_rcvd,"
    "h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,h2_detected_conn_protocol_errors,"
    "h2_detected_strm_protocol_errors,h2_rst_stream_resp,h2_goaway_resp,h2_open_connections,"
    "h2_backend_open_streams,h2_total_connections,h2_backend_total_streams"
)
STAT_FIELDS = STAT_HEADER.split(",")

# `show servers state`'s header, format 1, as HAProxy 2.6 writes it.
STATE_HEADER = (
    "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
    "srv_iweight srv_time_since_last_change srv_check_status srv_check_result "
    "srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id "
    "srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr "
    "srv_agent_port")

ADDRESSES = {"replica-0": ("127.0.0.1", 18011), "replica-1": ("127.0.0.1", 18021)}


def csv_row(**fields: Any) -> str:
    return ",".join(str(fields.get(name, "")) for name in STAT_FIELDS) + ","


class FakeHaproxy:
    """HAProxy's runtime API in non-interactive mode: one command a connection, answered,
    then the connection closed."""

    def __init__(self, path: Path, level: str = "admin") -> None:
        self.path = path
        self.level = level
        self.admin = dict.fromkeys(ADDRESSES, 0)  # srv_admin_state flags by server
        self.commands: list[str] = []
        self.ignore_set = False  # answers `set server` but changes nothing
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(8)
        self._listener.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self, keep_file: bool = False) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        if not keep_file:
            self.path.unlink(missing_ok=True)

    def sets(self) -> list[str]:
        return [c for c in self.commands if c.startswith("set server")]

    def state_of(self, server: str) -> str:
        return hb.admin_state(self.admin[server])

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2.0)
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                command = data.decode().strip()
                self.commands.append(command)
                conn.sendall(self.answer(command).encode())

    def answer(self, command: str) -> str:
        words = command.split()
        if command == "show stat":
            return self.show_stat()
        if command == "show cli level":
            return f"{self.level}\n"
        if words[:3] == ["show", "servers", "state"]:
            if len(words) > 3 and words[3] != PROXY:
                return "Can't find backend.\n"
            return self.servers_state()
        if words[:2] == ["set", "server"] and len(words) == 5 and words[3] == "state":
            if self.level != "admin":
                return "Permission denied\n"
            proxy, _, name = words[2].partition("/")
            if proxy != PROXY:
                return "No such backend.\n"
            if name not in self.admin:
                return "No such server.\n"
            if words[4] not in ("ready", "drain", "maint"):
                return "'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n"
            if not self.ignore_set:
                # srv_adm_set_ready / _drain / _maint: the forced flags only.
                flags = self.admin[name] & ~(hb.ADMF_FMAINT | hb.ADMF_FDRAIN)
                flags |= {"ready": 0, "drain": hb.ADMF_FDRAIN, "maint": hb.ADMF_FMAINT}[words[4]]
                self.admin[name] = flags
            return "\n"
        return f"Unknown command: '{words[0] if words else ''}', but maybe one of ...\n"

    def _status(self, name: str) -> str:
        return {"ready": "UP", "drain": "DRAIN", "maint": "MAINT"}[self.state_of(name)]

    def show_stat(self) -> str:
        rows = ["# " + ",".join(STAT_FIELDS) + ",",
                csv_row(pxname="llm", svname="FRONTEND", scur=2, slim=2000, status="OPEN",
                        pid=1, iid=2, type=0, mode="http"),
                csv_row(pxname="stats", svname="BACKEND", status="UP", type=1, mode="http")]
        for sid, (name, (host, port)) in enumerate(ADDRESSES.items(), start=1):
            drained = self.state_of(name) != "ready"
            rows.append(csv_row(pxname=PROXY, svname=name, qcur=0, scur=1, status=self._status(
                name), weight=0 if drained else 1, act=1, bck=0, pid=1, iid=3, sid=sid, type=2,
                check_status="L7OK", check_code=200, addr=f"{host}:{port}", mode="http",
                uweight=1))
        rows.append(csv_row(pxname=PROXY, svname="BACKEND", status="UP", weight=2, act=2,
                            pid=1, iid=3, type=1, mode="http", algo="roundrobin"))
        return "\n".join(rows) + "\n\n"

    def servers_state(self) -> str:
        lines = ["1", STATE_HEADER]
        for sid, (name, (host, port)) in enumerate(ADDRESSES.items(), start=1):
            admin = self.admin[name]
            op = 0 if admin & hb.ADMF_FMAINT else 2
            lines.append(f"3 {PROXY} {sid} {name} {host} {op} {admin} 1 1 120 15 3 4 6 0 0 0 "
                         f"- {port} - 0 0 - - 0")
        return "\n".join(lines) + "\n\n"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # A unix socket's path must fit in 108 bytes: pytest's tmp_path may not.
    folder = Path(tempfile.mkdtemp(prefix="hap-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def fake(short_dir: Path) -> Iterator[FakeHaproxy]:
    server = FakeHaproxy(short_dir / "haproxy.sock")
    yield server
    server.close()


def run_ctx(run_dir: Path, spec: dict[str, Any], engines: dict[str, str] | None = None,
            name: str = "f") -> tuple[RunContext, HaproxyInjector]:
    scenario = Scenario.model_validate({
        "apiVersion": "llmdrill/v1", "kind": "Scenario", "metadata": {"name": "hap"},
        "target": {"base_url": "http://127.0.0.1:18040", "model": "tiny",
                   "engines": {k: {"metrics_url": v} for k, v in (engines or {}).items()}},
        "faults": {name: {"haproxy": spec}},
        "phases": [{"name": "p", "duration": "10s", "faults": [name]}],
    })
    store = EvidenceStore(run_dir / "evidence.db")
    ctx = RunContext("run-1", scenario, store, {}, Progress(quiet=True), run_dir)
    injector = make_injector(ctx, name, scenario.faults[name])
    assert isinstance(injector, HaproxyInjector)
    return ctx, injector


def spec_for(fake: FakeHaproxy, **extra: Any) -> dict[str, Any]:
    return {"socket": str(fake.path), "server": "replica-0", **extra}


# --- the scenario format -----------------------------------------------------------------


def test_a_haproxy_fault_is_a_fault_backend() -> None:
    fault = Fault.model_validate({"haproxy": {"socket": "run/haproxy.sock",
                                              "server": "replica-0"}})
    assert fault.backend == "haproxy"
    assert isinstance(fault.spec, HaproxyFault)
    assert (fault.spec.backend, fault.spec.state) == ("replicas", "drain")
    assert blast_radius(fault) == 1
    assert fault.kind.label is not None and fault.kind.label(fault.spec) == "haproxy drain"
    assert fault.kind.description


@pytest.mark.parametrize(("spec", "message"), [
    ({"socket": "s", "server": "r", "state": "ready"}, "'drain' or 'maint'"),
    ({"socket": "s", "server": "r", "state": "down"}, "'drain' or 'maint'"),
    ({"socket": "s"}, "server\n  Field required"),
    ({"server": "r"}, "socket\n  Field required"),
    ({"socket": " ", "server": "r"}, "socket is empty"),
    ({"socket": "s", "server": "a/b"}, "server must be a name without spaces or '/'"),
    ({"socket": "s", "server": "r", "backend": "my backend"}, "backend must be a name"),
    ({"socket": "s", "server": "r", "weight": 0}, "Extra inputs are not permitted"),
])
def test_invalid_haproxy_faults_are_refused(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        HaproxyFault.model_validate(spec)


def test_an_unknown_state_is_reported_with_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text("""\
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: drill}
target: {base_url: "http://127.0.0.1:18040", model: tiny}
phases:
  - {name: p, duration: 10s, faults: [f]}
faults:
  f:
    haproxy:
      socket: run/haproxy.sock
      server: replica-0
      state: down
""")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, env={})
    issues = [str(i).replace(str(tmp_path) + "/", "") for i in info.value.issues]
    assert issues == ["scenario.yaml:12:7: faults.f.haproxy.state: 'down' is not one of: "
                      "drain, maint"]


# --- parsing HAProxy's answers -------------------------------------------------------------


def test_servers_state_rows_admin_flags_and_addresses() -> None:
    fake_text = ("1\n" + STATE_HEADER + "\n"
                 "3 replicas 1 replica-0 127.0.0.1 2 8 1 1 120 15 3 4 6 0 0 0 - 18011 - 0 0 - - 0\n"
                 "3 replicas 2 replica-1 ::1 0 5 1 1 120 15 3 4 6 0 0 0 - 18021 - 0 0 - - 0\n\n")
    rows = hb.parse_servers_state(fake_text)
    assert [r["srv_name"] for r in rows] == ["replica-0", "replica-1"]
    assert hb.admin_state(int(rows[0]["srv_admin_state"])) == "drain"
    # FMAINT (0x01) with CMAINT (0x04): a server `disabled` in the config is in maint.
    assert hb.admin_state(int(rows[1]["srv_admin_state"])) == "maint"
    assert hb.admin_state(0x02) == "ready"  # maintenance inherited from a tracked server
    assert hb.server_address(rows[0]) == "127.0.0.1:18011"
    assert hb.server_address(rows[1]) == "[::1]:18021"
    assert hb.server_address({"srv_addr": "-", "srv_port": "0"}) is None
    assert hb.parse_servers_state("Can't find backend.\n") == []


def test_engines_are_found_by_address_then_by_name() -> None:
    engines = {"replica-0": "http://127.0.0.1:18010/metrics",
               "replica-1": "http://127.0.0.1:18021/metrics"}
    assert hb.engine_for(engines, "127.0.0.1:18021", "web-1") == ("replica-1", "by address")
    # The gateway stack: HAProxy's servers are the replicas' Toxiproxy proxies.
    assert hb.engine_for(engines, "127.0.0.1:18011", "replica-0") == ("replica-0", "by name")
    assert hb.engine_for(engines, "10.0.0.1:80", "web-1") == (None, "")


# --- preflight ---------------------------------------------------------------------------


def test_preflight_says_what_it_would_do_and_changes_nothing(
        fake: FakeHaproxy, short_dir: Path) -> None:
    _, injector = run_ctx(short_dir, spec_for(fake), {
        "replica-0": "http://127.0.0.1:18011/metrics",
        "replica-1": "http://127.0.0.1:18021/metrics"})
    lines = injector.preflight()
    assert lines[0] == (f"haproxy: set server replicas/replica-0 state drain via {fake.path} "
                        "(now ready, UP, at 127.0.0.1:18011)")
    assert lines[1] == "  revert: set server replicas/replica-0 state ready"
    assert lines[2] == "  replica behind it: replica-0 of target.engines (by address)"
    assert fake.sets() == []
    _, injector = run_ctx(short_dir, spec_for(fake, server="replica-1"))
    assert "judged from the state HAProxy reports only" in injector.preflight()[-1]


def test_preflight_errors_name_the_socket_and_the_server(fake: FakeHaproxy,
                                                         short_dir: Path) -> None:
    missing = short_dir / "none.sock"
    _, injector = run_ctx(short_dir, {"socket": str(missing), "server": "replica-0"})
    with pytest.raises(EnvironmentProblem, match=rf"socket {missing} does not exist"):
        injector.preflight()
    _, injector = run_ctx(short_dir, spec_for(fake, backend="web"))
    with pytest.raises(EnvironmentProblem, match=rf"HAProxy at {fake.path} has no backend "
                                                 r"'web' \(its proxies: llm, stats, "
                                                 r"replicas\); server 'replica-0'"):
        injector.preflight()
    _, injector = run_ctx(short_dir, spec_for(fake, server="replica-9"))
    with pytest.raises(EnvironmentProblem, match=rf"HAProxy at {fake.path} has no server "
                                                 r"'replica-9' in backend 'replicas' \(its "
                                                 r"servers: replica-0, replica-1\)"):
        injector.preflight()
    fake.admin["replica-0"] = hb.ADMF_FDRAIN
    _, injector = run_ctx(short_dir, spec_for(fake))
    with pytest.raises(EnvironmentProblem, match=r"replicas/replica-0 .* is already in drain"):
        injector.preflight()
    fake.level = "operator"
    _, injector = run_ctx(short_dir, spec_for(fake, state="maint"))
    with pytest.raises(EnvironmentProblem, match="at level operator; `set server` needs "
                                                 "`level admin`"):
        injector.preflight()
    assert fake.sets() == []


def test_a_socket_nobody_listens_on_is_named(short_dir: Path) -> None:
    stale = FakeHaproxy(short_dir / "stale.sock")
    stale.close(keep_file=True)  # HAProxy died and left its socket file
    _, injector = run_ctx(short_dir, {"socket": str(stale.path), "server": "replica-0"})
    with pytest.raises(EnvironmentProblem, match=rf"nothing listens on .* {stale.path}"):
        injector.preflight()


# --- apply and revert ----------------------------------------------------------------------


def test_drain_is_applied_and_reverted(fake: FakeHaproxy, short_dir: Path) -> None:
    _, injector = run_ctx(short_dir, spec_for(fake))
    action = injector.prepare()
    assert json.loads(json.dumps(action)) == action  # plain JSON, for the journal
    assert action == {"backend": "haproxy", "socket": str(fake.path), "proxy": "replicas",
                      "server": "replica-0", "state": "drain", "restore": "ready",
                      "address": "127.0.0.1:18011"}
    assert fake.sets() == []  # prepare changes nothing
    injector.apply()
    assert fake.sets() == ["set server replicas/replica-0 state drain"]
    assert fake.state_of("replica-0") == "drain" and fake.state_of("replica-1") == "ready"
    revert(action)
    assert fake.sets()[-1] == "set server replicas/replica-0 state ready"
    assert fake.state_of("replica-0") == "ready"
    revert(action)  # idempotent
    assert fake.state_of("replica-0") == "ready"


def test_a_previous_drain_is_restored_after_maint(fake: FakeHaproxy, short_dir: Path) -> None:
    fake.admin["replica-0"] = hb.ADMF_FDRAIN
    _, injector = run_ctx(short_dir, spec_for(fake, state="maint"))
    action = injector.prepare()
    assert action["restore"] == "drain"
    injector.apply()
    assert fake.state_of("replica-0") == "maint"
    revert(action)
    assert fake.sets()[-1] == "set server replicas/replica-0 state drain"
    assert fake.state_of("replica-0") == "drain"


def test_a_previous_maint_is_restored_after_drain(fake: FakeHaproxy, short_dir: Path) -> None:
    fake.admin["replica-1"] = hb.ADMF_FMAINT | 0x04  # `disabled` in the config
    _, injector = run_ctx(short_dir, spec_for(fake, server="replica-1"))
    action = injector.prepare()
    assert action["restore"] == "maint"
    injector.apply()
    assert fake.state_of("replica-1") == "drain"
    revert(action)
    assert fake.state_of("replica-1") == "maint"


def test_haproxys_refusal_is_an_error_with_its_text(fake: FakeHaproxy,
                                                    short_dir: Path) -> None:
    _, injector = run_ctx(short_dir, spec_for(fake))
    action = injector.prepare()
    fake.level = "operator"
    with pytest.raises(EnvironmentProblem, match="refused `set server replicas/replica-0 "
                                                 "state drain`: Permission denied"):
        injector.apply()
    with pytest.raises(EnvironmentProblem, match=r"refused .* state ready`: Permission denied"):
        revert(action)


def test_revert_when_haproxy_is_gone_has_nothing_to_do(short_dir: Path) -> None:
    fake = FakeHaproxy(short_dir / "haproxy.sock")
    _, injector = run_ctx(short_dir, spec_for(fake))
    action = injector.prepare()
    injector.apply()
    fake.close(keep_file=True)  # killed: its socket file is left, nothing listens
    revert(action)
    fake.path.unlink()  # and then no socket at all
    revert(action)
    # Reloaded without the server (or the backend): nothing of ours is left either.
    again = FakeHaproxy(short_dir / "haproxy.sock")
    try:
        revert({**action, "server": "replica-9"})
        revert({**action, "proxy": "web"})
        assert again.sets() == ["set server replicas/replica-9 state ready",
                                "set server web/replica-0 state ready"]
    finally:
        again.close()


def test_revert_in_a_fresh_process(fake: FakeHaproxy, short_dir: Path) -> None:
    """What `llmdrill cleanup` and the watchdog do: only the journaled action, through the
    registry, in another interpreter."""
    _, injector = run_ctx(short_dir, spec_for(fake))
    action = injector.prepare()
    injector.apply()
    code = "import json, sys\nfrom llmdrill.faults.base import revert\n" \
           "revert(json.loads(sys.argv[1]))\n"
    done = subprocess.run([sys.executable, "-c", code, json.dumps(action)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert fake.state_of("replica-0") == "ready"


# --- did it land? --------------------------------------------------------------------------


def arrivals(engine: str, start: float, values: dict[float, float]) -> list[MetricSample]:
    return [MetricSample(start + t, "vllm:prompt_tokens_total", v, {ENGINE_LABEL: engine})
            for t, v in values.items()]


def applied_evidence(ctx: RunContext, injector: HaproxyInjector,
                     metrics: list[MetricSample] | None = None,
                     ) -> tuple[Evidence, float]:
    """Applies the fault, reads it back at its end, and returns the evidence of a 20 s
    fault window that began just before the apply."""
    applied = time.time()
    injector.apply()
    injector.stop()
    assert ctx.store is not None
    evidence = ctx.store.load([], [FaultEvent("f", applied, applied + 20)], applied + 30)
    evidence.metrics = metrics or []
    return evidence, applied


ENGINES = {"replica-0": "http://127.0.0.1:18011/metrics",
           "replica-1": "http://127.0.0.1:18021/metrics"}


def test_seen_on_the_replicas_counter(fake: FakeHaproxy, short_dir: Path) -> None:
    ctx, injector = run_ctx(short_dir, spec_for(fake), ENGINES)
    injector.prepare()
    t0 = time.time()
    # Growing before the fault, flat from 2 s into it.
    metrics = arrivals("replica-0", t0, {float(t): 100.0 * min(t, 2) for t in range(-10, 21)})
    evidence, _ = applied_evidence(ctx, injector, metrics)
    effect = injector.effect(evidence)
    assert effect.landed is True, effect.detail
    assert effect.detail.startswith("replicas/replica-0 set to drain; replica-0 behind it "
                                    "received no new request")


def test_missed_when_the_replica_keeps_receiving(fake: FakeHaproxy, short_dir: Path) -> None:
    ctx, injector = run_ctx(short_dir, spec_for(fake), ENGINES)
    injector.prepare()
    t0 = time.time()
    metrics = arrivals("replica-0", t0, {float(t): 100.0 * (t + 10) for t in range(-10, 21)})
    evidence, _ = applied_evidence(ctx, injector, metrics)
    effect = injector.effect(evidence)
    assert effect.landed is False
    assert "still received new requests in the second half" in effect.detail


def test_without_a_replica_the_read_back_state_is_the_evidence(
        fake: FakeHaproxy, short_dir: Path) -> None:
    ctx, injector = run_ctx(short_dir, spec_for(fake, state="maint"))
    injector.prepare()
    evidence, _ = applied_evidence(ctx, injector)
    effect = injector.effect(evidence)
    assert effect.landed is True
    assert effect.detail.startswith("HAProxy read replicas/replica-0 back in maint (MAINT) "
                                    "after the command; no replica of target.engines")
    # A replica whose counter cannot tell (never scraped): the read-back too.
    other_run = short_dir / "run-2"
    other_run.mkdir()
    ctx, injector = run_ctx(other_run, spec_for(fake, server="replica-1"), ENGINES)
    injector.prepare()
    effect = injector.effect(applied_evidence(ctx, injector)[0])
    assert effect.landed is True and "replica-1's own counter cannot tell" in effect.detail


def test_a_state_changed_during_the_fault_is_noted(fake: FakeHaproxy,
                                                   short_dir: Path) -> None:
    ctx, injector = run_ctx(short_dir, spec_for(fake))
    injector.prepare()
    applied = time.time()
    injector.apply()
    fake.admin["replica-0"] = 0  # an operator set it ready again meanwhile
    injector.stop()
    injector.stop()  # a second stop reads nothing more
    assert ctx.store is not None
    evidence = ctx.store.load([], [FaultEvent("f", applied, applied + 20)], applied + 30)
    assert [d["when"] for _, d in evidence.events_of(hb.STATE_EVENT)] == ["after_set",
                                                                           "fault_end"]
    effect = injector.effect(evidence)
    assert effect.landed is True
    assert "(but in ready at the fault's end: changed meanwhile)" in effect.detail


def test_missed_when_haproxy_did_not_take_the_command(fake: FakeHaproxy,
                                                      short_dir: Path) -> None:
    fake.ignore_set = True
    ctx, injector = run_ctx(short_dir, spec_for(fake))
    injector.prepare()
    effect = injector.effect(applied_evidence(ctx, injector)[0])
    assert effect.landed is False
    assert "back in ready (UP) after `set server replicas/replica-0 state drain`" in \
        effect.detail


def test_unknown_without_an_apply(fake: FakeHaproxy, short_dir: Path) -> None:
    ctx, injector = run_ctx(short_dir, spec_for(fake))
    assert injector.effect(Evidence()).landed is None
    assert ctx.store is not None
    evidence = ctx.store.load([], [FaultEvent("f", 1.0, 2.0)], 3.0)
    effect = injector.effect(evidence)
    assert effect.landed is None and "no `set server" in effect.detail


def test_markers_show_the_command(fake: FakeHaproxy, short_dir: Path) -> None:
    ctx, injector = run_ctx(short_dir, spec_for(fake))
    injector.prepare()
    evidence, applied = applied_evidence(ctx, injector)
    [(at, label)] = hb.markers(evidence, applied - 1.0)
    assert label == "drain replica-0" and 1.0 <= at < 10.0
