"""The `llmdrill` command line. Exit codes: 0 passed, 1 a check failed, 2 invalid scenario
or environment, 3 aborted (faults reverted), 4 inconclusive (a fault that left no trace, too
little evidence, or nothing judged: not a pass)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from llmdrill import __version__
from llmdrill.scenario.errors import ScenarioError

if TYPE_CHECKING:
    from llmdrill.harness.plan import Plan
    from llmdrill.history.store import HistoryStore
    from llmdrill.model.result import RunResult
    from llmdrill.scenario.models import Scenario
    from llmdrill.scenario.suite import LoadedSuite

EXIT_PASSED, EXIT_FAILED, EXIT_INVALID, EXIT_ABORTED, EXIT_INCONCLUSIVE = 0, 1, 2, 3, 4

app = typer.Typer(
    name="llmdrill",
    help="Chaos and failure drills for OpenAI-compatible LLM serving APIs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)
if not err.is_terminal:
    # CI logs: wide enough that check names and messages are never cut or wrapped.
    err = Console(stderr=True, width=200)


def _fail_invalid(exc: ScenarioError) -> None:
    for issue in exc.issues:
        err.print(str(issue), markup=False, highlight=False, soft_wrap=True)
    err.print(f"{len(exc.issues)} problem(s) found", style="red")
    raise typer.Exit(EXIT_INVALID)


STRICT_HELP = "Checks that can never fail (toothless limits) are errors (exit 2), not warnings."


def _lint(loaded: list[tuple[Path, object]], strict: bool) -> None:
    """Print the warnings of `find_toothless_checks` (stderr); with strict, fail on them."""
    from llmdrill.scenario.lint import find_toothless_checks, format_warning
    from llmdrill.scenario.models import Scenario

    warnings = []
    for path, scenario in loaded:
        assert isinstance(scenario, Scenario)
        warnings += find_toothless_checks(scenario, path)
    if strict and warnings:
        _fail_invalid(ScenarioError(warnings))
    for warning in warnings:
        err.print(format_warning(warning), markup=False, highlight=False, soft_wrap=True)
    if warnings:
        err.print(f"{len(warnings)} warning(s): checks that can never fail "
                  "(--strict makes them errors)", style="yellow")


@app.command()
def validate(paths: Annotated[list[Path], typer.Argument(
                 help="Scenario files, game-day suites or folders.")],
             strict: Annotated[bool, typer.Option(help=STRICT_HELP)] = False,
             ) -> None:
    """Check scenario files and game-day suites; exit 0 if all are valid, 2 with every
    problem otherwise. Checks that can never fail are warned about (errors with --strict)."""
    try:
        groups = _run_groups(paths)
    except ScenarioError as exc:
        _fail_invalid(exc)
        return
    loaded = [item for group in groups for item in group.scenarios]
    _lint(list(loaded), strict)
    for group in groups:
        if group.suite is not None:
            out.print(f"ok {group.suite.path} (suite {group.suite.suite.metadata.name}, "
                      f"{len(group.scenarios)} scenario(s))", highlight=False)
    for path, scenario in loaded:
        out.print(f"ok {path} ({scenario.metadata.name})", highlight=False)


class _RunGroup:
    """Scenarios run together: a suite's (with its settings), or those named directly."""

    def __init__(self, suite: LoadedSuite | None, scenarios: list[tuple[Path, Scenario]]):
        self.suite = suite
        self.scenarios = scenarios


def _run_groups(paths: list[Path]) -> list[_RunGroup]:
    """Suites named on the command line become groups of their own, in place; everything
    else is loaded as scenarios. Every problem of every file is raised at once."""
    from llmdrill.scenario.errors import ScenarioError as Invalid
    from llmdrill.scenario.loader import load_scenarios
    from llmdrill.scenario.suite import is_suite_file, load_suite

    groups: list[_RunGroup] = []
    plain: list[Path] = []
    issues = []

    def flush() -> None:
        if plain:
            try:
                groups.append(_RunGroup(None, load_scenarios(list(plain))))
            except Invalid as exc:
                issues.extend(exc.issues)
            plain.clear()

    for path in paths:
        if path.is_file() and is_suite_file(path):
            flush()
            try:
                suite = load_suite(path)
                groups.append(_RunGroup(suite, load_scenarios(suite.scenario_paths)))
            except Invalid as exc:
                issues.extend(exc.issues)
        else:
            plain.append(path)
    flush()
    if issues:
        raise Invalid(issues)
    return groups


