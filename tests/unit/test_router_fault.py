"""The router backend: its spec, its revert action, how it judges its effect, and what it
says to vllm-router's HTTP admin API, against a fake router: a thread on 127.0.0.1 that
answers GET /list_workers and /workers and POST /remove_worker and /add_worker the way
vllm-router 0.1.17 does (plain-text answers to the POSTs, a remove of an unknown worker
is a 200 too, an add of a listed one a 400), and records what it is sent."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import ValidationError

from llmdrill.faults import router as rb
from llmdrill.faults.base import EnvironmentProblem, revert
from llmdrill.faults.registry import blast_radius, make_injector
from llmdrill.faults.router import RouterFault, RouterInjector
from llmdrill.harness.journal import Journal, outstanding_in, revert_outstanding
from llmdrill.harness.progress import Progress
from llmdrill.harness.runner import Runner, RunOptions
from llmdrill.model.context import RunContext
from llmdrill.model.evidence import EvidenceStore
from llmdrill.model.records import ENGINE_LABEL, Evidence, FaultEvent, MetricSample
from llmdrill.scenario.errors import ScenarioError
from llmdrill.scenario.loader import load_scenario
from llmdrill.scenario.models import Fault, Scenario

pytestmark = pytest.mark.unit

W0 = "http://127.0.0.1:18011"  # the gateway stack's workers: the replicas' proxies
W1 = "http://127.0.0.1:18021"


class FakeRouter:
    """vllm-router's admin API on a port of its own."""

    def __init__(self, workers: list[str] | None = None) -> None:
        self.workers = list(workers if workers is not None else [W1, W0])
        self.requests: list[tuple[str, str]] = []  # (method, path with query)
        self.ignore_remove = False  # answers 200 but keeps the worker
        self.add_status = 200  # 400: the worker failed the router's health check
        self.add_delay = 0.0
        self.list_delay = 0.0
        self.list_body: str | None = None  # instead of the JSON (not a vllm-router)
        self.on_remove: Callable[[], None] | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: str, kind: str = "text/plain") -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                fake.requests.append(("GET", self.path))
                if self.path == "/list_workers":
                    time.sleep(fake.list_delay)
                    if fake.list_body is not None:
                        self._send(200, fake.list_body, "text/html")
                    else:
                        self._send(200, json.dumps({"urls": fake.workers}),
                                   "application/json")
                elif self.path == "/workers":
                    self._send(200, json.dumps({"workers": [
                        {"url": u, "model_id": "tiny", "is_healthy": True, "load": 0,
                         "worker_type": "regular"} for u in fake.workers],
                        "total": len(fake.workers)}), "application/json")
                else:
                    self._send(404, "")

            def do_POST(self) -> None:
                fake.requests.append(("POST", self.path))
                parts = urlsplit(self.path)
                url = parse_qs(parts.query).get("url", [""])[0]
                if parts.path == "/remove_worker":
                    if fake.on_remove is not None:
                        fake.on_remove()
                    if not fake.ignore_remove and url in fake.workers:
                        fake.workers.remove(url)
                    self._send(200, f"Successfully removed worker: {url}")
                elif parts.path == "/add_worker":
                    time.sleep(fake.add_delay)
                    if url in fake.workers:
                        self._send(400, f"Worker {url} already exists")
                    elif fake.add_status != 200:
                        self._send(fake.add_status, f"Worker {url} failed health check")
                    else:
                        fake.workers.append(url)
                        self._send(200, f"Successfully added worker: {url}")
                else:
                    self._send(404, "")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def posts(self) -> list[str]:
        return [path for method, path in self.requests if method == "POST"]


@pytest.fixture
def fake() -> Iterator[FakeRouter]:
    server = FakeRouter()
    yield server
    server.close()


def gone_url() -> str:
    """A router that was there and is gone: a port nothing listens on."""
    server = FakeRouter()
    server.close()
    return server.url


def scenario_for(spec: dict[str, Any], engines: dict[str, str] | None = None,
                 name: str = "f") -> Scenario:
    return Scenario.model_validate({
        "apiVersion": "llmdrill/v1", "kind": "Scenario", "metadata": {"name": "rtr"},
        "target": {"base_url": "http://127.0.0.1:18030", "model": "tiny",
                   "engines": {k: {"metrics_url": v} for k, v in (engines or {}).items()}},
        "faults": {name: {"router": spec}},
        "phases": [{"name": "p", "duration": "10s", "faults": [name]}],
    })


