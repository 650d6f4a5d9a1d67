"""caps_enforced: the probe requests it builds, how it judges answers, and its verdicts on
synthetic probe events (it passes only when every case was refused properly)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmdrill.checks.caps import Answer, CapsEnforcedCheck, health_ok, probe_event
from llmdrill.checks.caps import evaluate_caps as evaluate
from llmdrill.model.records import Evidence, PhaseWindow
from llmdrill.model.result import CheckResult, Window
from llmdrill.probes.caps_cases import (
    DEFAULT_KINDS,
    UNKNOWN_MODEL,
    CapCase,
    ErrorSchema,
    build_request,
    cases_of,
    excerpt,
    expected_statuses,
    health_request,
    judge_body,
    message_ok,
    message_pattern,
    over_context_prompt,
)

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0
WINDOW = Window(phase="probe", start=T0, end=T0 + 10)
SPEC = CapsEnforcedCheck(context_length=512, rounds=2)

# What vLLM answers, per case (status, message).
VLLM = {
    "prompt_over_context": (400, "This model's maximum context length is 512 tokens. However, "
                                 "your prompt contains at least 513 input tokens."),
    "max_tokens_over_cap": (400, "max_tokens=1512 cannot be greater than max_model_len=512."),
    "max_tokens_zero": (400, "max_tokens must be at least 1, got 0."),
    "max_tokens_negative": (400, "max_tokens must be at least 1, got -1."),
    "unknown_model": (404, f"The model `{UNKNOWN_MODEL}` does not exist."),
    "malformed_json": (400, "1 validation error: JSON decode error"),
}


def error_body(message: str, status: int = 400, **extra: Any) -> bytes:
    return json.dumps({"error": {"message": message, "type": "BadRequestError",
                                 "param": None, "code": status, **extra}}).encode()


def answer(status: int | None = 400, body: bytes = b"", *, elapsed: float = 0.01,
           error_class: str | None = None, headers: dict[str, str] | None = None) -> Answer:
    return Answer(start=T0, elapsed=elapsed, status=status, headers=headers or {}, body=body,
                  error_class=error_class)


def case(kind: str) -> CapCase:
    return next(c for c in cases_of(SPEC) if c.kind == kind)


def events_for(spec: CapsEnforcedCheck = SPEC, *, override: dict[str, Answer] | None = None,
               health: bool = True, rounds: int = 2, check: str = "caps"
               ) -> Evidence:
    """The events a probe records for `rounds` rounds against a vLLM-like server, with
    some cases' answers replaced."""
    events: list[tuple[float, str, dict[str, Any]]] = []
    for r in range(rounds):
        ts = T0 + 0.1 + r * 5
        for c in cases_of(spec):
            status, message = VLLM.get(c.kind, (400, "bad request"))
            got = (override or {}).get(c.name) or answer(status, error_body(message, status))
            events.append((ts, "caps_probe", probe_event(check, c, spec, got, r)))
        events.append((ts + 0.5, "caps_health", {"check": check, "round": r, "status": 200,
                                                 "ok": health, "elapsed_s": 0.02,
                                                 "error_class": None}))
    return Evidence(phases=[PhaseWindow("probe", T0, T0 + 10)], events=events)


def run(evidence: Evidence, spec: CapsEnforcedCheck = SPEC, name: str = "caps") -> CheckResult:
    return evaluate(name, "probe", spec, evidence, WINDOW)


# --- case builders --------------------------------------------------------------------


def body_of(kind: str, spec: CapsEnforcedCheck = SPEC) -> dict[str, Any]:
    req = build_request(case(kind), spec, "tiny")
    doc = json.loads(req.body)
    assert isinstance(doc, dict)
    return doc


def test_default_cases_are_every_builtin_kind() -> None:
    assert [c.kind for c in cases_of(SPEC)] == list(DEFAULT_KINDS)
    assert [c.name for c in cases_of(SPEC)] == list(DEFAULT_KINDS)


def test_prompt_over_context_is_surely_longer_than_the_context() -> None:
    doc = body_of("prompt_over_context")
    words = doc["messages"][0]["content"].split()
    assert len(words) == 512 + 64
    assert doc["max_tokens"] == 1  # only the prompt is over the limit
    assert len(over_context_prompt(100).split()) == 164