@app.command()
def plan(
    path: Annotated[Path, typer.Argument(help="A scenario file or a game-day suite.")],
    check: Annotated[bool, typer.Option(help="Also check every backend is reachable.")] = False,
    strict: Annotated[bool, typer.Option(help=STRICT_HELP)] = False,
) -> None:
    """Print the timeline (phases, fault apply/revert, checks); for a suite, each
    scenario's in order with the cooldowns between. Changes nothing. Checks that can never
    fail are warned about (errors with --strict)."""
    from llmdrill.harness.plan import compile_plan

    if path.is_dir():
        err.print(f"{path}: plan takes one scenario file or one suite, not a folder",
                  markup=False, highlight=False)
        raise typer.Exit(EXIT_INVALID)
    try:
        groups = _run_groups([path])
    except ScenarioError as exc:
        _fail_invalid(exc)
        return
    group = groups[0]
    _lint(list(group.scenarios), strict)
    suite = group.suite
    compiled = [compile_plan(scenario) for _, scenario in group.scenarios]
    if suite is None:
        _print_plan(group.scenarios[0][1], compiled[0], check)
        return
    meta, cooldown = suite.suite.metadata, suite.suite.cooldown
    total = sum(float(c.total) for c in compiled)
    total += cooldown * max(0, len(group.scenarios) - 1)
    owner = f", owner {meta.owner}" if meta.owner else ""
    out.print(f"[bold]suite {meta.name}[/bold]{owner}: {len(group.scenarios)} scenario(s), "
              f"cooldown {cooldown:g}s, stop_on_failure {suite.suite.stop_on_failure}; "
              f"total about {total:g}s", highlight=False)
    for i, ((scenario_path, scenario), timeline) in enumerate(
            zip(group.scenarios, compiled, strict=True), start=1):
        out.print(f"\n[bold]{i}/{len(group.scenarios)}[/bold] {scenario_path}", highlight=False)
        _print_plan(scenario, timeline, check)
        if cooldown and i < len(group.scenarios):
            out.print(f"cooldown {cooldown:g}s", highlight=False)


def _print_plan(scenario: Scenario, compiled: Plan, check: bool) -> None:
    from llmdrill.faults.registry import make_injector
    from llmdrill.harness.progress import Progress
    from llmdrill.model.context import RunContext

    ctx = RunContext("<run>", scenario, None, {}, Progress(quiet=True), Path("."))

    out.print(f"[bold]{scenario.metadata.name}[/bold]  {scenario.metadata.description}")
    out.print(f"target {scenario.target.base_url} model {scenario.target.model}; load "
              f"{scenario.load.users} users; total {compiled.total:g}s", highlight=False)
    table = Table("at", "what", "detail")
    for i, phase in enumerate(compiled.phases):
        table.add_row(f"{phase.start:g}s", f"phase {phase.name} starts",
                      f"{phase.end - phase.start:g}s")
        for name in compiled.faults_entering(i):
            inj = make_injector(ctx, name, scenario.faults[name])
            table.add_row(f"{phase.start:g}s", f"apply {name}", inj.describe())
        for name in compiled.faults_leaving(i):
            table.add_row(f"{phase.end:g}s", f"revert {name}", "")
        for c in compiled.checks:
            if c.phase == phase.name:
                table.add_row(f"{phase.end:g}s", f"check {c.name}",
                              f"{c.kind} over [{c.window[0]:g}s, {c.window[1]:g}s)")
    out.print(table)
    if check:
        from llmdrill.faults.base import EnvironmentProblem
        from llmdrill.harness.preflight import check_alerting, check_metrics, check_target
        from llmdrill.harness.secrets import SecretMissing, auth_headers

        try:
            headers = auth_headers(scenario.target)
            out.print(check_target(scenario.target, headers), highlight=False)
            if scenario.target.metrics_url:
                out.print(check_metrics(scenario.target.metrics_url, headers), highlight=False)
            for name in scenario.faults:
                inj = make_injector(ctx, name, scenario.faults[name])
                for line in inj.preflight():
                    out.print(line, highlight=False)
            for line in check_alerting(scenario):
                out.print(line, highlight=False)
        except (EnvironmentProblem, SecretMissing) as exc:
            err.print(f"preflight failed: {exc}", markup=False, highlight=False)
            raise typer.Exit(EXIT_INVALID) from None


