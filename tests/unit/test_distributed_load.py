"""Locust's distributed mode on one machine (`load.processes`): every worker's sample file
is read, the master's word that a worker was lost is kept apart from the requests and
names the worker, and the scenario refuses process counts that cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmdrill.load.config import (
    WORKER_LOST,
    WORKER_STARTED,
    LoadConfig,
    process_samples_glob,
    process_samples_path,
)
from llmdrill.load.runner import LocustProcess
from llmdrill.scenario.errors import ScenarioError
from llmdrill.scenario.loader import load_scenario
from llmdrill.scenario.models import Scenario

pytestmark = pytest.mark.unit

BASE = """
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: d}
target: {base_url: "http://127.0.0.1:8000", model: tiny}
load: {users: USERS, processes: PROCS}
phases: [{name: p, duration: 1s}]
checks: [{name: s, phase: p, slo: {error_rate: {max: 0.1}}}]
"""


def _scenario(tmp_path: Path, users: int, processes: int) -> Scenario:
    path = tmp_path / f"d-{users}-{processes}.yaml"
    path.write_text(BASE.replace("USERS", str(users)).replace("PROCS", str(processes)))
    return load_scenario(path)


def test_worker_sample_files_sit_beside_the_masters_and_match_its_glob(tmp_path: Path) -> None:
    samples = str(tmp_path / "samples.jsonl")
    worker = Path(process_samples_path(samples, 4242))
    assert worker == tmp_path / "samples-w4242.jsonl"
    assert list(tmp_path.glob(process_samples_glob(samples))) == []
    worker.touch()
    assert list(tmp_path.glob(process_samples_glob(samples))) == [worker]


def test_every_workers_requests_are_read_and_a_lost_worker_is_named(tmp_path: Path) -> None:
    samples = tmp_path / "samples.jsonl"
    samples.write_text("")
    load = LocustProcess(LoadConfig(base_url="http://127.0.0.1:1", model="m",
                                    samples_path=str(samples)), 4, 4, 1, tmp_path, processes=2)
    one, two = (Path(process_samples_path(str(samples), pid)) for pid in (11, 12))
    one.write_text(f'{{"kind":"{WORKER_STARTED}","worker":"w-a","pid":11,"host":"h"}}\n'
                   '{"start":1.0,"end":2.0}\n')
    two.write_text('{"start":3.0,"end":4.0}\n{"start":5.0')  # a torn line waits
    records = load.read_new_samples()
    assert sorted(r["start"] for r in records) == [1.0, 3.0]
    assert load.lost_workers == []
    with samples.open("a") as fh:
        fh.write(f'{{"kind":"{WORKER_LOST}","worker":"w-a","at":9.0,"workers":1}}\n')
    with two.open("a") as fh:
        fh.write(',"end":6.0}\n')
    records = load.read_new_samples()
    assert records == [{"start": 5.0, "end": 6.0}]  # control records are not requests
    assert load.lost_workers == [{"kind": WORKER_LOST, "worker": "w-a", "at": 9.0,
                                  "workers": 1, "pid": 11, "host": "h"}]
    load.close()


def test_one_process_reads_only_its_own_file(tmp_path: Path) -> None:
    samples = tmp_path / "samples.jsonl"
    samples.write_text('{"start":1.0,"end":2.0}\n')
    Path(process_samples_path(str(samples), 5)).write_text('{"start":3.0,"end":4.0}\n')
    load = LocustProcess(LoadConfig(base_url="http://127.0.0.1:1", model="m",
                                    samples_path=str(samples)), 1, 1, 1, tmp_path)
    assert load.read_new_samples() == [{"start": 1.0, "end": 2.0}]
    load.close()


def test_the_locust_command_uses_its_distributed_mode_on_the_loopback(tmp_path: Path
                                                                      ) -> None:
    cfg = LoadConfig(base_url="http://127.0.0.1:1", model="m",
                     samples_path=str(tmp_path / "samples.jsonl"))
    load = LocustProcess(cfg, 4, 4, 1, tmp_path, processes=2)
    cmd = load.command()
    assert cmd[cmd.index("--processes") + 1] == "2"
    assert cmd[cmd.index("--master-bind-host") + 1] == "127.0.0.1"
    port = cmd[cmd.index("--master-bind-port") + 1]
    assert cmd[cmd.index("--master-port") + 1] == port
    assert "--processes" not in LocustProcess(cfg, 4, 4, 1, tmp_path).command()


def test_processes_are_checked_against_users(tmp_path: Path) -> None:
    assert _scenario(tmp_path, 4, 2).load.processes == 2
    assert _scenario(tmp_path, 4, 1).load.processes == 1
    with pytest.raises(ScenarioError, match="each process needs"):
        _scenario(tmp_path, 2, 3)
    with pytest.raises(ScenarioError, match="processes"):
        _scenario(tmp_path, 2500, 1)
    assert _scenario(tmp_path, 2500, 2).load.users == 2500
    with pytest.raises(ScenarioError, match="processes"):
        _scenario(tmp_path, 4, 0)


REMOTE = BASE.replace("processes: PROCS", "processes: PROCS, remote_workers: REMOTE")


def _remote(tmp_path: Path, users: int, remote: int, processes: int = 1) -> Scenario:
    path = tmp_path / f"r-{users}-{remote}-{processes}.yaml"
    path.write_text(REMOTE.replace("USERS", str(users)).replace("PROCS", str(processes))
                    .replace("REMOTE", str(remote)))
    return load_scenario(path)


def test_remote_workers_are_checked_against_users_and_processes(tmp_path: Path) -> None:
    assert _remote(tmp_path, 4, 2).load.remote_workers == 2
    assert _remote(tmp_path, 4, 2).load.master.bind == "127.0.0.1"
    with pytest.raises(ScenarioError, match="do not mix"):
        _remote(tmp_path, 4, 2, processes=2)
    with pytest.raises(ScenarioError, match="each worker needs"):
        _remote(tmp_path, 1, 2)


def test_the_master_waits_for_remote_workers_where_the_scenario_says(tmp_path: Path) -> None:
    cfg = LoadConfig(base_url="http://127.0.0.1:1", model="m",
                     samples_path=str(tmp_path / "samples.jsonl"))
    cmd = LocustProcess(cfg, 4, 4, 1, tmp_path, remote_workers=3,
                        master=("127.0.0.1", 6000, 30.0)).command()
    assert "--master" in cmd and "--processes" not in cmd
    assert cmd[cmd.index("--expect-workers") + 1] == "3"
    assert cmd[cmd.index("--master-bind-port") + 1] == "6000"
    assert cmd[cmd.index("--expect-workers-max-wait") + 1] == "30"


def test_the_configuration_travels_as_json_to_a_remote_worker(tmp_path: Path) -> None:
    cfg = LoadConfig(base_url="http://127.0.0.1:1", model="m",
                     samples_path=str(tmp_path / "samples.jsonl"), api_key_env="KEY_VAR")
    path = tmp_path / "load.json"
    cfg.dump(path)
    assert LoadConfig.from_json(path.read_text()) == cfg  # the key's name only, no key


def test_load_worker_refuses_a_master_that_is_not_host_and_port() -> None:
    from typer.testing import CliRunner

    from llmdrill.cli import app

    got = CliRunner().invoke(app, ["load-worker", "--master", "nowhere"])
    assert got.exit_code == 2
    assert "HOST:PORT" in got.output