def run_ctx(run_dir: Path, spec: dict[str, Any], engines: dict[str, str] | None = None,
            name: str = "f") -> tuple[RunContext, RouterInjector]:
    scenario = scenario_for(spec, engines, name)
    store = EvidenceStore(run_dir / "evidence.db")
    ctx = RunContext("run-1", scenario, store, {}, Progress(quiet=True), run_dir)
    injector = make_injector(ctx, name, scenario.faults[name])
    assert isinstance(injector, RouterInjector)
    return ctx, injector


def spec_for(fake: FakeRouter, **extra: Any) -> dict[str, Any]:
    return {"url": fake.url, "worker": W0, **extra}


# Replica i's own metrics are on the replica's port; the workers are its proxy's.
ENGINES = {"replica-0": "http://127.0.0.1:18010/metrics",
           "replica-1": "http://127.0.0.1:18020/metrics"}
ENGINES_AT_WORKERS = {"replica-0": "http://127.0.0.1:18011/metrics",
                      "replica-1": "http://127.0.0.1:18021/metrics"}


# --- the scenario format -----------------------------------------------------------------


def test_a_router_fault_is_a_fault_backend() -> None:
    fault = Fault.model_validate({"router": {"url": "http://127.0.0.1:18030",
                                             "worker": W0}})
    assert fault.backend == "router"
    assert isinstance(fault.spec, RouterFault)
    assert (fault.spec.action, fault.spec.add_timeout, fault.spec.engine) == ("remove", 30.0,
                                                                              None)
    assert blast_radius(fault) == 1
    assert fault.kind.label is not None and fault.kind.label(fault.spec) == "router remove"
    assert fault.kind.description
    spec = RouterFault.model_validate({"url": "https://router.example:8443/", "worker": W0,
                                       "add_timeout": "2m", "engine": "replica-0"})
    assert (spec.add_timeout, spec.engine) == (120.0, "replica-0")


@pytest.mark.parametrize(("spec", "message"), [
    ({"url": "127.0.0.1:18030", "worker": W0}, "url\n.*must start with http:// or https://"),
    ({"url": "http://127.0.0.1:port", "worker": W0}, "url\n.*is not a valid URL"),
    ({"url": "http:///list", "worker": W0}, "has no host"),
    ({"url": "http://127.0.0.1:18030", "worker": "127.0.0.1:18011"},
     "worker\n.*must start with http://"),
    ({"url": "http://127.0.0.1:18030"}, "worker\n  Field required"),
    ({"worker": W0}, "url\n  Field required"),
    ({"url": "http://127.0.0.1:18030", "worker": W0, "action": "add"}, "'remove'"),
    ({"url": "http://127.0.0.1:18030", "worker": W0, "add_timeout": "0s"},
     "add_timeout must be more than 0s"),
    ({"url": "http://127.0.0.1:18030", "worker": W0, "add_timeout": 30}, "needs a unit"),
    ({"url": "http://127.0.0.1:18030", "worker": W0, "engine": " "}, "engine is empty"),
    ({"url": "http://127.0.0.1:18030", "worker": W0, "server": "replica-0"},
     "Extra inputs are not permitted"),
])
def test_invalid_router_faults_are_refused(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RouterFault.model_validate(spec)


SCENARIO = """\
apiVersion: llmdrill/v1
kind: Scenario
metadata: {{name: drill}}
target:
  base_url: "http://127.0.0.1:18030"
  model: tiny
  engines:
    replica-0: {{metrics_url: "http://127.0.0.1:18010/metrics"}}
phases:
  - {{name: p, duration: 10s, faults: [f]}}
faults:
  f:
    router:
      url: {url}
      worker: http://127.0.0.1:18011
      {extra}
"""


def test_spec_errors_are_reported_with_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(SCENARIO.format(url="127.0.0.1:18030", extra="timeout: 5s"))
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, env={})
    issues = [str(i).replace(str(tmp_path) + "/", "") for i in info.value.issues]
    assert any(i.startswith("scenario.yaml:14:7: faults.f.router.url: ")
               and "must start with http://" in i for i in issues), issues
    assert any(i.startswith("scenario.yaml:16:7: faults.f.router.timeout: ")
               for i in issues), issues


def test_engine_must_be_one_of_target_engines(tmp_path: Path) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(SCENARIO.format(url="http://127.0.0.1:18030", extra="engine: replica-9"))
    with pytest.raises(ScenarioError, match=r"faults.f.router.engine: unknown engine "
                                            r"'replica-9' \(target.engines: replica-0\)"):
        load_scenario(path, env={})
    path.write_text(SCENARIO.format(url="http://127.0.0.1:18030", extra="engine: replica-0"))
    spec = load_scenario(path, env={}).faults["f"].spec
    assert isinstance(spec, RouterFault) and spec.engine == "replica-0"


