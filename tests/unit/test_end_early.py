"""`phases[].end_early`: the rule that ends a recovery phase once the target is back, and
the scenario fields that set it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmdrill.harness.phase_end import BackState, BackWatcher
from llmdrill.scenario.errors import ScenarioError
from llmdrill.scenario.loader import load_scenario
from llmdrill.scenario.models import EndEarly
from tests.unit.loopback import serving

pytestmark = pytest.mark.unit

A, B = "http://127.0.0.1:1/health", "http://127.0.0.1:2/health"


def test_a_target_that_never_failed_never_ends_the_phase() -> None:
    state = BackState((A,), after=5)
    for t in range(100):
        state.saw(A, True, float(t))
    assert state.ended(100.0) is None


def test_a_target_that_never_came_back_never_ends_the_phase() -> None:
    state = BackState((A,), after=5)
    for t in range(100):
        state.saw(A, False, float(t))
    assert state.ended(100.0) is None


def test_the_phase_ends_after_the_target_is_healthy_for_after_seconds() -> None:
    state = BackState((A,), after=5)
    state.saw(A, True, 0.0)
    state.saw(A, False, 1.0)
    state.saw(A, False, 2.0)
    state.saw(A, True, 3.0)
    assert state.ended(6.9) is None  # 4.9s since the last failure
    why = state.ended(7.0)
    assert why is not None and A in why and "5s" in why


def test_a_flap_starts_the_count_again() -> None:
    state = BackState((A,), after=5)
    state.saw(A, False, 1.0)
    state.saw(A, True, 2.0)
    state.saw(A, False, 6.5)  # down again before it counted as back
    state.saw(A, True, 7.0)
    assert state.ended(8.0) is None
    assert state.ended(11.4) is None
    assert state.ended(11.5) is not None


def test_every_url_must_be_back() -> None:
    state = BackState((A, B), after=1)
    state.saw(A, False, 0.0)
    state.saw(B, False, 0.0)
    state.saw(A, True, 1.0)
    assert state.ended(10.0) is None  # B is still down (its last poll failed)
    state.saw(B, True, 10.0)
    assert state.ended(10.5) is not None


def test_a_url_never_polled_holds_the_phase() -> None:
    state = BackState((A, B), after=1)
    state.saw(A, False, 0.0)
    state.saw(A, True, 1.0)
    assert state.ended(30.0) is None


# --- the fields -------------------------------------------------------------------------

SCENARIO = """\
apiVersion: llmdrill/v1
kind: Scenario
metadata: {{name: end-early}}
target: {{base_url: "http://127.0.0.1:1", model: m}}
phases:
  - name: recover
    duration: 60s
    end_early: {end_early}
"""


def _load(tmp_path: Path, end_early: str) -> EndEarly | None:
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO.format(end_early=end_early))
    return load_scenario(path, env={}).phases[0].end_early


def test_the_fields_load_with_their_default(tmp_path: Path) -> None:
    spec = _load(tmp_path, "{back: [http://127.0.0.1:8000/health]}")
    assert spec is not None and spec.back == ["http://127.0.0.1:8000/health"]
    assert spec.after == 20.0


def test_an_after_as_long_as_the_phase_is_allowed(tmp_path: Path) -> None:
    # A phase shortened through the environment (RECOVERY_PHASE=10s) keeps a valid scenario:
    # it simply cannot end early.
    spec = _load(tmp_path, "{back: [http://127.0.0.1:8000/health], after: 90s}")
    assert spec is not None and spec.after == 90.0


@pytest.mark.parametrize(("end_early", "says"), [
    ("{back: [], after: 5s}", "back"),
    ("{back: [not-a-url]}", "must start with http"),
    ("{back: [http://127.0.0.1:8000/health], after: 5 minutes}", "after"),
    ("{back: [http://127.0.0.1:8000/health], until: 5s}", "until"),
])
def test_bad_fields_are_named(tmp_path: Path, end_early: str, says: str) -> None:
    with pytest.raises(ScenarioError) as err:
        _load(tmp_path, end_early)
    text = str(err.value)
    assert says in text and "s.yaml" in text and "end_early" in text


# --- the poller against a real HTTP server on the loopback ------------------------------


@pytest.fixture
def flappy() -> Iterator[tuple[str, list[int]]]:
    """A server whose /health answers the status code at the head of `codes` (then 200)."""
    codes: list[int] = []
    with serving(lambda: (codes.pop(0) if codes else 200, "text/plain", b"")) as url:
        yield f"{url}/health", codes


def test_the_watcher_ends_once_the_server_is_back(flappy: tuple[str, list[int]]) -> None:
    url, codes = flappy
    codes.extend([503, 503, 503])
    spec = EndEarly.model_validate({"back": [url], "after": "500ms"})
    watcher = BackWatcher(spec, interval=0.05, timeout=2)
    watcher.start()
    try:
        deadline = time.time() + 30
        while (why := watcher.ended(time.time())) is None and time.time() < deadline:
            time.sleep(0.05)
    finally:
        watcher.stop()
    assert why is not None and url in why
    assert not codes  # it saw the failures before it called the server back


def test_the_watcher_never_ends_on_a_server_that_never_failed(
        flappy: tuple[str, list[int]]) -> None:
    url, _ = flappy
    spec = EndEarly.model_validate({"back": [url], "after": "100ms"})
    watcher = BackWatcher(spec, interval=0.05, timeout=2)
    watcher.start()
    try:
        time.sleep(1.0)
        assert watcher.ended(time.time()) is None
    finally:
        watcher.stop()
