"""Run history: key figures, the store, regressions against the previous run and a rolling
baseline, the index's trends across invocations, and `llmdrill compare`."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmdrill import cli
from llmdrill.history.figures import key_figures
from llmdrill.history.store import HistoryError, HistoryStore, RunRow, history_path
from llmdrill.history.trends import moved, regressions
from llmdrill.history.view import scenario_trends
from llmdrill.model.result import CheckResult, RequestStats, RunResult, ScenarioInfo, TargetInfo
from llmdrill.report.html import render_index

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0


def result(run_id: str, ttft: float | None = 0.2, tps: float | None = 100.0,
           error_rate: float | None = 0.0, started: float = T0, status: str = "passed",
           checks: list[CheckResult] | None = None, requests: int = 50) -> RunResult:
    return RunResult(
        run_id=run_id, scenario=ScenarioInfo(name="spike", file="spike.yaml"),
        status=status,  # type: ignore[arg-type]
        started_at=started, ended_at=started + 30,
        target=TargetInfo(base_url="http://127.0.0.1:9", model="tiny"),
        stats={"overall": RequestStats(requests=requests, ttft_p95_s=ttft, tokens_per_s=tps,
                                       error_rate=error_rate)},
        checks=checks or [])


def row(run_id: str, i: int, **figures: float) -> RunRow:
    return RunRow(run_id, "spike", T0 + i, "passed", f"/r/{run_id}", dict(figures))


def test_key_figures_take_what_the_run_measured_and_nothing_else() -> None:
    checks = [
        CheckResult(name="kv", kind="kv_cache_cleanup", phase="p", status="passed", summary="",
                    observed={"worst_cleanup_s": 1.5}),
        CheckResult(name="r1", kind="recovers", phase="p", status="passed", summary="",
                    observed={"recovery_time_s": 2.0}),
        CheckResult(name="r2", kind="recovers", phase="p", status="failed", summary="",
                    observed={"recovery_time_s": None}),
        CheckResult(name="s", kind="stream_recovery", phase="p", status="passed", summary="",
                    observed={"healthy_after_s": 31.5}),
    ]
    figures = key_figures(result("a", ttft=0.25, tps=80.0, error_rate=0.01, checks=checks))
    assert figures == {"ttft_p95_s": 0.25, "tokens_per_s": 80.0, "error_rate": 0.01,
                       "kv_cleanup_s": 1.5, "recovery_s": 2.0, "back_after_s": 31.5}
    # No request: no TTFT, no throughput, no error rate (absent, never 0).
    assert key_figures(result("b", ttft=None, tps=None, error_rate=None, requests=0)) == {}


def test_the_store_keeps_runs_across_openings(tmp_path: Path) -> None:
    path = tmp_path / "h" / "history.sqlite"
    with HistoryStore(path) as store:
        store.record(result("a", ttft=0.2), tmp_path / "a")
    with HistoryStore(path) as store:
        store.record(result("b", ttft=0.3, started=T0 + 60), tmp_path / "b")
        rows = store.runs()
    assert [r.run_id for r in rows] == ["a", "b"]
    assert rows[1].figures["ttft_p95_s"] == pytest.approx(0.3)
    assert rows[0].report == str(tmp_path / "a")


def test_a_store_of_another_schema_or_an_unusable_path_is_a_clear_error(
        tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(HistoryError, match="schema 99"):
        HistoryStore(path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(HistoryError, match="cannot use the history store"):
        HistoryStore(tmp_path / "file" / "history.sqlite")


def test_history_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMDRILL_HISTORY", raising=False)
    assert history_path(tmp_path) == tmp_path / "history.sqlite"
    monkeypatch.setenv("LLMDRILL_HISTORY", str(tmp_path / "env.sqlite"))
    assert history_path(tmp_path) == tmp_path / "env.sqlite"
    assert history_path(tmp_path, tmp_path / "opt.sqlite") == tmp_path / "opt.sqlite"


def test_a_slower_run_is_a_regression_against_the_previous_one() -> None:
    moves = regressions([row("a", 0, ttft_p95_s=0.20), row("b", 1, ttft_p95_s=0.21),
                         row("c", 2, ttft_p95_s=0.60)])
    assert [(m.figure, m.reference) for m in moves] == [("ttft_p95_s", "previous run")]
    assert moves[0].sentence() == "TTFT p95 0.6s against 0.21s, +186% (previous run)"


def test_noise_is_not_a_regression_and_missing_data_is_neither() -> None:
    assert not moved("ttft_p95_s", 0.015, 0.080)  # +430%, but 65 ms: under the floor
    assert not moved("ttft_p95_s", 2.0, 2.3)  # over the floor, but +15%
    assert not moved("ttft_p95_s", None, 5.0)
    assert moved("tokens_per_s", 100.0, 60.0)  # throughput: lower is worse
    assert not moved("tokens_per_s", 60.0, 100.0)
    assert regressions([row("a", 0, ttft_p95_s=0.2), row("b", 1)]) == []
    assert regressions([row("a", 0, ttft_p95_s=0.2)]) == []


def test_a_slow_drift_is_caught_by_the_rolling_baseline() -> None:
    # Each run is under 20% slower than the one before; against the median of the
    # earlier runs, the last one is not.
    values = [10.0, 10.0, 10.0, 11.5, 13.0, 14.5]
    history = [row(f"r{i}", i, recovery_s=v) for i, v in enumerate(values)]
    moves = regressions(history)
    assert [(m.figure, m.reference) for m in moves] == [("recovery_s", "rolling baseline")]


def test_the_index_shows_trends_and_flags_the_regression(tmp_path: Path) -> None:
    rows = [row("a", 0, ttft_p95_s=0.2, tokens_per_s=90), row("b", 1, ttft_p95_s=0.21,
            tokens_per_s=92), row("c", 2, ttft_p95_s=0.9, tokens_per_s=91)]
    html = render_index([], scenario_trends(rows, tmp_path))
    assert "History" in html and "spike" in html
    assert "REGRESSION" in html and "TTFT p95 0.9s" in html
    assert html.count("<polyline") == 2  # one sparkline per figure with data
    assert 'class="flagged"' in html
    calm = render_index([], scenario_trends(rows[:2], tmp_path))
    assert "REGRESSION" not in calm


# --- through the command line (runs canned; the real ones are integration tests) -------


SCENARIO = """\
apiVersion: llmdrill/v1
kind: Scenario
metadata: {name: spike}
target: {base_url: "http://127.0.0.1:9", model: tiny}
phases: [{name: p, duration: 1s}]
checks:
  - {name: c, phase: p, slo: {error_rate: {max: 0.1}}}
