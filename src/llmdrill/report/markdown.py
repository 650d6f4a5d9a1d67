"""summary.md: a short Markdown verdict for CI job summaries (e.g. $GITHUB_STEP_SUMMARY)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from llmdrill.checks.base import runbook_for
from llmdrill.model.result import RunResult
from llmdrill.report.fmt import (
    DASH,
    checks_text,
    fmt_duration,
    fmt_ms,
    fmt_num,
    fmt_pct,
    fmt_ts,
    ordered_stats,
    status_label,
    truncate,
)
from llmdrill.report.narrative import drill_story

# Job summaries render GitHub-flavoured Markdown; long cells make tables unreadable.
_CELL_LIMIT = 300
# Backslash-escaped so a check name like `a_b*c` or `x|y` shows literally.
_MD_SPECIAL = re.compile(r"[\\`*_\[\]|~]")
# A runbook hint in a job summary is one line: enough to know where to start.
_HINT_LIMIT = 600


def escape(text: str) -> str:
    """Make user text inert in Markdown: no HTML, no table breaks, one line."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MD_SPECIAL.sub(r"\\\g<0>", text)
    return " ".join(text.split())


def _cell(text: str) -> str:
    return escape(truncate(text, _CELL_LIMIT)) or DASH


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(result: RunResult) -> str:
    lines = [
        f"## llmdrill {status_label(result.status)}: {escape(result.scenario.name)}",
        "",
    ]
    if result.abort_reason:
        lines += [f"> **{status_label(result.status)}:** {escape(result.abort_reason)}", ""]
    lines += [
        f"- **Scenario:** {escape(result.scenario.name)} ({escape(result.scenario.file)})",
        f"- **Run:** {escape(result.run_id)} started {fmt_ts(result.started_at)}, "
        f"duration {fmt_duration(result.duration_s)}",
        f"- **Target:** {escape(result.target.model)} at {escape(result.target.base_url)}"
        + (
            f" (engine {escape(result.target.engine_version)})"
            if result.target.engine_version
            else ""
        ),
        f"- **Checks:** {checks_text(result)}",
        "",
        escape(drill_story(result)),
        "",
        "### Checks",
        "",
    ]
    if result.checks:
        lines += _table(
            ["Status", "Check", "Phase", "Summary"],
            [[status_label(c.status), c.name, c.phase, c.summary] for c in result.checks],
        )
    else:
        lines.append("No checks were evaluated.")
    hints = [(c, runbook_for(c.kind)) for c in result.checks
             if c.status in ("failed", "error", "inconclusive")]
    if any(hint for _, hint in hints):
        lines += ["", "### Where to look", ""]
        lines += [f"- **{escape(c.name)}** ({escape(c.kind)}): "
                  f"{escape(truncate(hint, _HINT_LIMIT))}" for c, hint in hints if hint]
    lines += ["", "### Phases", ""]
    stats = ordered_stats(result)
    if stats:
        lines += _table(
            ["Phase", "Requests", "Error rate", "TTFT p50 (ms)", "TTFT p95 (ms)", "Tokens/s"],
            [
                [
                    name,
                    str(s.requests),
                    fmt_pct(s.error_rate),
                    fmt_ms(s.ttft_p50_s),
                    fmt_ms(s.ttft_p95_s),
                    fmt_num(s.tokens_per_s),
                ]
                for name, s in stats
            ],
        )
    else:
        lines.append("No request statistics were recorded.")
    return "\n".join(lines) + "\n"
