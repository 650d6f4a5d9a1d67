"""find_toothless_checks: limits a scenario's own settings keep from ever failing."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
from typer.testing import CliRunner

from llmdrill.cli import app
from llmdrill.scenario.fields import ErrorClass
from llmdrill.scenario.lint import find_toothless_checks, format_warning, request_ceiling
from llmdrill.scenario.loader import load_scenario, scenario_files

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

HEAD = """\
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: lint}
target: {base_url: http://127.0.0.1:1, model: m, metrics_url: http://127.0.0.1:1/metrics}
faults:
  spike: {toxiproxy: {proxy: p, toxic: latency, latency: 1s}}
  flood: {request_flood: {concurrency: 8, timeouts: {total: 30s}}}
load:
  users: {users}
  timeouts: {total: 10s}
  retries: {max_attempts: 3, backoff: 200ms, max_backoff: 1s}
phases:
  - {name: baseline, duration: 20s}
  - {name: fault, duration: 100s, faults: [spike]}
  - {name: flood, duration: 20s, faults: [flood]}
  - {name: recover, duration: 20s}
checks:
"""


def lint(tmp_path: Path, checks: str, users: int = 4) -> list[str]:
    path = tmp_path / "s.yaml"
    path.write_text(HEAD.replace("{users}", str(users)) + checks)
    scenario = load_scenario(path, env={})
    return [format_warning(w) for w in find_toothless_checks(scenario, path, env={})]


def test_request_ceiling_is_attempts_times_total_plus_the_longest_backoffs(
        tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(HEAD.replace("{users}", "4").replace("checks:\n", "checks: []\n"))
    load = load_scenario(path, env={}).load
    assert request_ceiling(load) == pytest.approx(3 * 10 + 0.2 + 0.4)


def test_hung_deadline_at_or_above_the_client_ceiling_is_flagged_with_its_line(
        tmp_path: Path) -> None:
    warnings = lint(tmp_path, "  - {phase: fault, no_hung_requests: {deadline: 35s}}\n")
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{tmp_path / 's.yaml'}:18:39: warning: "
                                  "checks.0.no_hung_requests.deadline: deadline 35s")
    assert "30.6s" in warnings[0]
    assert lint(tmp_path, "  - {phase: fault, no_hung_requests: {deadline: 25s}}\n") == []


def test_hung_deadline_counts_the_flood_and_the_time_left_in_the_run(tmp_path: Path) -> None:
    # The flood's requests (30s, no retries) can outlive the load's 30.6s? No: the longest
    # source counts, and the recover phase is the last 20s of the run.
    assert lint(tmp_path, "  - {phase: flood, no_hung_requests: {deadline: 30.7s}}\n")
    assert lint(tmp_path, "  - {phase: flood, no_hung_requests: {deadline: 19s}}\n") == []
    (warning,) = lint(tmp_path, "  - {phase: recover, no_hung_requests: {deadline: 20s}}\n")
    assert "to the end of the run (20s)" in warning


@pytest.mark.parametrize("check, field", [
    ("{phase: recover, recovers: {measure: ttft_p95, baseline_phase: baseline, within: 16s}}",
     "recovers.within"),  # 16s + the 5s window > 20s
    ("{phase: fault, warm_up: {baseline_phase: baseline, healthy_within: 95s, "
     "first_token_within: 10s, ttft_within: 10s}}", "warm_up.healthy_within"),
    ("{phase: fault, warm_up: {baseline_phase: baseline, healthy_within: 10s, "
     "first_token_within: 10s, ttft_within: 86s}}", "warm_up.ttft_within"),
    ("{phase: fault, stream_recovery: {back_within: 90s}}", "stream_recovery.back_within"),
    ("{phase: fault, oom_observed: {within: 120s}}", "oom_observed.within"),
    ("{phase: recover, kv_cache_cleanup: {after: phase_start, baseline_phase: baseline, "
     "within: 19s}}", "kv_cache_cleanup.within"),
])
def test_time_limits_that_fill_their_phase_are_flagged(
        tmp_path: Path, check: str, field: str) -> None:
    (warning,) = lint(tmp_path, f"  - {check}\n")
    assert f"checks.0.{field}:" in warning
    assert "phase" in warning


def test_time_limits_well_under_their_phase_pass(tmp_path: Path) -> None:
    assert lint(tmp_path, """\
  - {phase: recover, recovers: {measure: ttft_p95, baseline_phase: baseline, within: 10s}}
  - phase: fault
    warm_up: {baseline_phase: baseline, healthy_within: 60s, first_token_within: 65s,
              ttft_within: 80s}
  - {phase: fault, stream_recovery: {back_within: 60s}}
  - {phase: fault, oom_observed: {within: 30s}}
""") == []


def test_disabled_checks_are_not_linted(tmp_path: Path) -> None:
    assert lint(tmp_path, "  - {phase: fault, enabled: false, "
                          "no_hung_requests: {deadline: 60s}}\n") == []


@pytest.mark.parametrize("check, needle", [
    ("{phase: fault, slo: {error_rate: {max: 1}}}", "error_rate.max"),
    ("{phase: fault, slo: {error_rate_by_class: {timeout: {max: 1.0}}}}", "timeout.max"),
    ("{phase: fault, slo: {ttft_p95: {max: 40s}}}", "ttft_p95.max"),
    ("{phase: fault, slo: {allowed_error_classes: [" + ", ".join(get_args(ErrorClass))
     + "]}}", "allowed_error_classes"),
    ("{phase: flood, metric: {series: [vllm:kv_cache_usage_perc], max: 1.0}}", "metric.max"),
    ("{phase: flood, metric: {series: [vllm:num_preemptions_total], aggregate: increase, "
     "min: 0}}", "metric.min"),
    ("{phase: flood, queue_bounded: {max_waiting: 13}}", "max_waiting"),
    ("{phase: flood, metric: {series: [vllm:num_requests_waiting], max: 20}}", "metric.max"),
    ("{phase: baseline, engine_healthy: {interval: 5s, max_failures: 5}}", "max_failures"),
])
def test_bounds_the_load_can_never_reach_are_flagged(
        tmp_path: Path, check: str, needle: str) -> None:
    (warning,) = lint(tmp_path, f"  - {check}\n")
    assert needle in warning


def test_bounds_within_reach_pass(tmp_path: Path) -> None:
    assert lint(tmp_path, """\
  - {phase: fault, slo: {error_rate: {max: 0.2}, ttft_p95: {max: 5s},
                         allowed_error_classes: [timeout]}}
  - {phase: flood, metric: {series: [vllm:kv_cache_usage_perc], min: 0.75}}
  - {phase: flood, metric: {series: [vllm:kv_cache_usage_perc], max: 0.25}}
  - {phase: flood, queue_bounded: {max_waiting: 12}}
  - {phase: baseline, engine_healthy: {interval: 1s, max_failures: 1}}
""") == []


def test_request_checks_on_a_phase_without_traffic_are_flagged(tmp_path: Path) -> None:
    checks = """\
  - {phase: fault, slo: {error_rate: {max: 0.1}}}
  - {phase: flood, slo: {shapes: [flood], error_rate: {max: 0.1}}}
  - {phase: recover, no_hung_requests: {deadline: 5s}}
"""
    warnings = lint(tmp_path, checks, users=0)
    assert [w.split(": warning: ")[1].split(":")[0] for w in warnings] == [
        "checks.0.slo", "checks.2.no_hung_requests"]
    assert "no traffic" in warnings[0]
    # Background load: every phase has traffic; a shape nobody sends does not.
    assert lint(tmp_path, checks) == []
    (warning,) = lint(tmp_path, "  - {phase: fault, slo: {shapes: [flood], "
                                "error_rate: {max: 0.1}}}\n")
    assert "no request flood of those shapes" in warning


def test_every_shipped_scenario_is_free_of_toothless_checks() -> None:
    files = scenario_files([REPO / "scenarios"])
    assert files
    for path in files:
        scenario = load_scenario(path, env={})
        assert find_toothless_checks(scenario, path, env={}) == [], path


def test_validate_and_plan_warn_and_strict_fails(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(HEAD.replace("{users}", "4")
                    + "  - {phase: fault, no_hung_requests: {deadline: 35s}}\n")
    runner = CliRunner()
    for args in (["validate", str(path)], ["plan", str(path)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert ": warning: checks.0.no_hung_requests.deadline:" in result.stderr
        strict = runner.invoke(app, [*args, "--strict"])
        assert strict.exit_code == 2, strict.output
        assert "checks.0.no_hung_requests.deadline: deadline 35s" in strict.stderr
        assert ": warning:" not in strict.stderr
