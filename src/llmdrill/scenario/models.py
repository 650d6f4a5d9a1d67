"""Typed scenario format v1. Unknown keys are errors everywhere (extra='forbid')."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from llmdrill.plugin import CHECKS_GROUP, FAULTS_GROUP, CheckKind, FaultBackend, external_specs
from llmdrill.scenario.units import Duration, Fraction, PositiveInt, Size

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)]


def _plugin_fields(plugins: dict[str, FaultBackend | CheckKind]) -> dict[str, Any]:
    """One optional field per plugin key, as the built-in kinds have."""
    return {key: (plugin.spec | None, Field(default=None, description=plugin.description))
            for key, plugin in plugins.items()}


def http_url(url: str) -> str:
    """An http(s) URL that every HTTP client can use, or a ValueError saying what is wrong.

    Refused at load time, so a typo never gets as far as a run: a URL with spaces or control
    characters, no host, an unclosed IPv6 bracket or a port that is not a number.
    """
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"must start with http:// or https://, got '{url}'")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError(f"must not contain spaces or control characters, got {url!r}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc}): '{url}'") from None
    if not parts.hostname:
        raise ValueError(f"has no host: '{url}'")
    if port == 0:
        raise ValueError(f"port 0 is not a port to connect to: '{url}'")
    return url

class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- metadata and target -------------------------------------------------------------


class Metadata(Strict):
    name: Name = Field(description="The drill's name, shown in plans, reports and results.")
    description: str = Field(default="", description="What the drill does, in a sentence.")
    tags: list[str] = Field(
        default_factory=list, description="Free-form labels, copied into the run's result."
    )


class Target(Strict):
    """The OpenAI-compatible API under test. Secrets come only from env or files."""

    base_url: str = Field(description="Base URL of the API, without /v1.")
    model: str = Field(description="Model name sent in every request (`model` in the API).")
    metrics_url: str | None = Field(
        default=None, description="The engine's Prometheus /metrics endpoint, if scraped."
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


class _ToxicBase(Strict):
    server: str = Field(default="default", description="Key in `toxiproxy:` servers.")
    proxy: Name = Field(description="Toxiproxy proxy name; created if listen/upstream are set.")
    listen: str | None = Field(default=None, description="host:port the proxy listens on.")
    upstream: str | None = Field(default=None, description="host:port the proxy forwards to.")
    stream: Literal["downstream", "upstream"] = Field(
        default="downstream",
        description="Direction the toxic acts on: downstream is server to client, "
        "upstream is client to server.",
    )
    toxicity: Fraction = Field(
        default=1.0, description="Chance that a connection gets the toxic (1: every one)."
    )


class LatencyToxic(_ToxicBase):
    toxic: Literal["latency"]
    latency: Duration = Field(description="Delay added to the data passing through.")
    jitter: Duration = Field(
        default=0.0, description="Random amount added to or taken from the latency."
    )


class TimeoutToxic(_ToxicBase):
    """Stops all data; closes the connection after `timeout` (0s: never)."""

    toxic: Literal["timeout"]
    timeout: Duration = Field(
        description="When the stalled connection is closed; 0s: it stays open, stalled."
    )


class BandwidthToxic(_ToxicBase):
    toxic: Literal["bandwidth"]
    rate: Size = Field(description="Bytes per second, e.g. '16KiB'.")


class SlowCloseToxic(_ToxicBase):
    toxic: Literal["slow_close"]
    delay: Duration = Field(description="How long the close of a connection is delayed.")


class ResetPeerToxic(_ToxicBase):
    toxic: Literal["reset_peer"]
    timeout: Duration = Field(
        default=0.0, description="Wait before the connection is reset (TCP RST); 0s: at once."
    )


class SlicerToxic(_ToxicBase):
    toxic: Literal["slicer"]
    average_size: Size = Field(description="Average size of the slices the data is cut into.")
    size_variation: Size = Field(
        default=0, description="How much a slice's size varies around the average."
    )
    delay: Duration = Field(default=0.0, description="Pause between two slices.")


class LimitDataToxic(_ToxicBase):
    toxic: Literal["limit_data"]
    bytes: Size = Field(description="The connection is closed once this much data has passed.")


class DownToxic(_ToxicBase):
    """The proxy is disabled: new connections are refused, open ones are cut."""

    toxic: Literal["down"]


ToxiproxyFault = Annotated[
    LatencyToxic
    | TimeoutToxic
    | BandwidthToxic
    | SlowCloseToxic
    | ResetPeerToxic
    | SlicerToxic
    | LimitDataToxic
    | DownToxic,
    Field(discriminator="toxic"),
]


class Timeouts(Strict):
    connect: Duration = Field(default=5.0, description="Longest wait to open a connection.")
    read: Duration = Field(
        default=30.0, description="Longest wait for response headers or any next chunk."
    )
    total: Duration = Field(default=60.0, description="Deadline for one attempt, end to end.")


RetryOn = Literal["429", "5xx", "timeout", "connect", "reset"]
RETRY_ON: tuple[RetryOn, ...] = ("429", "5xx", "timeout", "connect", "reset")


Api = Literal["chat", "completions"]
APIS: tuple[Api, ...] = ("chat", "completions")


class AbortAfter(Strict):
    """When a cancel-storm client drops its stream: after some chunks, or after a delay."""

    chunks: int | None = Field(
        default=None, ge=0,
        description="Drop after this many SSE data events that carry a token; 0 drops as "
        "soon as the response headers arrive, before any token (during prefill).",
    )
    delay: Duration | None = Field(default=None, description="Drop this long after sending.")

    @model_validator(mode="after")
    def _one(self) -> AbortAfter:
        if (self.chunks is None) == (self.delay is None):
            raise ValueError("give exactly one of chunks or delay")
        return self


class CancelStormFault(Strict):
    """Client-side: waves of streaming requests that are abandoned mid-flight."""

    streams: PositiveInt = Field(default=30, description="Concurrent streams per wave.")
    apis: list[Api] = Field(
        default_factory=lambda: list(APIS), min_length=1,
        description="APIs the streams use, in turn.",
    )
    prompt_tokens: PositiveInt = Field(default=64, description="Prompt length, in tokens.")
    max_tokens: PositiveInt = Field(
        default=256,
        description="Output tokens asked for (with ignore_eos): what an engine that misses "
        "the disconnect keeps generating for nobody.",
    )
    n: PositiveInt = Field(
        default=1,
        description="Completions per request (the API's `n`): each is work an engine that "
        "misses the disconnect keeps doing for nobody.",
    )
    abort_after: AbortAfter = Field(
        default_factory=lambda: AbortAfter(chunks=3),
        description="When each stream is dropped: after `chunks` token events or a `delay`.",
    )
    close: Literal["graceful", "reset", "stop_reading"] = Field(
        default="reset",
        description="graceful: FIN, then read on until the server closes too (at most "
        "`hold`); reset: TCP RST; stop_reading: stop reading and hold the connection open "
        "for `hold`, then reset it.",
    )
    hold: Duration = Field(
        default=5.0,
        description="How long stop_reading holds a connection, and the longest a graceful "
        "close waits for the server's side to close.",
    )
    waves: PositiveInt = Field(default=1, description="How many waves the storm sends.")
    interval: Duration = Field(default=5.0, description="Time between the starts of waves.")
    start_after: Duration = Field(
        default=0.0,
        description="Delay from the fault's apply to its first wave; lets two storms in one "
        "phase take turns.",
    )
    base_url: str | None = Field(
        default=None, description="Where the storm goes (default: target.base_url)."
    )

    @field_validator("base_url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        return None if url is None else http_url(url)


class RequestFloodFault(Strict):
    """Client-side: a flood of long requests (long prompts, long outputs) while it lasts."""

    concurrency: PositiveInt = Field(
        default=16, description="Requests kept in flight, each sent again as soon as it ends."
    )
    api: Literal["chat", "completions"] = Field(
        default="completions", description="Endpoint: /v1/chat/completions or /v1/completions."
    )
    prompt_tokens: PositiveInt = Field(default=400, description="Prompt length, in tokens.")
    max_tokens: PositiveInt = Field(default=100, description="Output tokens asked for.")
    stream: bool = Field(default=True, description="Ask for streamed (SSE) responses.")
    ignore_eos: bool = Field(
        default=True, description="vLLM extension: generate exactly max_tokens tokens."
    )
    name: Name = Field(default="flood", description="Request shape name in the evidence.")
    timeouts: Timeouts = Field(
        default_factory=Timeouts,
        description="Deadlines of each flood request (never retried); on stop, requests in "
        "flight are cut and recorded as interrupted.",
    )
    base_url: str | None = Field(
        default=None, description="Where the flood goes (default: target.base_url)."
    )

    @field_validator("base_url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        return None if url is None else http_url(url)


class DockerTarget(Strict):
    """Which containers a Docker fault acts on: one by name, or every one with labels."""

    name: str | None = Field(default=None, description="Container name (or id).")
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Labels a container must all carry to be targeted; every match is.",
    )

    @model_validator(mode="after")
    def _one(self) -> DockerTarget:
        if (self.name is None) == (not self.labels):
            raise ValueError("give exactly one of name or labels")
        return self


DockerAction = Literal["restart", "kill", "stop", "pause", "memory", "cpu", "hog"]


class DockerFault(Strict):
    """A change to containers through the Docker Engine API, journaled before it is made
    and reverted after: unpause, start what was stopped or killed, restore limits, end
    the hog."""

    action: DockerAction = Field(
        description="restart, kill (a signal), stop, pause, memory (squeeze the limit), "
        "cpu (a CPU quota) or hog (a memory hog run inside the container).",
    )
    target: DockerTarget = Field(description="The container(s): by name or by labels.")
    docker_host: str | None = Field(
        default=None,
        description="Docker Engine address (default: $DOCKER_HOST, else the local socket).",
    )
    signal: str = Field(default="SIGKILL", description="kill: the signal sent.")
    via: Literal["process", "engine"] = Field(
        default="process",
        description="kill: `process` signals the container's main process from the host, "
        "like a crash (its restart policy applies; needs a local engine); `engine` asks "
        "Docker (`docker kill`), which Docker treats as a deliberate stop: no restart.",
    )
    grace: Duration = Field(
        default=10.0, description="stop and restart: wait after SIGTERM before SIGKILL."
    )
    memory: Size | None = Field(
        default=None,
        description="memory: the squeezed limit; hog: how much memory the hog fills.",
    )
    cpus: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="cpu: the CPU quota, in CPUs (0.5: half a core)."
    )
    restore: Literal["exact", "host_memory"] = Field(
        default="exact",
        description="memory: Docker cannot remove a memory limit once set. `exact` refuses "
        "to squeeze a container without one; `host_memory` restores it to the host's "
        "total memory (no limit in practice, but `docker inspect` shows the number).",
    )
    hog_command: list[str] | None = Field(
        default=None,
        description="hog: the command run inside the container; {size} is replaced by the "
        "byte count (default: python3 filling `memory` bytes, then sleeping).",
    )
    max_containers: PositiveInt = Field(
        default=1,
        description="Blast radius: the fault is refused if more containers match.",
    )
    timeout: Duration = Field(
        default=30.0, description="Deadline of each Docker API call (stop/restart: + grace)."
    )
    oom_score_adj: Annotated[int, Field(ge=1, le=1000)] | None = Field(
        default=None,
        description="memory, hog: before the change, raise the oom_score_adj of the "
        "container's processes to this (1-1000, through `docker exec ... sh`), so the "
        "kernel's OOM killer picks the engine rather than the hog; the old values are "
        "journaled and written back at revert (unless the container restarted meanwhile).",
    )

    @model_validator(mode="after")
    def _needs(self) -> DockerFault:
        if self.action in ("memory", "hog") and self.memory is None:
            raise ValueError(f"action {self.action} needs memory (e.g. '512MiB')")
        if self.action == "cpu" and self.cpus is None:
            raise ValueError("action cpu needs cpus (e.g. 0.5)")
        if self.action == "memory" and self.memory is not None and self.memory < 6 * 1024**2:
            raise ValueError("Docker refuses a memory limit under 6MiB")
        if self.oom_score_adj is not None and self.action not in ("memory", "hog"):
            raise ValueError("oom_score_adj goes with action memory or hog")
        return self


BUILTIN_FAULT_BACKENDS = ("toxiproxy", "cancel_storm", "request_flood", "docker")
# Fault backends of installed plugins (entry points `llmdrill.faults`), by YAML key.
FAULT_PLUGINS: dict[str, FaultBackend] = {
    k: v for k, v in external_specs(FAULTS_GROUP, BUILTIN_FAULT_BACKENDS).items()
    if isinstance(v, FaultBackend)}
FAULT_BACKENDS = BUILTIN_FAULT_BACKENDS + tuple(FAULT_PLUGINS)

if TYPE_CHECKING:
    _FaultPluginFields = Strict
else:
    _FaultPluginFields = create_model("_FaultPluginFields", __base__=Strict,
                                      **_plugin_fields(dict(FAULT_PLUGINS)))


class Fault(_FaultPluginFields):
    """One named fault. Exactly one backend key is set."""

    @model_validator(mode="before")
    @classmethod
    def _backend(cls, data: Any) -> Any:
        if isinstance(data, dict):
            backends = [k for k in data if k in FAULT_BACKENDS]
            unknown = [k for k in data if k not in FAULT_BACKENDS and k != "max_lifetime"]
            if not backends and unknown:
                raise ValueError(
                    f"unknown fault type '{unknown[0]}' "
                    f"(fault types: {', '.join(FAULT_BACKENDS)})"
                )
        return data

    toxiproxy: ToxiproxyFault | None = Field(
        default=None, description="A Toxiproxy toxic; `toxic` picks the kind."
    )
    cancel_storm: CancelStormFault | None = Field(
        default=None, description="Waves of client streams abandoned mid-flight."
    )
    request_flood: RequestFloodFault | None = Field(
        default=None, description="Extra long requests from the harness while applied."
    )
    docker: DockerFault | None = Field(
        default=None, description="A container restarted, killed, stopped, paused or squeezed."
    )
    max_lifetime: Duration | None = Field(
        default=None, description="Upper bound on how long the fault may stay applied."
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

    @field_validator("users")
    @classmethod
    def _one_process(cls, users: int) -> int:
        if users > MAX_USERS_PER_PROCESS:
            raise ValueError(
                f"{users} users is more than one load process can drive with honest timings "
                f"(at most {MAX_USERS_PER_PROCESS}); lower it, or run several llmdrill "
                "instances against the target, each with its share")
        return users


# --- phases ---------------------------------------------------------------------------


class Phase(Strict):
    name: Name = Field(description="Checks refer to the phase by this name.")
    duration: Duration = Field(description="How long the phase lasts.")
    faults: list[str] = Field(
        default_factory=list,
        description="Names of `faults` applied when the phase starts and reverted when it "
        "ends (kept on if the next phase lists them too).",
    )

    @field_validator("duration")
    @classmethod
    def _positive(cls, duration: float) -> float:
        if duration <= 0:
            raise ValueError("must be more than 0s")
        return duration


# --- checks ---------------------------------------------------------------------------


class Bound(Strict):
    min: float | None = Field(
        default=None, description="Lowest allowed value (inclusive); give min, max or both."
    )
    max: float | None = Field(
        default=None, description="Highest allowed value (inclusive); give min, max or both."
    )

    @model_validator(mode="after")
    def _one(self) -> Bound:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        return self


class DurationBound(Strict):
    min: Duration | None = Field(
        default=None, description="Lowest allowed value (inclusive); give min, max or both."
    )
    max: Duration | None = Field(
        default=None, description="Highest allowed value (inclusive); give min, max or both."
    )

    @model_validator(mode="after")
    def _one(self) -> DurationBound:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        return self


class FractionBound(Strict):
    min: Fraction | None = Field(
        default=None, description="Lowest allowed value (inclusive); give min, max or both."
    )
    max: Fraction | None = Field(
        default=None, description="Highest allowed value (inclusive); give min, max or both."
    )

    @model_validator(mode="after")
    def _one(self) -> FractionBound:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        return self


ErrorClass = Literal[
    "timeout",
    "connect",
    "reset",
    "incomplete_stream",
    "protocol",
    "http_4xx",
    "http_429",
    "http_5xx",
    "interrupted",
    "empty",
]


class SloCheck(Strict):
    """Client-side service levels over the requests that started in the window."""

    shapes: list[str] | None = Field(
        default=None,
        description="Only requests of these shape names (load.requests[].name, or a "
        "request_flood's name); default all.",
    )
    ttft_p50: DurationBound | None = Field(
        default=None, description="Median time to first token of successful requests."
    )
    ttft_p95: DurationBound | None = Field(
        default=None, description="95th percentile time to first token of successful requests."
    )
    ttft_p99: DurationBound | None = Field(
        default=None, description="99th percentile time to first token of successful requests."
    )
    tokens_per_s: Bound | None = Field(default=None, description="Output tokens/s, all requests.")
    request_tokens_per_s_p50: Bound | None = Field(
        default=None,
        description="Median decode speed of one request: output tokens/s after its first token.",
    )
    error_rate: FractionBound | None = Field(
        default=None, description="Share of requests that failed."
    )
    error_rate_by_class: dict[ErrorClass, FractionBound] = Field(
        default_factory=dict, description="Share of requests that failed with a given class."
    )
    allowed_error_classes: list[ErrorClass] | None = Field(
        default=None, description="Any failed request of another class fails the check."
    )
    min_requests: int = Field(
        default=1, ge=0,
        description="Fewer requests started in the window is inconclusive (too little "
        "evidence); 0 still needs one request.",
    )


class NoHungRequestsCheck(Strict):
    deadline: Duration = Field(description="Every request finishes or fails within this.")
    min_requests: int = Field(
        default=1, ge=1,
        description="Fewer requests started in the window is inconclusive (too little "
        "evidence).",
    )


RecoverMeasure = Literal["ttft_p50", "ttft_p95", "error_rate", "tokens_per_s"]


class RecoversCheck(Strict):
    """A measure comes back within tolerance of its baseline soon after the phase starts."""

    measure: RecoverMeasure = Field(description="What has to come back.")
    baseline_phase: str = Field(description="Healthy phase whose value is the baseline.")
    within: Duration = Field(description="Recovery must come this soon after the phase starts.")
    tolerance: Fraction = Field(
        default=0.2, description="Allowed distance from the baseline, as a share of it."
    )
    slack: float = Field(
        default=0.0,
        ge=0,
        description="Absolute allowance added to the tolerance band, in the measure's unit "
        "(seconds for TTFT).",
    )
    window: Duration = Field(default=5.0, description="Sliding window the measure is taken over.")
    max_error_rate: Fraction = Field(
        default=0.05,
        description="A window counts as recovered only if at most this share of the "
        "requests started in it failed (fast errors are not a recovery).",
    )
    min_requests: int = Field(
        default=3, ge=1,
        description="Requests that must have started (and ended) in a window for it to "
        "count; no window with this many is inconclusive.",
    )


class MetricCheck(Strict):
    """A condition on a scraped engine series within the window."""

    series: list[str] = Field(
        min_length=1, description="Metric names, first one the target exposes is used."
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Only samples with these labels; matching series are summed per scrape.",
    )
    aggregate: Literal["max", "min", "mean", "last", "first", "increase"] = Field(
        default="max",
        description="How the window's samples become one value; increase reads a counter "
        "across restarts.",
    )
    min: float | None = Field(default=None, description="Lowest allowed value (inclusive).")
    max: float | None = Field(default=None, description="Highest allowed value (inclusive).")
    min_samples: int = Field(
        default=2, ge=1,
        description="Fewer scrapes of the series in the window is inconclusive (increase "
        "always needs 2).",
    )

    @model_validator(mode="after")
    def _bounds(self) -> MetricCheck:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        return self


class KvCacheCleanupCheck(Strict):
    """After each cancel-storm wave (or the phase start), the engine's running requests
    and KV-cache usage return to their pre-storm baseline within `within`, and the engine
    does not go on generating (or finish requests) for the clients that left."""

    within: Duration = Field(default=2.0, description="Deadline for each wave's cleanup.")
    running_tolerance: float = Field(
        default=0.0, ge=0, description="Running requests allowed above the baseline."
    )
    kv_tolerance: Fraction = Field(
        default=0.02, description="KV-cache usage (0-1) allowed above the baseline."
    )
    baseline_window: Duration = Field(
        default=2.0,
        description="Samples before each wave that make its baseline (the highest of them).",
    )
    after: Literal["waves", "phase_start"] = Field(
        default="waves",
        description="waves: every cancel-storm wave in the window; phase_start: once, from "
        "the start of the phase (e.g. after a flood phase), baseline = `baseline_phase`.",
    )
    baseline_phase: str | None = Field(
        default=None, description="With after: phase_start, the phase whose level is normal."
    )
    min_scrapes: int = Field(
        default=3, ge=1,
        description="Scrapes of the engine after each drop (until the next wave or the end "
        "of the window) needed to judge it; a wave with fewer is inconclusive.",
    )
    drop_grace: Duration = Field(
        default=0.2,
        description="Time after a drop the engine may take to notice it: tokens generated "
        "and requests finished later count as work for clients that left.",
    )
    tokens_after_drop: float = Field(
        default=32, ge=0,
        description="Tokens per dropped stream the engine may generate after the drop (and "
        "`drop_grace`) beyond what the other traffic explains; more fails the wave.",
    )


class CapCase(Strict):
    """One request that must be refused with a helpful 4xx."""

    name: Name = Field(description="Case name in the report (the built-in cases use their kind).")
    kind: Literal[
        "prompt_over_context",
        "max_tokens_over_cap",
        "max_tokens_zero",
        "max_tokens_negative",
        "unknown_model",
        "malformed_json",
        "custom",
    ]
    api: Literal["chat", "completions"] = Field(
        default="chat", description="Endpoint the case is sent to (unless `path` is set)."
    )
    path: str | None = Field(default=None, description="Route for custom cases, e.g. /v1/x.")
    body: str | None = Field(default=None, description="Raw request body for custom cases.")
    max_tokens: int | None = Field(default=None, description="Override the case's max_tokens.")
    expect_status: list[int] = Field(
        default_factory=list, description="Accepted statuses; default per kind (400, 404...)."
    )
    message_matches: str | None = Field(
        default=None,
        description="Regex the error message must match (default per kind: it names the "
        "limit, e.g. the context length).",
    )


class ErrorSchema(Strict):
    """What an error body must look like (gateways differ, so it is declared)."""

    error_fields: list[str] = Field(
        default_factory=lambda: ["type", "code", "message"],
        description="Fields the `error` object must have (OpenAI style).",
    )
    request_id: Literal["none", "header", "body", "either"] = Field(
        default="none", description="Where a request id must appear, if anywhere."
    )
    request_id_header: str = Field(
        default="x-request-id", description="Header that carries the request id, if any."
    )


class CapsEnforcedCheck(Strict):
    """Requests over the limits are refused with a helpful 4xx, never a 5xx or a hang, and
    the server still serves afterwards. The probes run while the phase runs."""

    context_length: PositiveInt = Field(description="The engine's max context, in tokens.")
    max_output_tokens: PositiveInt | None = Field(
        default=None, description="Output cap per request, if lower than context_length."
    )
    cases: list[CapCase] | None = Field(
        default=None, description="Cases to probe; default every built-in kind."
    )
    error_schema: ErrorSchema = Field(default_factory=ErrorSchema)
    deadline: Duration = Field(default=10.0, description="Each probe must answer within this.")
    rounds: PositiveInt = Field(default=1, description="Times the cases run over the phase.")


class QueueBoundedCheck(Strict):
    """The engine's waiting queue stays within a bound, or excess requests are refused
    with 429/503 (and Retry-After where declared) instead of waiting without bound."""

    max_waiting: float = Field(ge=0, description="Bound on the engine's waiting requests.")
    series: list[str] = Field(
        default_factory=lambda: ["vllm:num_requests_waiting"], min_length=1,
        description="Waiting-queue metric names, first one the target exposes is used; "
        "none exposed fails the check.",
    )
    refusal_statuses: list[int] = Field(
        default_factory=lambda: [429, 503],
        description="Statuses that count as a request refused under load.",
    )
    require_retry_after: bool = Field(
        default=False, description="Refusals must carry a Retry-After header."
    )
    min_samples: int = Field(
        default=3, ge=1,
        description="Fewer scrapes of the waiting series in the window is inconclusive.",
    )


class EngineHealthyCheck(Strict):
    """The engine answers its health endpoint all through the phase (polled)."""

    url: str | None = Field(
        default=None, description="Health URL; default <metrics_url host>/health."
    )
    interval: Duration = Field(default=1.0, description="Time between two polls.")
    timeout: Duration = Field(
        default=2.0, description="A poll without an answer this soon has failed."
    )
    max_failures: int = Field(
        default=0, ge=0,
        description="Failed polls (no 2xx within `timeout`) plus failed metric scrapes "
        "allowed.",
    )
    min_polls: int = Field(
        default=3, ge=1,
        description="Fewer polls in the phase is inconclusive; polls must also cover the "
        "whole phase (no gap longer than interval + timeout + 5.5s).",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        return None if url is None else http_url(url)


# How a request cut by a kill may end: the connection broke (closed before any answer is
# `protocol` to the load generator), or a gateway said 5xx.
CUT_CLASSES: tuple[ErrorClass, ...] = ("incomplete_stream", "reset", "connect", "protocol",
                                       "http_5xx")


class _AfterNodeFault(Strict):
    """What the node-restart checks share: the fault that marks the kill, and the health
    polls (their own probe, over the phase) that show the engine down and back."""

    fault: Name | None = Field(
        default=None,
        description="The fault whose start is the moment of the kill (default: the first "
        "fault applied in the phase).",
    )
    health_url: str | None = Field(
        default=None, description="Health URL polled; default <metrics_url host>/health."
    )
    poll_interval: Duration = Field(default=0.5, description="Time between two polls.")
    poll_timeout: Duration = Field(
        default=2.0, description="A poll without a 2xx this soon counts as down."
    )
    down_polls: int = Field(
        default=3, ge=1,
        description="Consecutive failed health polls that show the engine down when there "
        "is no `die` event of its container; fewer is a blip, not an outage.",
    )

    @field_validator("health_url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        return None if url is None else http_url(url)


class StreamRecoveryCheck(_AfterNodeFault):
    """The engine was killed or restarted under load: every request in flight ends with a
    clear, classified error within `deadline` (no hang), requests sent while the engine
    was down (a client can retry them) succeed once it is back, and it comes back at all."""

    deadline: Duration = Field(
        default=10.0,
        description="A request caught by the kill that fails must have ended this soon "
        "after the kill.",
    )
    allowed_error_classes: list[ErrorClass] = Field(
        default_factory=lambda: list(CUT_CLASSES),
        description="Classes a request cut by the fault may end with; others (timeout: the "
        "client had to give up on a silent stream) fail the check.",
    )
    min_in_flight: int = Field(
        default=1, ge=0,
        description="Fewer requests in flight at the fault is inconclusive (no evidence).",
    )
    min_cut: int = Field(
        default=1, ge=1,
        description="Requests in flight that the kill must actually have cut (ended with an "
        "error); requests that completed normally show nothing about recovery. Fewer is "
        "inconclusive.",
    )
    retry_success: Fraction = Field(
        default=1.0,
        description="Share of the requests sent while the engine was down (the ones a client "
        "can retry) that must end in success.",
    )
    min_retryable: int = Field(
        default=1, ge=0, description="Fewer retryable requests is inconclusive (no evidence)."
    )
    back_within: Duration = Field(
        default=300.0, description="The engine must answer its health URL again this soon."
    )
    after_error_rate: Fraction = Field(
        default=0.0,
        description="Highest share of failed requests among those sent once it is back.",
    )


class OomObservedCheck(Strict):
    """The kernel's OOM killer struck in the fault's containers: an `oom` event from the
    Docker Engine, or State.OOMKilled, within the phase (and within `within` of the
    fault). Reported with its time; no OOM fails the check and says what was seen."""

    fault: Name | None = Field(
        default=None,
        description="The Docker fault whose containers are watched and whose apply starts "
        "the clock (default: the first Docker fault applied in the phase).",
    )
    within: Duration | None = Field(
        default=None, description="The first OOM must come this soon after the fault."
    )
    container_died: bool = Field(
        default=False,
        description="Also require the container to die (a `die` event) after the OOM, not "
        "only a process in it.",
    )


class WarmUpCheck(_AfterNodeFault):
    """How long the engine takes to come back after a kill: to healthy, to the first
    token, and until client TTFT p95 is back within tolerance of the baseline."""

    baseline_phase: str = Field(description="Healthy phase whose TTFT p95 is the baseline.")
    healthy_within: Duration = Field(description="Bound on the time from the kill to healthy.")
    first_token_within: Duration = Field(
        description="Bound on the time from the kill to the first token of a probe request."
    )
    ttft_within: Duration = Field(
        description="Bound on the time from the kill until TTFT p95 is back in the band."
    )
    tolerance: Fraction = Field(
        default=0.5, description="Allowed distance of TTFT p95 from baseline, as a share."
    )
    slack: float = Field(
        default=0.0, ge=0, description="Seconds added to the band (for tiny baselines)."
    )
    window: Duration = Field(
        default=5.0, description="Sliding window TTFT p95 is taken over (0.5s steps)."
    )
    probe_timeout: Duration = Field(
        default=10.0, description="Deadline of one token probe (a 1-token completion)."
    )


class _AlertCheckBase(Strict):
    """What the alert checks share: where the alert's state comes from."""

    notification: bool = Field(
        default=True,
        description="Also require (alert_fires, alert_resolves) or forbid (no_false_alarms) "
        "a notification at the harness's webhook receiver (`monitoring.webhook`): the whole "
        "path from rule to notification, not only rule evaluation.",
    )


