"""Metrics that join on a dashboard: one name per decorated function, never two functions
under one name by accident, one label set per family, configurable duration buckets."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from prometheus_client import CollectorRegistry

from _monitor_support import fresh_monitoring, parse, value
from buttress import (
    ConfigurationError,
    cache_result,
    circuit_breaker,
    fallback,
    metrics,
    monitor,
    policy,
    retry,
    timeout,
    validate_input,
)
from buttress.testing import testing_mode


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    with fresh_monitoring():
        yield


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    metrics.enable(registry)
    return registry


def functions_in(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Per family (sample name), the ``function`` labels it reports."""
    seen: dict[str, set[str]] = {}
    for name, labels in parse(metrics.generate_latest(registry)):
        function = dict(labels).get("function")
        if function is not None:
            seen.setdefault(name, set()).add(function)
    return seen


# --- one function, one name -----------------------------------------------------------


class Upstreams:
    def __init__(self) -> None:
        self.failures = 1

    @policy(
        monitor="upstream.embed",
        cache={"ttl": 60},
        retry={"max_retries": 2, "exceptions": (ConnectionError,)},
        timeout=5,
        fallback=[0.0],
    )
    async def embed(self, text: str) -> list[float]:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("embedding endpoint down")
        return [float(len(text))]


@pytest.mark.anyio
async def test_every_layer_of_a_policy_reports_the_monitors_name(
    registry: CollectorRegistry,
) -> None:
    upstreams = Upstreams()
    with testing_mode():
        assert await upstreams.embed("hello") == [5.0]
        assert await upstreams.embed("hello") == [5.0]  # a cache hit
    seen = functions_in(registry)
    for family in (
        "buttress_calls_total",
        "buttress_retries_total",
        "buttress_cache_requests_total",
        "buttress_call_duration_seconds_count",
    ):
        assert seen[family] == {"upstream.embed"}, family
    samples = parse(metrics.generate_latest(registry))
    assert value(samples, "buttress_retries_total", function="upstream.embed") == 1
    hit = value(samples, "buttress_cache_requests_total", function="upstream.embed", result="hit")
    assert hit == 1
    assert Upstreams.embed.monitor.name == "upstream.embed"


def test_hand_stacked_decorators_report_the_monitors_name(registry: CollectorRegistry) -> None:
    attempts = iter([ConnectionError("down"), ConnectionError("down"), ConnectionError("down")])

    @monitor("rank.score")
    @validate_input
    @fallback(-1.0)
    @retry(max_retries=1, exceptions=(ConnectionError,))
    @circuit_breaker(name="ranker")
    def score(x: float) -> float:
        raise next(attempts)

    with testing_mode():
        assert score(1.0) == -1.0
        with pytest.raises(Exception, match="x"):
            score("not a float")  # type: ignore[arg-type]
    seen = functions_in(registry)
    names = set().union(*seen.values())
    assert {name for name in names if "score" in name} == {"rank.score"}, seen
    assert {"buttress_retries_total", "buttress_fallbacks_total",
            "buttress_validation_failures_total"} <= set(seen)


@pytest.mark.anyio
async def test_a_timeout_below_the_monitor_reports_its_name(registry: CollectorRegistry) -> None:
    @monitor("slow.call")
    @timeout(0.01)
    async def slow() -> None:
        await anyio.sleep(10)

    with pytest.raises(TimeoutError):
        await slow()
    samples = parse(metrics.generate_latest(registry))
    assert value(samples, "buttress_timeouts_total", function="slow.call") == 1


def test_decorators_above_the_monitor_report_its_name_too(registry: CollectorRegistry) -> None:
    @cache_result(ttl=60)
    @monitor("lookup.named")
    def lookup(key: str) -> str:
        return key

    lookup("a")
    lookup("a")
    assert functions_in(registry)["buttress_cache_requests_total"] == {"lookup.named"}


def test_a_second_monitor_cannot_rename_a_stack() -> None:
    @monitor("first")
    def fn() -> None: ...

    with pytest.raises(ConfigurationError, match="already monitored as 'first'"):
        monitor("second")(fn)
    assert monitor(fn).monitor.name == "first"  # unnamed: it takes the stack's name


def test_an_unmonitored_stack_reports_the_qualified_name(registry: CollectorRegistry) -> None:
    @cache_result(ttl=60)
    @retry(max_retries=1)
    def plain(key: str) -> str:
        return key

    plain("a")
    qualified = plain.__qualname__
    assert functions_in(registry)["buttress_cache_requests_total"] == {qualified}


def test_the_same_raw_function_in_two_stacks_keeps_two_names() -> None:
    def raw() -> int:
        return 1

    named = monitor("named")(retry(max_retries=1)(raw))
    other = monitor(retry(max_retries=1)(raw))
    assert named.monitor.name == "named"
    assert other.monitor.name == raw.__qualname__


def test_messages_name_the_stack_too() -> None:
    # The retry's note on the error reads the name when it is written, not when built.
    @monitor("named.giveup")
    @retry(max_retries=1, exceptions=(ValueError,))
    def failing() -> None:
        raise ValueError("no")

    with testing_mode(), pytest.raises(ValueError) as raised:
        failing()
    notes = " ".join(getattr(raised.value, "__notes__", []))
    assert "named.giveup() failed 2 time(s)" in notes