def test_max_tokens_cases() -> None:
    assert body_of("max_tokens_over_cap")["max_tokens"] == 1512
    capped = CapsEnforcedCheck(context_length=512, max_output_tokens=256)
    assert body_of("max_tokens_over_cap", capped)["max_tokens"] == 1256
    assert body_of("max_tokens_zero")["max_tokens"] == 0
    assert body_of("max_tokens_negative")["max_tokens"] == -1


def test_unknown_model_and_malformed_json() -> None:
    assert body_of("unknown_model")["model"] == UNKNOWN_MODEL
    req = build_request(case("malformed_json"), SPEC, "tiny")
    with pytest.raises(json.JSONDecodeError):
        json.loads(req.body)
    assert req.path == "/v1/chat/completions"


def test_completions_api_custom_and_overrides() -> None:
    c = CapCase(name="p", kind="prompt_over_context", api="completions", max_tokens=7)
    req = build_request(c, SPEC, "tiny")
    doc = json.loads(req.body)
    assert req.path == "/v1/completions" and "prompt" in doc and doc["max_tokens"] == 7
    custom = CapCase(name="x", kind="custom", path="/v1/embeddings", body='{"input": 1}')
    req = build_request(custom, SPEC, "tiny")
    assert (req.path, req.body) == ("/v1/embeddings", b'{"input": 1}')
    assert expected_statuses(custom) == tuple(range(400, 500))
    assert expected_statuses(CapCase(name="y", kind="custom", expect_status=[413])) == (413,)


def test_health_request_is_a_small_normal_completion() -> None:
    req = health_request("tiny")
    doc = json.loads(req.body)
    assert doc["model"] == "tiny" and doc["max_tokens"] == 4
    ok = b'{"choices": [{"text": "hi", "finish_reason": "length"}]}'
    assert health_ok(answer(200, ok))
    assert not health_ok(answer(200, b'{"choices": []}'))  # a 200 that generated nothing
    assert not health_ok(answer(500, b'{"choices": []}'))
    assert not health_ok(answer(200, b"{}"))


# --- judging one answer ---------------------------------------------------------------


def test_default_expected_statuses() -> None:
    assert expected_statuses(case("prompt_over_context")) == (400,)
    assert expected_statuses(case("malformed_json")) == (400, 422)
    assert expected_statuses(case("max_tokens_zero")) == (400, 422)
    assert expected_statuses(case("unknown_model")) == (404, 400)


@pytest.mark.parametrize(("kind", "message", "ok"), [
    ("prompt_over_context", VLLM["prompt_over_context"][1], True),
    ("prompt_over_context", "Your input exceeds the context length.", True),
    ("prompt_over_context", "Bad request", False),
    ("max_tokens_over_cap", VLLM["max_tokens_over_cap"][1], True),
    ("max_tokens_over_cap", "max_tokens is too large", False),  # which cap? no number
    ("max_tokens_zero", VLLM["max_tokens_zero"][1], True),
    ("unknown_model", VLLM["unknown_model"][1], True),
    ("unknown_model", "Model not found", True),
    ("unknown_model", "Invalid request", False),
    ("malformed_json", "Expecting ',' delimiter: could not parse JSON", True),
    ("malformed_json", "oops", False),
])
def test_default_message_patterns(kind: str, message: str, ok: bool) -> None:
    assert message_ok(message, message_pattern(case(kind), SPEC)) is ok


def test_declared_message_pattern_and_broken_pattern() -> None:
    c = CapCase(name="c", kind="prompt_over_context", message_matches="limit of \\d+")
    assert message_ok("over the limit of 512 tokens", message_pattern(c, SPEC))
    assert not message_ok("context length is 512", message_pattern(c, SPEC))
    assert not message_ok("anything", "(")
    assert not message_ok(None, ".*")


def test_judge_body_schema() -> None:
    schema = ErrorSchema()
    assert judge_body(error_body("m"), {}, schema).problems == []
    assert judge_body(b"", {}, schema).problems == ["error body is empty"]
    assert judge_body(b"<html>", {}, schema).problems == ["error body is not JSON"]
    assert judge_body(b"[1]", {}, schema).problems == ["error body is not a JSON object"]
    assert judge_body(b'{"detail": "Not Found"}', {}, schema).problems == [
        "error body has no 'error' object"]
    no_type = json.dumps({"error": {"message": "m", "code": 400}}).encode()
    assert judge_body(no_type, {}, schema).problems == ["error body has no 'type'"]
    assert judge_body(b'{"detail": "Not Found"}', {}, schema).message == "Not Found"


