"""What the terminal shows while a drill runs.

On a terminal: one live status line (Rich). Elsewhere (CI logs): a plain line every 10 s
and one per event, so logs stay readable.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.live import Live
from rich.text import Text

from llmdrill.harness.live import LiveStats


class Progress:
    def __init__(self, console: Console | None = None, quiet: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self._live: Live | None = None
        self._last_plain = 0.0

    def start(self, title: str) -> None:
        if self.quiet:
            return
        self.console.print(f"[bold]▶ {title}[/bold]")
        if self.console.is_terminal:
            self._live = Live(Text(""), console=self.console, refresh_per_second=4,
                              transient=True)
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def event(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"  • {message}", markup=False, highlight=False)

    def tick(self, phase: str, remaining: float, live: LiveStats, now: float,
             faults: list[str], engine: dict[str, float]) -> None:
        if self.quiet:
            return
        p95 = live.ttft_p95(now)
        running = engine.get("vllm:num_requests_running")
        kv = engine.get("vllm:kv_cache_usage_perc", engine.get("vllm:gpu_cache_usage_perc"))
        line = (
            f"phase {phase} ({remaining:4.0f}s left) | {live.rate(now):6.1f} req/s | "
            f"TTFT p95 {'—' if p95 is None else f'{p95 * 1000:.0f}ms'} | "
            f"errors {live.errors}/{live.total} | faults: {', '.join(faults) or 'none'}"
        )
        if running is not None:
            line += f" | running {running:.0f}"
        if kv is not None:
            line += f" | KV {kv * 100:.0f}%"
        if self._live is not None:
            self._live.update(Text(line))
        elif time.time() - self._last_plain >= 10:
            self._last_plain = time.time()
            self.console.print(f"  {line}", markup=False, highlight=False)
