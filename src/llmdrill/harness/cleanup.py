"""`llmdrill cleanup`: revert what crashed or killed runs left behind."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from llmdrill.harness.journal import (
    Journal,
    active_runs,
    outstanding_in,
    pid_alive,
    revert_outstanding,
)


def _journal_for(ref: str) -> tuple[Path, str] | None:
    path = Path(ref)
    if path.is_file():
        return path, path.parent.name
    if path.is_dir() and (path / "journal.jsonl").exists():
        return path / "journal.jsonl", path.name
    for info in active_runs():
        if info.get("run_id") == ref:
            return Path(info["journal"]), ref
    return None


def cleanup_runs(ref: str | None, force: bool, console: Console) -> int:
    """Revert outstanding changes; 0 if nothing is left behind, 1 if a revert failed."""
    targets: list[tuple[Path, str]] = []
    if ref is not None:
        found = _journal_for(ref)
        if found is None:
            console.print(f"no run, run folder or journal named '{ref}'", markup=False)
            return 2
        targets.append(found)
    else:
        for info in active_runs():
            pid = int(info.get("pid", 0))
            if pid and pid_alive(pid) and not force:
                console.print(
                    f"skipping {info['run_id']}: its harness (pid {pid}) is still running; "
                    "use --force to revert anyway", markup=False)
                continue
            targets.append((Path(info["journal"]), str(info["run_id"])))
    failures = 0
    reverted = 0
    for journal_path, run_id in targets:
        if not outstanding_in(journal_path):
            Journal(journal_path, run_id).finish()
            continue
        journal = Journal(journal_path, run_id)
        for entry, error in revert_outstanding(journal):
            if error:
                failures += 1
                console.print(f"{run_id}: FAILED to revert {entry.description}: {error}",
                              markup=False)
            else:
                reverted += 1
                console.print(f"{run_id}: reverted {entry.description}", markup=False)
        journal.finish()
    console.print(f"cleanup: {reverted} change(s) reverted, {failures} failed", markup=False)
    return 1 if failures else 0