def test_judge_body_request_id() -> None:
    header = ErrorSchema(request_id="header")
    assert judge_body(error_body("m"), {"x-request-id": "r1"}, header).problems == []
    assert judge_body(error_body("m"), {}, header).problems == [
        "no request id in header 'x-request-id'"]
    body = ErrorSchema(request_id="body")
    assert judge_body(error_body("m", request_id="r1"), {}, body).problems == []
    top = json.dumps({"error": {"message": "m", "type": "t", "code": 1}, "id": "r"}).encode()
    assert judge_body(top, {}, body).problems == []
    assert judge_body(error_body("m"), {"x-request-id": "r"}, body).problems == [
        "no request id in the error body"]
    either = ErrorSchema(request_id="either", request_id_header="X-Trace")
    assert judge_body(b"", {"x-trace": "t"}, either).problems == ["error body is empty"]
    verdict = judge_body(error_body("m"), {}, either)
    assert verdict.problems == ["no request id (header 'X-Trace' or body)"]
    assert not verdict.request_id
    assert judge_body(error_body("m"), {"x-request-id": "r"}, ErrorSchema()).request_id


def test_excerpt_keeps_the_message_short_and_drops_the_prompt() -> None:
    echoed = "Prompt too long: 'hi hi hi hi hi hi hi hi' exceeds 512 tokens"
    assert excerpt(echoed) == "Prompt too long: '[…] exceeds 512 tokens"
    pydantic = "1 validation error: {'type': 'json_invalid', 'input': 'secret user text'}"
    assert "secret" not in (excerpt(pydantic) or "")
    long = excerpt("x" * 1000)
    assert long is not None and len(long) == 200
    assert excerpt(None) is None


def test_probe_event_holds_verdicts_not_bodies() -> None:
    event = probe_event("caps", case("prompt_over_context"), SPEC,
                        answer(400, error_body(VLLM["prompt_over_context"][1])), 0)
    assert event["body_ok"] and event["message_ok"] and event["status"] == 400
    assert event["schema_problems"] == [] and event["request_id"] is False
    assert set(event) == {"check", "case", "kind", "round", "status", "elapsed_s",
                          "error_class", "body_ok", "schema_problems", "message_ok",
                          "message_excerpt", "request_id"}
    lost = probe_event("caps", case("unknown_model"), SPEC,
                       answer(None, error_class="timeout", elapsed=10.0), 0)
    assert lost["status"] is None and not lost["body_ok"] and lost["schema_problems"] == []


# --- the evaluator ----------------------------------------------------------------------


def test_passes_when_every_case_is_refused_helpfully() -> None:
    result = run(events_for())
    assert result.status == "passed", result.summary
    assert "all 6 cases" in result.summary and "2 rounds" in result.summary
    observed = result.observed["cases"]["prompt_over_context"]
    assert observed["status"] == 400 and observed["ok"] and observed["probes"] == 2
    assert result.observed["health_probes"] == 2


def test_500_instead_of_400_fails_naming_the_case() -> None:
    broken = answer(500, json.dumps({"error": {"message": "Internal Server Error",
                                               "type": "InternalServerError",
                                               "code": 500}}).encode())
    result = run(events_for(override={"prompt_over_context": broken}))
    assert result.status == "failed"
    assert result.summary == "prompt_over_context: got 500 (expected 400)"
    assert result.observed["cases"]["prompt_over_context"]["status"] == 500
    assert not result.observed["cases"]["prompt_over_context"]["ok"]
    assert result.observed["cases"]["unknown_model"]["ok"]


def test_stripped_error_body_fails_on_schema() -> None:
    result = run(events_for(override={"malformed_json": answer(400, b"")}))
    assert result.status == "failed"
    assert result.summary == "malformed_json: error body is empty"
    no_type = json.dumps({"error": {"message": "bad JSON", "code": 400}}).encode()
    result = run(events_for(override={"malformed_json": answer(400, no_type)}))
    assert result.summary == "malformed_json: error body has no 'type'"


def test_unhelpful_message_fails() -> None:
    vague = answer(400, error_body("Bad Request"))
    result = run(events_for(override={"max_tokens_over_cap": vague}))
    assert result.status == "failed"
    assert result.summary == "max_tokens_over_cap: message not helpful ('Bad Request')"


