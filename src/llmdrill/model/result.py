"""The canonical result of one scenario run (result.json). Reporters read only this.

Versioned: `schema` names the format; a change that removes or renames a field bumps it.
Times are Unix epoch seconds (float) unless the name says otherwise; `series` times are
seconds since `series.t0`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

RESULT_SCHEMA = "llmdrill.result/v1"

RunStatus = Literal["passed", "failed", "aborted", "error", "inconclusive"]
CheckStatus = Literal["passed", "failed", "error", "skipped", "inconclusive"]
FaultEffectLabel = Literal["seen", "missed", "unknown"]


class ScenarioInfo(BaseModel):
    name: str
    file: str
    description: str = ""
    tags: list[str] = Field(default_factory=list)


class TargetInfo(BaseModel):
    base_url: str
    model: str
    metrics_url: str | None = None
    engine_version: str | None = None


class PhaseResult(BaseModel):
    name: str
    planned_start: float
    planned_end: float
    start: float | None = None
    end: float | None = None
    faults: list[str] = Field(default_factory=list)
    completed: bool = False
    ended_early: str | None = Field(
        default=None, description="Why the phase ended before its planned end "
        "(`end_early`: the target was back), or None when it ran its whole duration.")


class FaultResult(BaseModel):
    name: str
    backend: str
    kind: str
    params: dict[str, Any] = Field(default_factory=dict)
    applied_at: float | None = None
    reverted_at: float | None = None
    reverted_by: str = "harness"
    revert_error: str | None = None
    busy: dict[str, Any] | None = Field(
        default=None, description="With `when_busy`: whether the engine served enough "
        "requests before the fault was applied (met, running, waited_s).")
    effect: FaultEffectLabel | None = Field(
        default=None, description="Whether the fault reached the traffic or the target: "
        "seen, missed, or unknown (no evidence either way). None when it was never applied.")
    effect_detail: str = Field(default="", description="The evidence behind `effect`.")


class Window(BaseModel):
    phase: str
    start: float
    end: float


class CheckResult(BaseModel):
    name: str
    kind: str
    phase: str
    status: CheckStatus
    summary: str = Field(description="One sentence: what was measured against what.")
    observed: dict[str, Any] = Field(default_factory=dict)
    expected: dict[str, Any] = Field(default_factory=dict)
    window: Window | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)


class RequestStats(BaseModel):
    requests: int = 0
    succeeded: int = 0
    failed: int = 0
    error_rate: float | None = None
    errors_by_class: dict[str, int] = Field(default_factory=dict)
    errors_by_type: dict[str, int] = Field(default_factory=dict)
    ttft_p50_s: float | None = None
    ttft_p95_s: float | None = None
    ttft_p99_s: float | None = None
    e2e_p95_s: float | None = None
    output_tokens: int = 0
    tokens_per_s: float | None = Field(default=None, description="Output tokens/s overall.")
    request_tokens_per_s_p50: float | None = None
    retried: int = 0
    unfinished_at_stop: int = Field(
        default=0,
        description="Requests still in flight when the load stopped (its end, or a run "
        "cut short): no outcome, so left out of every figure above.")


class ClientPoint(BaseModel):
    """One time bucket (1 s) of client-side measures, by request end time."""

    t: float
    requests: int
    ttft_p95_s: float | None = None
    tokens_per_s: float = 0.0
    errors: dict[str, int] = Field(default_factory=dict)


class Series(BaseModel):
    t0: float
    bucket_s: float = 1.0
    client: list[ClientPoint] = Field(default_factory=list)
    engine: dict[str, list[tuple[float, float]]] = Field(
        default_factory=dict,
        description="Engine gauges by short name (running, waiting, kv_cache_usage): [t, v].",
    )
    markers: list[tuple[float, str]] = Field(
        default_factory=list,
        description="Moments worth marking on the engine charts, e.g. when a cancel-storm "
        "wave dropped its streams: [t, label].",
    )
    alerts: list[tuple[float, str]] = Field(
        default_factory=list,
        description="Alert notifications the webhook receiver got, drawn on every chart: "
        "[t, label], the label being the alert's name and firing or resolved.",
    )


class RunResult(BaseModel):
    schema_: str = Field(default=RESULT_SCHEMA, alias="schema")
    run_id: str
    scenario: ScenarioInfo
    status: RunStatus
    abort_reason: str | None = None
    started_at: float
    ended_at: float
    target: TargetInfo
    versions: dict[str, str] = Field(default_factory=dict)
    phases: list[PhaseResult] = Field(default_factory=list)
    faults: list[FaultResult] = Field(default_factory=list)
    checks: list[CheckResult] = Field(default_factory=list)
    stats: dict[str, RequestStats] = Field(
        default_factory=dict, description="Per phase name, plus 'overall'."
    )
    series: Series | None = None
    files: dict[str, str] = Field(default_factory=dict, description="Report files by kind.")

    model_config = {"populate_by_name": True}

    @property
    def duration_s(self) -> float:
        return self.ended_at - self.started_at

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)
