"""What a running scenario offers to injectors and probes: ids, the scenario, the evidence
store, the target's auth headers and a place to say what happens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from llmdrill.model.evidence import EvidenceStore

if TYPE_CHECKING:
    from llmdrill.scenario.models import Scenario


class EventSink(Protocol):
    """Where a fault or probe says what happens (the console progress, in a run)."""

    def event(self, message: str) -> None: ...


@dataclass
class RunContext:
    run_id: str
    scenario: Scenario
    store: EvidenceStore | None  # None while planning: nothing may be recorded then
    headers: dict[str, str]
    progress: EventSink
    run_dir: Path

    @property
    def base_url(self) -> str:
        return self.scenario.target.base_url.rstrip("/")

    @property
    def engine_url(self) -> str:
        """The engine's own base URL: metrics_url without its path, else base_url."""
        metrics = self.scenario.target.metrics_url
        if metrics:
            scheme, rest = metrics.split("://", 1)
            return f"{scheme}://{rest.split('/', 1)[0]}"
        return self.base_url
