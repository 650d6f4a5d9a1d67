"""The run verdict: nothing short of every check passing on a fault that landed is a pass."""

from __future__ import annotations

import pytest

from llmdrill.model.result import CheckResult, CheckStatus, FaultResult
from llmdrill.model.verdict import (
    EXIT_CODES,
    FaultEffect,
    decide_run_status,
    exit_code,
    worst_status,
)

pytestmark = pytest.mark.unit


def check(status: CheckStatus, name: str = "c") -> CheckResult:
    return CheckResult(name=name, kind="slo", phase="p", status=status, summary="s")


def fault(effect: str | None, applied: bool = True) -> FaultResult:
    return FaultResult(name="spike", backend="toxiproxy", kind="latency",
                       applied_at=1.0 if applied else None, effect=effect,  # type: ignore[arg-type]
                       effect_detail="0 of 40 requests slower")


def test_all_checks_passed_and_fault_seen_is_a_pass() -> None:
    assert decide_run_status(None, None, [check("passed")], [fault("seen")]) == ("passed", None)


@pytest.mark.parametrize("effect", ["missed", "unknown"])
def test_a_fault_that_left_no_trace_is_inconclusive(effect: str) -> None:
    status, reason = decide_run_status(None, None, [check("passed")], [fault(effect)])
    assert status == "inconclusive"
    assert reason is not None and "spike" in reason and "0 of 40" in reason


def test_an_applied_fault_never_judged_is_inconclusive() -> None:
    # Fail closed: a backend that says nothing about its effect does not make a pass.
    status, reason = decide_run_status(None, None, [check("passed")], [fault(None)])
    assert status == "inconclusive"
    assert reason is not None and "spike" in reason and "no evidence" in reason


def test_a_fault_never_applied_is_not_judged_by_its_effect() -> None:
    assert decide_run_status(None, None, [check("passed")], [fault(None, applied=False)]
                             )[0] == "passed"


def test_no_check_is_inconclusive() -> None:
    status, reason = decide_run_status(None, None, [], [])
    assert status == "inconclusive" and reason and "no enabled check" in reason


def test_only_skipped_checks_is_inconclusive() -> None:
    assert decide_run_status(None, None, [check("skipped")], [])[0] == "inconclusive"


def test_an_inconclusive_check_makes_the_run_inconclusive() -> None:
    status, reason = decide_run_status(None, None, [check("passed"), check("inconclusive", "k")],
                                       [])
    assert status == "inconclusive" and reason and "k" in reason


@pytest.mark.parametrize("bad", ["failed", "error"])
def test_a_failed_check_wins_over_inconclusive(bad: CheckStatus) -> None:
    assert decide_run_status(None, None, [check(bad), check("inconclusive")],
                             [fault("missed")])[0] == "failed"


def test_error_and_abort_win_over_everything() -> None:
    assert decide_run_status("boom", "sig", [check("failed")], []) == ("error", "boom")
    assert decide_run_status(None, "sig", [check("failed")], []) == ("aborted", "sig")


def test_suite_exit_code_is_that_of_the_worst_run() -> None:
    assert exit_code(["passed", "passed"]) == 0
    assert exit_code(["passed", "inconclusive"]) == EXIT_CODES["inconclusive"] == 4
    assert exit_code(["inconclusive", "failed"]) == 1
    assert exit_code(["failed", "error"]) == 2
    assert exit_code(["error", "aborted", "failed"]) == 3
    assert worst_status([]) is None


def test_fault_effect_labels() -> None:
    assert FaultEffect(True, "").label == "seen"
    assert FaultEffect(False, "").label == "missed"
    assert FaultEffect(None, "").label == "unknown"
