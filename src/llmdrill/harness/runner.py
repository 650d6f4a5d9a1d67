"""Run one scenario: preflight, load, faults on the timeline, evidence, verdicts, reports.

Whatever happens (a check failing, an exception, Ctrl-C, SIGTERM, a guardrail), the
`finally` path reverts every fault the journal holds, stops the load, and writes the
(possibly partial) reports.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from llmdrill.checks import evaluate_check
from llmdrill.checks.counters import counter_rate
from llmdrill.checks.probes import RunningProbe
from llmdrill.checks.stats import client_series, request_stats
from llmdrill.faults.base import EnvironmentProblem, Injector
from llmdrill.faults.registry import backend_of, blast_radius, make_injector
from llmdrill.harness.busy_gate import wait_until_busy
from llmdrill.harness.journal import Journal, revert_outstanding
from llmdrill.harness.live import LiveStats
from llmdrill.harness.phase_end import BackWatcher
from llmdrill.harness.plan import Plan, PlannedPhase, compile_plan
from llmdrill.harness.preflight import check_metrics, check_target
from llmdrill.harness.progress import Progress
from llmdrill.harness.secrets import SecretMissing, api_key, auth_headers, redact
from llmdrill.harness.services import Callbacks, Services
from llmdrill.harness.versions import engine_version, harness_versions
from llmdrill.load.config import LoadConfig, RequestShapeConfig
from llmdrill.load.runner import LOCAL_WORKERS_WAIT, LocustProcess
from llmdrill.model.context import RunContext
from llmdrill.model.events import EventKind
from llmdrill.model.evidence import EvidenceStore
from llmdrill.model.records import (
    ENGINE_LABEL,
    Evidence,
    FaultEvent,
    MetricSample,
    PhaseWindow,
)
from llmdrill.model.result import (
    CheckResult,
    FaultResult,
    PhaseResult,
    RunResult,
    RunStatus,
    ScenarioInfo,
    Series,
    TargetInfo,
)
from llmdrill.model.verdict import FaultEffect, decide_run_status
from llmdrill.monitoring.alert_watch import AlertWatcher
from llmdrill.monitoring.guard_poller import GuardPoller
from llmdrill.monitoring.prometheus import promql_range
from llmdrill.monitoring.webhook import WebhookReceiver, notification_markers
from llmdrill.plugin import RunSetup
from llmdrill.probes.engine_metrics import MetricsScraper
from llmdrill.report import write_reports
from llmdrill.scenario.models import Scenario

# Engine gauges charted in every report, by short name; first name the target exposes wins.
ENGINE_GAUGES = {
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "preemptions": ("vllm:num_preemptions_total",),  # a counter: charted as its running total
}


# A replica's finished requests: charted as a rate, its traffic.
SERVED_COUNTER = "vllm:request_success_total"


def _sums_by_name(samples: list[MetricSample]) -> dict[str, list[tuple[float, float]]]:
    """Each metric name's values summed over its label sets, per scrape, in time order."""
    sums: dict[str, dict[float, float]] = {}
    for m in samples:
        per_ts = sums.setdefault(m.name, {})
        per_ts[m.ts] = per_ts.get(m.ts, 0.0) + m.value
    return {name: sorted(per_ts.items()) for name, per_ts in sums.items()}


# How long past its planned revert a fault may stay before the watchdog reverts it.
LIFETIME_GRACE_S = 30.0


class Aborted(Exception):
    """The run stops early; faults are reverted and a partial report is written."""


@dataclass
class RunOptions:
    out_dir: Path = Path("reports")
    tick: float = 0.5
    allow_production: bool = False  # --allow-production on the command line
    keep_samples: bool = False  # --keep-samples: the load's samples files stay beside the db


