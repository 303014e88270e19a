"""Metrics that join on a dashboard: one name per decorated function, never two functions
under one name by accident, one label set per family, configurable duration buckets."""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

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
from buttress._monitoring import _stats
from buttress._monitoring._stats import DURATION_BUCKETS
from buttress._wrapping import check_names
from buttress.testing import FakeClock, testing_mode


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    with fresh_monitoring():
        yield
    # The functions made in modules of their own die with the test: their static labels
    # (model=...) would otherwise join every function's label set in later tests.
    _kept.clear()
    gc.collect()


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    metrics.enable(registry)
    return registry


def functions_in(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Per family (sample name), the ``function`` labels it reports something for."""
    seen: dict[str, set[str]] = {}
    for (name, labels), amount in parse(metrics.generate_latest(registry)).items():
        function = dict(labels).get("function")
        if function is not None and amount and not name.endswith("_bucket"):
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


# --- one label set per family -----------------------------------------------------------


def test_every_function_carries_every_static_label(registry: CollectorRegistry) -> None:
    @monitor("default.buckets")
    def other() -> None: ...

    def serve_once() -> str:  # its monitors die when it returns
        @monitor("route.embed", labels={"route": "/embed"})
        def route() -> int:
            return inner()

        @monitor("inner.embed")
        def inner() -> int:
            return 1

        other()
        route()
        return metrics.generate_latest(registry).decode()

    text = serve_once()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for name in ("buttress_calls", "buttress_call_duration_seconds", "buttress_in_flight"):
        label_sets = {
            frozenset(k for k in sample.labels if k not in ("outcome", "le"))
            for sample in families[name].samples
            if sample.labels["function"] in ("route.embed", "inner.embed", "default.buckets")
        }
        assert label_sets == {frozenset({"function", "route"})}, name
    samples = parse(text)
    assert value(
        samples, "buttress_calls_total", function="inner.embed", route="none", outcome="ok"
    ) == 1
    assert value(
        samples, "buttress_calls_total", function="route.embed", route="/embed", outcome="ok"
    ) == 1
    gc.collect()
    # Monitors gone, their labels go (their series stay, with their own labels).
    again = parse(metrics.generate_latest(registry))
    assert ("buttress_calls_total", frozenset(
        {("function", "default.buckets"), ("outcome", "ok")}
    )) in again


# --- duration buckets -----------------------------------------------------------------------


def bucket_bounds(registry: CollectorRegistry, function: str) -> list[str]:
    return sorted(
        (dict(labels)["le"] for name, labels in parse(metrics.generate_latest(registry))
         if name == "buttress_call_duration_seconds_bucket"
         and dict(labels)["function"] == function),
        key=float,
    )


def test_default_buckets_are_kept(registry: CollectorRegistry) -> None:
    @monitor("default.buckets")
    def fn() -> None: ...

    fn()
    assert metrics.duration_buckets()[0] == 0.001
    assert metrics.duration_buckets()[-1] == 30.0
    assert bucket_bounds(registry, "default.buckets") == [
        repr(b) for b in metrics.duration_buckets()
    ] + ["+Inf"]


def test_buckets_of_one_function(registry: CollectorRegistry, buttress_clock: FakeClock) -> None:
    @monitor("own.buckets", duration_buckets=[0.5, 60, 300])
    def train(seconds: float) -> None:
        buttress_clock.advance(seconds)

    train(100)
    assert bucket_bounds(registry, "own.buckets") == ["0.5", "60.0", "300.0", "+Inf"]
    samples = parse(metrics.generate_latest(registry))
    bucket = "buttress_call_duration_seconds_bucket"
    assert value(samples, bucket, function="own.buckets", le="60.0") == 0
    assert value(samples, bucket, function="own.buckets", le="300.0") == 1


def test_buckets_for_every_function(registry: CollectorRegistry) -> None:
    @monitor("global.buckets")
    def fn() -> None: ...

    fn()
    try:
        metrics.set_duration_buckets([0.01, 0.1, 1])
        fn()
        assert bucket_bounds(registry, "global.buckets") == ["0.01", "0.1", "1.0", "+Inf"]
        samples = parse(metrics.generate_latest(registry))
        count = "buttress_call_duration_seconds_count"
        assert value(samples, count, function="global.buckets") == 1  # started again
    finally:
        metrics.set_duration_buckets(DURATION_BUCKETS)


@pytest.mark.parametrize(
    "buckets", [[], [1, 1], [2, 1], [0, 1], [1, math.inf], "1,2", [1, "x"]]
)
def test_bad_buckets_are_refused(buckets: object) -> None:
    with pytest.raises(ConfigurationError, match="duration_buckets"):
        monitor("bad", duration_buckets=buckets)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="duration_buckets"):
        metrics.set_duration_buckets(buckets)  # type: ignore[arg-type]


def test_one_series_has_one_set_of_buckets() -> None:
    @monitor("shared.buckets", duration_buckets=[1, 2])
    def one() -> None: ...

    with pytest.raises(ConfigurationError, match="already reports its durations"):

        @monitor("shared.buckets", duration_buckets=[1, 3])
        def two() -> None: ...


# --- the forgotten metrics.enable() -------------------------------------------------------


def test_a_hint_when_no_sink_is_enabled(caplog: pytest.LogCaptureFixture) -> None:
    @monitor("unseen")
    def fn() -> None: ...

    _stats.hint_pending = True
    with caplog.at_level(logging.WARNING, logger="buttress.metrics"):
        fn()
        fn()
    hints = [r for r in caplog.records if r.name == "buttress.metrics"]
    assert len(hints) == 1
    assert "metrics.enable()" in hints[0].getMessage()


def test_no_hint_with_metrics_enabled(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    @monitor("seen")
    def fn() -> None: ...

    _stats.hint_pending = True
    with caplog.at_level(logging.WARNING, logger="buttress.metrics"):
        fn()
    assert not [r for r in caplog.records if r.name == "buttress.metrics"]
    assert not _stats.hint_pending


# --- two functions, one name ----------------------------------------------------------------


def collisions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records
        if r.name == "buttress.metrics" and "two different functions" in r.getMessage()
    ]


def text_embed() -> Callable[..., Any]:
    @cache_result(ttl=60)
    def embed(text: str) -> int:
        return len(text)

    return embed


def test_two_functions_under_one_default_name_are_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="buttress.metrics"):
        first = make_in_module("pkg_text", "embed_text_or_image")
        second = make_in_module("pkg_image", "embed_text_or_image")
        check_names()
    found = collisions(caplog)
    assert len(found) == 1, found
    assert "function='embed_text_or_image'" in found[0]
    assert "pkg_text.embed_text_or_image" in found[0]
    assert "pkg_image.embed_text_or_image" in found[0]
    assert first is not second


def test_a_monitor_naming_one_of_them_settles_it(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="buttress.metrics"):
        first = make_in_module("pkg_text2", "embed_named_later")
        # named by its monitor, applied after the cache layer: no false alarm
        second = make_in_module(
            "pkg_image2", "embed_named_later", monitor_name="image.embed_named_later"
        )
        check_names()
    assert collisions(caplog) == []
    assert second.monitor.name == "image.embed_named_later"
    assert first is not second


def test_the_same_name_given_twice_on_purpose_is_not_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="buttress.metrics"):
        make_in_module("pkg_a", "score_on_purpose", monitor_name="shared.score")
        make_in_module("pkg_b", "score_on_purpose", monitor_name="shared.score")
        check_names()
    assert collisions(caplog) == []


def test_one_function_defined_again_is_not_a_collision(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="buttress.metrics"):
        kept = [text_embed(), text_embed()]  # one definition, two function objects
        check_names()
    assert collisions(caplog) == []
    assert kept[0] is not kept[1]


def test_labels_tell_two_functions_apart(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="buttress.metrics"):
        make_in_module("pkg_c", "rank_by_model", labels={"model": "a"})
        make_in_module("pkg_d", "rank_by_model", labels={"model": "b"})
        check_names()
    assert collisions(caplog) == []


def make_in_module(
    module: str,
    name: str,
    *,
    monitor_name: str | None = None,
    labels: dict[str, str] | None = None,
) -> Any:
    """A function ``name`` defined in a module of its own (as pkg.text.embed would be)."""
    source = (
        "from buttress import cache_result, monitor\n"
        f"@monitor({monitor_name!r}, labels={labels!r})\n"
        "@cache_result(ttl=60)\n"
        f"def {name}(text):\n"
        "    return len(text)\n"
    )
    namespace: dict[str, Any] = {"__name__": module}
    exec(compile(source, f"<{module}>", "exec"), namespace)
    made = namespace[name]
    _kept.append(made)
    return made


_kept: list[Any] = []  # alive to the test's end: a collision is between live functions