# --- which replica is behind the worker ----------------------------------------------------


def test_engines_are_found_given_then_by_address_then_by_name() -> None:
    both = {**ENGINES, "web-0": "http://127.0.0.1:18011/metrics"}
    assert rb.engine_for(both, W0, "replica-0") == ("replica-0", "given in `engine`")
    assert rb.engine_for(both, W0) == ("web-0", "by address")
    assert rb.engine_for(ENGINES_AT_WORKERS, W1) == ("replica-1", "by address")
    # Workers named by host, as in Docker Compose or Kubernetes.
    assert rb.engine_for({"replica-0": "http://10.0.0.5:8000/metrics"},
                         "http://replica-0:8000") == ("replica-0", "by name")
    assert rb.engine_for({"replica-0": "http://replica-0:8000/metrics"},
                         "http://replica-0:8000/") == ("replica-0", "by address")
    # The gateway stack's workers are the replicas' proxies: nothing matches.
    assert rb.engine_for(ENGINES, W0) == (None, "")
    assert rb.worker_address("http://[::1]:8000/v1") == "[::1]:8000"


# --- preflight ---------------------------------------------------------------------------


def test_preflight_says_what_it_would_do_and_changes_nothing(
        fake: FakeRouter, tmp_path: Path) -> None:
    _, injector = run_ctx(tmp_path, spec_for(fake), ENGINES_AT_WORKERS)
    lines = injector.preflight()
    assert lines[0] == (f"router: remove worker {W0} from vllm-router at {fake.url} (now "
                        "listed, healthy, load 0; the router has 2 workers)")
    assert lines[1] == (f"  revert: POST {fake.url}/add_worker?url={W0} (waits up to 30s "
                        "for the router's health check of it)")
    assert lines[2] == "  replica behind it: replica-0 of target.engines (by address)"
    assert len(lines) == 3
    assert fake.posts() == []
    _, injector = run_ctx(tmp_path, spec_for(fake, engine="replica-0"), ENGINES)
    assert injector.preflight()[2] == ("  replica behind it: replica-0 of target.engines "
                                       "(given in `engine`)")
    _, injector = run_ctx(tmp_path, spec_for(fake), ENGINES)
    assert "judged from the router's worker list only" in injector.preflight()[-1]
    assert fake.posts() == []


def test_preflight_notes_the_routers_only_worker(tmp_path: Path) -> None:
    lonely = FakeRouter([W0])
    try:
        _, injector = run_ctx(tmp_path, spec_for(lonely))
        lines = injector.preflight()
        assert "the router has 1 worker)" in lines[0]
        assert lines[-1] == ("  note: it is the router's only worker: every request fails "
                             "while it is out")
    finally:
        lonely.close()


def test_preflight_names_a_router_that_does_not_answer(tmp_path: Path) -> None:
    url = gone_url()
    _, injector = run_ctx(tmp_path, {"url": url, "worker": W0})
    with pytest.raises(EnvironmentProblem, match=rf"cannot reach vllm-router at {url} \(GET "
                                                 r"/list_workers: connection refused\): is it "
                                                 "running"):
        injector.preflight()


def test_preflight_names_a_router_that_is_too_slow(fake: FakeRouter, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rb, "TIMEOUT_S", 0.2)
    fake.list_delay = 1.0
    _, injector = run_ctx(tmp_path, spec_for(fake))
    with pytest.raises(EnvironmentProblem, match=rf"vllm-router at {fake.url} did not answer "
                                                 r"GET /list_workers within 0.2s"):
        injector.preflight()


def test_preflight_names_something_that_is_not_a_router(fake: FakeRouter,
                                                        tmp_path: Path) -> None:
    fake.list_body = "<html>hello</html>"
    _, injector = run_ctx(tmp_path, spec_for(fake))
    with pytest.raises(EnvironmentProblem, match=rf"vllm-router at {fake.url} answered GET "
                                                 r"/list_workers with something that is not "
                                                 r"JSON: '<html>hello</html>'"):
        injector.preflight()
    fake.list_body = '{"workers": []}'
    with pytest.raises(EnvironmentProblem, match="without a list of worker URLs"):
        injector.preflight()
    _, injector = run_ctx(tmp_path, {"url": fake.url + "/v1", "worker": W0})
    with pytest.raises(EnvironmentProblem, match=r"answered GET /list_workers with HTTP 404"):
        injector.preflight()