class _Signals:
    """SIGTERM and SIGINT become Aborted once; during teardown they are ignored, so a
    second Ctrl-C cannot interrupt the reverts."""

    def __init__(self) -> None:
        self.tearing_down = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.tearing_down:
            return
        self.tearing_down = True  # one abort is enough; the rest waits for the reverts
        raise Aborted(f"interrupted by {signal.Signals(signum).name}")

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Runner:
    def __init__(self, path: Path, scenario: Scenario, options: RunOptions,
                 progress: Progress | None = None) -> None:
        self.path = path
        self.scenario = scenario
        self.options = options
        self.plan: Plan = compile_plan(scenario)
        started = datetime.now(UTC)
        self.run_id = f"{started:%Y%m%dT%H%M%SZ}-{scenario.metadata.name}"
        self.run_dir = options.out_dir.expanduser().resolve() / self.run_id
        self.progress = progress or Progress(quiet=True)
        self.fault_results: dict[str, FaultResult] = {}
        self.journal_ids: dict[str, str] = {}
        # When each fault's revert began, for checks that must not judge past it.
        self.reverting_at: dict[str, float] = {}
        self.phase_results: list[PhaseResult] = []
        # How much sooner than planned the phases now run: a phase that ended early
        # (`end_early`) brings every later one forward by what it saved.
        self.shift = 0.0
        self.abort_reason: str | None = None
        self.error: str | None = None
        self.live = LiveStats()
        self.injectors: dict[str, Injector] = {}
        self.live_probes: list[RunningProbe] = []
        self.watchdog: subprocess.Popen[bytes] | None = None
        self.guard_poller = GuardPoller(scenario, lambda msg: None)
        # Until the run starts there is no store: a plan-time context records nothing.
        self.ctx = RunContext(self.run_id, scenario, None, {}, self.progress, self.run_dir)

    # -- faults ---------------------------------------------------------------------------

    def _injector(self, name: str) -> Injector:
        injector = self.injectors.get(name)
        if injector is None:
            injector = make_injector(self.ctx, name, self.scenario.faults[name])
            self.injectors[name] = injector
        return injector

    def _run_setups(self) -> list[RunSetup]:
        """What the scenario's fault backends prepare once for the run (a Toxiproxy proxy
        to create), each backend asked once."""
        setups: list[RunSetup] = []
        for key in dict.fromkeys(f.backend for f in self.scenario.faults.values()):
            backend = backend_of(key)
            if backend.run_setups is not None:
                setups += backend.run_setups(self.scenario)
        return setups

    def _deadline(self, name: str, index: int, t0: float) -> float:
        """When the watchdog reverts this fault whatever the harness is doing: its planned
        revert plus a grace period, or sooner if the scenario sets max_lifetime."""
        deadline = t0 + self.plan.planned_revert(index, name) + LIFETIME_GRACE_S
        lifetime = self.scenario.faults[name].max_lifetime
        if lifetime is not None:
            deadline = min(deadline, time.time() + lifetime)
        return deadline

    def _wait_until_busy(self, name: str, store: EvidenceStore) -> dict[str, Any] | None:
        """`when_busy`: hold the fault until its engine serves requests (or `within`
        passed: applied anyway, the wait recorded as not met)."""
        spec = self.scenario.faults[name].when_busy
        if spec is None:
            return None
        self.progress.event(f"{name}: waiting for {spec.min_running:g}+ requests running "
                            f"at {spec.metrics_url}")
        waited = wait_until_busy(spec)
        detail = waited.detail(name, spec)
        store.add_event(time.time(), EventKind.FAULT_BUSY, detail)
        if not waited.met:
            self.progress.event(
                f"{name}: the engine did not serve {spec.min_running:g} requests within "
                f"{spec.within:g}s (last seen: {waited.running}; {waited.error or 'no error'})"
                "; applied anyway")
        return {k: detail[k] for k in ("met", "running", "min_running", "waited_s")}

    def _apply(self, name: str, journal: Journal, store: EvidenceStore,
               deadline: float | None = None, busy: dict[str, Any] | None = None) -> None:
        injector = self._injector(name)
        action = injector.prepare()
        entry = journal.intent(name, injector.describe(), action, deadline)  # before the change
        self.journal_ids[name] = entry
        fault = self.scenario.faults[name]
        spec, backend = fault.spec, fault.kind
        result = FaultResult(
            name=name, backend=fault.backend,
            kind=backend.label(spec) if backend.label else fault.backend,
            params=backend.params(spec) if backend.params else spec.model_dump(mode="json"),
            busy=busy)
        self.fault_results[name] = result
        try:
            injector.apply()
        except Exception as exc:
            journal.apply_failed(entry, str(exc))
            raise
        result.applied_at = time.time()
        journal.applied(entry)
        store.add_event(result.applied_at, EventKind.FAULT_APPLIED, {"fault": name})
        self.progress.event(f"applied {name}: {injector.describe()}")

    def _revert(self, name: str, journal: Journal, store: EvidenceStore) -> None:
        from llmdrill.faults.base import revert

        entry = self.journal_ids.pop(name, None)
        if entry is None:
            return
        self.reverting_at.setdefault(name, time.time())
        injector = self.injectors.get(name)
        if injector is not None:
            injector.stop()  # live activity first (a storm), then the recorded change
        action = next((o.action for o in journal.outstanding() if o.id == entry), None)
        result = self.fault_results[name]
        if action is None:  # the watchdog got there first (lifetime exceeded)
            done = journal.reverted_by(entry) or {}
            result.reverted_at = float(done.get("ts", time.time()))
            result.reverted_by = str(done.get("by", "watchdog"))
            self.progress.event(f"{name} was already reverted by the watchdog "
                                f"({done.get('reason', 'lifetime exceeded')})")
            return
        if isinstance(action.get("revert_timeout"), int | float):
            journal.reverting(entry, time.time() + float(action["revert_timeout"])
                              + LIFETIME_GRACE_S)
        try:
            if action is not None:
                revert(action)
        except Exception as exc:
            result.revert_error = f"{type(exc).__name__}: {exc}"
            journal.revert_failed(entry, result.revert_error)
            self.progress.event(f"FAILED to revert {name}: {result.revert_error}")
            return
        journal.reverted(entry)
        result.reverted_at = time.time()
        store.add_event(result.reverted_at, EventKind.FAULT_REVERTED, {"fault": name})
        self.progress.event(f"reverted {name}")

    def _revert_everything(self, journal: Journal, store: EvidenceStore) -> None:
        for name in list(self.journal_ids):
            self._revert(name, journal, store)
        # Anything else outstanding (proxies the run created, a fault half-applied).
        for entry, error in revert_outstanding(journal):
            fault = self.fault_results.get(entry.fault)
            if fault is not None:
                if error:
                    fault.revert_error = error
                elif fault.reverted_at is None:
                    fault.reverted_at = time.time()
            if error:
                self.progress.event(f"FAILED to revert {entry.description}: {error}")

    # -- the run --------------------------------------------------------------------------

    def _load_config(self, samples: Path) -> LoadConfig:
        load = self.scenario.load
        target = self.scenario.target
        return LoadConfig(
            base_url=target.base_url, model=target.model, samples_path=str(samples),
            shapes=[RequestShapeConfig(api=s.api, stream=s.stream, prompt_tokens=s.prompt_tokens,
                                       max_tokens=s.max_tokens, ignore_eos=s.ignore_eos,
                                       weight=s.weight, name=s.name) for s in load.requests],
            connect_timeout=load.timeouts.connect, read_timeout=load.timeouts.read,
            total_timeout=load.timeouts.total, max_attempts=load.retries.max_attempts,
            backoff=load.retries.backoff, max_backoff=load.retries.max_backoff,
            retry_on=list(load.retries.on), wait=load.wait,
            api_key_env=target.api_key_env, api_key_file=target.api_key_file,
        )

    def run(self) -> RunResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        signals = _Signals()
        signals.install()
        try:
            key = api_key(self.scenario.target)
        except SecretMissing:
            key = None  # reported below, where every failure becomes a report
        self.secrets = [key] if key else []
        store = EvidenceStore(self.run_dir / "evidence.db", self.secrets)
        journal = Journal(self.run_dir / "journal.jsonl", self.run_id)
        # Every helper of the run starts through here and stops, in reverse order, after
        # the faults are reverted (a helper that breaks while stopping is recorded).
        services = Services(lambda name, exc: store.add_event(
            time.time(), EventKind.SERVICE_STOP_FAILED,
            {"service": name, "error": f"{type(exc).__name__}: {exc}"}))
        started_at = time.time()
        t0 = started_at
        locust: LocustProcess | None = None
        scraper: MetricsScraper | None = None
        engine: str | None = None
        try:
            headers = auth_headers(self.scenario.target)
            self.ctx = RunContext(self.run_id, self.scenario, store, headers, self.progress,
                                  self.run_dir)
            check_safety(self.scenario, self.options.allow_production)
            services.start("watchdog", Callbacks(
                lambda: setattr(self, "watchdog", start_watchdog(journal.path)),
                lambda: self._stop_watchdog(journal)))
            for setup in self._run_setups():
                if not setup.exists():
                    entry = journal.intent(f"setup:{setup.name}", setup.describe(),
                                           setup.prepare(),
                                           time.time() + self.plan.total + 120)
                    setup.apply()
                    journal.applied(entry)
            for name in self.scenario.faults:
                self._injector(name).preflight()
            check_target(self.scenario.target, headers)
            engine = engine_version(self.scenario.target.base_url, headers)
            if self.scenario.target.metrics_url:
                check_metrics(self.scenario.target.metrics_url, headers)
                scraper = services.start("metrics scraper", MetricsScraper(
                    self.scenario.target.metrics_url, store.add_metrics,
                    lambda msg: store.add_event(time.time(), EventKind.SCRAPE_FAILED,
                                                {"error": msg}),
                    interval=self.scenario.telemetry.scrape_interval,
                ))
            for label, endpoint in self.scenario.target.engines.items():
                check_metrics(endpoint.metrics_url, headers)
                services.start(f"metrics scraper ({label})", MetricsScraper(
                    endpoint.metrics_url, _labelled(store, label),
                    _scrape_failed(store, label),
                    interval=self.scenario.telemetry.scrape_interval,
                ))
            self.guard_poller = GuardPoller(
                self.scenario,
                lambda msg: store.add_event(time.time(), EventKind.GUARD_POLL_FAILED,
                                            {"error": msg}))
            self.guard_poller.poll_once()  # a monitoring server that is down shows up now
            services.start("guard poller", self.guard_poller)
            self._start_alerting(services, store)
            if self.scenario.load.users > 0:
                locust = LocustProcess(
                    self._load_config(self.run_dir / "samples.jsonl"), self.scenario.load.users,
                    self.scenario.load.spawn_rate, self.plan.total, self.run_dir,
                    processes=self.scenario.load.processes,
                    remote_workers=self.scenario.load.remote_workers,
                    master=(self.scenario.load.master.bind, self.scenario.load.master.port,
                            self.scenario.load.master.wait),
                )
            t0 = time.time()
            if locust is not None:
                services.start("load generator", Callbacks(
                    locust.start, lambda: self._stop_load(locust, store,
                                                          self.options.keep_samples)))
                if locust.remote_workers or locust.processes > 1:
                    # The phases start with the load, not while workers still connect:
                    # a baseline measured on half the load would set a false bar.
                    self._wait_for_workers(locust)
                    t0 = time.time()
            self._run_phases(t0, locust, scraper, journal, store)
        except Aborted as exc:
            self.abort_reason = str(exc)
        except KeyboardInterrupt:
            self.abort_reason = "interrupted by SIGINT"
        except (EnvironmentProblem, SecretMissing) as exc:
            self.error = str(exc)
        except Exception as exc:  # the report must still be written, with the reason
            trace = self.run_dir / "error.log"
            trace.write_text(traceback.format_exc())
            self.error = f"{type(exc).__name__}: {exc} (traceback in {trace})"
        finally:
            signals.tearing_down = True
            self._revert_everything(journal, store)  # first: the faults, with the watchdog up
            run_end = time.time()
            services.close()
            self._read_queries(store, t0, run_end)
            journal.finish()
            result = self._result(store, started_at, t0, run_end, engine)
            if self.secrets:  # a target may have echoed the key into an error we kept
                result = RunResult.model_validate_json(redact(result.to_json(), self.secrets))
            store.close()
            result.files = self._write_reports(result)
            signals.restore()
        return result

    @staticmethod
    def _stop_load(locust: LocustProcess, store: EvidenceStore, keep_samples: bool) -> None:
        locust.stop()
        locust.read_new_samples()  # the master's last word on its workers
        _record_lost_workers(locust, store)
        for batch in locust.recorded():  # every request, into evidence.db once
            store.add_requests(batch)
        locust.close()
        if not keep_samples:  # every request is in evidence.db now: on disk once
            locust.discard_samples()

    def _wait_for_workers(self, locust: LocustProcess) -> None:
        """Until Locust's master says every worker connected and the load started; an
        error if they do not: remote ones within `load.master.wait`, the processes forked
        here within Locust's own wait (60 s)."""
        master = self.scenario.load.master
        if locust.remote_workers:
            self.progress.event(f"waiting for {locust.remote_workers} load worker(s): start "
                                f"each with `llmdrill load-worker --master HOST:{master.port}`")
            deadline = time.time() + master.wait + 15
        else:
            deadline = time.time() + LOCAL_WORKERS_WAIT + 15
        while locust.started is None:
            locust.read_new_samples()  # for the master's word that the load started
            if locust.started is not None:
                break
            if locust.alive() and time.time() <= deadline:
                time.sleep(0.2)
                continue
            if not locust.remote_workers:
                raise EnvironmentProblem(
                    f"the {locust.processes} load processes did not all start (see "
                    f"{self.run_dir / 'locust.log'})")
            raise EnvironmentProblem(
                f"{locust.remote_workers} remote load worker(s) expected; they did not all "
                f"connect to the master on {master.bind}:{master.port} within "
                f"{master.wait:g}s; start them with "
                f"`llmdrill load-worker --master HOST:{master.port}` (see "
                f"{self.run_dir / 'locust.log'})")

    def _stop_watchdog(self, journal: Journal) -> None:
        journal.run_finished()  # the watchdog exits by itself once it reads this
        stop_watchdog(self.watchdog)

    def _start_alerting(self, services: Services, store: EvidenceStore) -> None:
        """The webhook receiver (if configured) and the alert watcher, while an enabled
        alert check needs them."""
        monitoring = self.scenario.monitoring
        if not self.scenario.alert_checks:
            return
        if monitoring.webhook is not None:
            services.start("webhook receiver", WebhookReceiver(
                monitoring.webhook.host, monitoring.webhook.port,
                lambda ts, detail, kind: store.add_event(ts, kind, detail)))
        prom, am = self.scenario.prometheus, self.scenario.alertmanager
        services.start("alert watcher", AlertWatcher(
            prom.url if prom else None, am.url if am else None, monitoring.poll_interval,
            lambda ts, kind, detail: store.add_event(ts, kind, detail)))

    def _read_queries(self, store: EvidenceStore, t0: float, run_end: float) -> None:
        """The scenario's PromQL range queries over the run, as `promql:<name>` series."""
        prom = self.scenario.prometheus
        if prom is None or not self.phase_results:
            return
        step = self.scenario.monitoring.query_step
        queries = dict(self.scenario.monitoring.queries)
        for kind in dict.fromkeys(c.kind_spec for c in self.scenario.checks if c.enabled):
            if kind.queries is not None:  # what a check kind reads from Prometheus itself
                queries.update(kind.queries(self.scenario))
        for name, query in queries.items():
            try:
                found = promql_range(prom.url, query, t0, run_end, step)
            except Exception as exc:  # in the teardown path: an odd answer must not stop it
                store.add_event(time.time(), EventKind.PROMQL_FAILED,
                                {"query": name, "error": f"{type(exc).__name__}: {exc}"})
                continue
            store.add_metrics([MetricSample(ts, f"promql:{name}", value, labels)
                               for labels, points in found for ts, value in points])

    def _write_reports(self, result: RunResult) -> dict[str, str]:
        # result.json first, alone: whatever goes wrong in a renderer, the canonical
        # result of the run is on disk.
        (self.run_dir / "result.json").write_text(result.to_json())
        try:
            return {k: str(v) for k, v in write_reports(result, self.run_dir).items()}
        except Exception as exc:
            (self.run_dir / "report-error.log").write_text(traceback.format_exc())
            self.progress.event(f"could not render every report ({type(exc).__name__}: {exc});"
                                f" result.json is complete")
            return {"json": str(self.run_dir / "result.json")}

    def _start_probes(self, phase: str, services: Services) -> list[RunningProbe]:
        probes = []
        for i, check in enumerate(self.scenario.checks):
            probe = check.kind_spec.probe if check.phase == phase and check.enabled else None
            if probe is not None:
                name = check.display_name(i)
                probes.append(services.start(f"probe {name}", RunningProbe(
                    self.ctx, name, check.kind, check.spec, probe)))
        return probes

    def _run_phases(self, t0: float, locust: LocustProcess | None,
                    scraper: MetricsScraper | None, journal: Journal,
                    store: EvidenceStore) -> None:
        for index, planned in enumerate(self.plan.phases):
            with Services() as probes:  # the checks' active probes live for their phase
                self.live_probes = self._start_probes(planned.name, probes)
                end_early = self.scenario.phases[index].end_early
                back = (probes.start(f"end_early {planned.name}", BackWatcher(end_early))
                        if end_early is not None else None)
                try:
                    self._run_phase(index, planned, t0 - self.shift, locust, scraper, journal,
                                    store, back)
                finally:
                    self.live_probes = []

    def _run_phase(self, index: int, planned: PlannedPhase, t0: float,
                   locust: LocustProcess | None, scraper: MetricsScraper | None,
                   journal: Journal, store: EvidenceStore,
                   back: BackWatcher | None = None) -> None:
        """One phase, on the timeline `t0` starts (the run's, brought forward by the
        phases that ended early): its faults applied, the load watched until its end (or
        until `back` says the target is back), its faults reverted."""
        guard = self.scenario.guardrails
        phase = PhaseResult(name=planned.name, planned_start=t0 + planned.start,
                            planned_end=t0 + planned.end, start=time.time(),
                            faults=list(planned.faults))
        self.phase_results.append(phase)
        store.add_event(phase.start or 0.0, EventKind.PHASE_START, {"phase": planned.name})
        for name in self.plan.faults_entering(index):
            busy = self._wait_until_busy(name, store)  # before its lifetime starts
            self._apply(name, journal, store, self._deadline(name, index, t0), busy)
        deadline = t0 + planned.end
        while (now := time.time()) < deadline:
            if locust is not None:
                new = locust.read_new_samples()
                if new:  # evidence.db gets them when the load stops (LocustProcess.recorded)
                    self.live.add(new)
                if _record_lost_workers(locust, store):
                    lost = locust.lost_workers[0]
                    raise Aborted(
                        f"load worker {lost.get('worker')} (pid {lost.get('pid')} on "
                        f"{lost.get('host')}) stopped reporting to Locust's master "
                        f"(died or cut off; {lost.get('workers')} of "
                        f"{self.scenario.load.processes} still connected): its requests in "
                        f"flight are lost, so the run cannot be judged as whole; see "
                        f"{self.run_dir / 'locust.log'}")
                if not locust.alive():
                    raise Aborted(helper_died(
                        "the load generator (Locust)", locust.returncode(),
                        self.run_dir / "locust.log",
                        "check the target URL, the model name and the load settings"))
            if self.watchdog is not None and self.watchdog.poll() is not None:
                raise Aborted(helper_died(
                    "the fault watchdog", self.watchdog.returncode,
                    self.run_dir / "watchdog.log",
                    "the harness reverts this run's faults itself; if the harness is killed "
                    "too, run `llmdrill cleanup`"))
            reason = self.live.guardrail_breach(guard, now,
                                                scraper.last_ok if scraper else None,
                                                self.guard_poller.latest)
            if reason:
                raise Aborted(f"guardrail: {reason}")
            self.progress.tick(planned.name, deadline - now, self.live, now,
                               list(self.journal_ids),
                               scraper.latest if scraper else {})
            if back is not None and (why := back.ended(now)) is not None:
                phase.ended_early = why
                self.shift += deadline - now
                store.add_event(now, EventKind.PHASE_ENDED_EARLY,
                                {"phase": planned.name, "reason": why,
                                 "saved_s": round(deadline - now, 3)})
                break
            time.sleep(min(self.options.tick, max(0.0, deadline - now)))
        for name in self.plan.faults_leaving(index):
            self._revert(name, journal, store)
        phase.end = time.time()
        phase.completed = True
        store.add_event(phase.end, EventKind.PHASE_END, {"phase": planned.name})

    # -- result ---------------------------------------------------------------------------

    def _result(self, store: EvidenceStore, started_at: float, t0: float, run_end: float,
                engine: str | None) -> RunResult:
        for phase in self.phase_results:
            if phase.end is None:
                phase.end = run_end
        windows = [PhaseWindow(p.name, p.start or p.planned_start, p.end or run_end,
                               tuple(p.faults), p.completed) for p in self.phase_results]
        faults = [FaultEvent(f.name, f.applied_at, f.reverted_at,
                             self.reverting_at.get(f.name, f.reverted_at))
                  for f in self.fault_results.values() if f.applied_at is not None]
        evidence = store.load(windows, faults, run_end)
        checks: list[CheckResult] = [  # opt-in checks left off are not part of the run
            evaluate_check(check, i, evidence) for i, check in enumerate(self.scenario.checks)
            if check.enabled
        ]
        stats = {"overall": request_stats(evidence.requests, max(run_end - t0, 0.0) or None)}
        for w in windows:
            stats[w.name] = request_stats(evidence.requests_started_in(w.start, w.end),
                                          w.end - w.start)
        markers = sorted(
            marker for key in dict.fromkeys(f.backend for f in self.scenario.faults.values())
            if (draw := backend_of(key).markers) is not None for marker in draw(evidence, t0))
        series = Series(t0=t0, client=client_series(evidence.requests, t0, run_end),
                        engine=self._engine_series(evidence.metrics, t0), markers=markers,
                        alerts=notification_markers(evidence, t0))
        unreverted = [f"{f.name} ({f.revert_error})" for f in self.fault_results.values()
                      if f.revert_error and f.reverted_at is None]
        if unreverted and not self.error:
            self.error = (f"could not revert {'; '.join(unreverted)}: the fault may still be "
                          "in place; fix the backend and run `llmdrill cleanup`")
        self._judge_effects(evidence)
        status: RunStatus
        status, reason = decide_run_status(self.error, self.abort_reason, checks,
                                           list(self.fault_results.values()))
        phases = [p for p in self.phase_results]
        planned_names = {p.name for p in phases}
        for planned in self.plan.phases:  # phases that never started, for the timeline
            if planned.name not in planned_names:
                phases.append(PhaseResult(name=planned.name,
                                          planned_start=t0 - self.shift + planned.start,
                                          planned_end=t0 - self.shift + planned.end,
                                          faults=list(planned.faults)))
        target = self.scenario.target
        return RunResult(
            run_id=self.run_id,
            scenario=ScenarioInfo(name=self.scenario.metadata.name, file=str(self.path),
                                  description=self.scenario.metadata.description,
                                  tags=list(self.scenario.metadata.tags)),
            status=status,
            abort_reason=reason,
            started_at=started_at,
            ended_at=time.time(),
            target=TargetInfo(base_url=target.base_url, model=target.model,
                              metrics_url=target.metrics_url, engine_version=engine),
            versions=harness_versions() | ({"engine": engine} if engine else {}),
            phases=phases,
            faults=list(self.fault_results.values()),
            checks=checks,
            stats=stats,
            series=series,
        )

    def _judge_effects(self, evidence: Evidence) -> None:
        """Ask each applied fault's backend whether the evidence shows it landed. Fails
        closed: a backend that cannot say, or whose judgement breaks, gives "unknown"."""
        for name, result in self.fault_results.items():
            if result.applied_at is None:
                continue
            injector = self.injectors.get(name)
            judge = getattr(injector, "effect", None)
            effect: FaultEffect
            if judge is None:
                effect = FaultEffect(None, "its backend reports no evidence of its effect")
            else:
                try:
                    effect = judge(evidence)
                except Exception as exc:  # a bug in one backend's judgement is no evidence
                    effect = FaultEffect(None, f"could not judge: {type(exc).__name__}: {exc}")
            result.effect = effect.label  # type: ignore[assignment]
            result.effect_detail = effect.detail

    @staticmethod
    def _engine_series(metrics: list[MetricSample], t0: float
                       ) -> dict[str, list[tuple[float, float]]]:
        """The target's gauges by short name; each replica's (target.engines) as
        `<short>@<label>`, with its requests served per second beside them."""
        by_engine: dict[str | None, list[MetricSample]] = {}
        for m in metrics:
            by_engine.setdefault(m.labels.get(ENGINE_LABEL), []).append(m)
        out: dict[str, list[tuple[float, float]]] = {}
        for engine, samples in by_engine.items():
            suffix = "" if engine is None else f"@{engine}"
            sums = _sums_by_name(samples)
            for short, candidates in ENGINE_GAUGES.items():
                name = next((n for n in candidates if n in sums), None)
                if name is not None:
                    out[short + suffix] = [(round(ts - t0, 3), v) for ts, v in sums[name]]
            if engine is not None and SERVED_COUNTER in sums:
                out["served_per_s" + suffix] = [
                    (round(ts - t0, 3), v) for ts, v in counter_rate(sums[SERVED_COUNTER])]
        return out


