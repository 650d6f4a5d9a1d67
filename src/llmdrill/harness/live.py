"""Running client-side numbers while a drill runs: progress display and guardrails."""

from __future__ import annotations

from collections import deque
from typing import Any

from llmdrill.scenario.models import Guardrail

_WINDOW_S = 10.0


class LiveStats:
    def __init__(self) -> None:
        self.total = 0
        self.errors = 0
        self.errors_by_class: dict[str, int] = {}
        # (end time, ok, ttft) of recent requests, for rates and TTFT p95 "now".
        self.recent: deque[tuple[float, bool, float | None]] = deque()
        self._error_since: float | None = None

    def add(self, raws: list[dict[str, Any]]) -> None:
        for r in raws:
            self.total += 1
            cls = r.get("error_class")
            if cls:
                self.errors += 1
                self.errors_by_class[cls] = self.errors_by_class.get(cls, 0) + 1
            self.recent.append((float(r.get("end") or 0.0), cls is None, r.get("ttft")))

    def _trim(self, now: float) -> None:
        while self.recent and self.recent[0][0] < now - _WINDOW_S:
            self.recent.popleft()

    def rate(self, now: float) -> float:
        self._trim(now)
        return len(self.recent) / _WINDOW_S

    def ttft_p95(self, now: float) -> float | None:
        self._trim(now)
        values = sorted(t for _, ok, t in self.recent if ok and t is not None)
        if not values:
            return None
        return values[min(len(values) - 1, int(0.95 * len(values)))]

    def error_rate(self, now: float) -> float | None:
        self._trim(now)
        if not self.recent:
            return None
        return sum(1 for _, ok, _ in self.recent if not ok) / len(self.recent)

    def guardrail_breach(self, guardrails: list[Guardrail], now: float) -> str | None:
        """The first guardrail breached for its whole `for` duration, as a sentence."""
        for guard in guardrails:
            rule = guard.abort_if.error_rate
            if rule is None:
                continue
            rate = self.error_rate(now)
            if rate is not None and rate > rule.above:
                if self._error_since is None:
                    self._error_since = now
                if now - self._error_since >= rule.for_:
                    return (f"error rate {rate:.2f} above {rule.above:.2f} "
                            f"for {now - self._error_since:.0f}s")
            else:
                self._error_since = None
        return None
