"""Compile a scenario into a timeline: phases, fault actions and checks, by offset."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmdrill.scenario.models import Scenario


@dataclass(frozen=True)
class PlannedPhase:
    name: str
    start: float
    end: float
    faults: tuple[str, ...]


@dataclass(frozen=True)
class FaultAction:
    at: float
    op: str  # "apply" or "revert"
    fault: str
    phase: str  # the phase at whose start (apply) or end (revert) it happens


@dataclass(frozen=True)
class PlannedCheck:
    name: str
    kind: str
    phase: str
    window: tuple[float, float]


@dataclass
class Plan:
    scenario: Scenario
    phases: list[PlannedPhase] = field(default_factory=list)
    actions: list[FaultAction] = field(default_factory=list)
    checks: list[PlannedCheck] = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.phases[-1].end if self.phases else 0.0

    def faults_entering(self, index: int) -> list[str]:
        """Faults to apply at the start of phase `index` (not already applied)."""
        before = set(self.phases[index - 1].faults) if index > 0 else set()
        return [f for f in self.phases[index].faults if f not in before]

    def planned_revert(self, index: int, fault: str) -> float:
        """Offset at which a fault applied in phase `index` is planned to be reverted."""
        end = self.phases[index].end
        for phase in self.phases[index + 1:]:
            if fault not in phase.faults:
                break
            end = phase.end
        return end

    def faults_leaving(self, index: int) -> list[str]:
        """Faults to revert at the end of phase `index` (not kept by the next phase)."""
        after = set(self.phases[index + 1].faults) if index + 1 < len(self.phases) else set()
        return [f for f in self.phases[index].faults if f not in after]


def compile_plan(scenario: Scenario) -> Plan:
    plan = Plan(scenario)
    offset = 0.0
    for phase in scenario.phases:
        # A fault listed twice in a phase is applied once.
        faults = tuple(dict.fromkeys(phase.faults))
        plan.phases.append(PlannedPhase(phase.name, offset, offset + phase.duration, faults))
        offset += phase.duration
    for i, planned in enumerate(plan.phases):
        for fault in plan.faults_entering(i):
            plan.actions.append(FaultAction(planned.start, "apply", fault, planned.name))
        for fault in plan.faults_leaving(i):
            plan.actions.append(FaultAction(planned.end, "revert", fault, planned.name))
    plan.actions.sort(key=lambda a: (a.at, a.op != "revert"))
    by_name = {p.name: p for p in plan.phases}
    for i, check in enumerate(scenario.checks):
        if not check.enabled:  # opt-in checks left off are not part of the run
            continue
        window = by_name[check.phase]
        plan.checks.append(
            PlannedCheck(check.display_name(i), check.kind, check.phase,
                         (window.start, window.end))
        )
    return plan
