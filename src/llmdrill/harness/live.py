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
        self._since: dict[str, float] = {}

    def add(self, raws: list[dict[str, Any]]) -> None:
        for r in raws:
            self.total += 1
            cls = r.get("error_class")
            if cls:
                self.errors += 1
                self.errors_by_class[cls] = self.errors_by_class.get(cls, 0) + 1
            self.recent.append((float(r.get("end") or 0.0), cls is None, r.get("ttft")))
        if self.recent:
            # Kept to the window as requests come, not only when a display or guardrail
            # reads it: a quiet run (no live display, no client guardrail) grew by every
            # request (about 130 bytes each, 100 MB a million).
            self._trim(max(self.recent[-1][0], self.recent[0][0]))

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

    def _held(self, key: str, breached: bool, now: float, for_s: float) -> float | None:
        """Seconds a condition has held, once it has held for `for_s`; else None."""
        if not breached:
            self._since.pop(key, None)
            return None
        since = self._since.setdefault(key, now)
        return now - since if now - since >= for_s else None

    def guardrail_breach(self, guardrails: list[Guardrail], now: float,
                         last_scrape_ok: float | None = None,
                         polled: dict[str, tuple[bool, str]] | None = None) -> str | None:
        """The first guardrail breached for its whole `for` duration, as a sentence."""
        for i, guard in enumerate(guardrails):
            rules = guard.abort_if
            if rules.error_rate is not None:
                rate = self.error_rate(now)
                held = self._held(f"{i}.error_rate", rate is not None
                                  and rate > rules.error_rate.above, now, rules.error_rate.for_)
                if held is not None and rate is not None:
                    return (f"error rate {rate:.2f} above {rules.error_rate.above:.2f} "
                            f"for {held:.0f}s")
            if rules.ttft_p95 is not None:
                p95 = self.ttft_p95(now)
                held = self._held(f"{i}.ttft", p95 is not None and p95 > rules.ttft_p95.above,
                                  now, rules.ttft_p95.for_)
                if held is not None and p95 is not None:
                    return (f"TTFT p95 {p95 * 1000:.0f}ms above "
                            f"{rules.ttft_p95.above * 1000:.0f}ms for {held:.0f}s")
            for key, rule_for in ((f"{i}.promql", rules.promql), (f"{i}.alert", rules.alert)):
                if rule_for is None or polled is None or key not in polled:
                    continue
                breached, seen = polled[key]
                held = self._held(key, breached, now, rule_for.for_)
                if held is not None:
                    return f"{seen} for {held:.0f}s"
            if rules.engine_down is not None and last_scrape_ok is not None:
                down = now - last_scrape_ok
                if down >= rules.engine_down.for_:
                    return f"the engine's metrics endpoint has not answered for {down:.0f}s"
        return None
