"""The Prometheus alert rules for LLM serving that ship in deploy/prometheus/rules/, with
their thresholds, windows and `for:` durations as named parameters.

Prometheus has no parameters in rule files, so the file is rendered from the template
below. deploy/prometheus/rules/llm-serving.rules.yml is the rendering with the defaults
(a unit test keeps it fresh); render your own with

    llmdrill alert-rules --set ttft_p95_seconds=1.5 --set for=10m > my.rules.yml

The drills' tests render it with short windows and `for:` so alerts fire in seconds.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Parameter:
    name: str
    default: str
    description: str


PARAMETERS: tuple[Parameter, ...] = (
    Parameter("engine_job", "vllm", "Job that scrapes the engines' /metrics."),
    Parameter("gateway_job", "gateway",
              "Job that scrapes through the gateway (or a blackbox probe of it); "
              "`up` of this job is what clients can reach."),
    Parameter("window", "5m", "Range of every rate() and quantile window."),
    Parameter("for", "5m", "How long a condition must hold before its alert fires."),
    Parameter("for_down", "1m", "`for:` of the target-down alert (unreachable is urgent)."),
    Parameter("ttft_p95_seconds", "2", "LlmTtftP95High: engine TTFT p95 above this (s)."),
    Parameter("tokens_per_s_drop", "0.5",
              "LlmTokensPerSecondDrop: generated tokens/s over `window` below this share of "
              "its rate over the `tokens_baseline_window` before, while requests run."),
    Parameter("tokens_baseline_window", "1h",
              "LlmTokensPerSecondDrop: the range the normal tokens/s is taken over."),
    Parameter("kv_cache_usage", "0.9",
              "LlmKvCacheHeadroomLow: KV-cache usage (0-1) peaking above this within every "
              "`window` (peaks, because preemptions free blocks: under pressure the usage "
              "swings between full and much less)."),
    Parameter("waiting_requests", "10", "LlmWaitingQueueLong: waiting requests above this."),
    Parameter("requests_metric", "http_requests_total",
              "Counter of HTTP requests by status (vLLM's API server exposes it, grouped as "
              "2xx/4xx/5xx); status is matched with a regex so both 404 and 4xx match."),
    Parameter("status_label", "status", "Label of requests_metric that holds the status."),
    Parameter("requests_filter", 'handler=~"/v1/.+"',
              "Extra matchers that pick API requests out of requests_metric."),
    Parameter("error_4xx_ratio", "0.05", "LlmClientErrorSpike: share of 4xx above this."),
    Parameter("error_5xx_ratio", "0.01", "LlmServerErrorSpike: share of 5xx above this."),
    Parameter("timeout_ratio", "0.01",
              "LlmTimeoutSpike: share of 408/504 answers above this (needs a gateway that "
              "reports exact statuses; vLLM's own 5xx grouping cannot tell timeouts)."),
    Parameter("oom_metric", 'container_oom_events_total{container=~".*vllm.*"}',
              "LlmEngineOomKilled: a counter of OOM kills of the engine's containers "
              "(cAdvisor's, as kubelet exposes it)."),
    Parameter("restart_window", "10m",
              "LlmEngineRestarted: fires while the engine's process start time changed "
              "within this window."),
    Parameter("gateway_probe_seconds", "1",
              "LlmGatewaySlow: a scrape through the gateway (a synthetic probe) slower "
              "than this (s)."),
)

DEFAULTS = {p.name: p.default for p in PARAMETERS}

TEMPLATE = r"""# Alert rules for LLM serving (vLLM first). Rendered by `llmdrill alert-rules`
# from its template; parameters: <<params>>
# Edit the parameters, not this file: docs/alerts.md lists them.
groups:
  - name: llm-serving
    rules:
      - alert: LlmTargetDown
        expr: up{job=~"<<engine_job>>|<<gateway_job>>"} == 0
        for: <<for_down>>
        labels: {severity: critical}
        annotations:
          summary: "{{ $labels.job }} target {{ $labels.instance }} is down"
          description: "Prometheus cannot scrape {{ $labels.instance }} (job {{ $labels.job }})."

      - alert: LlmTtftP95High
        expr: >
          histogram_quantile(0.95, sum by (le, instance)
            (rate(vllm:time_to_first_token_seconds_bucket{job="<<engine_job>>"}[<<window>>])))
          > <<ttft_p95_seconds>>
        for: <<for>>
        labels: {severity: warning}
        annotations:
          summary: "TTFT p95 on {{ $labels.instance }} is {{ $value | humanizeDuration }}"
          description: "Time to first token p95 over <<window>> above <<ttft_p95_seconds>>s."

      - alert: LlmTokensPerSecondDrop
        expr: >
          sum by (instance) (rate(vllm:generation_tokens_total{job="<<engine_job>>"}[<<window>>]))
          < <<tokens_per_s_drop>> * sum by (instance)
            (rate(vllm:generation_tokens_total{job="<<engine_job>>"}[<<tokens_baseline_window>>] offset <<window>>))
          and on (instance) sum by (instance) (vllm:num_requests_running{job="<<engine_job>>"}) > 0
        for: <<for>>
        labels: {severity: warning}
        annotations:
          summary: "Generated tokens/s on {{ $labels.instance }} dropped"
          description: "Tokens/s over <<window>> below <<tokens_per_s_drop>> of the <<tokens_baseline_window>> before, with requests running."

      - alert: LlmKvCacheHeadroomLow
        expr: >
          max by (instance) (max_over_time(vllm:kv_cache_usage_perc{job="<<engine_job>>"}[<<window>>])
            or max_over_time(vllm:gpu_cache_usage_perc{job="<<engine_job>>"}[<<window>>])) > <<kv_cache_usage>>
        for: <<for>>
        labels: {severity: warning}
        annotations:
          summary: "KV cache {{ $value | humanizePercentage }} full on {{ $labels.instance }}"
          description: "KV-cache usage peaked above <<kv_cache_usage>> in every <<window>> for <<for>>: requests get preempted or queued."

      - alert: LlmWaitingQueueLong
        expr: sum by (instance) (vllm:num_requests_waiting{job="<<engine_job>>"}) > <<waiting_requests>>
        for: <<for>>
        labels: {severity: warning}
        annotations:
          summary: "{{ $value }} requests waiting on {{ $labels.instance }}"
          description: "More than <<waiting_requests>> requests wait for the engine."

      - alert: LlmClientErrorSpike
        expr: >
          sum by (job) (rate(<<requests_metric>>{job=~"<<engine_job>>|<<gateway_job>>",<<requests_filter>>,<<status_label>>=~"4.."}[<<window>>]))
          / sum by (job) (rate(<<requests_metric>>{job=~"<<engine_job>>|<<gateway_job>>",<<requests_filter>>}[<<window>>]))
          > <<error_4xx_ratio>>
        for: <<for>>
        labels: {severity: warning, error_type: 4xx}
        annotations:
          summary: "{{ $value | humanizePercentage }} of requests to {{ $labels.job }} get a 4xx"
          description: "Share of 4xx answers over <<window>> above <<error_4xx_ratio>>."

      - alert: LlmServerErrorSpike
        expr: >
          sum by (job) (rate(<<requests_metric>>{job=~"<<engine_job>>|<<gateway_job>>",<<requests_filter>>,<<status_label>>=~"5.."}[<<window>>]))
          / sum by (job) (rate(<<requests_metric>>{job=~"<<engine_job>>|<<gateway_job>>",<<requests_filter>>}[<<window>>]))
          > <<error_5xx_ratio>>
        for: <<for>>
        labels: {severity: critical, error_type: 5xx}
        annotations:
          summary: "{{ $value | humanizePercentage }} of requests to {{ $labels.job }} get a 5xx"
          description: "Share of 5xx answers over <<window>> above <<error_5xx_ratio>>."

      - alert: LlmTimeoutSpike
        expr: >
          sum by (job) (rate(<<requests_metric>>{job=~"<<engine_job>>|<<gateway_job>>",<<requests_filter>>,<<status_label>>=~"408|504"}[<<window>>]))
          / sum by (job) (rate(<<requests_metric>>{job=~"<<engine_job>>|<<gateway_job>>",<<requests_filter>>}[<<window>>]))
          > <<timeout_ratio>>
        for: <<for>>
        labels: {severity: critical, error_type: timeout}
        annotations:
          summary: "{{ $value | humanizePercentage }} of requests to {{ $labels.job }} time out"
          description: "Share of 408/504 answers over <<window>> above <<timeout_ratio>>."

      - alert: LlmEngineOomKilled
        expr: increase(<<oom_metric>>[<<window>>]) > 0
        labels: {severity: critical, error_type: oom}
        annotations:
          summary: "An engine container was OOM-killed"
          description: "{{ $labels.container }} was killed for running out of memory in the last <<window>>."

      - alert: LlmEngineRestarted
        expr: changes(process_start_time_seconds{job="<<engine_job>>"}[<<restart_window>>]) > 0
        labels: {severity: warning}
        annotations:
          summary: "The engine on {{ $labels.instance }} restarted"
          description: "Its process start time changed in the last <<restart_window>>."

      - alert: LlmGatewaySlow
        expr: max by (instance) (scrape_duration_seconds{job="<<gateway_job>>"}) > <<gateway_probe_seconds>>
        for: <<for>>
        labels: {severity: warning}
        annotations:
          summary: "A request through the gateway {{ $labels.instance }} took {{ $value | humanizeDuration }}"
          description: "Prometheus' scrape through the gateway, a synthetic probe, is slower than <<gateway_probe_seconds>>s."