@app.command()
def run(
    paths: Annotated[list[Path], typer.Argument(
        help="Scenario files, game-day suites or folders, run in order.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Reports folder.")] = Path("reports"),
    junit: Annotated[Path | None, typer.Option(help="Also write one JUnit file for all.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Only scenarios with this tag.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress display.")] = False,
    allow_production: Annotated[bool, typer.Option(
        help="Allow targets marked production (the scenario must allow it too).")] = False,
    keep_samples: Annotated[bool, typer.Option(
        help="Keep the load's samples files (JSON lines, one per request) in the run's "
        "folder; by default they are deleted once evidence.db holds every request.")
    ] = False,
    history: Annotated[Path | None, typer.Option(
        help="History store (default: $LLMDRILL_HISTORY, else history.sqlite in --out).")
    ] = None,
    no_history: Annotated[bool, typer.Option(
        "--no-history", help="Do not record the runs in the history store.")] = False,
) -> None:
    """Run scenarios: load, faults, checks, reports. Exit code says how it went."""
    from llmdrill.harness.progress import Progress
    from llmdrill.harness.runner import RunOptions, run_scenario
    from llmdrill.model.verdict import EXIT_CODES
    from llmdrill.model.verdict import exit_code as suite_exit_code
    from llmdrill.report import write_suite_index, write_suite_junit

    # Resolved once, here: every process of the run (Locust, the watchdog) may run in
    # another working directory.
    out_dir = out_dir.expanduser().resolve()
    junit = junit.expanduser().resolve() if junit else None
    try:
        groups = _run_groups(paths)
    except ScenarioError as exc:
        _fail_invalid(exc)
        return
    if tag:
        for group in groups:
            group.scenarios = [(p, s) for p, s in group.scenarios
                               if set(tag) & set(s.metadata.tags)]
        if not any(group.scenarios for group in groups):
            err.print(f"no scenario has tag(s) {', '.join(tag)}")
            raise typer.Exit(EXIT_INVALID)
    store = None if no_history else _open_history(out_dir, history)
    results = []
    codes = []
    stopped = False
    for group in groups:
        settings = group.suite.suite if group.suite else None
        if settings is not None:
            owner = f" (owner: {settings.metadata.owner})" if settings.metadata.owner else ""
            err.print(f"suite {settings.metadata.name}{owner}: "
                      f"{len(group.scenarios)} drill(s)", highlight=False)
        ran = []
        group_codes: list[str] = []
        for i, (path, scenario) in enumerate(group.scenarios):
            cooling = i > 0 and settings is not None and settings.cooldown > 0
            if cooling and settings is not None and not _cool_down(settings.cooldown):
                codes.append("aborted")
                group_codes.append("aborted")
                stopped = True
                break
            progress = Progress(console=err, quiet=quiet)
            progress.start(f"{scenario.metadata.name} ({path})")
            try:
                result = run_scenario(path, scenario, RunOptions(
                    out_dir=out_dir, allow_production=allow_production,
                    keep_samples=keep_samples), progress)
            finally:
                progress.stop()
            results.append((result, Path(result.files.get("html", out_dir)).parent))
            ran.append(result)
            if store is not None:
                store = _record(store, result, results[-1][1])
            code = EXIT_CODES[result.status]
            codes.append(result.status)
            group_codes.append(result.status)
            _print_result(result)
            if code == EXIT_ABORTED:
                stopped = True
                break  # an interrupted suite stops; the faults of this one are reverted
            if settings is not None and settings.stop_on_failure and code != 0:
                err.print(f"suite {settings.metadata.name}: stopped after "
                          f"{scenario.metadata.name} ({result.status}): stop_on_failure",
                          highlight=False)
                break
        if group.suite is not None and group.scenarios:
            not_run = [s.metadata.name for _, s in group.scenarios[len(ran):]]
            _notify(group.suite, ran, not_run, suite_exit_code(group_codes))
        if stopped:
            break
    if junit:
        write_suite_junit([r for r, _ in results], junit)
    trends = _trends(store, out_dir) if store is not None else None
    if len(results) > 1 or trends is not None:
        index = write_suite_index(results, out_dir, trends)
        err.print(f"suite index: {index}", highlight=False)
    raise typer.Exit(suite_exit_code(codes))