class AlertFiresCheck(_AlertCheckBase):
    """Alert `alert` reaches firing in Prometheus within `within` of the fault, and (with
    `notification`) its firing notification reaches the webhook receiver in that time."""

    alert: str = Field(description="Alert name (the alertname label) of a loaded rule.")
    within: Duration = Field(description="Deadline from the fault's apply (or phase start).")
    fault: Name | None = Field(
        default=None,
        description="The fault whose apply starts the clock (default: the first fault "
        "applied in the phase, else the phase start).",
    )


class AlertResolvesCheck(_AlertCheckBase):
    """Alert `alert` is no longer firing in Prometheus within `within` after the fault was
    reverted, and (with `notification`) its resolved notification arrives in that time."""

    alert: str = Field(description="Alert name (the alertname label) of a loaded rule.")
    within: Duration = Field(description="Deadline from the fault's revert (or phase start).")
    fault: Name | None = Field(
        default=None,
        description="The fault whose revert starts the clock (default: the last fault "
        "reverted by the start of the phase, else the phase start).",
    )


class NoFalseAlarmsCheck(_AlertCheckBase):
    """None of the listed alerts fires (in Prometheus or as a notification) in the phase."""

    alerts: list[str] = Field(min_length=1, description="Alert names that must stay quiet.")