"""  # noqa: E501  (PromQL and annotations read better unbroken)

ALERT_NAMES: tuple[str, ...] = tuple(re.findall(r"- alert: (\w+)", TEMPLATE))
_MARKER = re.compile(r"<<(\w+)>>")


def render(overrides: Mapping[str, str] | None = None) -> str:
    """The rule file with the defaults, changed by `overrides` (unknown names refused)."""
    values = dict(DEFAULTS)
    for name, value in (overrides or {}).items():
        if name not in DEFAULTS:
            raise ValueError(f"unknown parameter '{name}' (parameters: {', '.join(DEFAULTS)})")
        values[name] = str(value)
    changed = ", ".join(f"{k}={values[k]}" for k in DEFAULTS if values[k] != DEFAULTS[k])
    values["params"] = f"defaults{'; changed: ' + changed if changed else ''}"
    return _MARKER.sub(lambda m: values[m.group(1)], TEMPLATE)


def render_prometheus_rule(overrides: Mapping[str, str] | None = None,
                           name: str = "llm-serving", namespace: str = "monitoring",
                           labels: Mapping[str, str] | None = None) -> str:
    """The same rules as a PrometheusRule object (prometheus-operator's CRD): what a
    cluster whose Prometheus is run by the operator loads with `kubectl apply`. `labels`
    are what its Prometheus' ruleSelector matches (default: `release: prometheus`, the
    kube-prometheus-stack chart's default)."""
    import yaml

    groups = yaml.safe_load(render(overrides))["groups"]
    params = render(overrides).splitlines()[1].removeprefix("# from its template; ")
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": dict(labels or {"release": "prometheus"})},
        "spec": {"groups": groups},
    }
    header = ("# LLM-serving alert rules as a PrometheusRule, rendered by `llmdrill alert-rules\n"
              f"# --format prometheus-rule`; {params}.\n"
              "# Edit the parameters, not this file: docs/alerts.md lists them.\n")
    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        # PromQL over several lines stays readable as a block, as in the rule file.
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return header + yaml.dump(manifest, Dumper=Dumper, sort_keys=False, width=100)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmdrill.monitoring.rules",
                                     description="Render the LLM-serving alert rules.")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="Change a parameter (repeatable); see docs/alerts.md.")
    parser.add_argument("--out", type=Path, help="Write here instead of stdout.")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set wants NAME=VALUE, got '{item}'")
        overrides[name] = value
    try:
        text = render(overrides)
    except ValueError as exc:
        parser.error(str(exc))
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
