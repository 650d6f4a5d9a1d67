"""`faults.<name>.when_busy`: the fault waits until its engine serves requests. The poller
against a real HTTP server on the loopback (an engine's metrics page), and the fields."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llmdrill.harness.busy_gate import wait_until_busy
from llmdrill.scenario.errors import ScenarioError
from llmdrill.scenario.loader import load_scenario
from llmdrill.scenario.models import WhenBusy
from tests.unit.loopback import serving

pytestmark = pytest.mark.unit

PAGE = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="tiny"}} {a}
vllm:num_requests_running{{engine="1",model_name="tiny"}} {b}
"""


@pytest.fixture
def engine() -> Iterator[tuple[str, list[str]]]:
    """A metrics page that answers the body at the head of `pages` (the last one stays)."""
    pages: list[str] = []

    def answer() -> tuple[int, str, bytes]:
        body = pages.pop(0) if len(pages) > 1 else pages[0]
        return 200, "text/plain; version=0.0.4", body.encode()

    with serving(answer) as url:
        yield f"{url}/metrics", pages


def spec(url: str, **kw: object) -> WhenBusy:
    return WhenBusy.model_validate({"metrics_url": url, "poll_interval": "20ms", **kw})


def test_the_wait_ends_once_enough_requests_run(engine: tuple[str, list[str]]) -> None:
    url, pages = engine
    pages += [PAGE.format(a=0, b=0), PAGE.format(a=1, b=0), PAGE.format(a=1, b=2)]
    waited = wait_until_busy(spec(url, min_running=3, within="20s"))
    assert waited.met and waited.running == 3  # summed over the engines
    assert waited.polls == 3 and waited.polled_at is not None and not pages[1:]


def test_an_idle_engine_is_waited_for_at_most_within(engine: tuple[str, list[str]]) -> None:
    url, pages = engine
    pages.append(PAGE.format(a=0, b=0))
    waited = wait_until_busy(spec(url, within="300ms"))
    assert not waited.met and waited.running == 0 and waited.polled_at is None
    assert 0.3 <= waited.waited_s < 5 and waited.polls >= 2


def test_a_page_without_the_gauge_never_counts_as_busy(engine: tuple[str, list[str]]) -> None:
    url, pages = engine
    pages.append("# TYPE haproxy_up gauge\nhaproxy_up 1\n")
    waited = wait_until_busy(spec(url, within="200ms"))
    assert not waited.met and waited.running is None
    assert waited.error and "no vllm:num_requests_running" in waited.error


def test_an_unreachable_engine_is_not_busy() -> None:
    waited = wait_until_busy(spec("http://127.0.0.1:9/metrics", within="200ms"))
    assert not waited.met and waited.error and "ConnectError" in waited.error


# --- the fields -----------------------------------------------------------------------

SCENARIO = """\
apiVersion: llmdrill/v1
kind: Scenario
metadata: {{name: busy}}
target: {{base_url: "http://127.0.0.1:1", model: m}}
faults:
  kill:
    process: {{pidfile: /tmp/none.pid, signal: SIGSTOP}}
    when_busy: {when_busy}
phases:
  - {{name: kill, duration: 60s, faults: [kill]}}
"""


def _load(tmp_path: Path, when_busy: str) -> WhenBusy | None:
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO.format(when_busy=when_busy))
    return load_scenario(path, env={}).faults["kill"].when_busy


def test_the_fields_load_with_their_defaults(tmp_path: Path) -> None:
    spec = _load(tmp_path, "{metrics_url: http://127.0.0.1:8000/metrics}")
    assert spec is not None and spec.min_running == 1 and spec.within == 30.0
    assert spec.metric == "vllm:num_requests_running"


@pytest.mark.parametrize(("when_busy", "says"), [
    ("{min_running: 2}", "metrics_url"),
    ("{metrics_url: not-a-url}", "must start with http"),
    ("{metrics_url: http://127.0.0.1:8000/metrics, min_running: 0}", "min_running"),
    ("{metrics_url: http://127.0.0.1:8000/metrics, within: 30}", "within"),
    ("{metrics_url: http://127.0.0.1:8000/metrics, until: 5s}", "until"),
])
def test_bad_fields_are_named(tmp_path: Path, when_busy: str, says: str) -> None:
    with pytest.raises(ScenarioError) as err:
        _load(tmp_path, when_busy)
    text = str(err.value)
    assert says in text and "s.yaml" in text and "when_busy" in text
