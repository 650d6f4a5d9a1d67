"""Typed scenario format v1. Unknown keys are errors everywhere (extra='forbid')."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from llmdrill.plugin import CheckKind, FaultBackend, check_kinds, fault_backends
from llmdrill.scenario.fields import NAME_PATTERN, Name, Strict, Timeouts, http_url
from llmdrill.scenario.units import Duration, Fraction, PositiveInt

__all__ = ["NAME_PATTERN", "Name", "Strict", "Timeouts", "http_url"]

S = TypeVar("S", bound=BaseModel)


def _kind_fields(kinds: dict[str, FaultBackend] | dict[str, CheckKind]) -> dict[str, Any]:
    """One optional field per registered key: the key's spec, described by its kind."""
    return {key: (kind.spec | None, Field(default=None, description=kind.description))
            for key, kind in kinds.items()}


# --- metadata and target -------------------------------------------------------------


class Metadata(Strict):
    name: Name = Field(description="The drill's name, shown in plans, reports and results.")
    description: str = Field(default="", description="What the drill does, in a sentence.")
    tags: list[str] = Field(
        default_factory=list, description="Free-form labels, copied into the run's result."
    )


class EngineEndpoint(Strict):
    """One engine replica behind the target (a gateway's backend), watched on its own."""

    metrics_url: str = Field(description="The replica's own Prometheus /metrics endpoint.")

    @field_validator("metrics_url")
    @classmethod
    def _url(cls, url: str) -> str:
        return http_url(url)


