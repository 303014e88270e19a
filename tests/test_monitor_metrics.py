"""buttress.metrics: the Prometheus families, counters fed by events, exposition, push."""

from __future__ import annotations

import http.server
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import numpy as np
import prometheus_client
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from _monitor_support import Records, capture, fresh_monitoring, parse, value
from buttress import (
    BulkheadRejected,
    CacheAccess,
    CacheEviction,
    CacheStoreFailed,
    CircuitRejected,
    CircuitStateChanged,
    FallbackUsed,
    HedgeStarted,
    MemoryGuardDecision,
    RateLimited,
    RetryBudgetExhausted,
    TimedOut,
    ValidationFailed,
    events,
    flush_monitoring,
    metrics,
    monitor,
    retry,
)
from buttress._monitoring._stats import counters
from buttress.testing import FakeClock

SRC = Path(__file__).resolve().parent.parent / "src"


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    with fresh_monitoring():
        yield


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    metrics.enable(registry)
    return registry


def scrape(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return parse(metrics.generate_latest(registry))


def test_calls_duration_and_in_flight(
    registry: CollectorRegistry, buttress_clock: FakeClock
) -> None:
    seen_in_flight: list[float | None] = []

    @monitor("predict")
    def predict(seconds: float) -> float:
        buttress_clock.advance(seconds)
        seen_in_flight.append(value(scrape(registry), "buttress_in_flight", function="predict"))
        if seconds > 40:
            raise TimeoutError("too slow")
        return seconds

    for seconds in (0.0005, 0.02, 0.3):
        predict(seconds)
    with pytest.raises(TimeoutError):
        predict(45.0)

    samples = scrape(registry)
    assert seen_in_flight == [1, 1, 1, 1]
    assert value(samples, "buttress_in_flight", function="predict") == 0
    assert value(samples, "buttress_calls_total", function="predict", outcome="ok") == 3
    assert value(samples, "buttress_calls_total", function="predict", outcome="error") == 1
    assert value(samples, "buttress_calls_total", function="predict", outcome="cancelled") == 0
    bucket = "buttress_call_duration_seconds_bucket"
    expected = {"0.001": 1, "0.025": 2, "0.25": 2, "0.5": 3, "30.0": 3, "+Inf": 4}
    for le, count in expected.items():
        assert value(samples, bucket, function="predict", le=le) == count, le
    assert value(samples, "buttress_call_duration_seconds_count", function="predict") == 4
    assert value(
        samples, "buttress_call_duration_seconds_sum", function="predict"
    ) == pytest.approx(45.3205)


@pytest.mark.anyio
async def test_async_durations_and_cancellations(registry: CollectorRegistry) -> None:
    @monitor("fetch")
    async def fetch(delay: float) -> None:
        await anyio.sleep(delay)

    await fetch(0.05)
    with anyio.move_on_after(0.05):
        await fetch(10)
    samples = scrape(registry)
    assert value(samples, "buttress_calls_total", function="fetch", outcome="ok") == 1
    assert value(samples, "buttress_calls_total", function="fetch", outcome="cancelled") == 1
    total = value(samples, "buttress_call_duration_seconds_sum", function="fetch")
    assert total is not None
    assert 0.09 <= total < 20


def test_track_output_histogram_and_anomalies(registry: CollectorRegistry) -> None:
    def top_score(scores: list[float]) -> float:
        if not scores:
            raise ValueError("no scores")
        return max(scores)

    @monitor("rank", track_output=top_score, output_buckets=(0.1, 0.5, 0.9))
    def rank(scores: list[float]) -> list[float]:
        return scores

    with capture() as records:
        for scores in ([0.05], [0.3, 0.95], [0.7], [3.0], [math.nan], [math.inf], [], []):
            rank(scores)
        assert flush_monitoring()
    samples = scrape(registry)
    bucket = "buttress_output_bucket"
    assert [
        value(samples, bucket, function="rank", le=le) for le in ("0.1", "0.5", "0.9", "+Inf")
    ] == [1, 1, 2, 4]
    assert value(samples, "buttress_output_sum", function="rank") == pytest.approx(4.7)
    assert value(samples, "buttress_output_count", function="rank") == 4
    anomalies = "buttress_output_anomalies_total"
    assert value(samples, anomalies, function="rank", kind="nan") == 1
    assert value(samples, anomalies, function="rank", kind="inf") == 1
    assert value(samples, anomalies, function="rank", kind="error") == 2
    warnings = [r for r in records if "track_output" in r.getMessage()]
    assert len(warnings) == 1  # once per function, with the traceback
    assert warnings[0].exc_info is not None
    assert [r.tracked_output for r in records.of("rank")[:2]] == [0.05, 0.95]  # type: ignore[attr-defined]


def test_input_anomalies_are_counted(registry: CollectorRegistry) -> None:
    @monitor("infer")
    def infer(batch: np.ndarray, *, temperature: float = 1.0) -> None:
        pass

    infer(np.array([1.0, np.nan, np.nan]))
    infer(np.array([np.inf]), temperature=math.nan)
    infer(np.ones(3))
    infer(np.arange(3))
    samples = scrape(registry)
    assert value(samples, "buttress_input_anomalies_total", function="infer", kind="nan") == 2
    assert value(samples, "buttress_input_anomalies_total", function="infer", kind="inf") == 1


def test_static_labels(registry: CollectorRegistry) -> None:
    @monitor("a", labels={"model": "resnet"})
    def a() -> None:
        pass

    @monitor("b", labels={"stage": "rerank"})
    def b() -> None:
        pass

    a()
    b()
    samples = scrape(registry)
    calls = "buttress_calls_total"
    assert value(samples, calls, function="a", model="resnet", outcome="ok") == 1
    # a label another function lacks is empty, which Prometheus treats as absent
    assert value(samples, calls, function="b", stage="rerank", outcome="ok") == 1


def test_no_subscription_without_metrics() -> None:
    @monitor
    def f() -> None:
        pass

    f()
    assert not counters.listening
    assert events.active is False  # the event hook stays free
    registry = CollectorRegistry()
    metrics.enable(registry)
    assert counters.listening
    assert events.active
    metrics.disable()
    assert not counters.listening
    assert events.active is False


def test_retry_events_drive_counters(
    registry: CollectorRegistry, buttress_clock: FakeClock
) -> None:
    attempts = 0

    @retry(max_retries=3, base_delay=0.1, jitter=None, exceptions=ConnectionError)
    def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError("reset")
        return "ok"

    @retry(max_retries=2, base_delay=0.1, jitter=None)
    def broken() -> None:
        raise OSError("down")

    assert flaky() == "ok"
    with pytest.raises(OSError, match="down"):
        broken()
    samples = scrape(registry)
    assert value(samples, "buttress_retries_total", function=flaky.__qualname__) == 2
    assert value(samples, "buttress_retries_total", function=broken.__qualname__) == 2
    assert (
        value(
            samples,
            "buttress_retry_give_ups_total",
            function=broken.__qualname__,
            reason="attempts",
        )
        == 1
    )
    assert buttress_clock.sleeps == [0.1, 0.2, 0.1, 0.2]


def test_every_event_kind_is_counted(registry: CollectorRegistry) -> None:
    emitted = [
        *(CacheAccess("embed", "hit") for _ in range(3)),
        CacheAccess("embed", "miss"),
        CacheAccess("embed", "join"),
        CacheAccess("embed", "stale"),
        CacheEviction("embed", "size", count=5),
        CacheEviction("embed", "expired"),
        CacheStoreFailed("embed", "redis", "get", ConnectionError("x")),
        ValidationFailed("predict", "input", ()),
        ValidationFailed("predict", "output", ()),
        MemoryGuardDecision("train", "admitted", used=1, limit=2, percent=50.0, source="cgroup"),
        MemoryGuardDecision("train", "rejected", used=2, limit=2, percent=99.0, source="cgroup"),
        MemoryGuardDecision("train", "rejected", used=2, limit=2, percent=99.0, source="cgroup"),
        CircuitStateChanged("call", "db", "closed", "open"),
        CircuitStateChanged("call", "db", "open", "half_open"),
        CircuitRejected("call", "db"),
        BulkheadRejected("call"),
        RateLimited("call", waited=0.5, rejected=False),
        RateLimited("call", waited=0.0, rejected=True),
        TimedOut("call", seconds=1.0),
        FallbackUsed("call", error=RuntimeError("x")),
        HedgeStarted("call", attempt=2),
        RetryBudgetExhausted("call"),
    ]
    for event in emitted:
        events.emit(event)
    samples = scrape(registry)
    expected = {
        ("buttress_cache_requests_total", ("embed", "hit")): 3,
        ("buttress_cache_requests_total", ("embed", "miss")): 1,
        ("buttress_cache_requests_total", ("embed", "join")): 1,
        ("buttress_cache_requests_total", ("embed", "stale")): 1,
    }
    for (name, (function, result)), count in expected.items():
        assert value(samples, name, function=function, result=result) == count
    assert value(samples, "buttress_cache_evictions_total", function="embed", reason="size") == 5
    assert value(samples, "buttress_cache_evictions_total", function="embed", reason="expired") == 1
    assert (
        value(
            samples,
            "buttress_cache_store_errors_total",
            function="embed",
            store="redis",
            operation="get",
        )
        == 1
    )
    failures = "buttress_validation_failures_total"
    assert value(samples, failures, function="predict", direction="input") == 1
    assert value(samples, failures, function="predict", direction="output") == 1
    assert value(samples, "buttress_input_anomalies_total", function="predict", kind="invalid") == 1
    guard = "buttress_memory_guard_total"
    assert value(samples, guard, function="train", action="admitted") == 1
    assert value(samples, guard, function="train", action="rejected") == 2
    transitions = "buttress_circuit_transitions_total"
    assert value(samples, transitions, breaker="db", **{"from": "closed", "to": "open"}) == 1
    assert value(samples, transitions, breaker="db", **{"from": "open", "to": "half_open"}) == 1
    state = "buttress_circuit_state"
    assert value(samples, state, breaker="db", state="half_open") == 1
    assert value(samples, state, breaker="db", state="open") == 0
    assert value(samples, state, breaker="db", state="closed") == 0
    assert value(samples, "buttress_circuit_rejections_total", function="call", breaker="db") == 1
    assert value(samples, "buttress_bulkhead_rejections_total", function="call") == 1
    assert value(samples, "buttress_rate_limited_total", function="call", action="waited") == 1
    assert value(samples, "buttress_rate_limited_total", function="call", action="rejected") == 1
    assert value(samples, "buttress_timeouts_total", function="call") == 1
    assert value(samples, "buttress_fallbacks_total", function="call") == 1
    assert value(samples, "buttress_hedges_total", function="call") == 1
    assert value(samples, "buttress_retry_budget_exhausted_total", function="call") == 1


def test_subclassed_events_count_and_disabled_metrics_do_not(registry: CollectorRegistry) -> None:
    class TracedAccess(CacheAccess):
        pass

    events.emit(TracedAccess("embed", "hit"))
    metrics.disable()
    events.emit(CacheAccess("embed", "hit"))  # nobody listens now
    metrics.enable(registry)
    samples = scrape(registry)
    assert value(samples, "buttress_cache_requests_total", function="embed", result="hit") == 1


def test_enable_moves_between_registries() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()

    @monitor("moved")
    def moved() -> None:
        pass

    moved()
    assert metrics.enable(first) is first
    assert metrics.enable(first) is first  # again: nothing changes
    assert metrics.current_registry() is first
    metrics.enable(second)
    left = parse(prometheus_client.generate_latest(first))
    assert value(left, "buttress_in_flight", function="moved") is None
    assert value(scrape(second), "buttress_calls_total", function="moved", outcome="ok") == 1
    metrics.disable()
    assert metrics.current_registry() is None
    metrics.disable()  # twice is harmless


def test_enable_refuses_a_clashing_registry() -> None:
    registry = CollectorRegistry()
    prometheus_client.Counter("buttress_calls", "someone else's", registry=registry)
    with pytest.raises(ValueError, match="buttress_calls"):
        metrics.enable(registry)
    assert metrics.current_registry() is None
    assert not counters.listening


def test_default_registry_is_used_by_default() -> None:
    @monitor("default_registry_function")
    def f() -> None:
        pass

    f()
    text = metrics.generate_latest()
    assert metrics.current_registry() is prometheus_client.REGISTRY
    samples = parse(text)
    assert (
        value(samples, "buttress_calls_total", function="default_registry_function", outcome="ok")
        == 1
    )


class SlowCollector(Collector):
    """A collector that takes a while, like a big registry does."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        time.sleep(0.3)
        yield GaugeMetricFamily("slow_thing", "slow", value=1)


@pytest.mark.anyio
async def test_render_runs_in_a_worker_thread(registry: CollectorRegistry) -> None:
    registry.register(SlowCollector())
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    async with anyio.create_task_group() as group:
        group.start_soon(ticker)
        body, content_type = await metrics.render(registry=registry)
        group.cancel_scope.cancel()
    assert ticks >= 5  # the loop kept running while the 0.3 s render went on
    assert content_type.startswith("text/plain")
    assert value(parse(body), "slow_thing") == 1


@pytest.mark.anyio
async def test_render_negotiates_openmetrics(registry: CollectorRegistry) -> None:
    body, content_type = await metrics.render(
        "application/openmetrics-text; version=1.0.0", registry
    )
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


class Pushgateway:
    """A real HTTP server on 127.0.0.1 that records what is pushed to it."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                owner.requests.append((self.command, self.path, self.rfile.read(length)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_PUT = do_POST = _record

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host!s}:{port}"

    def __enter__(self) -> Pushgateway:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def test_push_to_gateway(registry: CollectorRegistry) -> None:
    @monitor("batch_job")
    def step() -> None:
        pass

    for _ in range(3):
        step()
    with Pushgateway() as gateway:
        metrics.push_to_gateway(gateway.address, "nightly", grouping_key={"shard": "7"})
        metrics.push_to_gateway(gateway.address, "nightly", registry=registry, replace=False)
    (method, path, body), (method2, path2, _) = gateway.requests
    assert (method, path) == ("PUT", "/metrics/job/nightly/shard/7")
    assert (method2, path2) == ("POST", "/metrics/job/nightly")
    samples = parse(body)
    assert value(samples, "buttress_calls_total", function="batch_job", outcome="ok") == 3