def _open_history(out_dir: Path, configured: Path | None) -> HistoryStore | None:
    """The history store, or None with a warning: history never fails a run."""
    from llmdrill.history.store import HistoryError, HistoryStore, history_path

    try:
        return HistoryStore(history_path(out_dir, configured))
    except HistoryError as exc:
        err.print(f"warning: runs are not recorded: {exc}", markup=False)
        return None


def _record(store: HistoryStore, result: RunResult, report_dir: Path) -> HistoryStore | None:
    from llmdrill.history.store import HistoryError

    try:
        store.record(result, report_dir)
        return store
    except HistoryError as exc:
        err.print(f"warning: runs are not recorded: {exc}", markup=False)
        store.close()
        return None


def _trends(store: HistoryStore, out_dir: Path) -> list[dict[str, object]] | None:
    from llmdrill.history.store import HistoryError
    from llmdrill.history.trends import regressions
    from llmdrill.history.view import scenario_trends

    try:
        rows = store.runs()
    except HistoryError as exc:
        err.print(f"warning: no history in the index: {exc}", markup=False)
        return None
    finally:
        store.close()
    names = {row.scenario for row in rows}
    for name in sorted(names):
        for move in regressions([r for r in rows if r.scenario == name]):
            err.print(f"regression: {name}: {move.sentence()}", highlight=False)
    return scenario_trends(rows, out_dir)


def _cool_down(seconds: float) -> bool:
    """The suite's pause between drills (no fault is applied then). False when Ctrl-C or
    SIGTERM cut it short: the suite stops there, its reports are still written."""
    import signal
    import time

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    err.print(f"cool-down {seconds:g}s", highlight=False)
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        time.sleep(seconds)
        return True
    except KeyboardInterrupt:
        err.print("interrupted during the cool-down: the suite stops here")
        return False
    finally:
        signal.signal(signal.SIGTERM, previous)


def _notify(loaded: LoadedSuite, ran: list[RunResult], not_run: list[str],
            code: int) -> None:
    """The suite's summary to each of its webhooks; a failed notification warns and never
    changes the exit code."""
    import httpx

    from llmdrill.scenario.suite import suite_summary

    if not loaded.suite.notify:
        return
    verdict = {0: "passed", 1: "failed", 2: "error", 3: "aborted", 4: "inconclusive"}.get(
        code, "error")
    runs = [{"scenario": r.scenario.name, "status": r.status,
             "duration_s": round(r.ended_at - r.started_at, 1),
             "failed_checks": [c.name for c in r.checks if c.status != "passed"],
             "report": r.files.get("html")} for r in ran]
    body = suite_summary(loaded, runs, not_run, verdict)
    for target in loaded.suite.notify:
        # The URL may carry a token: name only its host in messages.
        host = httpx.URL(target.webhook).host
        try:
            response = httpx.post(target.webhook, json=body, timeout=10)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            err.print(f"warning: the suite's notification to {host} failed "
                      f"({type(exc).__name__})", highlight=False)
        else:
            err.print(f"suite summary sent to {host}", highlight=False)


