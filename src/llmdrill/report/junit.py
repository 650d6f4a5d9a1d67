"""JUnit XML: one <testsuite> per scenario run, one <testcase> per check.

Kept to the common subset that GitLab, Jenkins and GitHub test reporters all read:
<testsuites>/<testsuite>/<testcase> with <failure>, <error>, <skipped> and <properties>.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from llmdrill.model.result import CheckResult, RunResult
from llmdrill.report.fmt import (
    compact_json,
    offset,
    time_origin,
    truncate,
    window_text,
    xml_safe,
)

# Evidence can hold thousands of samples; CI UIs show the text inline, so keep it short.
_EVIDENCE_LIMIT = 4000


def _clean(text: str) -> str:
    return xml_safe(text)


def _seconds(value: float) -> str:
    return f"{max(value, 0.0):.3f}"


def _timestamp(epoch: float) -> str:
    # The JUnit XSD wants a timezone-less ISO timestamp; ours is UTC.
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return "1970-01-01T00:00:00"


def _check_details(check: CheckResult, t0: float) -> str:
    lines = [
        f"summary: {check.summary}",
        f"kind: {check.kind}",
        f"observed: {compact_json(check.observed)}",
        f"expected: {compact_json(check.expected)}",
        f"window: {window_text(check.window, t0)}",
    ]
    if check.evidence:
        lines.append(f"evidence: {compact_json(check.evidence, _EVIDENCE_LIMIT)}")
    return _clean("\n".join(lines))


def _testcase(result: RunResult, check: CheckResult, t0: float) -> ET.Element:
    duration = 0.0
    if check.window is not None:
        duration = offset(check.window.end, t0) - offset(check.window.start, t0)
    case = ET.Element(
        "testcase",
        {
            "classname": _clean(f"llmdrill.{result.scenario.name}"),
            "name": _clean(check.name),
            "time": _seconds(duration),
        },
    )
    message = _clean(truncate(check.summary, 1000))
    if check.status == "failed":
        child = ET.SubElement(case, "failure", {"message": message, "type": _clean(check.kind)})
        child.text = _check_details(check, t0)
    elif check.status == "error":
        child = ET.SubElement(case, "error", {"message": message, "type": _clean(check.kind)})
        child.text = _check_details(check, t0)
    elif check.status == "inconclusive":  # not a pass: CI must not go green on it
        child = ET.SubElement(case, "failure", {"message": f"inconclusive: {message}",
                                                "type": "inconclusive"})
        child.text = _check_details(check, t0)
    elif check.status == "skipped":
        ET.SubElement(case, "skipped", {"message": message})
    return case


def _run_testcase(result: RunResult) -> ET.Element:
    """A run that did not finish gets its own error, so CI fails even with no failed check."""
    case = ET.Element(
        "testcase",
        {
            "classname": _clean(f"llmdrill.{result.scenario.name}"),
            "name": "run",
            "time": _seconds(result.duration_s),
        },
    )
    reason = result.abort_reason or f"run {result.status}"
    error = ET.SubElement(
        case, "error", {"message": _clean(truncate(reason, 1000)), "type": result.status}
    )
    error.text = _clean(f"status: {result.status}\nrun_id: {result.run_id}\nreason: {reason}")
    return case


def _properties(result: RunResult) -> ET.Element:
    props = ET.Element("properties")
    values = {
        "run_id": result.run_id,
        "status": result.status,
        "scenario_file": result.scenario.file,
        "target.base_url": result.target.base_url,
        "target.model": result.target.model,
        "target.engine_version": result.target.engine_version or "",
    }
    values.update({f"version.{k}": v for k, v in sorted(result.versions.items())})
    for name, value in values.items():
        ET.SubElement(props, "property", {"name": _clean(name), "value": _clean(value)})
    return props


def build_testsuite(result: RunResult) -> ET.Element:
    t0 = time_origin(result)
    cases = [_testcase(result, check, t0) for check in result.checks]
    if result.status in ("aborted", "error", "inconclusive"):
        cases.append(_run_testcase(result))
    counts = {
        "failures": sum(1 for c in cases if c.find("failure") is not None),
        "errors": sum(1 for c in cases if c.find("error") is not None),
        "skipped": sum(1 for c in cases if c.find("skipped") is not None),
    }
    suite = ET.Element(
        "testsuite",
        {
            "name": _clean(result.scenario.name),
            "tests": str(len(cases)),
            **{k: str(v) for k, v in counts.items()},
            "time": _seconds(result.duration_s),
            "timestamp": _timestamp(result.started_at),
            "id": _clean(result.run_id),
        },
    )
    suite.append(_properties(result))
    suite.extend(cases)
    return suite


def build_testsuites(results: Sequence[RunResult]) -> ET.Element:
    root = ET.Element("testsuites", {"name": "llmdrill"})
    suites = [build_testsuite(r) for r in results]
    for attr in ("tests", "failures", "errors", "skipped"):
        root.set(attr, str(sum(int(s.get(attr, "0")) for s in suites)))
    root.set("time", _seconds(sum(r.duration_s for r in results)))
    root.extend(suites)
    return root


def junit_xml(results: Sequence[RunResult]) -> str:
    root = build_testsuites(results)
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{body}\n'


def write_junit(results: Sequence[RunResult], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(junit_xml(results), encoding="utf-8")
    return path
