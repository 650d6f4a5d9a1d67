"""The scenario loader: valid files, ${VAR} interpolation, units, and the exact messages a
user gets for invalid files (file:line:col: field: message)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from llmdrill.cli import app
from llmdrill.faults.toxiproxy import (
    BandwidthToxic,
    DownToxic,
    LatencyToxic,
    LimitDataToxic,
    ResetPeerToxic,
    SlicerToxic,
    SlowCloseToxic,
    TimeoutToxic,
)
from llmdrill.scenario import models
from llmdrill.scenario.errors import ScenarioError
from llmdrill.scenario.loader import load_scenario
from llmdrill.scenario.models import Scenario
from llmdrill.scenario.units import parse_duration, parse_size
from tests.conftest import count

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_SPIKE = ROOT / "scenarios" / "timeout-spike.yaml"
SPIKE_VARS = (
    "LLMDRILL_TARGET_URL",
    "LLMDRILL_MODEL",
    "LLMDRILL_METRICS_URL",
    "LLMDRILL_TOXIPROXY_URL",
    "LLMDRILL_PROXY",
    "SPIKE_LATENCY",
    "CLIENT_READ_TIMEOUT",
    "CLIENT_TOTAL_TIMEOUT",
)

# A minimal valid scenario, 9 lines; tests append sections from line 10 on.
BASE = """\
apiVersion: llmdrill/v1
kind: Scenario
metadata:
  name: drill
target:
  base_url: http://127.0.0.1:8000
  model: tiny
phases:
  - {name: baseline, duration: 10s}