def test_timeout_and_no_answer_fail() -> None:
    hung = answer(None, error_class="timeout", elapsed=10.0)
    result = run(events_for(override={"prompt_over_context": hung}))
    assert result.status == "failed"
    assert result.summary == "prompt_over_context: no answer within 10s (timeout)"
    slow = answer(400, error_body(VLLM["unknown_model"][1], 404), error_class="timeout",
                  elapsed=12.5)
    result = run(events_for(override={"unknown_model": slow}))
    assert "unknown_model: answer took 12.5s (deadline 10s)" in result.summary
    reset = answer(None, error_class="reset")
    assert "no answer (reset)" in run(events_for(override={"max_tokens_zero": reset})).summary


def test_success_instead_of_refusal_fails() -> None:
    accepted = answer(200, b'{"choices": [{"text": "x"}]}')
    result = run(events_for(override={"max_tokens_negative": accepted}))
    assert result.summary == "max_tokens_negative: got 200 (expected 400 or 422)"


def test_health_failure_fails() -> None:
    result = run(events_for(health=False))
    assert result.status == "failed"
    assert "health: 2 of 2 normal requests after a round failed" in result.summary


def test_no_health_probe_is_inconclusive() -> None:
    evidence = events_for()
    evidence.events = [e for e in evidence.events if e[1] != "caps_health"]
    result = run(evidence)
    assert result.status == "inconclusive"
    assert "0/2 rounds had a normal request after them" in result.summary


def test_no_events_is_inconclusive() -> None:
    result = run(Evidence(phases=[PhaseWindow("probe", T0, T0 + 10)]))
    assert result.status == "inconclusive" and "no evidence" in result.summary
    # Another check's events are not this check's evidence.
    result = run(events_for(check="someone-else"))
    assert result.status == "inconclusive" and "no evidence" in result.summary


def test_a_case_never_probed_is_inconclusive() -> None:
    evidence = events_for()
    evidence.events = [e for e in evidence.events if e[2].get("case") != "unknown_model"]
    result = run(evidence)
    assert result.status == "inconclusive"
    assert result.summary == ("inconclusive: cases not probed in every round (probed/needed): "
                              "unknown_model 0/2")


def test_failure_in_some_rounds_is_counted() -> None:
    evidence = events_for()
    for i, (ts, kind, detail) in enumerate(evidence.events):
        if detail.get("case") == "prompt_over_context" and detail["round"] == 1:
            evidence.events[i] = (ts, kind, {**detail, "status": 500})
    result = run(evidence)
    assert result.summary == "prompt_over_context: got 500 (expected 400) in 1/2 probes"


def test_request_id_required_but_missing_fails() -> None:
    spec = CapsEnforcedCheck(context_length=512, rounds=2,
                             error_schema=ErrorSchema(request_id="header"))
    result = run(events_for(spec), spec)
    assert result.status == "failed"
    assert "prompt_over_context: no request id in header 'x-request-id'" in result.summary
    assert all(not c["request_id"] for c in result.observed["cases"].values())
    with_id = answer(400, error_body(VLLM["malformed_json"][1]), headers={"x-request-id": "r"})
    good = {c: with_id for c in ("malformed_json",)}
    assert "malformed_json" not in run(events_for(spec, override=good), spec).summary


def test_declared_status_and_custom_cases() -> None:
    spec = CapsEnforcedCheck(context_length=512, cases=[
        CapCase(name="too-big", kind="prompt_over_context", expect_status=[413]),
        CapCase(name="route", kind="custom", path="/v1/nope", body="{}"),
    ])
    over = answer(413, error_body("over the context length", 413))
    missing = answer(404, error_body("no route", 404))
    result = run(events_for(spec, override={"too-big": over, "route": missing}), spec)
    assert result.status == "passed", result.summary
    result = run(events_for(spec, override={"too-big": answer(400, error_body("context "
                                                                              "length"))}),
                 spec)
    assert result.summary.startswith("too-big: got 400 (expected 413)")


def test_invalid_message_regex_is_reported() -> None:
    spec = CapsEnforcedCheck(context_length=512, cases=[
        CapCase(name="c", kind="prompt_over_context", message_matches="(")])
    result = run(events_for(spec), spec)
    assert result.status == "failed" and "not a valid regex" in result.summary


def test_probe_crash_is_reported() -> None:
    evidence = events_for()
    evidence.events.append((T0 + 1, "probe_error", {"check": "caps", "kind": "caps_enforced",
                                                    "error": "RuntimeError: boom"}))
    result = run(evidence)
    assert result.status == "inconclusive"
    assert "probe error: RuntimeError: boom" in result.summary
