"""Errors that point at the user's file, line, column and field."""

from __future__ import annotations

from dataclasses import dataclass

from llmdrill.errors import LlmdrillError


@dataclass(frozen=True)
class ScenarioIssue:
    path: str
    line: int | None
    column: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.path
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        field = f" {self.field}:" if self.field else ""
        return f"{where}:{field} {self.message}"


class ScenarioError(LlmdrillError):
    """One or more problems in scenario files; exit code 2."""

    def __init__(self, issues: list[ScenarioIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))
