"""Formatting helpers shared by every reporter, so all outputs agree on how numbers look."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any

from llmdrill.model.result import RequestStats, RunResult, Window

DASH = "—"

STATUS_LABELS: dict[str, str] = {
    "passed": "PASSED",
    "failed": "FAILED",
    "aborted": "ABORTED",
    "error": "ERROR",
    "skipped": "SKIPPED",
    "inconclusive": "INCONCLUSIVE",
}

# XML 1.0 forbids these code points even when escaped; server error bodies and user files
# can carry them, and one stray byte would make junit.xml unparseable for CI.
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

# Any epoch in this century is far above this; a smaller value next to an epoch t0 can
# only be an offset that a producer already made relative (see `offset`).
_EPOCH_FLOOR = 1e9


def xml_safe(text: str) -> str:
    """Drop characters that no XML 1.0 document may contain."""
    return _XML_ILLEGAL.sub("", text)


def status_label(status: str) -> str:
    return STATUS_LABELS.get(status, status.upper())


def is_number(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def fmt_ms(seconds: float | None) -> str:
    """Seconds as milliseconds with one decimal."""
    if seconds is None or not math.isfinite(seconds):
        return DASH
    return f"{seconds * 1000:.1f}"


def fmt_pct(fraction: float | None) -> str:
    """A 0..1 fraction as a percentage; small non-zero rates keep two decimals."""
    if fraction is None or not math.isfinite(fraction):
        return DASH
    pct = fraction * 100
    if pct == 0:
        return "0 %"
    return f"{pct:.2f} %" if abs(pct) < 10 else f"{pct:.1f} %"


def fmt_num(value: float | None, decimals: int = 1) -> str:
    if value is None or not math.isfinite(value):
        return DASH
    return f"{value:,.{decimals}f}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return DASH
    if abs(seconds) < 120:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)} min {secs:04.1f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes):02d} min"


def fmt_ts(epoch: float | None) -> str:
    """Epoch seconds as UTC ISO 8601 (`...Z`); garbage stays visible instead of raising."""
    if epoch is None:
        return DASH
    try:
        dt = datetime.fromtimestamp(epoch, UTC)
    except (OverflowError, OSError, ValueError):
        return str(epoch)
    return dt.isoformat(timespec="seconds").replace("+00:00", "Z")


def fmt_offset(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return DASH
    return f"{seconds:+.1f} s"


def fmt_scalar(value: Any) -> str:
    """One JSON-ish scalar for display: floats get 6 significant digits, None a dash."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    return str(value)


def compact_json(value: Any, limit: int = 2000) -> str:
    text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return truncate(text, limit)


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def time_origin(result: RunResult) -> float:
    """Offsets in every report count from series.t0 (what the charts use), else the start."""
    return result.series.t0 if result.series is not None else result.started_at


def offset(t: float, t0: float) -> float:
    """`t` relative to `t0`.

    The schema says phase and window times are epoch seconds; if a producer already wrote
    an offset (a tiny number next to an epoch t0) we keep it rather than plot -1.7e9 s.
    """
    if t0 >= _EPOCH_FLOOR and 0 <= t < _EPOCH_FLOOR:
        return t
    return t - t0


def window_text(window: Window | None, t0: float) -> str:
    if window is None:
        return DASH
    start, end = offset(window.start, t0), offset(window.end, t0)
    return (
        f"phase {window.phase}: {fmt_offset(start)} → {fmt_offset(end)} "
        f"({fmt_duration(end - start)})"
    )


def errors_text(errors: dict[str, int], sep: str = ", ") -> str:
    if not errors:
        return DASH
    ranked = sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))
    return sep.join(f"{name}: {count}" for name, count in ranked)


def ordered_stats(result: RunResult) -> list[tuple[str, RequestStats]]:
    """Stats in phase order, then any other keys, with 'overall' last."""
    order = [p.name for p in result.phases if p.name in result.stats]
    rest = sorted(k for k in result.stats if k not in order and k != "overall")
    keys = order + rest + (["overall"] if "overall" in result.stats else [])
    return [(k, result.stats[k]) for k in keys]


def check_counts(result: RunResult) -> dict[str, int]:
    counts = {"passed": 0, "failed": 0, "error": 0, "inconclusive": 0, "skipped": 0}
    for check in result.checks:
        counts[check.status] = counts.get(check.status, 0) + 1
    return counts


def checks_text(result: RunResult) -> str:
    """'2 of 3 checks passed, 1 failed': only the non-zero outcomes after the first."""
    counts = check_counts(result)
    text = f"{counts['passed']} of {len(result.checks)} checks passed"
    rest = [f"{counts[k]} {k}" for k in ("failed", "error", "inconclusive", "skipped")
            if counts[k]]
    return ", ".join([text, *rest])
