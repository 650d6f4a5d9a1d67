"""Load scenario YAML into typed models, keeping the line of every field for errors."""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from yaml.reader import ReaderError

from llmdrill.faults.toxiproxy import ToxiproxySpec
from llmdrill.scenario.errors import ScenarioError, ScenarioIssue
from llmdrill.scenario.fields import NAME_PATTERN
from llmdrill.scenario.models import Scenario

Loc = tuple[str | int, ...]
Marks = dict[Loc, tuple[int, int]]
M = typing.TypeVar("M", bound=BaseModel)

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


# A file that expands to more values than this (aliases of aliases) is refused.
_MAX_VALUES = 100_000


class _Problem(Exception):
    def __init__(self, loc: Loc, message: str, mark: yaml.Mark | None = None) -> None:
        self.loc = loc
        self.message = message
        self.mark = mark


def _interpolate(text: str, loc: Loc, env: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise _Problem(
                    loc,
                    f"environment variable {name} is not set "
                    f"(set it, or write ${{{name}:-default}})",
                )
            return default
        return value

    return _VAR.sub(replace, text)


def _build(node: yaml.Node, loc: Loc, marks: Marks, env: Mapping[str, str]) -> Any:
    marks[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if len(marks) > _MAX_VALUES:
        raise _Problem(loc, f"the file expands to more than {_MAX_VALUES} values (aliases?)")
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _Problem(
                    loc, "merge keys (<<) are not supported; write the keys out",
                    key_node.start_mark,
                )
            if not isinstance(key_node, yaml.ScalarNode):
                raise _Problem(
                    loc, "keys must be plain names, not lists or mappings", key_node.start_mark
                )
            key = key_node.value
            if key in result:
                marks[(*loc, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                raise _Problem((*loc, key), f"duplicate key '{key}'")
            result[key] = _build(value_node, (*loc, key), marks, env)
            # Point errors about a key at the key itself, not at its value.
            marks[(*loc, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*loc, i), marks, env) for i, item in enumerate(node.value)]
    assert isinstance(node, yaml.ScalarNode)
    if node.tag == "tag:yaml.org,2002:str" or node.style is not None:
        return _interpolate(str(node.value), loc, env)
    try:
        # The composer already resolved the plain scalar's type (int, float, bool, null, date).
        resolved = yaml.SafeLoader("").construct_object(node, deep=True)
    except Exception:  # any explicit tag the safe loader cannot build (!foo, bad !!int)
        resolved = node.value
    if isinstance(resolved, str):
        return _interpolate(resolved, loc, env)
    return resolved


def _yaml_message(exc: yaml.MarkedYAMLError, text: str) -> str:
    message = f"invalid YAML: {exc.problem or exc.context}"
    context, start = exc.context_mark, exc.problem_mark
    if exc.problem and exc.context and context is not None and (
        start is None or (context.line, context.column) != (start.line, start.column)
    ):
        message += f" ({exc.context} started at line {context.line + 1}, column "
        message += f"{context.column + 1})"
    lines = text.splitlines()
    mark = exc.problem_mark or exc.context_mark
    near = lines[mark.line] if mark is not None and mark.line < len(lines) else ""
    if exc.problem == "mapping values are not allowed here":
        message += "; check the indentation, or quote a value that contains ': '"
    elif "${" in near and exc.context is not None and "flow" in exc.context:
        message += "; inside [ ] or { }, quote values that use ${...}, e.g. \"${VAR:-1s}\""
    return message


def _parse(text: str, path: str, env: Mapping[str, str]) -> tuple[Any, Marks]:
    marks: Marks = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        message = _yaml_message(exc, text)
        raise ScenarioError([ScenarioIssue(path, line, col, "", message)]) from None
    except ReaderError as exc:
        before = text[: exc.position]
        line, col = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
        message = f"invalid YAML: unacceptable character #x{exc.character:04x}: {exc.reason}"
        raise ScenarioError([ScenarioIssue(path, line, col, "", message)]) from None
    except yaml.YAMLError as exc:
        raise ScenarioError([ScenarioIssue(path, None, None, "", f"invalid YAML: {exc}")]) from None
    except RecursionError:
        message = "invalid YAML: the values are nested too deeply"
        raise ScenarioError([ScenarioIssue(path, None, None, "", message)]) from None
    if root is None:
        raise ScenarioError([ScenarioIssue(path, 1, 1, "", "the file is empty")])
    try:
        data = _build(root, (), marks, env)
    except _Problem as problem:
        if problem.mark is not None:
            line, col = problem.mark.line + 1, problem.mark.column + 1
        else:
            line, col = _mark_for(problem.loc, marks)
        raise ScenarioError(
            [ScenarioIssue(path, line, col, _dotted(problem.loc), problem.message)]
        ) from None
    except RecursionError:
        message = "the values are nested too deeply"
        raise ScenarioError([ScenarioIssue(path, None, None, "", message)]) from None
    return data, marks


def _dotted(loc: Iterable[str | int]) -> str:
    return ".".join(str(p) for p in loc)


def _mark_for(loc: Loc, marks: Marks) -> tuple[int | None, int | None]:
    for end in range(len(loc), -1, -1):
        if loc[:end] in marks:
            return marks[loc[:end]]
    return None, None


def _data_loc(loc: Loc, data: Any) -> Loc:
    """Drop the parts of a pydantic error location that are not in the file (union tags)."""
    out: list[str | int] = []
    current = data
    for i, part in enumerate(loc):
        if isinstance(current, dict) and i < len(loc) - 1 and current.get("toxic") == part:
            continue  # pydantic puts a discriminated union's tag in the location
        if isinstance(current, dict):
            if part in current:
                out.append(part)
                current = current[part]
            elif i == len(loc) - 1:
                out.append(part)
            continue
        if isinstance(current, list) and isinstance(part, int) and part < len(current):
            out.append(part)
            current = current[part]
            continue
        if i == len(loc) - 1 or not isinstance(part, str):
            out.append(part)
    return tuple(out)


def _fields_at(loc: Loc, data: Any) -> list[str]:
    """Names a model accepts at `loc`, for 'did you mean' hints on unknown keys."""
    annotation: Any = Scenario
    current = data
    for part in loc:
        annotation = _unwrap(annotation, current)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                field = next(
                    (f for f in annotation.model_fields.values() if f.alias == part), None
                )
            if field is None:
                return []
            annotation = field.annotation
        else:
            origin = typing.get_origin(annotation)
            args = typing.get_args(annotation)
            if origin in (list, dict) and args:
                annotation = args[-1]
            else:
                return []
        current = current.get(part) if isinstance(current, dict) else (
            current[part] if isinstance(current, list) and isinstance(part, int)
            and part < len(current) else None
        )
    annotation = _unwrap(annotation, current)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [f.alias or n for n, f in annotation.model_fields.items()]
    return []


def _unwrap(annotation: Any, value: Any) -> Any:
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            tag = value.get("toxic") if isinstance(value, dict) else None
            chosen = members[0] if members else annotation
            for member in members:
                literal = getattr(member, "model_fields", {}).get("toxic")
                if literal is not None and tag in typing.get_args(literal.annotation):
                    chosen = member
            annotation = chosen
            if len(members) > 1 and tag is None:
                return annotation
            continue
        return annotation


def _toxic_kinds() -> list[str]:
    members = typing.get_args(typing.get_args(ToxiproxySpec)[0])
    return [typing.get_args(m.model_fields["toxic"].annotation)[0] for m in members]


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML, for 'got ...' in messages."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, (int, float)):
        return f"{value:g}" if isinstance(value, float) else str(value)
    return f"a {type(value).__name__} ({value})"


def _choices(expected: str) -> list[str]:
    return re.findall(r"'([^']*)'", expected)


def _one_of(value: Any, choices: list[str]) -> str:
    if len(choices) == 1:
        return f"must be '{choices[0]}', got {_show(value)}"
    message = f"{_show(value)} is not one of: {', '.join(choices)}"
    if not isinstance(value, (str, bool)) and value is not None and str(value) in choices:
        return f"{message}; write it in quotes: '{value}'"
    close = difflib.get_close_matches(str(value), choices, n=1) if isinstance(value, str) else []
    if close:
        message += f"; did you mean '{close[0]}'?"
    return message


def _message(error: Any, loc: Loc, data: Any) -> str:
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        key = str(loc[-1])
        valid = _fields_at(loc[:-1], data)
        hint = ""
        close = difflib.get_close_matches(key, valid, n=1)
        if close:
            hint = f"; did you mean '{close[0]}'?"
        listing = f" (valid keys: {', '.join(valid)})" if valid else ""
        return f"unknown key '{key}'{hint}{listing}"
    if kind == "missing":
        return "required field is missing"
    if kind == "union_tag_not_found":
        return f"required field is missing (one of: {', '.join(_toxic_kinds())})"
    if kind == "union_tag_invalid":
        tag = value.get(str(loc[-1])) if isinstance(value, dict) else None
        return _one_of(tag, _choices(str(ctx.get("expected_tags", ""))))
    if kind == "literal_error":
        return _one_of(value, _choices(str(ctx.get("expected", ""))))
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping (key: value), got {_show(value)}"
    if kind == "list_type":
        return f"expected a list, got {_show(value)}"
    if kind == "string_type":
        quote = "" if value is None or isinstance(value, (dict, list)) else "; put it in quotes"
        return f"expected text, got {_show(value)}{quote}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected a whole number, got {_show(value)}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {_show(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {_show(value)}"
    if kind == "greater_than":
        return f"must be more than {ctx.get('gt')}, got {_show(value)}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}, got {_show(value)}"
    if kind == "too_short" and isinstance(value, list):
        least = ctx.get("min_length")
        return f"needs at least {least} item{'' if least == 1 else 's'}"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == NAME_PATTERN:
        return (
            f"{_show(value)} is not a valid name: use lowercase letters, digits, '.', '_' "
            "and '-', starting with a letter or digit"
        )
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    return message


def validate_document(model: type[M], data: Any, marks: Marks, shown: str) -> M:
    """The model of a parsed document, or ScenarioError with every problem at its
    file:line:col (shared by scenarios and suites)."""
    try:
        return model.model_validate(data, context={"defer_references": True})
    except ValidationError as exc:
        issues = []
        for error in exc.errors():
            raw = tuple(error["loc"])
            if raw and raw[-1] == "[key]" and error["type"] != "extra_forbidden":
                raw = raw[:-1]  # pydantic's marker for an invalid dict key: point at the key
            loc = _data_loc(raw, data)
            if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
                # Point at the discriminator key ('toxic'), the field the user has to fix.
                loc = (*loc, str((error.get("ctx") or {}).get("discriminator", "")).strip("'"))
            line, col = _mark_for(loc, marks)
            issues.append(ScenarioIssue(shown, line, col, _dotted(loc), _message(error, loc, data)))
        raise ScenarioError(issues) from None


def read_document(path: str | Path, env: Mapping[str, str]) -> tuple[Any, Marks, str]:
    """(parsed data, line marks, the path as shown) of a YAML file, ${VAR}s substituted."""
    shown = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError([ScenarioIssue(shown, None, None, "", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError([ScenarioIssue(shown, None, None, "", f"cannot read: {exc}")]) from None
    data, marks = _parse(text, shown, env)
    return data, marks, shown


def load_scenario(path: str | Path, env: Mapping[str, str] | None = None) -> Scenario:
    """Parse and validate one scenario file; raises ScenarioError with every problem."""
    env = os.environ if env is None else env
    data, marks, shown = read_document(path, env)
    if not isinstance(data, dict):
        raise ScenarioError(
            [ScenarioIssue(shown, 1, 1, "", "a scenario is a mapping (apiVersion, kind, ...)")]
        )
    scenario = validate_document(Scenario, data, marks, shown)
    problems = scenario.reference_problems()
    if problems:
        issues = []
        for loc, message in problems:
            line, col = _mark_for(loc, marks)
            issues.append(ScenarioIssue(shown, line, col, _dotted(loc), message))
        raise ScenarioError(issues)
    return _anchor_paths(scenario, Path(path))


# The spec field holding a file path, by fault backend: relative to the scenario's folder.
_FAULT_FILES = {"process": "pidfile", "haproxy": "socket"}


def _relative(file: str | None) -> bool:
    return bool(file) and not Path(str(file)).expanduser().is_absolute()


def _anchor_paths(scenario: Scenario, path: Path) -> Scenario:
    """Make the scenario's relative file paths relative to the scenario file's folder, and
    absolute, once: the run's processes (Locust, the watchdog) work in other folders."""
    folder = path.resolve().parent
    update: dict[str, Any] = {}
    key_file = scenario.target.api_key_file
    if key_file and _relative(key_file):
        anchored = str(folder / key_file)
        update["target"] = scenario.target.model_copy(update={"api_key_file": anchored})
    faults = dict(scenario.faults)
    for name, fault in scenario.faults.items():
        field = _FAULT_FILES.get(fault.backend)
        file = getattr(fault.spec, field) if field else None
        if field and _relative(file):
            spec = fault.spec.model_copy(update={field: str(folder / str(file))})
            faults[name] = fault.model_copy(update={fault.backend: spec})
    if faults != scenario.faults:
        update["faults"] = faults
    return scenario.model_copy(update=update) if update else scenario


def scenario_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand folders to their *.yaml / *.yml files, sorted, leaving out game-day suites
    (run only when named, so a folder's scenarios never run twice); keep files as given."""
    from llmdrill.scenario.suite import is_suite_file

    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml")
                                and not is_suite_file(p)))
        else:
            files.append(path)
    return files


def load_scenarios(
    paths: Iterable[str | Path], env: Mapping[str, str] | None = None
) -> list[tuple[Path, Scenario]]:
    """Load every file; raise one ScenarioError listing the problems of all of them."""
    loaded: list[tuple[Path, Scenario]] = []
    issues: list[ScenarioIssue] = []
    files = scenario_files(paths)
    if not files:
        raise ScenarioError([ScenarioIssue(", ".join(map(str, paths)), None, None, "",
                                           "no scenario files found")])
    for file in files:
        try:
            loaded.append((file, load_scenario(file, env)))
        except ScenarioError as exc:
            issues.extend(exc.issues)
    if issues:
        raise ScenarioError(issues)
    return loaded