def _record_lost_workers(locust: LocustProcess, store: EvidenceStore) -> bool:
    """Files the load workers the Locust master reported lost as events (once each);
    True when any was lost in the run."""
    for lost in locust.lost_workers[locust.lost_reported:]:
        store.add_event(float(lost.get("at") or time.time()), EventKind.LOAD_WORKER_LOST,
                        {k: lost.get(k) for k in ("worker", "pid", "host", "workers")})
    locust.lost_reported = len(locust.lost_workers)
    return bool(locust.lost_workers)


def _labelled(store: EvidenceStore, engine: str) -> Callable[[list[MetricSample]], None]:
    """A scraper's sink that files one replica's samples under its label."""
    def sink(samples: list[MetricSample]) -> None:
        store.add_metrics([replace(s, labels={**s.labels, ENGINE_LABEL: engine})
                           for s in samples])
    return sink


def _scrape_failed(store: EvidenceStore, engine: str) -> Callable[[str], None]:
    def record(message: str) -> None:
        store.add_event(time.time(), EventKind.SCRAPE_FAILED, {"error": message,
                                                               "engine": engine})
    return record


def check_safety(scenario: Scenario, allow_production: bool) -> None:
    """Refuse, before anything changes, what the scenario's safety limits forbid."""
    if scenario.target.production and not (allow_production
                                           and scenario.safety.allow_production):
        missing = [what for what, ok in (("the scenario (safety.allow_production: true)",
                                          scenario.safety.allow_production),
                                         ("the command line (--allow-production)",
                                          allow_production)) if not ok]
        raise EnvironmentProblem(
            f"target {scenario.target.base_url} is marked production; refusing to drill it "
            f"unless {' and '.join(missing)} allow it"
        )
    limit = scenario.safety.max_blast_radius
    if limit is not None:
        for name, fault in scenario.faults.items():
            radius = blast_radius(fault)
            if radius > limit:
                raise EnvironmentProblem(
                    f"fault '{name}' would touch {radius} things (streams, requests or "
                    f"targets), over safety.max_blast_radius {limit}"
                )


