"""The requests of the caps drill and how their answers are judged, without any I/O.

Each case is a request the server must refuse with a helpful 4xx: a prompt over the
context, max_tokens over the cap / zero / negative, an unknown model, broken JSON, or a
custom route and body. This module builds those requests from a `CapsEnforcedCheck`
spec and judges an answer's status, body and message; `checks/caps.py` sends them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from llmdrill.load.sse import StreamTally, read_whole_body
from llmdrill.scenario.fields import Name, Strict

if TYPE_CHECKING:
    from llmdrill.checks.caps import CapsEnforcedCheck


class CapCase(Strict):
    """One request that must be refused with a helpful 4xx."""

    name: Name = Field(description="Case name in the report (the built-in cases use their kind).")
    kind: Literal[
        "prompt_over_context",
        "max_tokens_over_cap",
        "max_tokens_zero",
        "max_tokens_negative",
        "unknown_model",
        "malformed_json",
        "custom",
    ]
    api: Literal["chat", "completions"] = Field(
        default="chat", description="Endpoint the case is sent to (unless `path` is set)."
    )
    path: str | None = Field(default=None, description="Route for custom cases, e.g. /v1/x.")
    body: str | None = Field(default=None, description="Raw request body for custom cases.")
    max_tokens: int | None = Field(default=None, description="Override the case's max_tokens.")
    expect_status: list[int] = Field(
        default_factory=list, description="Accepted statuses; default per kind (400, 404...)."
    )
    message_matches: str | None = Field(
        default=None,
        description="Regex the error message must match (default per kind: it names the "
        "limit, e.g. the context length).",
    )


class ErrorSchema(Strict):
    """What an error body must look like (gateways differ, so it is declared)."""

    error_fields: list[str] = Field(
        default_factory=lambda: ["type", "code", "message"],
        description="Fields the `error` object must have (OpenAI style).",
    )
    request_id: Literal["none", "header", "body", "either"] = Field(
        default="none", description="Where a request id must appear, if anywhere."
    )
    request_id_header: str = Field(
        default="x-request-id", description="Header that carries the request id, if any."
    )

DEFAULT_KINDS = (
    "prompt_over_context",
    "max_tokens_over_cap",
    "max_tokens_zero",
    "max_tokens_negative",
    "unknown_model",
    "malformed_json",
)
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
UNKNOWN_MODEL = "llmdrill-no-such-model"
# One short, common word: nearly every tokenizer makes one token of " hi", so N of them
# are at least N tokens. It also lets the excerpt code recognise an echoed prompt.
FILLER = "hi"
PROMPT_MARGIN = 64  # tokens over the context length
EXCERPT_CHARS = 200

# Statuses accepted per kind when the case does not declare its own. Zero and negative
# max_tokens are validation errors: FastAPI-style servers say 422, vLLM says 400.
DEFAULT_STATUSES: dict[str, tuple[int, ...]] = {
    "prompt_over_context": (400,),
    "max_tokens_over_cap": (400,),
    "max_tokens_zero": (400, 422),
    "max_tokens_negative": (400, 422),
    "unknown_model": (404, 400),
    "malformed_json": (400, 422),
    "custom": tuple(range(400, 500)),
}

_MAX_TOKENS = r"max[_ ](?:completion[_ ])?tokens"


@dataclass(frozen=True, slots=True)
class ProbeRequest:
    """One HTTP request of a case: POST `path` (below the base URL) with a raw body."""

    case: str
    kind: str
    path: str
    body: bytes


def default_cases() -> list[CapCase]:
    return [CapCase(name=kind, kind=kind) for kind in DEFAULT_KINDS]


def cases_of(spec: CapsEnforcedCheck) -> list[CapCase]:
    return list(spec.cases) if spec.cases is not None else default_cases()


def over_context_prompt(context_length: int) -> str:
    """A prompt surely longer than the context: context_length + 64 one-token words."""
    return " ".join([FILLER] * (context_length + PROMPT_MARGIN))


def _payload(api: str, model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    payload: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "stream": False}
    if api == "chat":
        payload["messages"] = [{"role": "user", "content": prompt}]
    else:
        payload["prompt"] = prompt
    return payload


def build_request(case: CapCase, spec: CapsEnforcedCheck, model: str) -> ProbeRequest:
    """The request that must be refused, for one case."""
    path = PATHS[case.api]
    if case.kind == "custom":
        body = (case.body or "").encode()
        return ProbeRequest(case.name, case.kind, case.path or path, body)
    if case.kind == "malformed_json":
        # Valid up to a point, then cut: a parser must reject it, not guess.
        cut = json.dumps(_payload(case.api, model, "hi", 4))[:40]
        return ProbeRequest(case.name, case.kind, case.path or path, cut.encode())
    prompt, max_tokens, name = "hi", 4, model
    if case.kind == "prompt_over_context":
        # max_tokens 1: the prompt alone is over the limit, whatever the output cap.
        prompt, max_tokens = over_context_prompt(spec.context_length), 1
    elif case.kind == "max_tokens_over_cap":
        max_tokens = (spec.max_output_tokens or spec.context_length) + 1000
    elif case.kind == "max_tokens_zero":
        max_tokens = 0
    elif case.kind == "max_tokens_negative":
        max_tokens = -1
    elif case.kind == "unknown_model":
        name = UNKNOWN_MODEL
    if case.max_tokens is not None:
        max_tokens = case.max_tokens
    body = json.dumps(_payload(case.api, name, prompt, max_tokens)).encode()
    return ProbeRequest(case.name, case.kind, case.path or path, body)


def health_request(model: str) -> ProbeRequest:
    """One small normal completion: proof the server still serves after a round."""
    body = json.dumps(_payload("chat", model, "Say hi.", 4)).encode()
    return ProbeRequest("health", "health", PATHS["chat"], body)


def health_answer_problem(status: int | None, error_class: str | None, body: bytes
                          ) -> str | None:
    """What is wrong with the answer to `health_request`, or None: a 200 that is a whole
    completion with generated text. Any JSON is not enough: a 200 with no choices, no
    text or 0 completion tokens is `empty` (a gateway that answers empty completions
    does not serve)."""
    if error_class is not None:
        return error_class
    if status != 200:
        return f"status {status}"
    error = read_whole_body(body, StreamTally())
    return None if error is None else error[0]


def health_answer_ok(status: int | None, error_class: str | None, body: bytes) -> bool:
    return health_answer_problem(status, error_class, body) is None


def expected_statuses(case: CapCase) -> tuple[int, ...]:
    return tuple(case.expect_status) or DEFAULT_STATUSES[case.kind]


def message_pattern(case: CapCase, spec: CapsEnforcedCheck) -> str:
    """The regex a helpful error message matches (searched, case-insensitive)."""
    if case.message_matches is not None:
        return case.message_matches
    if case.kind == "prompt_over_context":
        return rf"\b{spec.context_length}\b|context[ _-]?(?:length|window)"
    if case.kind == "max_tokens_over_cap":
        return rf"(?s)(?=.*{_MAX_TOKENS})(?=.*\d)"
    if case.kind in ("max_tokens_zero", "max_tokens_negative"):
        return _MAX_TOKENS
    if case.kind == "unknown_model":
        return rf"{UNKNOWN_MODEL}|not found|does not exist|unknown model|no such model"
    if case.kind == "malformed_json":
        return r"json|parse|decode|malformed|invalid"
    return r"\S"  # custom: any message at all


def status_ok(case: CapCase, status: int | None) -> bool:
    return status is not None and status in expected_statuses(case)


def status_text(statuses: tuple[int, ...]) -> str:
    if statuses == DEFAULT_STATUSES["custom"]:
        return "4xx"
    return " or ".join(str(s) for s in statuses)


@dataclass(frozen=True, slots=True)
class BodyVerdict:
    """What an error answer said and whether it has the declared shape."""

    problems: list[str]
    message: str | None
    request_id: bool  # a request id anywhere (header or body), required or not


def _request_id_in_body(doc: dict[str, Any]) -> bool:
    error = doc.get("error")
    candidates = [doc.get("request_id"), doc.get("id")]
    if isinstance(error, dict):
        candidates.append(error.get("request_id"))
    return any(isinstance(c, str | int) and str(c).strip() for c in candidates)


def _message_of(doc: dict[str, Any]) -> str | None:
    error = doc.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error
    for key in ("message", "detail"):  # non-OpenAI servers (FastAPI: "detail")
        if isinstance(doc.get(key), str):
            return str(doc[key])
    return None


def _id_problem(schema: ErrorSchema, header_id: bool, body_id: bool) -> str | None:
    wanted, header = schema.request_id, schema.request_id_header
    if wanted == "header" and not header_id:
        return f"no request id in header '{header}'"
    if wanted == "body" and not body_id:
        return "no request id in the error body"
    if wanted == "either" and not (header_id or body_id):
        return f"no request id (header '{header}' or body)"
    return None


def judge_body(body: bytes, headers: dict[str, str], schema: ErrorSchema) -> BodyVerdict:
    """Check an error answer against the declared schema. `headers` keys are lowercase."""
    header_id = bool(headers.get(schema.request_id_header.lower(), "").strip())
    problems: list[str] = []
    doc: Any = None
    if not body.strip():
        problems.append("error body is empty")
    else:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            problems.append("error body is not JSON")
        else:
            if not isinstance(doc, dict):
                problems.append("error body is not a JSON object")
                doc = None
    body_id = False
    message = None
    if isinstance(doc, dict):
        error = doc.get("error")
        if not isinstance(error, dict):
            problems.append("error body has no 'error' object")
        else:
            problems += [f"error body has no '{f}'" for f in schema.error_fields
                         if f not in error]
        body_id = _request_id_in_body(doc)
        message = _message_of(doc)
    id_problem = _id_problem(schema, header_id, body_id)
    if id_problem is not None:
        problems.append(id_problem)
    return BodyVerdict(problems, message, header_id or body_id)


def message_ok(message: str | None, pattern: str) -> bool:
    if not message:
        return False
    try:
        return re.search(pattern, message, re.IGNORECASE) is not None
    except re.error:
        return False  # a broken pattern matches nothing; the check reports it


# Runs of the filler word (our own prompt echoed back) and pydantic's echo of the input.
_ECHOED_PROMPT = re.compile(rf"(?:\b{FILLER}\b[\s,.'\"]*){{3,}}", re.IGNORECASE)
_ECHOED_INPUT = re.compile(r"(['\"]input['\"]\s*:\s*)(['\"]).*?\2", re.DOTALL)


def excerpt(message: str | None) -> str | None:
    """The start of an error message for the report, with anything like the prompt cut."""
    if message is None:
        return None
    text = _ECHOED_INPUT.sub(r"\1'[…]'", message)
    text = _ECHOED_PROMPT.sub("[…] ", text)
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"
