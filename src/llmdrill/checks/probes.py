"""Active checks: some check kinds send their own requests while their phase runs (caps
probes, health polls) and record what they saw as evidence events; their evaluator then
judges those events after the run like any other check.

A probe is `(ctx, check_name, spec, stop) -> None`, run in a thread from the start of the
check's phase until `stop` is set at its end. It must return soon after `stop` is set.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from llmdrill.model.events import EventKind

if TYPE_CHECKING:
    from llmdrill.model.context import RunContext

Probe = Callable[["RunContext", str, Any, threading.Event], None]


def probe_for(kind: str) -> Probe | None:
    from llmdrill.plugin import check_kinds

    found = check_kinds().get(kind)
    return found.probe if found is not None else None


class RunningProbe:
    """One probe thread; exceptions become an evidence event, never a crash of the run."""

    def __init__(self, ctx: RunContext, name: str, kind: str, spec: Any, probe: Probe) -> None:
        self.ctx, self.name, self.kind, self.spec, self.probe = ctx, name, kind, spec, probe
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"probe-{name}", daemon=True)

    def _run(self) -> None:
        import time

        try:
            self.probe(self.ctx, self.name, self.spec, self.stop_event)
        except Exception as exc:
            if self.ctx.store is not None:
                self.ctx.store.add_event(time.time(), EventKind.PROBE_ERROR,
                                         {"check": self.name, "kind": self.kind,
                                          "error": f"{type(exc).__name__}: {exc}"})

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout)