def log_tail(path: Path, lines: int = 12, max_chars: int = 2000) -> str:
    """The last lines of a helper's log, for a message a person reads."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"
    tail = "\n".join(line.rstrip() for line in text.splitlines()[-lines:] if line.strip())
    return tail[-max_chars:] or "(the log is empty)"


def helper_died(what: str, code: int | None, log: Path, advice: str) -> str:
    """Why the run stops when a helper process it relies on exits before the end."""
    return (f"{what} exited early (exit code {code}); last lines of {log}:\n"
            f"{log_tail(log)}\nWhat to do: {advice}; the whole log is {log}")


def start_watchdog(journal: Path) -> subprocess.Popen[bytes]:
    # Its own session: a Ctrl-C or SIGTERM aimed at the harness's group must not stop it.
    return subprocess.Popen(
        [sys.executable, "-m", "llmdrill.harness.watchdog", str(journal), str(os.getpid())],
        stdout=subprocess.DEVNULL, stderr=(journal.parent / "watchdog.log").open("ab"),
        start_new_session=True,
    )


def stop_watchdog(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    try:
        proc.wait(timeout=5)  # it exits by itself once it reads run_finished
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(timeout=5)


def run_scenario(path: Path, scenario: Scenario, options: RunOptions,
                 progress: Progress | None = None) -> RunResult:
    return Runner(path, scenario, options, progress).run()