def _print_result(result: object) -> None:
    from llmdrill.model.result import RunResult

    assert isinstance(result, RunResult)
    color = {"passed": "green", "failed": "red", "aborted": "yellow", "error": "red",
             "inconclusive": "magenta", "skipped": "white"}
    table = Table("check", "phase", "status", "summary", title=f"{result.scenario.name}")
    for c in result.checks:
        table.add_row(c.name, c.phase, f"[{color.get(c.status, 'white')}]{c.status}[/]",
                      c.summary)
    err.print(table)
    reason = f" ({result.abort_reason})" if result.abort_reason else ""
    err.print(f"[{color[result.status]}]{result.status.upper()}[/]", highlight=False, end="")
    err.print(reason, markup=False, highlight=False, soft_wrap=True)
    html = result.files.get("html")
    if html:
        err.print(f"report: {html}", highlight=False)


@app.command("alert-rules")
def alert_rules(
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="NAME=VALUE",
        help="Change a threshold (repeatable); see docs/alerts.md.")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write here.")] = None,
    format_: Annotated[str, typer.Option(
        "--format", help="rules (a Prometheus rule file) or prometheus-rule (a "
        "PrometheusRule object for prometheus-operator).")] = "rules",
    namespace: Annotated[str, typer.Option(
        help="prometheus-rule: the object's namespace.")] = "monitoring",
    label: Annotated[list[str] | None, typer.Option(
        "--label", metavar="NAME=VALUE",
        help="prometheus-rule: a label its Prometheus' ruleSelector matches (repeatable; "
        "default release=prometheus).")] = None,
) -> None:
    """Print the LLM-serving Prometheus alert rules the alert drills expect."""
    from llmdrill.monitoring.rules import render, render_prometheus_rule

    if format_ not in ("rules", "prometheus-rule"):
        err.print(f"--format must be rules or prometheus-rule, got '{format_}'", markup=False)
        raise typer.Exit(EXIT_INVALID)
    labels = {}
    for item in label or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            err.print(f"--label wants NAME=VALUE, got '{item}'", markup=False)
            raise typer.Exit(EXIT_INVALID)
        labels[key] = value

    overrides = {}
    for item in set_ or []:
        name, sep, value = item.partition("=")
        if not sep:
            err.print(f"--set wants NAME=VALUE, got '{item}'", markup=False)
            raise typer.Exit(EXIT_INVALID)
        overrides[name] = value
    try:
        text = (render(overrides) if format_ == "rules" else
                render_prometheus_rule(overrides, namespace=namespace, labels=labels or None))
    except ValueError as exc:
        err.print(f"--set: {exc}", markup=False)
        raise typer.Exit(EXIT_INVALID) from None
    if out_file is not None:
        out_file.write_text(text)
    else:
        sys.stdout.write(text)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the scenario format (for yaml-language-server)."""
    from llmdrill.scenario.schema import scenario_json_schema

    out.print_json(json.dumps(scenario_json_schema()))


@app.command()
def cleanup(
    run_ref: Annotated[str | None, typer.Argument(
        metavar="[RUN]", help="A run id, run folder or journal; default: every crashed run.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Also runs whose harness still seems alive.")
                     ] = False,
) -> None:
    """Revert every fault a crashed or killed run left behind. Idempotent."""
    from llmdrill.harness.cleanup import cleanup_runs

    code = cleanup_runs(run_ref, force, err)
    raise typer.Exit(code)


@app.command()
def report(
    result_json: Annotated[Path, typer.Argument(help="A run's result.json.")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Where to write.")] = None,
) -> None:
    """Render the reports again from a result.json (never re-runs anything)."""
    from llmdrill.report import load_result, write_reports

    try:
        result = load_result(result_json)
    except (OSError, ValueError) as exc:
        err.print(f"{result_json}: cannot read result ({exc})", markup=False)
        raise typer.Exit(EXIT_INVALID) from None
    files = write_reports(result, (out_dir or result_json.parent).expanduser().resolve())
    for kind, path in files.items():
        out.print(f"{kind}: {path}", highlight=False)


@app.command()
def compare(
    run_a: Annotated[str, typer.Argument(help="A run folder, its result.json, or a run id.")],
    run_b: Annotated[str, typer.Argument(help="The run to compare it with.")],
    history: Annotated[Path | None, typer.Option(
        help="History store for run ids (default: $LLMDRILL_HISTORY, else "
        "reports/history.sqlite).")] = None,
    html: Annotated[Path | None, typer.Option(help="Also write the comparison here.")] = None,
) -> None:
    """The key figures of two runs side by side, and which moved (exit 0; 2 when a run
    cannot be read)."""
    from llmdrill.history import compare as cmp
    from llmdrill.history.store import HistoryError, history_path

    store = history_path(Path("reports").resolve(), history)
    try:
        a, b = cmp.resolve(run_a, store), cmp.resolve(run_b, store)
    except HistoryError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(EXIT_INVALID) from None
    rows = cmp.compare(a, b)
    table = Table(title=f"{a.label} ({a.status}) -> {b.label} ({b.status})")
    for column in ("figure", "A", "B", "change", "moved"):
        table.add_column(column, justify="right" if column in ("A", "B", "change") else "left")
    for row in rows:
        verdict = "worse" if row.worse else ("better" if row.moved else "")
        table.add_row(row.label, cmp.fmt(row.a, row.unit), cmp.fmt(row.b, row.unit),
                      row.change, verdict, style="red" if row.worse else None)
    out.print(table)
    if not rows:
        out.print("neither run has a key figure (no request finished)")
    moved = [r.label for r in rows if r.moved]
    out.print(f"moved: {', '.join(moved) if moved else 'nothing'}", highlight=False)
    if html is not None:
        html.write_text(cmp.render_html(a, b, rows), encoding="utf-8")
        out.print(f"html: {html}", highlight=False)


@app.command("history")
def history_cmd(
    history: Annotated[Path | None, typer.Option(
        help="History store (default: $LLMDRILL_HISTORY, else reports/history.sqlite).")
    ] = None,
    scenario: Annotated[str | None, typer.Option(help="Only this scenario's runs.")] = None,
) -> None:
    """List the recorded runs, oldest first, with their key figures and regressions."""
    from llmdrill.history.figures import FIGURES
    from llmdrill.history.store import HistoryError, HistoryStore, history_path
    from llmdrill.history.trends import regressions

    path = history_path(Path("reports").resolve(), history)
    if not path.exists():
        err.print(f"no history store at {path} (--history)", markup=False)
        raise typer.Exit(EXIT_INVALID)
    try:
        with HistoryStore(path) as store:
            rows = store.runs(scenario)
    except HistoryError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(EXIT_INVALID) from None
    table = Table(title=str(path))
    for column in ("started (UTC)", "scenario", "status", "run id",
                   *(f.label for f in FIGURES)):
        table.add_column(column)
    import datetime as dt

    for row in rows:
        started = dt.datetime.fromtimestamp(row.started_at, dt.UTC).strftime("%Y-%m-%d %H:%M")
        table.add_row(started, row.scenario, row.status, row.run_id,
                      *(f"{row.figures[f.name]:.3g}" if f.name in row.figures else "-"
                        for f in FIGURES))
    out.print(table)
    for name in sorted({r.scenario for r in rows}):
        for move in regressions([r for r in rows if r.scenario == name]):
            out.print(f"regression: {name}: {move.sentence()}", highlight=False)


REPLICAS_HELP = ("1: the single engine behind Toxiproxy. 2: instead, two engine replicas, each "
                 "behind a Toxiproxy proxy, for gateway drills (ports in "
                 "llmdrill.stack.gateway).")
GATEWAY_HELP = "A gateway in front of the two replicas: haproxy or vllm-router (repeatable)."
FRONT_HELP = ("With --gateway haproxy: a second HAProxy instance and a front balancer over "
              "both (the gateway instance failover drill).")


@app.command()
def up(
    install: Annotated[bool, typer.Option(help="Install missing parts first.")] = True,
    replicas: Annotated[int, typer.Option(help=REPLICAS_HELP)] = 1,
    gateway: Annotated[list[str] | None, typer.Option(help=GATEWAY_HELP)] = None,
    front: Annotated[bool, typer.Option(help=FRONT_HELP)] = False,
) -> None:
    """Start the local stack (real vLLM on CPU + Toxiproxy) on 127.0.0.1 and print URLs.
    With --replicas 2: two replicas and the gateways named instead; run again after a
    drill, it restarts only what is down."""
    from llmdrill.stack import StackError
    from llmdrill.stack.gateway import GATEWAYS
    from llmdrill.stack.local import LocalStack

    gateways = list(dict.fromkeys(gateway or []))
    problem = None
    if replicas not in (1, 2):
        problem = f"--replicas must be 1 or 2, not {replicas}"
    elif gateways and replicas != 2:
        problem = "--gateway needs --replicas 2 (a gateway balances over two replicas)"
    elif unknown := [g for g in gateways if g not in GATEWAYS]:
        problem = f"unknown gateway {unknown[0]!r}: choose from {', '.join(GATEWAYS)}"
    elif front and "haproxy" not in gateways:
        problem = "--front needs --gateway haproxy (it balances over HAProxy instances)"
    if problem:
        err.print(f"up: {problem}", markup=False, highlight=False)
        raise typer.Exit(EXIT_INVALID)
    if replicas == 2:
        _up_gateway_stack(gateways, install, front)
        return
    stack = LocalStack()
    try:
        stack.up(install=install)
    except StackError as exc:
        err.print(f"stack: {exc}", markup=False)
        raise typer.Exit(EXIT_INVALID) from None
    for name, url in stack.urls().items():
        out.print(f"{name:24} {url}", highlight=False)


def _up_gateway_stack(gateways: list[str], install: bool, front: bool) -> None:
    """Two replicas take both cores of a small machine: they replace the single engine."""
    from llmdrill.stack import StackError
    from llmdrill.stack.gateway import GatewayStack

    stack = GatewayStack()
    try:
        stack.up(gateways, install=install, front=front)
    except StackError as exc:
        err.print(f"stack: {exc}", markup=False)
        raise typer.Exit(EXIT_INVALID) from None
    for name, url in stack.urls(gateways).items():
        out.print(f"{name:28} {url}", highlight=False)


@app.command()
def down() -> None:
    """Stop the local stack started by `llmdrill up` (the gateway stack too)."""
    from llmdrill.stack.gateway import GatewayStack
    from llmdrill.stack.local import LocalStack

    # Gateways and replicas first: their proxies live in the local stack's Toxiproxy.
    stopped = GatewayStack().down() + LocalStack().down()
    out.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@app.command("load-worker")
def load_worker(
    master: Annotated[str, typer.Option(
        "--master", help="HOST:PORT of the `llmdrill run` whose scenario has "
        "load.remote_workers (its load.master.port, default 5557).")],
) -> None:
    """Run a load worker for an `llmdrill run` on another machine (Locust's distributed
    mode): it takes the load's configuration from that run, sends its requests to the
    target, and reports every one back. The API key, if the scenario names one, is read
    here (the same environment variable or file). Stops when the run ends."""
    import subprocess

    from llmdrill.load import locustfile_path

    host, sep, port = master.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        err.print(f"--master {master!r}: expected HOST:PORT, e.g. 127.0.0.1:5557")
        raise typer.Exit(EXIT_INVALID)
    cmd = [sys.executable, "-m", "locust", "-f", str(locustfile_path()), "--worker",
           "--master-host", host.strip("[]"), "--master-port", port, "--loglevel", "WARNING"]
    env = {k: v for k, v in os.environ.items() if k != "LLMDRILL_LOAD_CONFIG"}
    try:
        code = subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        code = EXIT_ABORTED
    raise typer.Exit(code)


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    if version:
        out.print(f"llmdrill {__version__}")
        raise typer.Exit(0)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    from llmdrill.errors import LlmdrillError

    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(EXIT_ABORTED)
    except LlmdrillError as exc:  # e.g. a broken plugin: a message, never a traceback
        err.print(f"{type(exc).__name__}: {exc}", markup=False, highlight=False)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
