"""One prompt maker and one status-to-error-class map for every client of the harness."""

from __future__ import annotations

import random

import pytest

from llmdrill.faults import cancel_storm, request_flood
from llmdrill.load import openai_api

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("status", "error_class"), [
    (429, "http_429"), (400, "http_4xx"), (404, "http_4xx"), (413, "http_4xx"),
    (500, "http_5xx"), (503, "http_5xx"), (301, "protocol"), (307, "protocol"),
    (204, "protocol"), (101, "protocol"),
])
def test_every_client_classifies_a_status_the_same_way(status: int, error_class: str) -> None:
    assert openai_api.status_error_class(status) == error_class
    # the fault backends use this very function: no second map to drift (3xx included)
    assert cancel_storm.status_error_class is openai_api.status_error_class
    assert request_flood.status_error_class is openai_api.status_error_class


def test_prompts_have_the_asked_length_and_never_share_a_prefix() -> None:
    rng = random.Random(1)
    first, second = openai_api.make_prompt(48, rng), openai_api.make_prompt(48, rng)
    assert len(first.split()) == len(second.split()) == 48
    assert first.split()[0] != second.split()[0]
    assert cancel_storm.make_prompt is request_flood.make_prompt is openai_api.make_prompt