class Target(Strict):
    """The OpenAI-compatible API under test. Secrets come only from env or files."""

    base_url: str = Field(description="Base URL of the API, without /v1.")
    model: str = Field(description="Model name sent in every request (`model` in the API).")
    metrics_url: str | None = Field(
        default=None, description="The engine's Prometheus /metrics endpoint, if scraped."
    )
    engines: dict[Name, EngineEndpoint] = Field(
        default_factory=dict,
        description="The replicas behind a gateway, by label, each scraped on its own: "
        "reports chart their gauges and traffic side by side, and the failover checks read "
        "each replica's own counters (its samples carry the label `llmdrill_engine`).",
    )
    api_key_env: str | None = Field(
        default=None, description="Name of an environment variable that holds the API key."
    )
    api_key_file: str | None = Field(
        default=None,
        description="A file that holds the API key; a relative path is relative to the "
        "scenario file's folder.")
    production: bool = Field(
        default=False, description="Marks a production target; drills refuse it unless allowed."
    )

    @field_validator("base_url", "metrics_url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        return None if url is None else http_url(url)

    @field_validator("api_key_file")
    @classmethod
    def _one_key(cls, path: str | None, info: ValidationInfo) -> str | None:
        if path and info.data.get("api_key_env"):
            raise ValueError("set api_key_env or api_key_file, not both")
        return path


# --- faults ---------------------------------------------------------------------------


class ToxiproxyServer(Strict):
    url: str = Field(
        default="http://127.0.0.1:8474", description="Base URL of the Toxiproxy HTTP API."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        return http_url(url)


RetryOn = Literal["429", "5xx", "timeout", "connect", "reset"]
RETRY_ON: tuple[RetryOn, ...] = ("429", "5xx", "timeout", "connect", "reset")


# Every fault backend registered under the entry points `llmdrill.faults` (the built-in
# ones, in llmdrill's pyproject order, then installed plugins'), by YAML key.
FAULT_KINDS: dict[str, FaultBackend] = fault_backends()
FAULT_BACKENDS = tuple(FAULT_KINDS)
BUILTIN_FAULT_BACKENDS = tuple(k for k, v in FAULT_KINDS.items() if v.builtin)
FAULT_PLUGINS = {k: v for k, v in FAULT_KINDS.items() if not v.builtin}

if TYPE_CHECKING:
    _FaultKindFields = Strict
else:
    _FaultKindFields = create_model("_FaultKindFields", __base__=Strict,
                                    **_kind_fields(FAULT_KINDS))


class WhenBusy(Strict):
    """Apply the fault only once the target is serving: a kill that catches no request in
    flight shows nothing about how cut requests end. Polls an engine's Prometheus metrics
    until it reports at least `min_running` requests running, then applies at once. If
    `within` passes first, the fault is applied anyway and the wait is recorded as not
    met: the checks that need requests in flight then say they had none."""

    metrics_url: str = Field(
        description="The engine's /metrics URL: the replica the fault hits (behind a "
        "gateway, its own address, not the gateway's).")
    metric: str = Field(
        default="vllm:num_requests_running",
        description="Gauge of the requests the engine is serving (summed over its labels).")
    min_running: int = Field(default=1, ge=1, description="Least value of `metric`.")
    within: Duration = Field(
        default=30.0,
        description="Longest wait, from the phase's start; the phase's clock runs meanwhile.")
    poll_interval: Duration = Field(default=0.1, description="Time between two polls.")

    @field_validator("metrics_url")
    @classmethod
    def _url(cls, url: str) -> str:
        return http_url(url)


class Fault(_FaultKindFields):
    """One named fault. Exactly one backend key is set."""

    @model_validator(mode="before")
    @classmethod
    def _backend(cls, data: Any) -> Any:
        if isinstance(data, dict):
            backends = [k for k in data if k in FAULT_BACKENDS]
            unknown = [k for k in data
                       if k not in FAULT_BACKENDS and k not in ("max_lifetime", "when_busy")]
            if not backends and unknown:
                raise ValueError(
                    f"unknown fault type '{unknown[0]}' "
                    f"(fault types: {', '.join(FAULT_BACKENDS)})"
                )
        return data

    max_lifetime: Duration | None = Field(
        default=None, description="Upper bound on how long the fault may stay applied."
    )
    when_busy: WhenBusy | None = Field(
        default=None,
        description="Wait, before applying, until the engine the fault hits is serving "
        "requests (its metrics say so): a kill drill then always catches streams in flight.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Fault:
        if len([b for b in FAULT_BACKENDS if getattr(self, b) is not None]) != 1:
            raise ValueError(f"a fault has exactly one type ({', '.join(FAULT_BACKENDS)})")
        return self

    @property
    def backend(self) -> str:
        return next(b for b in FAULT_BACKENDS if getattr(self, b) is not None)

    @property
    def spec(self) -> BaseModel:
        spec = getattr(self, self.backend)
        assert isinstance(spec, BaseModel)
        return spec

    @property
    def kind(self) -> FaultBackend:
        return FAULT_KINDS[self.backend]

    def spec_as(self, spec_type: type[S]) -> S | None:
        """The spec if it is of this type (a typed view for code that knows one kind)."""
        spec = self.spec
        return spec if isinstance(spec, spec_type) else None


# --- load -----------------------------------------------------------------------------


class Retries(Strict):
    max_attempts: PositiveInt = Field(
        default=3, description="Attempts per request, the first included (1: no retries)."
    )
    backoff: Duration = Field(default=0.2, description="Base of the exponential backoff.")
    max_backoff: Duration = Field(
        default=2.0, description="Cap on one wait; each wait is random up to the backoff."
    )
    on: list[RetryOn] = Field(
        default_factory=lambda: list(RETRY_ON),
        description="Failures that are retried (default: all). '429' and '5xx' are HTTP "
        "statuses, quoted. A request that already streamed tokens is never retried.",
    )


class RequestShape(Strict):
    api: Literal["chat", "completions"] = Field(
        default="chat",
        description="Endpoint: /v1/chat/completions (chat) or /v1/completions.",
    )
    stream: bool = Field(default=True, description="Ask for a streamed (SSE) response.")
    prompt_tokens: PositiveInt = Field(default=32, description="Prompt length, in tokens.")
    max_tokens: PositiveInt = Field(
        default=32, description="Output tokens asked for (`max_tokens` in the request)."
    )
    ignore_eos: bool = Field(
        default=True, description="vLLM extension: generate exactly max_tokens tokens."
    )
    name: Name | None = Field(
        default=None, description="Shape name; checks can look at one shape's requests."
    )
    weight: PositiveInt = Field(
        default=1, description="How often this shape is picked, relative to the others."
    )


# Beyond this, one Locust process (one core) cannot keep its users' timings honest: the
# measured ceiling is a few thousand requests/s in total (see benchmarks/).
MAX_USERS_PER_PROCESS = 2000
MAX_LOAD_PROCESSES = 64


class LoadMaster(Strict):
    bind: str = Field(
        default="127.0.0.1",
        description="Address Locust's master listens on for remote workers. The default "
        "takes workers on this machine only; a staging network needs an address the "
        "workers reach (keep it off public networks).",
    )
    port: int = Field(default=5557, ge=1, le=65535, description="Its port.")
    wait: Duration = Field(
        default=120.0,
        description="How long the run waits for every remote worker before its first phase; "
        "then it stops with an error naming how many came.",
    )


class Load(Strict):
    users: int = Field(
        default=4, ge=0,
        description="Concurrent simulated users, each with one request at a time; 0 for no "
        "background load (faults like cancel_storm bring their own).",
    )
    spawn_rate: Annotated[float, Field(gt=0)] = Field(
        default=4.0, description="Users started per second until all are running."
    )
    wait: Duration = Field(default=0.0, description="Think time between a user's requests.")
    requests: list[RequestShape] = Field(
        default_factory=lambda: [RequestShape()],
        min_length=1,
        description="Request shapes; each request picks one at random, by weight.",
    )
    timeouts: Timeouts = Field(
        default_factory=Timeouts, description="Client deadlines for each attempt."
    )
    retries: Retries = Field(default_factory=Retries, description="The client's retry policy.")
    processes: int = Field(
        default=1, ge=1, le=MAX_LOAD_PROCESSES, validate_default=True,
        description="Load processes on this machine: above 1, Locust's distributed mode (a "
        "master and this many worker processes, a core each), the users spread evenly "
        "across them. For load one core cannot send; a worker that dies mid-run aborts it.",
    )

    remote_workers: int = Field(
        default=0, ge=0, le=1000, validate_default=True,
        description="Load workers on other machines (or pods), each started with `llmdrill "
        "load-worker --master HOST:PORT`: Locust's master runs here, hands them the "
        "configuration, spreads the users across them and collects every request they "
        "make. The run waits for all of them (`master.wait`); one that dies aborts it. "
        "Not with `processes` above 1 (run workers on this machine with load-worker too).",
    )
    master: LoadMaster = Field(default_factory=LoadMaster,
                               description="Where the master listens for remote workers.")

    @field_validator("remote_workers")
    @classmethod
    def _remote_or_local(cls, remote: int, info: ValidationInfo) -> int:
        users, processes = info.data.get("users"), info.data.get("processes")
        if not remote or not isinstance(users, int) or not isinstance(processes, int):
            return remote
        if processes > 1:
            raise ValueError("remote workers and `load.processes` above 1 do not mix (Locust's "
                             "master runs no users); start local workers with `llmdrill "
                             "load-worker` too")
        if users > MAX_USERS_PER_PROCESS * remote:
            raise ValueError(f"{users} users is more than {remote} remote workers can drive "
                             f"with honest timings (at most {MAX_USERS_PER_PROCESS} each)")
        if remote > users:
            raise ValueError(f"{remote} remote workers for {users} users: each worker needs "
                             "a user at least")
        return remote

    @field_validator("processes")
    @classmethod
    def _users_per_process(cls, processes: int, info: ValidationInfo) -> int:
        users = info.data.get("users")
        if not isinstance(users, int):
            return processes  # users is wrong itself, and said so
        if users > MAX_USERS_PER_PROCESS * processes:
            raise ValueError(
                f"{users} users is more than {processes} load process(es) can drive with "
                f"honest timings (at most {MAX_USERS_PER_PROCESS} each); raise "
                "`load.processes` (each process takes a core) or lower `load.users`")
        if users and processes > users:
            raise ValueError(
                f"{processes} load processes for {users} users: each process needs a user "
                "at least; lower `load.processes`")
        return processes


# --- phases ---------------------------------------------------------------------------


class EndEarly(Strict):
    """When a recovery phase may end before its `duration`: once the fault has shown on the
    target (one of `back` failed to answer) and the target is back (every one of `back`
    answered healthy, with no failure, for `after` in a row). Without a failure seen, the
    phase lasts its whole `duration`: a fault that never took the target down proves
    nothing, and the checks get the whole window to say so."""

    back: list[str] = Field(
        min_length=1,
        description="Health URLs polled twice a second from the phase's start; healthy is "
        "a 2xx answer within 2s. All of them must be healthy for the phase to end.",
    )
    after: Duration = Field(
        default=20.0,
        description="How long every URL must stay healthy, after the last failure seen, "
        "before the phase ends: room for the checks' own windows (warm-up TTFT, routing "
        "again) after the target is back. As long as the phase or longer: the phase lasts "
        "its whole duration (a scenario whose phases are shortened through the "
        "environment stays valid).",
    )

    @field_validator("back")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        return [http_url(u) for u in urls]


class Phase(Strict):
    name: Name = Field(description="Checks refer to the phase by this name.")
    duration: Duration = Field(
        description="How long the phase lasts (at most, with `end_early`).")
    faults: list[str] = Field(
        default_factory=list,
        description="Names of `faults` applied when the phase starts and reverted when it "
        "ends (kept on if the next phase lists them too).",
    )
    end_early: EndEarly | None = Field(
        default=None,
        description="Ends the phase once the target is back from the fault, rather than at "
        "`duration` (which stays the longest it lasts); the phases after it start sooner. "
        "For the phase a restart or kill recovers in: drills end when the recovery is seen "
        "instead of after the worst case.",
    )

    @field_validator("duration")
    @classmethod
    def _positive(cls, duration: float) -> float:
        if duration <= 0:
            raise ValueError("must be more than 0s")
        return duration


# --- checks ---------------------------------------------------------------------------




# Every check kind registered under the entry points `llmdrill.checks`, by YAML key.
CHECK_KIND_SPECS: dict[str, CheckKind] = check_kinds()
CHECK_KINDS = tuple(CHECK_KIND_SPECS)
BUILTIN_CHECK_KINDS = tuple(k for k, v in CHECK_KIND_SPECS.items() if v.builtin)
CHECK_PLUGINS = {k: v for k, v in CHECK_KIND_SPECS.items() if not v.builtin}


class _CheckHead(Strict):
    name: Name | None = Field(
        default=None, description="Name in reports; default `<phase>-<kind>-<n>`."
    )
    phase: str = Field(description="Phase whose window the check looks at.")


if TYPE_CHECKING:
    _CheckKindFields = _CheckHead
else:
    _CheckKindFields = create_model("_CheckKindFields", __base__=_CheckHead,
                                    **_kind_fields(CHECK_KIND_SPECS))


class Check(_CheckKindFields):
    enabled: bool = Field(
        default=True,
        description="false: the check is not part of the run (not planned, not in the "
        "result); lets a scenario carry opt-in checks, e.g. "
        "`enabled: ${LLMDRILL_ALERTS:-false}`.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Check:
        kinds = [k for k in CHECK_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                f"a check has exactly one kind ({', '.join(CHECK_KINDS)}); "
                f"found {len(kinds) or 'none'}"
            )
        return self

    @property
    def kind(self) -> str:
        return next(k for k in CHECK_KINDS if getattr(self, k) is not None)

    @property
    def kind_spec(self) -> CheckKind:
        return CHECK_KIND_SPECS[self.kind]

    @property
    def spec(self) -> BaseModel:
        spec = getattr(self, self.kind)
        assert isinstance(spec, BaseModel)
        return spec

    def spec_as(self, spec_type: type[S]) -> S | None:
        """The spec if it is of this type (a typed view for code that knows one kind)."""
        spec = self.spec
        return spec if isinstance(spec, spec_type) else None

    def display_name(self, index: int) -> str:
        return self.name or f"{self.phase}-{self.kind}-{index + 1}"


# --- guardrails -----------------------------------------------------------------------


class ErrorRateGuard(Strict):
    above: Fraction = Field(
        description="Error rate of the requests of the last 10s that trips the guard."
    )
    for_: Duration = Field(
        alias="for", default=10.0, description="How long the rate must stay above to abort."
    )
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class LatencyGuard(Strict):
    above: Duration = Field(description="TTFT p95 of the last 10s of requests that trips it.")
    for_: Duration = Field(
        alias="for", default=10.0, description="How long it must stay above to abort."
    )
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class EngineDownGuard(Strict):
    for_: Duration = Field(
        alias="for", default=15.0,
        description="Abort when every scrape of target.metrics_url fails for this long.",
    )
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PromQLGuard(Strict):
    query: str = Field(description="A PromQL expression; its first sample's value is tested.")
    above: float | None = Field(default=None, description="Abort when the value is above.")
    below: float | None = Field(default=None, description="Abort when the value is below.")
    for_: Duration = Field(
        alias="for", default=10.0, description="How long it must hold to abort."
    )
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _bound(self) -> PromQLGuard:
        if self.above is None and self.below is None:
            raise ValueError("give above, below or both")
        return self


class AlertGuard(Strict):
    name: str = Field(description="Alert name (the alertname label).")
    source: Literal["alertmanager", "prometheus"] = Field(
        default="alertmanager",
        description="Where to look: Alertmanager's active alerts, or Prometheus' ALERTS.",
    )
    for_: Duration = Field(
        alias="for", default=0.0, description="How long it must be firing to abort."
    )
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class AbortIf(Strict):
    """One or more conditions; any of them aborts the run (faults are reverted, exit 3)."""

    error_rate: ErrorRateGuard | None = Field(
        default=None, description="Abort when the client-side error rate stays high."
    )
    ttft_p95: LatencyGuard | None = Field(
        default=None, description="Abort when client-side TTFT p95 stays high."
    )
    engine_down: EngineDownGuard | None = Field(
        default=None, description="Abort when the engine's metrics endpoint stops answering."
    )
    promql: PromQLGuard | None = Field(
        default=None, description="Abort on a PromQL condition (needs `prometheus.url`)."
    )
    alert: AlertGuard | None = Field(
        default=None, description="Abort while an alert fires (needs `alertmanager.url`)."
    )

    @model_validator(mode="after")
    def _one(self) -> AbortIf:
        if all(getattr(self, k) is None
               for k in ("error_rate", "ttft_p95", "engine_down", "promql", "alert")):
            raise ValueError(
                "give at least one of error_rate, ttft_p95, engine_down, promql, alert")
        return self


class MonitoringEndpoint(Strict):
    url: str = Field(description="Base URL, e.g. http://127.0.0.1:9090.")

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        return http_url(url)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


class WebhookReceiver(Strict):
    """An Alertmanager webhook receiver the harness runs for the run's length."""

    listen: str = Field(
        default="127.0.0.1:18290",
        description="host:port it listens on; loopback only (point Alertmanager's "
        "webhook_configs url at http://<listen>/).",
    )

    @field_validator("listen")
    @classmethod
    def _loopback(cls, listen: str) -> str:
        host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got '{listen}'")
        if host not in LOOPBACK_HOSTS:
            raise ValueError(f"the receiver listens on loopback only (127.0.0.1), got '{host}'")
        return listen

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class MonitoringWatch(Strict):
    """How the run watches the alerting stack (for the alert checks)."""

    webhook: WebhookReceiver | None = Field(
        default=None,
        description="Run a webhook receiver that records every notification (while the "
        "scenario has enabled alert checks).",
    )
    poll_interval: Duration = Field(
        default=1.0,
        description="How often Prometheus' and Alertmanager's alert state is read.",
    )
    queries: dict[Name, str] = Field(
        default_factory=dict,
        description="PromQL expressions read from `prometheus` as range queries over the "
        "run when it ends, kept as series `promql:<name>` (with their labels) that `metric` "
        "checks can judge: an alternative to scraping /metrics directly.",
    )
    query_step: Duration = Field(
        default=1.0, description="Resolution of those range queries."
    )


class Safety(Strict):
    """Limits on what a run may do, checked before anything is changed."""

    allow_production: bool = Field(
        default=False,
        description="This scenario may run against a target marked production (the command "
        "line must allow it too: --allow-production).",
    )
    max_run_duration: Duration = Field(
        default=3600.0, description="A run longer than this (phases in total) is refused."
    )
    max_blast_radius: int | None = Field(
        default=None, ge=1,
        description="Most things one fault may touch (proxies, streams, requests in flight, "
        "containers); a fault over it is refused.",
    )


class Guardrail(Strict):
    abort_if: AbortIf = Field(description="Conditions that abort the run; faults are reverted.")


# --- scenario -------------------------------------------------------------------------


class Telemetry(Strict):
    scrape_interval: Duration = Field(
        default=1.0,
        description="How often the engine's /metrics is scraped. Cleanup drills want 200ms.",
    )


class Scenario(Strict):
    apiVersion: Literal["llmdrill/v1"] = Field(description="Version of the scenario format.")
    kind: Literal["Scenario"]
    metadata: Metadata = Field(description="Name, description and tags.")
    target: Target = Field(description="The API under test.")
    toxiproxy: dict[str, ToxiproxyServer] = Field(
        default_factory=lambda: {"default": ToxiproxyServer()},
        description="Toxiproxy API servers by name; faults pick one with `server`.",
    )
    faults: dict[Name, Fault] = Field(
        default_factory=dict, description="Named faults; phases apply them by name."
    )
    load: Load = Field(default_factory=Load, description="Traffic sent for the whole run.")
    telemetry: Telemetry = Field(
        default_factory=lambda: Telemetry(), description="How the engine is watched."
    )
    phases: list[Phase] = Field(
        min_length=1, description="Run one after the other; each may apply faults."
    )
    checks: list[Check] = Field(
        default_factory=list, description="Pass/fail conditions, each on one phase."
    )
    guardrails: list[Guardrail] = Field(
        default_factory=list, description="Conditions that abort the run early."
    )
    safety: Safety = Field(default_factory=lambda: Safety(), description="Limits on the run.")
    prometheus: MonitoringEndpoint | None = Field(
        default=None, description="A Prometheus server, for PromQL guardrails and checks."
    )
    alertmanager: MonitoringEndpoint | None = Field(
        default=None, description="An Alertmanager, for alert guardrails and checks."
    )
    monitoring: MonitoringWatch = Field(
        default_factory=lambda: MonitoringWatch(),
        description="The webhook receiver and alert polling of the alert checks.",
    )

    @model_validator(mode="after")
    def _references(self, info: ValidationInfo) -> Scenario:
        # The loader asks for the problems itself so it can point at each one's line.
        if not (info.context or {}).get("defer_references"):
            problems = self.reference_problems()
            if problems:
                raise ValueError(
                    "; ".join(f"{'.'.join(map(str, loc))}: {m}" for loc, m in problems)
                )
        return self

    def reference_problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Cross-references a field type cannot check: phases, faults, servers, names."""
        problems: list[tuple[tuple[str | int, ...], str]] = []
        phase_names = [p.name for p in self.phases]
        seen: set[str] = set()
        for i, phase in enumerate(self.phases):
            if phase.name in seen:
                problems.append((("phases", i, "name"), f"duplicate phase name '{phase.name}'"))
            seen.add(phase.name)
            for j, ref in enumerate(phase.faults):
                if ref not in self.faults:
                    valid = ", ".join(sorted(self.faults))
                    hint = f"defined: {valid}" if valid else "no faults are defined"
                    problems.append(
                        (("phases", i, "faults", j), f"unknown fault '{ref}' ({hint})")
                    )
        if self.total_duration > self.safety.max_run_duration:
            problems.append(
                (("phases",), f"the phases last {self.total_duration:g}s in total, over "
                 f"safety.max_run_duration ({self.safety.max_run_duration:g}s)")
            )
        for i, guard in enumerate(self.guardrails):
            if guard.abort_if.promql and not self.prometheus:
                problems.append(
                    (("guardrails", i, "abort_if", "promql"),
                     "a promql guardrail needs `prometheus: {url: ...}`")
                )
            alert = guard.abort_if.alert
            if alert and alert.source == "alertmanager" and not self.alertmanager:
                problems.append(
                    (("guardrails", i, "abort_if", "alert"),
                     "an alert guardrail needs `alertmanager: {url: ...}` "
                     "(or source: prometheus)")
                )
            if alert and alert.source == "prometheus" and not self.prometheus:
                problems.append(
                    (("guardrails", i, "abort_if", "alert"),
                     "an alert guardrail with source: prometheus needs `prometheus: {url}`")
                )
            if guard.abort_if.engine_down and not self.target.metrics_url:
                problems.append(
                    (("guardrails", i, "abort_if", "engine_down"),
                     "engine_down watches target.metrics_url, which is not set")
                )
        problems += self._query_problems()
        names: set[str] = set()
        for i, check in enumerate(self.checks):
            if check.phase not in phase_names:
                problems.append(
                    (
                        ("checks", i, "phase"),
                        f"unknown phase '{check.phase}' (phases: {', '.join(phase_names)})",
                    )
                )
            display = check.display_name(i)
            if display in names:
                problems.append((("checks", i, "name"), f"duplicate check name '{display}'"))
            names.add(display)
        return problems + self._kind_problems()

    def _kind_problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        """What each fault's backend and each check's kind say about its references to
        the rest of the scenario (phases, faults, servers, the metrics URL)."""
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for name, fault in self.faults.items():
            backend = fault.kind
            if backend.references is not None:
                problems += backend.references(fault.spec, self, ("faults", name, fault.backend))
        for i, check in enumerate(self.checks):
            kind = check.kind_spec
            if kind.references is not None:
                problems += kind.references(check.spec, self, ("checks", i, check.kind))
        return problems

    def _query_problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        if self.monitoring.queries and not self.prometheus:
            return [(("monitoring", "queries"), "PromQL queries need `prometheus: {url: ...}`")]
        return []

    @property
    def alert_checks(self) -> list[Check]:
        """The enabled checks that need the alerting stack watched."""
        return [c for c in self.checks if c.enabled
                and c.kind in ("alert_fires", "alert_resolves", "no_false_alarms")]

    @property
    def total_duration(self) -> float:
        return sum(p.duration for p in self.phases)
