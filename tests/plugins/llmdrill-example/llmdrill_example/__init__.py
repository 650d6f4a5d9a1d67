"""An example llmdrill plugin: one fault backend and one check kind.

- `marker_file` (a fault): while applied, a file exists at `path` (think of a maintenance
  flag a gateway reads, or a feature switch a sidecar watches). Reverting removes it. The
  journal holds the way back before the file is written, so SIGTERM, the watchdog and
  `llmdrill cleanup` after a kill -9 all remove it.
- `requests_at_least` (a check): at least `min` requests started in the check's phase (of
  one request shape, if `shape` is set). Below that it fails; it cannot pass on no traffic.

This module must not import `llmdrill.scenario.models` at import time (the scenario model
loads these specs while it is being built); everything else is imported lazily.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from llmdrill.plugin import CheckKind, FaultBackend, Location, Problem, SpecModel

if TYPE_CHECKING:
    from llmdrill.model.context import RunContext
    from llmdrill.model.records import Evidence
    from llmdrill.model.result import CheckResult, Window
    from llmdrill.model.verdict import FaultEffect

KEY = "marker_file"
WRITTEN = "marker_file_written"  # the evidence event the fault records when applied


class MarkerFileSpec(SpecModel):
    path: str = Field(description="Absolute path of the file that exists while applied.")
    content: str = Field(default="drill in progress\n", description="What the file holds.")


class MarkerFile:
    """The injector: preflight, prepare, apply, describe, stop, effect."""

    backend = KEY

    def __init__(self, ctx: RunContext, fault_name: str, spec: MarkerFileSpec) -> None:
        self.ctx, self.fault_name, self.spec = ctx, fault_name, spec

    def describe(self) -> str:
        return f"create {self.spec.path}"

    def preflight(self) -> list[str]:
        from llmdrill.faults.base import EnvironmentProblem

        path = Path(self.spec.path)
        if path.exists():
            raise EnvironmentProblem(f"{path} already exists: refusing to take it over")
        if not path.parent.is_dir():
            raise EnvironmentProblem(f"{path.parent} is not a folder")
        return [f"would create {path}"]

    def prepare(self) -> dict[str, Any]:
        return {"backend": KEY, "path": self.spec.path}

    def apply(self) -> None:
        Path(self.spec.path).write_text(self.spec.content, encoding="utf-8")
        if self.ctx.store is not None:
            self.ctx.store.add_event(time.time(), WRITTEN,
                                     {"fault": self.fault_name, "path": self.spec.path})

    def stop(self, timeout: float = 30.0) -> None:
        del timeout  # nothing runs in this process

    def effect(self, evidence: Evidence) -> FaultEffect:
        from llmdrill.model.verdict import FaultEffect

        written = [d for _, d in evidence.events_of(WRITTEN)
                   if d.get("fault") == self.fault_name]
        if written:
            return FaultEffect(True, f"{self.spec.path} was written")
        return FaultEffect(None, "no record of the file being written")


def revert_marker_file(action: dict[str, Any]) -> None:
    """Idempotent: a file already gone is fine."""
    Path(str(action["path"])).unlink(missing_ok=True)


def marker_file_references(spec: MarkerFileSpec, scenario: Any, where: Location
                           ) -> list[Problem]:
    if not os.path.isabs(spec.path):
        return [((*where, "path"), f"must be an absolute path, got '{spec.path}'")]
    return []


MARKER_FILE = FaultBackend(
    spec=MarkerFileSpec,
    injector=MarkerFile,
    revert=revert_marker_file,
    description="A file that exists while the fault is applied (example plugin).",
    blast_radius=lambda spec: 1,
    references=marker_file_references,
)


class RequestsAtLeastSpec(SpecModel):
    min: int = Field(ge=1, description="Least number of requests started in the phase.")
    shape: str | None = Field(default=None, description="Only requests of this shape.")


def requests_at_least(name: str, phase: str, spec: RequestsAtLeastSpec, evidence: Evidence,
                      window: Window) -> CheckResult:
    from llmdrill.checks.base import make_result

    found = [r for r in evidence.requests_started_in(window.start, window.end)
             if spec.shape is None or r.shape == spec.shape]
    status = "passed" if len(found) >= spec.min else "failed"
    return make_result(name, "requests_at_least", phase, status,
                       f"{len(found)} requests started, need at least {spec.min}",
                       observed={"requests": len(found)}, expected={"min": spec.min})


REQUESTS_AT_LEAST = CheckKind(
    spec=RequestsAtLeastSpec,
    evaluate=requests_at_least,
    description="At least `min` requests started in the phase (example plugin).",
    runbook=("Fewer requests than expected started in the phase: the load generator was "
             "starved or stopped early, or the shape named in `shape` was not sent. Check the "
             "scenario's load section and the request rate chart."),
)
