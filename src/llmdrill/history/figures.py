"""The key figures of a run, the ones worth following from one game day to the next.

Only what the run measured: a figure the run has no evidence for is absent, never 0 (a
missing TTFT must not read as the fastest ever)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llmdrill.model.result import RunResult


@dataclass(frozen=True)
class Figure:
    name: str
    label: str
    unit: str
    worse: Literal["higher", "lower"]
    floor: float  # a change smaller than this is noise, whatever its share


FIGURES = (
    # A busy 2-core test machine moved a 15 ms TTFT p95 to 80 ms between two healthy runs.
    Figure("ttft_p95_s", "TTFT p95", "s", "higher", 0.25),
    Figure("tokens_per_s", "tokens/s", "tok/s", "lower", 1.0),
    Figure("error_rate", "error rate", "", "higher", 0.02),
    Figure("kv_cleanup_s", "KV cleanup time", "s", "higher", 0.5),
    Figure("recovery_s", "recovery time", "s", "higher", 1.0),
    Figure("back_after_s", "failover / restart time", "s", "higher", 1.0),
)
BY_NAME = {f.name: f for f in FIGURES}


def key_figures(result: RunResult) -> dict[str, float]:
    """name -> value for the figures this run measured."""
    found: dict[str, float] = {}
    overall = result.stats.get("overall")
    if overall is not None and overall.requests:
        for name, value in (("ttft_p95_s", overall.ttft_p95_s),
                            ("tokens_per_s", overall.tokens_per_s),
                            ("error_rate", overall.error_rate)):
            if value is not None:
                found[name] = float(value)
    # The slowest of each kind of time the checks measured (a check that measured
    # nothing, or could not, adds nothing).
    for name, kinds, key in (("kv_cleanup_s", {"kv_cache_cleanup"}, "worst_cleanup_s"),
                             ("recovery_s", {"recovers"}, "recovery_time_s"),
                             ("back_after_s", {"stream_recovery", "warm_up"},
                              "healthy_after_s")):
        values = [c.observed.get(key) for c in result.checks if c.kind in kinds]
        numbers = [float(v) for v in values if isinstance(v, int | float)]
        if numbers:
            found[name] = max(numbers)
    return found