@pytest.mark.anyio
async def test_push_to_gateway_async(registry: CollectorRegistry) -> None:
    @monitor("async_job")
    async def step() -> None:
        pass

    await step()
    with Pushgateway() as gateway:
        await metrics.push_to_gateway_async(gateway.address, "async")
    ((method, path, body),) = gateway.requests
    assert (method, path) == ("PUT", "/metrics/job/async")
    assert value(parse(body), "buttress_calls_total", function="async_job", outcome="ok") == 1


def test_push_to_an_unreachable_gateway_raises(registry: CollectorRegistry) -> None:
    with Pushgateway() as gateway:
        address = gateway.address
    with pytest.raises(OSError):
        metrics.push_to_gateway(address, "gone", timeout=2)


def test_dropped_records_family_exists_at_zero(registry: CollectorRegistry) -> None:
    assert value(scrape(registry), "buttress_monitor_dropped_total") == 0


def test_optional_dependencies_are_imported_lazily() -> None:
    script = (
        "import sys, buttress, buttress.metrics, buttress.integrations;"
        "from buttress import monitor;"
        "monitor(lambda: 1)();"
        "heavy = ('prometheus_client', 'datadog', 'fastapi', 'starlette', 'uvicorn');"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "[]"


def test_records_are_not_needed_for_metrics(registry: CollectorRegistry) -> None:
    # logging off entirely: metrics still count every call
    with capture(level=100) as records:

        @monitor("silent")
        def silent() -> None:
            pass

        for _ in range(7):
            silent()
        assert flush_monitoring()
    assert isinstance(records, Records)
    assert len(records) == 0
    assert value(scrape(registry), "buttress_calls_total", function="silent", outcome="ok") == 7


def test_a_breaker_that_never_changed_state_shows_closed(registry: CollectorRegistry) -> None:
    from buttress import circuit_breaker

    @circuit_breaker(name="metrics-test-quiet-breaker")
    def lookup() -> int:
        return 1

    assert lookup() == 1  # no transition, so no CircuitStateChanged event
    samples = scrape(registry)
    state = "buttress_circuit_state"
    assert value(samples, state, breaker="metrics-test-quiet-breaker", state="closed") == 1
    assert value(samples, state, breaker="metrics-test-quiet-breaker", state="open") == 0
    lookup.breaker.force_open()
    samples = scrape(registry)
    assert value(samples, state, breaker="metrics-test-quiet-breaker", state="open") == 1