"""

Write = Callable[[str], Path]


@pytest.fixture
def write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Write:
    """Write a scenario as `scenario.yaml` in the working directory, as a user would."""
    monkeypatch.chdir(tmp_path)

    def _write(text: str) -> Path:
        path = Path("scenario.yaml")
        path.write_text(text, encoding="utf-8")
        return path

    return _write


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, env={} if env is None else env)
    assert str(info.value) == "\n".join(str(issue) for issue in info.value.issues)
    return [str(issue) for issue in info.value.issues]


def fault(body: str) -> str:
    """BASE plus a fault `f` whose toxiproxy block is `body` (lines 13+)."""
    indented = "".join(f"      {line}\n" for line in body.splitlines())
    return BASE + "faults:\n  f:\n    toxiproxy:\n      proxy: vllm\n" + indented


# --- valid files ----------------------------------------------------------------------


def test_timeout_spike_loads_with_explicit_env() -> None:
    env = {
        "LLMDRILL_TARGET_URL": "http://10.0.0.7:9001",
        "LLMDRILL_MODEL": "qwen",
        "SPIKE_LATENCY": "2.5s",
        "CLIENT_READ_TIMEOUT": "7s",
    }
    scenario = load_scenario(TIMEOUT_SPIKE, env=env)
    assert scenario.target.base_url == "http://10.0.0.7:9001"
    assert scenario.target.model == "qwen"
    assert scenario.target.metrics_url == "http://127.0.0.1:18000/metrics"  # default kept
    spike = scenario.faults["spike"].toxiproxy
    assert isinstance(spike, LatencyToxic)
    assert spike.latency == 2.5
    assert scenario.load.timeouts.read == 7.0
    assert scenario.load.timeouts.total == 10.0


def test_timeout_spike_loads_with_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SPIKE_VARS:
        monkeypatch.delenv(name, raising=False)
    scenario = load_scenario(TIMEOUT_SPIKE)  # env defaults to os.environ
    assert scenario == load_scenario(TIMEOUT_SPIKE, env={})
    assert scenario.metadata.name == "timeout-spike"
    assert scenario.target.base_url == "http://127.0.0.1:18001"
    assert scenario.target.model == "tiny"
    assert scenario.toxiproxy["default"].url == "http://127.0.0.1:18474"
    assert scenario.target.metrics_url == "http://127.0.0.1:18000/metrics"
    spike = scenario.faults["spike"].toxiproxy
    assert isinstance(spike, LatencyToxic)
    assert (spike.proxy, spike.latency) == ("vllm", 1.5)
    assert (scenario.load.timeouts.read, scenario.load.timeouts.total) == (5.0, 10.0)
    assert "spike" in [fault for phase in scenario.phases for fault in phase.faults]
    assert {check.phase for check in scenario.checks} <= {p.name for p in scenario.phases}
    assert scenario.total_duration > 0


def test_timeout_spike_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMDRILL_MODEL", "from-os-environ")
    assert load_scenario(TIMEOUT_SPIKE).target.model == "from-os-environ"


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        ("${MODEL}", {"MODEL": "qwen"}, "qwen"),
        ("${MODEL:-tiny}", {"MODEL": "qwen"}, "qwen"),
        ("${MODEL:-tiny}", {}, "tiny"),
        ("${MODEL:-tiny}", {"MODEL": ""}, "tiny"),  # set but empty: the default wins
        ("${MODEL}", {"MODEL": ""}, ""),  # set but empty, no default: empty
        ("org/${MODEL:-tiny}-${SIZE:-1b}", {"SIZE": "7b"}, "org/tiny-7b"),
        ("'${MODEL:-quoted}'", {}, "quoted"),
        ('"${MODEL:-double}"', {}, "double"),
        ("plain-$MODEL", {"MODEL": "x"}, "plain-$MODEL"),  # only ${...} is interpolated
    ],
)
def test_interpolation(write: Write, value: str, env: dict[str, str], expected: str) -> None:
    path = write(BASE.replace("model: tiny", f"model: {value}"))
    assert load_scenario(path, env=env).target.model == expected


def test_interpolated_numbers_and_fractions(write: Write) -> None:
    path = write(
        fault("toxic: down\ntoxicity: ${TOXICITY:-0.25}")
        + "load:\n  users: ${USERS:-3}\n  spawn_rate: '${RATE:-1.5}'\n"
    )
    scenario = load_scenario(path, env={"USERS": "12"})
    assert scenario.load.users == 12
    assert scenario.load.spawn_rate == 1.5
    assert scenario.faults["f"].toxiproxy.toxicity == 0.25


def test_interpolation_unset_without_default(write: Write) -> None:
    path = write(BASE.replace("model: tiny", "model: ${LLM_MODEL}"))
    assert problems(path) == [
        "scenario.yaml:7:10: target.model: environment variable LLM_MODEL is not set "
        "(set it, or write ${LLM_MODEL:-default})"
    ]


def test_interpolation_unset_in_a_list(write: Write) -> None:
    check = "    metric: {series: ['${SERIES}'], max: 1}\n"
    path = write(BASE + "checks:\n  - phase: baseline\n" + check)
    assert problems(path) == [
        "scenario.yaml:12:23: checks.0.metric.series.0: environment variable SERIES is not set "
        "(set it, or write ${SERIES:-default})"
    ]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("20s", 20.0),
        ("0.25m", 15.0),
        ("1000ms", 1.0),
    ],
)
def test_durations(write: Write, text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    path = write(BASE.replace("duration: 10s", f"duration: {text}"))
    assert load_scenario(path, env={}).phases[0].duration == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "size"),
    [("512B", 512), ("64KiB", 65536), ("1MiB", 1024**2), ("2GiB", 2 * 1024**3)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


TOXICS: list[tuple[str, type[Any], dict[str, Any]]] = [
    ("toxic: latency\nlatency: 800ms\njitter: 100ms", LatencyToxic,
     {"latency": 0.8, "jitter": 0.1}),
    ("toxic: timeout\ntimeout: 0s", TimeoutToxic, {"timeout": 0.0}),
    ("toxic: bandwidth\nrate: 16KiB", BandwidthToxic, {"rate": 16384}),
    ("toxic: slow_close\ndelay: 2s", SlowCloseToxic, {"delay": 2.0}),
    ("toxic: reset_peer\ntimeout: 1s", ResetPeerToxic, {"timeout": 1.0}),
    ("toxic: slicer\naverage_size: 64B\nsize_variation: 16B\ndelay: 10ms", SlicerToxic,
     {"average_size": 64, "size_variation": 16, "delay": 0.01}),
    ("toxic: limit_data\nbytes: 1MiB", LimitDataToxic, {"bytes": 1024**2}),
    ("toxic: down", DownToxic, {}),
]


@pytest.mark.parametrize(("body", "model", "values"), TOXICS, ids=[t[1].__name__ for t in TOXICS])
def test_every_toxic_kind(
    write: Write, body: str, model: type[Any], values: dict[str, Any]
) -> None:
    text = fault(body + "\nstream: upstream\ntoxicity: 0.5").replace(
        "duration: 10s}", "duration: 10s, faults: [f]}"
    )
    scenario = load_scenario(write(text), env={})
    toxic = scenario.faults["f"].toxiproxy
    assert type(toxic) is model
    assert (toxic.proxy, toxic.server, toxic.stream, toxic.toxicity) == (
        "vllm",
        "default",
        "upstream",
        0.5,
    )
    for name, value in values.items():
        assert getattr(toxic, name) == pytest.approx(value)


# --- invalid files: the exact messages ---------------------------------------------------

# Built from the models, so adding a top-level section or a kind does not rewrite every
# expected message; the message format itself stays pinned below.
VALID_KEYS_TOP = "valid keys: " + ", ".join(
    f.alias or n for n, f in Scenario.model_fields.items())
TOXIC_KINDS = "latency, timeout, bandwidth, slow_close, reset_peer, slicer, limit_data, down"
CHECK_KINDS = f"a check has exactly one kind ({', '.join(models.CHECK_KINDS)})"
FAULT_TYPES = f"fault types: {', '.join(models.FAULT_BACKENDS)}"

INVALID: list[tuple[str, str, list[str]]] = [
    (
        "yaml-unclosed-bracket",
        "apiVersion: llmdrill/v1\nkind: Scenario\nmetadata: {name: [drill}\n",
        [
            "scenario.yaml:3:24: invalid YAML: expected ',' or ']', but got '}' "
            "(while parsing a flow sequence started at line 3, column 18)"
        ],
    ),
    (
        "yaml-bad-indentation",
        "apiVersion: llmdrill/v1\nkind: Scenario\nmetadata:\n  name: drill\n   tags: [a]\n",
        [
            "scenario.yaml:5:8: invalid YAML: mapping values are not allowed here; "
            "check the indentation, or quote a value that contains ': '"
        ],
    ),
    (
        "yaml-tab-indentation",
        "apiVersion: llmdrill/v1\nmetadata:\n\tname: drill\n",
        ["scenario.yaml:3:1: invalid YAML: found character '\\t' that cannot start any token"],
    ),
    (
        "yaml-unquoted-variable-in-flow-mapping",
        BASE.replace("duration: 10s}", "duration: ${PHASE:-10s}}"),
        [
            "scenario.yaml:9:33: invalid YAML: expected ',' or '}', but got '{' (while parsing a "
            "flow mapping started at line 9, column 5); inside [ ] or { }, quote values that "
            'use ${...}, e.g. "${VAR:-1s}"'
        ],
    ),
    (
        "yaml-control-character",
        BASE.replace("model: tiny", "model: ti\x07ny"),
        [
            "scenario.yaml:7:12: invalid YAML: unacceptable character #x0007: special "
            "characters are not allowed"
        ],
    ),
    ("empty-file", "", ["scenario.yaml:1:1: the file is empty"]),
    ("only-comments", "# nothing here\n\n", ["scenario.yaml:1:1: the file is empty"]),
    (
        "top-level-list",
        "- apiVersion: llmdrill/v1\n- kind: Scenario\n",
        ["scenario.yaml:1:1: a scenario is a mapping (apiVersion, kind, ...)"],
    ),
    (
        "unknown-top-level-key",
        BASE + "phase:\n  - {name: x, duration: 1s}\n",
        [
            "scenario.yaml:10:1: phase: unknown key 'phase'; did you mean 'phases'? "
            f"({VALID_KEYS_TOP})"
        ],
    ),
    (
        "unknown-nested-key",
        BASE.replace("  model: tiny\n", "  model: tiny\n  modle: other\n"),
        [
            "scenario.yaml:8:3: target.modle: unknown key 'modle'; did you mean 'model'? "
            "(valid keys: base_url, model, metrics_url, engines, api_key_env, api_key_file, "
            "production)"
        ],
    ),
    (
        "typo-in-toxic-attribute",
        fault("toxic: latency\nlatncy: 1s"),
        [
            "scenario.yaml:12:5: faults.f.toxiproxy.latency: required field is missing",
            "scenario.yaml:15:7: faults.f.toxiproxy.latncy: unknown key 'latncy'; did you mean "
            "'latency'? (valid keys: server, proxy, listen, upstream, stream, toxicity, toxic, "
            "latency, jitter)",
        ],
    ),
    (
        "unknown-fault-type",
        BASE + "faults:\n  f:\n    chaos_mesh: {kind: PodChaos}\n",
        [f"scenario.yaml:11:3: faults.f: unknown fault type 'chaos_mesh' ({FAULT_TYPES})"],
    ),
    (
        "unknown-toxic-kind",
        fault("toxic: latncy\nlatency: 1s"),
        [
            f"scenario.yaml:14:7: faults.f.toxiproxy.toxic: 'latncy' is not one of: {TOXIC_KINDS};"
            " did you mean 'latency'?"
        ],
    ),
    (
        "missing-toxic-kind",
        fault("latency: 1s"),
        [
            "scenario.yaml:12:5: faults.f.toxiproxy.toxic: required field is missing "
            f"(one of: {TOXIC_KINDS})"
        ],
    ),
    (
        "duration-without-unit",
        BASE.replace("duration: 10s", "duration: 20"),
        [
            "scenario.yaml:9:22: phases.0.duration: a duration needs a unit: write '20s' or "
            "'20ms' (units: ms, s, m, h)"
        ],
    ),
    (
        "bad-duration-string",
        BASE.replace("duration: 10s", "duration: 20 secs"),
        [
            "scenario.yaml:9:22: phases.0.duration: '20 secs' is not a duration; write a number "
            "and a unit, e.g. '20s', '500ms', '2m' (units: ms, s, m, h)"
        ],
    ),
    (
        "negative-duration",
        BASE.replace("duration: 10s", "duration: -5s"),
        ["scenario.yaml:9:22: phases.0.duration: a duration cannot be negative, got '-5s'"],
    ),
    (
        "zero-phase-duration",
        BASE.replace("duration: 10s", "duration: 0s"),
        ["scenario.yaml:9:22: phases.0.duration: must be more than 0s"],
    ),
    (
        "boolean-duration",
        BASE.replace("duration: 10s", "duration: yes"),
        [
            "scenario.yaml:9:22: phases.0.duration: a duration is a string with a unit, "
            "e.g. '20s' or '500ms'"
        ],
    ),
    (
        "percentage-for-fraction",
        fault("toxic: down\ntoxicity: 5%"),
        [
            "scenario.yaml:15:7: faults.f.toxiproxy.toxicity: write fractions as a number "
            "between 0 and 1 (e.g. 0.2 for 20%), not '5%'"
        ],
    ),
    (
        "fraction-above-one",
        BASE + "checks:\n  - phase: baseline\n    slo: {error_rate: {max: 5}}\n",
        [
            "scenario.yaml:12:24: checks.0.slo.error_rate.max: 5 is not between 0 and 1 "
            "(write 0.2 for 20%)"
        ],
    ),
    (
        "size-without-unit",
        fault("toxic: bandwidth\nrate: 16384"),
        [
            "scenario.yaml:15:7: faults.f.toxiproxy.rate: a size needs a unit: write e.g. "
            "'16384B' or '16384KiB' (units: B, KiB, MiB, GiB)"
        ],
    ),
    (
        "size-with-decimal-unit",
        fault("toxic: limit_data\nbytes: 10 KB"),
        [
            "scenario.yaml:15:7: faults.f.toxiproxy.bytes: '10 KB' is not a size; write a whole "
            "number and a unit, e.g. '64KiB' (units: B, KiB, MiB, GiB)"
        ],
    ),
    (
        "wrong-api-version",
        BASE.replace("llmdrill/v1", "llmdrill/v2"),
        ["scenario.yaml:1:1: apiVersion: must be 'llmdrill/v1', got 'llmdrill/v2'"],
    ),
    (
        "wrong-kind",
        BASE.replace("kind: Scenario", "kind: Drill"),
        ["scenario.yaml:2:1: kind: must be 'Scenario', got 'Drill'"],
    ),
    (
        "users-wrong-type",
        BASE + "load:\n  users: many\n",
        ["scenario.yaml:11:3: load.users: expected a whole number, got 'many'"],
    ),
    (
        "users-negative",
        BASE + "load:\n  users: -2\n",
        ["scenario.yaml:11:3: load.users: must be at least 0, got -2"],
    ),
    (
        "spawn-rate-zero",
        BASE + "load:\n  spawn_rate: 0\n",
        ["scenario.yaml:11:3: load.spawn_rate: must be more than 0.0, got 0"],
    ),
    (
        "retry-on-unquoted-status",
        BASE + "load:\n  retries: {on: [429, 5xx]}\n",
        [
            "scenario.yaml:11:18: load.retries.on.0: 429 is not one of: 429, 5xx, timeout, "
            "connect, reset; write it in quotes: '429'"
        ],
    ),
    (
        "model-not-text",
        BASE.replace("model: tiny", "model: 7"),
        ["scenario.yaml:7:3: target.model: expected text, got 7; put it in quotes"],
    ),
    (
        "bad-name",
        BASE.replace("name: drill", "name: Timeout Spike"),
        [
            "scenario.yaml:4:3: metadata.name: 'Timeout Spike' is not a valid name: use "
            "lowercase letters, digits, '.', '_' and '-', starting with a letter or digit"
        ],
    ),
    (
        "phase-references-undefined-fault",
        BASE.replace("duration: 10s}", "duration: 10s, faults: [spike]}"),
        ["scenario.yaml:9:46: phases.0.faults.0: unknown fault 'spike' (no faults are defined)"],
    ),
    (
        "phase-references-misspelled-fault",
        fault("toxic: down").replace("duration: 10s}", "duration: 10s, faults: [g]}"),
        ["scenario.yaml:9:46: phases.0.faults.0: unknown fault 'g' (defined: f)"],
    ),
    (
        "check-on-undefined-phase",
        BASE + "checks:\n  - phase: spike\n    no_hung_requests: {deadline: 30s}\n",
        ["scenario.yaml:11:5: checks.0.phase: unknown phase 'spike' (phases: baseline)"],
    ),
    (
        "recovers-baseline-undefined",
        BASE
        + "checks:\n  - phase: baseline\n"
        + "    recovers: {measure: ttft_p95, baseline_phase: warmup, within: 10s}\n",
        [
            "scenario.yaml:12:35: checks.0.recovers.baseline_phase: unknown phase 'warmup' "
            "(phases: baseline)"
        ],
    ),
    (
        "recovers-unknown-measure",
        BASE
        + "checks:\n  - phase: baseline\n"
        + "    recovers: {measure: ttft, baseline_phase: baseline, within: 10s}\n",
        [
            "scenario.yaml:12:16: checks.0.recovers.measure: 'ttft' is not one of: ttft_p50, "
            "ttft_p95, error_rate, tokens_per_s; did you mean 'ttft_p95'?"
        ],
    ),
    (
        "duplicate-phase-names",
        BASE + "  - {name: baseline, duration: 5s}\n",
        ["scenario.yaml:10:6: phases.1.name: duplicate phase name 'baseline'"],
    ),
    (
        "duplicate-key",
        BASE.replace("  model: tiny\n", "  model: tiny\n  model: qwen\n"),
        ["scenario.yaml:8:3: target.model: duplicate key 'model'"],
    ),
    (
        "check-with-two-kinds",
        BASE
        + "checks:\n  - phase: baseline\n    slo: {min_requests: 5}\n"
        + "    no_hung_requests: {deadline: 30s}\n",
        [f"scenario.yaml:11:5: checks.0: {CHECK_KINDS}; found 2"],
    ),
    (
        "check-with-no-kind",
        BASE + "checks:\n  - phase: baseline\n",
        [f"scenario.yaml:11:5: checks.0: {CHECK_KINDS}; found none"],
    ),
    (
        "unknown-error-class",
        BASE + "checks:\n  - phase: baseline\n    slo: {error_rate_by_class: {timout: {max: 0}}}\n",
        [
            "scenario.yaml:12:33: checks.0.slo.error_rate_by_class.timout: 'timout' is not one "
            "of: timeout, connect, reset, incomplete_stream, protocol, http_4xx, http_429, "
            "http_5xx, interrupted, empty; did you mean 'timeout'?"
        ],
    ),
    (
        "bound-without-min-or-max",
        BASE + "checks:\n  - phase: baseline\n    slo: {ttft_p95: {}}\n",
        ["scenario.yaml:12:11: checks.0.slo.ttft_p95: give min, max or both"],
    ),
    (
        "metric-check-without-metrics-url",
        BASE
        + "checks:\n  - phase: baseline\n"
        + "    metric: {series: [vllm:num_requests_running], max: 8}\n",
        ["scenario.yaml:12:5: checks.0.metric: a metric check needs target.metrics_url"],
    ),
    (
        "api-key-env-and-file",
        BASE.replace("  model: tiny\n", "  model: tiny\n  api_key_env: KEY\n  api_key_file: k\n"),
        ["scenario.yaml:9:3: target.api_key_file: set api_key_env or api_key_file, not both"],
    ),
    (
        "base-url-without-scheme",
        BASE.replace("http://127.0.0.1:8000", "127.0.0.1:8000"),
        [
            "scenario.yaml:6:3: target.base_url: must start with http:// or https://, "
            "got '127.0.0.1:8000'"
        ],
    ),
    (
        "missing-model",
        BASE.replace("  model: tiny\n", ""),
        ["scenario.yaml:5:1: target.model: required field is missing"],
    ),
    (
        "empty-section",
        BASE.replace("metadata:\n  name: drill\n", "metadata:\n"),
        ["scenario.yaml:3:1: metadata: expected a mapping (key: value), got nothing (null)"],
    ),
    (
        "no-phases",
        BASE.replace("  - {name: baseline, duration: 10s}\n", "").replace("phases:", "phases: []"),
        ["scenario.yaml:8:1: phases: needs at least 1 item"],
    ),
    (
        "unknown-toxiproxy-server",
        fault("toxic: down\nserver: staging"),
        [
            "scenario.yaml:15:7: faults.f.toxiproxy.server: unknown Toxiproxy server 'staging' "
            "(defined: default)"
        ],
    ),
    (
        "merge-key",
        BASE + "load:\n  <<: {users: 2}\n",
        ["scenario.yaml:11:3: load: merge keys (<<) are not supported; write the keys out"],
    ),
    (
        "unset-variable-without-default",
        BASE.replace("base_url: http://127.0.0.1:8000", "base_url: http://${VLLM_HOST}:8000"),
        [
            "scenario.yaml:6:13: target.base_url: environment variable VLLM_HOST is not set "
            "(set it, or write ${VLLM_HOST:-default})"
        ],
    ),
    (
        "several-problems-at-once",
        BASE.replace("model: tiny", "model: [tiny]") + "load:\n  users: -1\n  wait: 1\n",
        [
            "scenario.yaml:7:3: target.model: expected text, got a list",
            "scenario.yaml:11:3: load.users: must be at least 0, got -1",
            "scenario.yaml:12:3: load.wait: a duration needs a unit: write '1s' or '1ms' "
            "(units: ms, s, m, h)",
        ],
    ),
]


def test_invalid_cases_are_distinct() -> None:
    assert len(INVALID) >= 18
    assert len({name for name, _, _ in INVALID}) == len(INVALID)
    assert len({text for _, text, _ in INVALID}) == len(INVALID)


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_file_messages(write: Write, text: str, expected: list[str]) -> None:
    assert problems(write(text)) == expected


def test_missing_file(write: Write) -> None:
    assert problems(Path("nope.yaml")) == ["nope.yaml: no such file"]


def test_not_utf8(write: Write) -> None:
    Path("scenario.yaml").write_bytes(b"apiVersion: \xff\xfe\n")
    [message] = problems(Path("scenario.yaml"))
    assert message.startswith("scenario.yaml: cannot read: 'utf-8' codec can't decode byte 0xff")


# --- the CLI --------------------------------------------------------------------------


def test_cli_validate_bad_file(write: Write) -> None:
    write(BASE.replace("duration: 10s", "duration: 20"))
    result = CliRunner().invoke(app, ["validate", "scenario.yaml"])
    assert result.exit_code == 2
    assert "scenario.yaml:9:22: phases.0.duration: a duration needs a unit" in result.output
    assert "1 problem(s) found" in result.output


def test_cli_validate_good_file(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SPIKE_VARS:
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(app, ["validate", str(TIMEOUT_SPIKE)])
    assert result.exit_code == 0, result.output
    assert f"ok {TIMEOUT_SPIKE} (timeout-spike)" in result.output


def test_cli_schema() -> None:
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert "$schema" in schema
    assert schema["additionalProperties"] is False
    assert "Scenario" in schema["title"] or "scenario" in schema["title"]


# --- property tests: never anything but ScenarioError -------------------------------------

_FIELD_NAMES = sorted(
    {"apiVersion", "kind", "toxic", "for", "<<"}
    | {
        name
        for model in Scenario.model_json_schema()["$defs"].values()
        for name in model.get("properties", {})
    }
)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(
        ["10s", "500ms", "1.5s", "16KiB", "0.5", "5%", "llmdrill/v1", "Scenario", "latency",
         "down", "baseline", "${X}", "${X:-1s}", "http://h", "", "~", "yes", "2024-01-01"]
    )
)
_KEYS = st.sampled_from(_FIELD_NAMES) | st.text(max_size=10)
_TREES = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(_KEYS, children, max_size=5),
    max_leaves=25,
)


@pytest.fixture(scope="module")
def spike_data() -> dict[str, Any]:
    data = yaml.safe_load(TIMEOUT_SPIKE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder) / "scenario.yaml"


def check_never_crashes(path: Path, content: str | bytes) -> None:
    count("loader fuzz examples")
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    try:
        scenario = load_scenario(path, env={"X": "1s"})
    except ScenarioError as exc:
        assert exc.issues
        for issue in exc.issues:
            assert issue.path == str(path)
            assert issue.message.strip()
            assert "Traceback" not in issue.message
    else:
        assert isinstance(scenario, Scenario)


def _dump(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True)


_FAST = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@_FAST
@given(content=st.text(max_size=300) | st.binary(max_size=100))
def test_arbitrary_text_never_crashes(scratch: Path, content: str | bytes) -> None:
    check_never_crashes(scratch, content)


@_FAST
@given(tree=_TREES)
def test_arbitrary_yaml_never_crashes(scratch: Path, tree: Any) -> None:
    check_never_crashes(scratch, _dump(tree))


@_FAST
@given(top=st.dictionaries(st.sampled_from(_FIELD_NAMES), _TREES, max_size=8))
def test_arbitrary_top_level_mappings_never_crash(scratch: Path, top: dict[str, Any]) -> None:
    check_never_crashes(scratch, _dump({"apiVersion": "llmdrill/v1", "kind": "Scenario", **top}))


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into a nested dict/list, parents before children."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield (*prefix, key)
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield (*prefix, i)
            yield from _paths(child, (*prefix, i))


def _has(tree: Any, part: Any) -> bool:
    if isinstance(tree, dict):
        return part in tree
    return isinstance(tree, list) and isinstance(part, int) and part < len(tree)


def _container_at(tree: Any, path: tuple[Any, ...]) -> dict[Any, Any] | list[Any] | None:
    for part in path:
        if not _has(tree, part):
            return None
        tree = tree[part]
    return tree if isinstance(tree, (dict, list)) else None


def _other_type(value: Any) -> st.SearchStrategy[Any]:
    options: list[st.SearchStrategy[Any]] = [
        st.none(),
        st.booleans(),
        st.integers(-5, 10**6),
        st.floats(-10, 10),
        st.text(max_size=8),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    ]
    types = (type(None), bool, int, float, str, list, dict)
    return st.one_of([s for s, t in zip(options, types, strict=True) if type(value) is not t])


@_FAST
@given(data=st.data())
def test_mutated_timeout_spike_never_crashes(
    scratch: Path, spike_data: dict[str, Any], data: st.DataObject
) -> None:
    mutated = json.loads(json.dumps(spike_data))  # a deep copy
    paths = list(_paths(mutated))
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        path = data.draw(st.sampled_from(paths), label="path")
        parent = _container_at(mutated, path[:-1])
        if parent is None or not _has(parent, path[-1]):
            continue  # an earlier mutation removed or replaced this path
        current = parent[path[-1]]
        if data.draw(st.booleans(), label="delete"):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(_other_type(current), label="value")
    check_never_crashes(scratch, _dump(mutated))

