"""buttress' metrics through an OpenTelemetry Meter, read by the SDK's in-memory reader.

The same families as the Prometheus exposition: names, attributes (label keys), the
histogram buckets, observable gauges for calls in flight and breaker states.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from prometheus_client import CollectorRegistry

from _monitor_support import parse
from _otel_support import Telemetry, telemetry
from buttress import (
    CircuitOpenError,
    cache_result,
    circuit_breaker,
    flush_monitoring,
    metrics,
    monitor,
    retry,
)
from buttress._monitoring._stats import DURATION_BUCKETS


@pytest.fixture
def meter() -> Iterator[Telemetry]:
    with telemetry(traces=False) as recorded:
        yield recorded


def point(points: list[Any], **wanted: str) -> Any:
    found = [p for p in points if dict(p.attributes) == wanted]
    assert len(found) == 1, [dict(p.attributes) for p in points]
    return found[0]


def test_calls_and_durations(meter: Telemetry) -> None:
    @monitor("predict", labels={"model": "m1"})
    def predict(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x

    for x in (1, 2, 3, -1):
        try:
            predict(x)
        except ValueError:
            pass
    flush_monitoring()  # durations are recorded by the exporter thread
    found = meter.metrics()
    calls = found["buttress_calls"]
    assert point(calls, function="predict", model="m1", outcome="ok").value == 3
    assert point(calls, function="predict", model="m1", outcome="error").value == 1
    assert point(calls, function="predict", model="m1", outcome="cancelled").value == 0
    duration = point(found["buttress_call_duration_seconds"], function="predict", model="m1")
    assert duration.count == 4
    assert tuple(duration.explicit_bounds) == DURATION_BUCKETS
    assert sum(duration.bucket_counts) == 4
    assert duration.sum >= 0
    assert point(found["buttress_in_flight"], function="predict", model="m1").value == 0


def test_the_unit_of_durations_is_seconds(meter: Telemetry) -> None:
    @monitor("timed")
    def timed() -> None:
        pass

    timed()
    flush_monitoring()
    data = meter.reader.get_metrics_data()
    assert data is not None
    units = {
        metric.name: metric.unit
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert units["buttress_call_duration_seconds"] == "s"


@pytest.mark.anyio
async def test_in_flight_is_observed_while_calls_run(meter: Telemetry) -> None:
    seen: list[int] = []

    @monitor("busy")
    async def busy() -> None:
        await anyio.lowlevel.checkpoint()
        points = meter.metrics()["buttress_in_flight"]
        seen.append(point(points, function="busy").value)

    await busy()
    assert seen == [1]
    assert point(meter.metrics()["buttress_in_flight"], function="busy").value == 0


def test_tracked_outputs_are_a_histogram(meter: Telemetry) -> None:
    @monitor("score", track_output=lambda scores: max(scores))
    def score() -> list[float]:
        return [0.2, 0.75]

    score()
    flush_monitoring()
    output = point(meter.metrics()["buttress_output"], function="score")
    assert output.count == 1
    assert output.sum == pytest.approx(0.75)


def test_event_counters_and_breaker_states(meter: Telemetry) -> None:
    failures = 1

    @monitor("fetch")
    @cache_result
    @retry(base_delay=0)
    def fetch(key: str) -> str:
        nonlocal failures
        if failures:
            failures -= 1
            raise ConnectionError("once")
        return key

    @circuit_breaker(name="otel-test-breaker", minimum_calls=1, failure_ratio=0.5, open_for=60)
    def broken() -> None:
        raise OSError("down")

    fetch("a")
    fetch("a")
    with pytest.raises(OSError, match="down"):
        broken()
    with pytest.raises(CircuitOpenError):
        broken()
    found = meter.metrics()
    # every layer of the stack reports the monitor's name
    assert point(found["buttress_retries"], function="fetch").value == 1
    cache = found["buttress_cache_requests"]
    assert {dict(p.attributes)["result"]: p.value for p in cache} == {"miss": 1, "hit": 1}
    states = {
        dict(p.attributes)["state"]: p.value
        for p in found["buttress_circuit_state"]
        if dict(p.attributes)["breaker"] == "otel-test-breaker"
    }
    assert states == {"closed": 0, "open": 1, "half_open": 0}
    transitions = point(
        found["buttress_circuit_transitions"],
        breaker="otel-test-breaker",
        **{"from": "closed", "to": "open"},
    )
    assert transitions.value == 1
    assert len(found["buttress_circuit_rejections"]) == 1


def test_the_families_are_the_ones_prometheus_sees(meter: Telemetry) -> None:
    """Every family the Prometheus exposition has samples for exists under the same name
    (counters without Prometheus' ``_total``), with the same label keys."""
    registry = CollectorRegistry()
    metrics.enable(registry)
    try:

        @monitor("everything", track_output=float)
        @cache_result
        @retry(base_delay=0, max_retries=1)
        def everything(x: int) -> int:
            if x < 0:
                raise ValueError("negative")
            return x

        everything(1)
        everything(1)
        with pytest.raises(ValueError, match="negative"):
            everything(-1)
        flush_monitoring()
        exposition = parse(metrics.generate_latest(registry).decode())
        found = meter.metrics()
    finally:
        metrics.disable()
    prometheus: dict[str, set[str]] = {}
    for sample, labels in exposition:
        if dict(labels).get("function", "everything") != "everything":
            continue  # functions of earlier tests (their totals stay, zeroed)
        family = sample
        for suffix in ("_total", "_bucket", "_count", "_sum"):
            family = family.removesuffix(suffix)
        if family.startswith("buttress_"):
            # a static label of another test's monitor is "none" here (Prometheus only)
            prometheus.setdefault(family, set()).update(
                k for k, v in labels if k != "le" and v != "none"
            )
    assert prometheus, "nothing exposed"
    for family, keys in prometheus.items():
        if family == "buttress_circuit_state" and family not in found:
            continue  # no breaker alive in this test
        assert family in found, f"{family} is missing from the OpenTelemetry metrics"
        otel_keys = set().union(
            *(
                dict(p.attributes)
                for p in found[family]
                if dict(p.attributes).get("function", "everything") == "everything"
            )
        )
        assert otel_keys == keys, family


def test_disabled_metrics_observe_nothing_more() -> None:
    @monitor("gone")
    def gone() -> None:
        pass

    with telemetry(traces=False) as recorded:
        gone()
        assert "buttress_calls" in recorded.metrics()
        from buttress import otel

        otel.disable()
        gone()
        assert "buttress_calls" not in recorded.metrics()


def test_metrics_off_leaves_the_events_and_exporter_alone() -> None:
    from buttress._monitoring._emitter import exporter

    with telemetry(metrics=False) as recorded:
        assert not exporter.wants_calls
        assert recorded.metrics() == {}


def test_event_fed_histograms_and_gauges_reach_the_meter(meter: Telemetry) -> None:
    # The HTTP families (fed by the integrations' middlewares) and @batch's.
    from buttress import batch
    from buttress._monitoring import _http

    for status in (200, 200, 503):
        _http.record_request("GET", "/items/{item_id}", status, _http.start())

    @batch(max_size=4, max_wait=0)
    def double(items: list[int]) -> list[int]:
        return [item * 2 for item in items]

    assert double.one(3) == 6
    flush_monitoring()  # each observed value is recorded by the exporter thread
    found = meter.metrics()
    http = {"method": "GET", "route": "/items/{item_id}"}
    assert point(found["buttress_http_requests"], **http, status_class="2xx").value == 2
    duration = point(found["buttress_http_request_duration_seconds"], **http, status_class="2xx")
    assert duration.count == 2
    assert tuple(duration.explicit_bounds) == DURATION_BUCKETS
    errors = point(found["buttress_http_request_duration_seconds"], **http, status_class="5xx")
    assert errors.count == 1
    sizes = found["buttress_batch_size"]
    assert len(sizes) == 1
    assert sizes[0].count == 1
    assert sizes[0].sum == 1
    assert len(found["buttress_batches_in_flight"]) == 1
    assert found["buttress_batches_in_flight"][0].value == 0