BUILTIN_CHECK_KINDS = (
    "slo",
    "no_hung_requests",
    "recovers",
    "metric",
    "kv_cache_cleanup",
    "caps_enforced",
    "queue_bounded",
    "engine_healthy",
    "stream_recovery",
    "warm_up",
    "oom_observed",
    "alert_fires",
    "alert_resolves",
    "no_false_alarms",
)
# Check kinds of installed plugins (entry points `llmdrill.checks`), by YAML key.
CHECK_PLUGINS: dict[str, CheckKind] = {
    k: v for k, v in external_specs(CHECKS_GROUP, BUILTIN_CHECK_KINDS).items()
    if isinstance(v, CheckKind)}
CHECK_KINDS = BUILTIN_CHECK_KINDS + tuple(CHECK_PLUGINS)

if TYPE_CHECKING:
    _CheckPluginFields = Strict
else:
    _CheckPluginFields = create_model("_CheckPluginFields", __base__=Strict,
                                      **_plugin_fields(dict(CHECK_PLUGINS)))


class Check(_CheckPluginFields):
    name: Name | None = Field(
        default=None, description="Name in reports; default `<phase>-<kind>-<n>`."
    )
    phase: str = Field(description="Phase whose window the check looks at.")
    slo: SloCheck | None = Field(
        default=None, description="Client-side service levels: TTFT, throughput, errors."
    )
    no_hung_requests: NoHungRequestsCheck | None = Field(
        default=None, description="Every request finishes or fails in time."
    )
    recovers: RecoversCheck | None = Field(
        default=None, description="A measure comes back to its baseline in time."
    )
    metric: MetricCheck | None = Field(
        default=None, description="A condition on a scraped engine metric."
    )
    kv_cache_cleanup: KvCacheCleanupCheck | None = Field(
        default=None, description="Running requests and KV cache back to baseline in time."
    )
    caps_enforced: CapsEnforcedCheck | None = Field(
        default=None, description="Over-limit requests get a helpful 4xx; server stays up."
    )
    queue_bounded: QueueBoundedCheck | None = Field(
        default=None, description="The waiting queue stays bounded or excess is refused."
    )
    engine_healthy: EngineHealthyCheck | None = Field(
        default=None, description="The engine's health endpoint answers all through."
    )
    stream_recovery: StreamRecoveryCheck | None = Field(
        default=None, description="Streams cut cleanly by a kill; retrying clients get back."
    )
    warm_up: WarmUpCheck | None = Field(
        default=None, description="Kill to healthy, to first token, to TTFT back: bounded."
    )
    oom_observed: OomObservedCheck | None = Field(
        default=None, description="The OOM killer struck in the fault's containers, timed."
    )
    alert_fires: AlertFiresCheck | None = Field(
        default=None, description="An alert fires in time and its notification arrives."
    )
    alert_resolves: AlertResolvesCheck | None = Field(
        default=None, description="An alert resolves in time after the revert, notified."
    )
    no_false_alarms: NoFalseAlarmsCheck | None = Field(
        default=None, description="None of the listed alerts fires in the phase."
    )
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
    def spec(self) -> BaseModel:
        spec = getattr(self, self.kind)
        assert isinstance(spec, BaseModel)
        return spec

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
        for name, fault in self.faults.items():
            if fault.toxiproxy is None:
                continue
            server = fault.toxiproxy.server
            if server not in self.toxiproxy:
                problems.append(
                    (
                        ("faults", name, "toxiproxy", "server"),
                        f"unknown Toxiproxy server '{server}' "
                        f"(defined: {', '.join(sorted(self.toxiproxy))})",
                    )
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
            if check.recovers and check.recovers.baseline_phase not in phase_names:
                problems.append(
                    (
                        ("checks", i, "recovers", "baseline_phase"),
                        f"unknown phase '{check.recovers.baseline_phase}' "
                        f"(phases: {', '.join(phase_names)})",
                    )
                )
            kv = check.kv_cache_cleanup
            if kv and kv.baseline_phase and kv.baseline_phase not in phase_names:
                problems.append(
                    (
                        ("checks", i, "kv_cache_cleanup", "baseline_phase"),
                        f"unknown phase '{kv.baseline_phase}' (phases: {', '.join(phase_names)})",
                    )
                )
            if kv and kv.after == "phase_start" and not kv.baseline_phase:
                problems.append(
                    (("checks", i, "kv_cache_cleanup", "baseline_phase"),
                     "after: phase_start needs a baseline_phase")
                )
            warm = check.warm_up
            if warm and warm.baseline_phase not in phase_names:
                problems.append(
                    (("checks", i, "warm_up", "baseline_phase"),
                     f"unknown phase '{warm.baseline_phase}' (phases: {', '.join(phase_names)})")
                )
            node = check.warm_up or check.stream_recovery
            if node and node.fault and node.fault not in self.faults:
                problems.append(
                    (("checks", i, check.kind, "fault"),
                     f"unknown fault '{node.fault}' (defined: {', '.join(sorted(self.faults))})")
                )
            for kind in ("kv_cache_cleanup", "queue_bounded"):
                if getattr(check, kind) is not None and not self.target.metrics_url:
                    problems.append(
                        (("checks", i, kind), f"a {kind} check needs target.metrics_url")
                    )
            if check.metric and not self.target.metrics_url and not all(
                    name.startswith("promql:") for name in check.metric.series):
                problems.append(
                    (("checks", i, "metric"), "a metric check needs target.metrics_url")
                )
            problems += self._alert_check_problems(i, check)
            display = check.display_name(i)
            if display in names:
                problems.append((("checks", i, "name"), f"duplicate check name '{display}'"))
            names.add(display)
        return problems + self._plugin_problems()

    def _plugin_problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        """What plugins' faults and checks say about their references."""
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for name, fault in self.faults.items():
            backend = FAULT_PLUGINS.get(fault.backend)
            if backend is not None and backend.references is not None:
                problems += backend.references(fault.spec, self, ("faults", name, fault.backend))
        for i, check in enumerate(self.checks):
            kind = CHECK_PLUGINS.get(check.kind)
            if kind is not None and kind.references is not None:
                problems += kind.references(check.spec, self, ("checks", i, check.kind))
        return problems

    def _query_problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if self.monitoring.queries and not self.prometheus:
            problems.append((("monitoring", "queries"),
                             "PromQL queries need `prometheus: {url: ...}`"))
        for i, check in enumerate(self.checks):
            for name in check.metric.series if check.metric else []:
                query = name.removeprefix("promql:")
                if name.startswith("promql:") and query not in self.monitoring.queries:
                    defined = ", ".join(sorted(self.monitoring.queries)) or "none"
                    problems.append(
                        (("checks", i, "metric", "series"),
                         f"'{name}' names no query in monitoring.queries (defined: {defined})"))
        return problems

    def _alert_check_problems(self, i: int, check: Check
                              ) -> list[tuple[tuple[str | int, ...], str]]:
        spec = check.alert_fires or check.alert_resolves or check.no_false_alarms
        if spec is None or not check.enabled:
            return []
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if not self.prometheus:
            problems.append(((("checks", i, check.kind)),
                             f"an {check.kind} check needs `prometheus: {{url: ...}}`"))
        if spec.notification and not self.monitoring.webhook:
            problems.append(
                (("checks", i, check.kind, "notification"),
                 "notification: true needs `monitoring: {webhook: {listen: 127.0.0.1:PORT}}` "
                 "(or notification: false to check rule evaluation only)"))
        fault = getattr(spec, "fault", None)
        if fault and fault not in self.faults:
            problems.append(
                (("checks", i, check.kind, "fault"),
                 f"unknown fault '{fault}' (defined: {', '.join(sorted(self.faults))})"))
        return problems

    @property
    def alert_checks(self) -> list[Check]:
        """The enabled checks that need the alerting stack watched."""
        return [c for c in self.checks if c.enabled
                and c.kind in ("alert_fires", "alert_resolves", "no_false_alarms")]

    @property
    def total_duration(self) -> float:
        return sum(p.duration for p in self.phases)