def test_preflight_names_the_workers_the_router_has(fake: FakeRouter, tmp_path: Path) -> None:
    _, injector = run_ctx(tmp_path, spec_for(fake, worker="http://127.0.0.1:18099"))
    with pytest.raises(EnvironmentProblem, match=rf"vllm-router at {fake.url} does not list "
                                                 r"worker http://127.0.0.1:18099 \(its "
                                                 rf"workers: {W1}, {W0}\)"):
        injector.preflight()
    _, injector = run_ctx(tmp_path, spec_for(fake, worker=W0 + "/"))
    with pytest.raises(EnvironmentProblem, match=rf"did you mean {W0}\? give the URL exactly"):
        injector.preflight()
    fake.workers.remove(W0)  # left removed by a drill that was not reverted
    _, injector = run_ctx(tmp_path, spec_for(fake))
    with pytest.raises(EnvironmentProblem, match=r"\(its workers: http://127.0.0.1:18021\): "
                                                 r"the fault would change nothing .*"
                                                 r"`llmdrill cleanup`"):
        injector.preflight()
    assert fake.posts() == []


# --- apply and revert ----------------------------------------------------------------------


def test_remove_is_applied_and_reverted(fake: FakeRouter, tmp_path: Path) -> None:
    _, injector = run_ctx(tmp_path, spec_for(fake, add_timeout="20s"))
    assert injector.describe() == f"remove worker {W0} from vllm-router at {fake.url}"
    action = injector.prepare()
    assert json.loads(json.dumps(action)) == action  # plain JSON, for the journal
    assert action == {"backend": "router", "url": fake.url, "worker": W0, "action": "remove",
                      "add_timeout": 20.0, "revert_timeout": 20.0 + rb.REVERT_MARGIN_S}
    assert fake.posts() == []  # prepare changes nothing
    injector.apply()
    assert fake.posts() == ["/remove_worker?url=http%3A%2F%2F127.0.0.1%3A18011"]
    assert fake.workers == [W1]
    revert(action)
    assert fake.posts()[-1] == "/add_worker?url=http%3A%2F%2F127.0.0.1%3A18011"
    assert fake.workers == [W1, W0]
    revert(action)  # idempotent: already listed, nothing is sent
    assert len(fake.posts()) == 2 and fake.workers == [W1, W0]


def test_the_revert_action_is_journaled_before_the_remove(fake: FakeRouter,
                                                          tmp_path: Path) -> None:
    """Through the runner's own apply: the journal holds the way back when the router
    gets the remove; a remove the router refuses leaves an apply_failed entry whose revert
    finds the worker still listed."""
    scenario = scenario_for(spec_for(fake))
    runner = Runner(tmp_path / "scenario.yaml", scenario, RunOptions(out_dir=tmp_path))
    journal = Journal(tmp_path / "journal.jsonl", "run-j")
    seen: list[list[dict[str, Any]]] = []
    fake.on_remove = lambda: seen.append(
        [json.loads(line) for line in journal.path.read_text().splitlines()])
    store = EvidenceStore(tmp_path / "evidence.db")
    runner._apply("f", journal, store)
    [events] = seen
    assert [e["event"] for e in events] == ["intent"]
    assert events[0]["action"]["worker"] == W0 and events[0]["action"]["backend"] == "router"
    assert events[0]["description"] == f"remove worker {W0} from vllm-router at {fake.url}"
    assert fake.workers == [W1]
    # What `llmdrill cleanup` does with it.
    assert [r[1] for r in revert_outstanding(journal)] == [None]
    assert fake.workers == [W1, W0]
    assert outstanding_in(journal.path) == []


def test_a_router_that_refuses_or_ignores_the_remove_is_an_error(fake: FakeRouter,
                                                                 tmp_path: Path) -> None:
    _, injector = run_ctx(tmp_path, spec_for(fake))
    action = injector.prepare()
    fake.ignore_remove = True
    with pytest.raises(EnvironmentProblem, match=rf"vllm-router at {fake.url} still lists "
                                                 rf"worker {W0} after POST /remove_worker "
                                                 r"answered HTTP 200: it did not remove it"):
        injector.apply()
    revert(action)  # still listed: nothing to add
    assert fake.posts() == ["/remove_worker?url=http%3A%2F%2F127.0.0.1%3A18011"]
    _, injector = run_ctx(tmp_path, {"url": fake.url + "/v1", "worker": W0})
    with pytest.raises(EnvironmentProblem, match=r"refused POST /remove_worker\?url=.*HTTP "
                                                 "404"):
        injector.apply()