"""


def canned(ttft: float) -> Any:
    def run_scenario(path: Path, scenario: Any, options: Any, progress: Any = None
                     ) -> RunResult:
        import time

        out = options.out_dir / f"run-{time.time_ns()}"
        out.mkdir(parents=True)
        done = result(out.name, ttft=ttft, started=time.time())
        done.files["html"] = str(out / "report.html")
        (out / "result.json").write_text(done.model_dump_json(by_alias=True))
        return done
    return run_scenario


def test_three_invocations_then_a_slow_one_are_flagged_and_compared(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmdrill.harness import runner

    monkeypatch.delenv("LLMDRILL_HISTORY", raising=False)
    scenario = tmp_path / "spike.yaml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "reports"
    outputs = []
    for ttft in (0.2, 0.21, 0.8):
        monkeypatch.setattr(runner, "run_scenario", canned(ttft))
        outputs.append(CliRunner().invoke(cli.app, ["run", str(scenario), "--quiet", "--out",
                                                    str(out)]))
    assert all(o.exit_code == 0 for o in outputs), outputs[-1].output
    assert "regression" not in outputs[1].output
    assert "regression: spike: TTFT p95" in outputs[2].output
    index = (out / "index.html").read_text()
    assert "REGRESSION" in index and "(3 runs)" in index
    runs = sorted(p for p in out.iterdir() if p.is_dir())
    compared = CliRunner().invoke(cli.app, ["compare", str(runs[1]), str(runs[2]), "--html",
                                            str(tmp_path / "cmp.html")])
    assert compared.exit_code == 0, compared.output
    assert "moved: TTFT p95" in compared.output
    assert "worse" in (tmp_path / "cmp.html").read_text()
    # By run id, through the store.
    by_id = CliRunner().invoke(cli.app, ["compare", runs[0].name, runs[1].name, "--history",
                                         str(out / "history.sqlite")])
    assert by_id.exit_code == 0 and "moved: nothing" in by_id.output
    listed = CliRunner().invoke(cli.app, ["history", "--history", str(out / "history.sqlite")])
    assert listed.exit_code == 0 and "regression: spike" in listed.output


def test_no_history_records_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmdrill.harness import runner

    monkeypatch.setattr(runner, "run_scenario", canned(0.2))
    scenario = tmp_path / "spike.yaml"
    scenario.write_text(SCENARIO)
    done = CliRunner().invoke(cli.app, ["run", str(scenario), "--quiet", "--no-history",
                                        "--out", str(tmp_path / "reports")])
    assert done.exit_code == 0, done.output
    assert not (tmp_path / "reports" / "history.sqlite").exists()


def test_an_unwritable_store_warns_and_keeps_the_exit_code(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmdrill.harness import runner

    monkeypatch.setattr(runner, "run_scenario", canned(0.2))
    scenario = tmp_path / "spike.yaml"
    scenario.write_text(SCENARIO)
    (tmp_path / "file").write_text("x")
    done = CliRunner().invoke(cli.app, ["run", str(scenario), "--quiet", "--history",
                                        str(tmp_path / "file" / "h.sqlite"),
                                        "--out", str(tmp_path / "reports")])
    assert done.exit_code == 0, done.output
    assert "runs are not recorded" in done.output


def test_compare_of_a_missing_or_garbled_run_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "result.json").write_text(json.dumps({"nope": 1}))
    for refs in (["nowhere", "nothing"], [str(tmp_path / "bad"), str(tmp_path / "bad")]):
        done = CliRunner().invoke(cli.app, ["compare", *refs, "--history",
                                            str(tmp_path / "none.sqlite")])
        assert done.exit_code == 2, done.output
        assert "Traceback" not in done.output