def test_a_worker_the_router_will_not_take_back_is_a_revert_error(
        fake: FakeRouter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, injector = run_ctx(tmp_path, spec_for(fake))
    action = injector.prepare()
    injector.apply()
    fake.add_status = 400
    with pytest.raises(EnvironmentProblem, match=rf"refused POST /add_worker\?url={W0}: HTTP "
                                                 rf"400 Worker {W0} failed health check; its "
                                                 rf"workers now: {W1}. Add it by hand"):
        revert(action)
    fake.add_status = 200
    fake.add_delay = 0.6
    with pytest.raises(EnvironmentProblem, match=r"did not answer POST /add_worker\?url=.* "
                                                 r"within 0.3s \(it answers once the worker "
                                                 r"passes its health check: is the worker up"):
        revert({**action, "add_timeout": 0.3})
    # The router added it after all (late): a second revert finds it listed.
    deadline = time.time() + 5
    while W0 not in fake.workers and time.time() < deadline:
        time.sleep(0.05)
    revert(action)
    assert fake.workers == [W1, W0]


def test_revert_when_the_router_is_gone_has_nothing_to_do(tmp_path: Path) -> None:
    action = {"backend": "router", "url": gone_url(), "worker": W0, "action": "remove",
              "add_timeout": 30.0, "revert_timeout": 45.0}
    revert(action)  # a new router starts from its --worker-urls
    with pytest.raises(ValueError, match="unknown vllm-router action to revert 'drain'"):
        revert({**action, "action": "drain"})


def test_revert_in_a_fresh_process(fake: FakeRouter, tmp_path: Path) -> None:
    """What `llmdrill cleanup` and the watchdog do: only the journaled action, through the
    registry, in another interpreter."""
    _, injector = run_ctx(tmp_path, spec_for(fake))
    action = injector.prepare()
    injector.apply()
    assert fake.workers == [W1]
    code = "import json, sys\nfrom llmdrill.faults.base import revert\n" \
           "revert(json.loads(sys.argv[1]))\n"
    done = subprocess.run([sys.executable, "-c", code, json.dumps(action)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert fake.workers == [W1, W0]


# --- did it land? --------------------------------------------------------------------------


def arrivals(engine: str, start: float, values: dict[float, float]) -> list[MetricSample]:
    return [MetricSample(start + t, "vllm:prompt_tokens_total", v, {ENGINE_LABEL: engine})
            for t, v in values.items()]


def applied_evidence(ctx: RunContext, injector: RouterInjector,
                     metrics: list[MetricSample] | None = None) -> Evidence:
    """Applies the fault, reads it back at its end, and returns the evidence of a 20 s
    fault window that began just before the apply."""
    applied = time.time()
    injector.apply()
    injector.stop()
    assert ctx.store is not None
    evidence = ctx.store.load([], [FaultEvent("f", applied, applied + 20)], applied + 30)
    evidence.metrics = metrics or []
    return evidence


def test_seen_on_the_replicas_counter(fake: FakeRouter, tmp_path: Path) -> None:
    ctx, injector = run_ctx(tmp_path, spec_for(fake, engine="replica-0"), ENGINES)
    injector.prepare()
    t0 = time.time()
    # Growing before the fault, flat from 2 s into it.
    metrics = arrivals("replica-0", t0, {float(t): 100.0 * min(t, 2) for t in range(-10, 21)})
    effect = injector.effect(applied_evidence(ctx, injector, metrics))
    assert effect.landed is True, effect.detail
    assert effect.detail.startswith(f"worker {W0} removed from vllm-router; replica-0 behind "
                                    "it received no new request")


def test_seen_on_the_replica_found_by_address(fake: FakeRouter, tmp_path: Path) -> None:
    ctx, injector = run_ctx(tmp_path, spec_for(fake, worker=W1), ENGINES_AT_WORKERS)
    assert injector.engine == "replica-1"
    injector.prepare()
    t0 = time.time()
    metrics = arrivals("replica-1", t0, {float(t): 50.0 * min(t, 1) for t in range(-10, 21)})
    effect = injector.effect(applied_evidence(ctx, injector, metrics))
    assert effect.landed is True and "replica-1 behind it" in effect.detail


def test_missed_when_the_replica_keeps_receiving(fake: FakeRouter, tmp_path: Path) -> None:
    ctx, injector = run_ctx(tmp_path, spec_for(fake, engine="replica-0"), ENGINES)
    injector.prepare()
    t0 = time.time()
    metrics = arrivals("replica-0", t0, {float(t): 100.0 * (t + 10) for t in range(-10, 21)})
    effect = injector.effect(applied_evidence(ctx, injector, metrics))
    assert effect.landed is False
    assert "still received new requests in the second half" in effect.detail


def test_without_a_replica_the_read_back_list_is_the_evidence(
        fake: FakeRouter, tmp_path: Path) -> None:
    ctx, injector = run_ctx(tmp_path, spec_for(fake), ENGINES)
    assert injector.engine is None
    action = injector.prepare()
    effect = injector.effect(applied_evidence(ctx, injector))
    assert effect.landed is True
    assert effect.detail.startswith(f"vllm-router's worker list read back without worker {W0} "
                                    "after the command; no replica of target.engines")
    # A replica whose counter cannot tell (never scraped): the read-back too.
    revert(action)
    other_run = tmp_path / "run-2"
    other_run.mkdir()
    ctx, injector = run_ctx(other_run, spec_for(fake, engine="replica-0"), ENGINES)
    injector.prepare()
    effect = injector.effect(applied_evidence(ctx, injector))
    assert effect.landed is True and "replica-0's own counter cannot tell" in effect.detail


def test_a_worker_added_back_during_the_fault_is_noted(fake: FakeRouter,
                                                       tmp_path: Path) -> None:
    ctx, injector = run_ctx(tmp_path, spec_for(fake))
    injector.prepare()
    applied = time.time()
    injector.apply()
    fake.workers.append(W0)  # an operator added it back meanwhile
    injector.stop()
    injector.stop()  # a second stop reads nothing more
    assert ctx.store is not None
    evidence = ctx.store.load([], [FaultEvent("f", applied, applied + 20)], applied + 30)
    reads = [d for _, d in evidence.events_of(rb.STATE_EVENT)]
    assert [(d["when"], d["listed"]) for d in reads] == [("after_remove", False),
                                                         ("fault_end", True)]
    effect = injector.effect(evidence)
    assert effect.landed is True
    assert "(but listed again at the fault's end: added back meanwhile)" in effect.detail


def test_missed_when_the_router_still_listed_it(fake: FakeRouter, tmp_path: Path) -> None:
    ctx, injector = run_ctx(tmp_path, spec_for(fake))
    assert ctx.store is not None
    ctx.store.add_event(1.0, rb.REMOVE_EVENT, {"fault": "f", "worker": W0})
    ctx.store.add_event(1.1, rb.STATE_EVENT, {"fault": "f", "when": "after_remove",
                                              "listed": True, "workers": 2})
    effect = injector.effect(ctx.store.load([], [FaultEvent("f", 1.0, 2.0)], 3.0))
    assert effect.landed is False
    assert f"still listed worker {W0} after `POST /remove_worker`" in effect.detail


def test_unknown_without_an_apply_or_a_read_back(fake: FakeRouter, tmp_path: Path) -> None:
    ctx, injector = run_ctx(tmp_path, spec_for(fake))
    assert injector.effect(Evidence()).landed is None
    assert ctx.store is not None
    effect = injector.effect(ctx.store.load([], [FaultEvent("f", 1.0, 2.0)], 3.0))
    assert effect.landed is None and "no `POST /remove_worker`" in effect.detail
    ctx.store.add_event(1.0, rb.REMOVE_EVENT, {"fault": "f", "worker": W0})
    effect = injector.effect(ctx.store.load([], [FaultEvent("f", 1.0, 2.0)], 3.0))
    assert effect.landed is None and "were not read back after the command" in effect.detail


def test_markers_show_the_command(fake: FakeRouter, tmp_path: Path) -> None:
    ctx, injector = run_ctx(tmp_path, spec_for(fake))
    action = injector.prepare()
    applied = time.time()
    evidence = applied_evidence(ctx, injector)
    [(at, label)] = rb.markers(evidence, applied - 1.0)
    assert label == "remove 127.0.0.1:18011" and 1.0 <= at < 10.0
    revert(action)
    other_run = tmp_path / "run-2"
    other_run.mkdir()
    ctx, injector = run_ctx(other_run, spec_for(fake, engine="replica-0"), ENGINES)
    injector.prepare()
    [(_, label)] = rb.markers(applied_evidence(ctx, injector), applied)
    assert label == "remove replica-0"
