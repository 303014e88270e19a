"""@monitor on streams: one record per stream, its items, its time to first item."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import anyio
import anyio.lowlevel
import pytest
from prometheus_client import CollectorRegistry

from _monitor_support import capture, fresh_monitoring, parse, value
from _stream_support import drain
from buttress import JsonFormatter, flush_monitoring, metrics, monitor
from buttress.testing import FakeClock


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


@pytest.mark.anyio
async def test_one_record_per_stream_with_items_and_time_to_first_item(
    buttress_clock: FakeClock,
) -> None:
    @monitor("tokens")
    async def tokens(prompt: str) -> AsyncIterator[str]:
        buttress_clock.advance(0.25)  # connecting, the model's first token
        for word in prompt.split():
            buttress_clock.advance(0.5)
            yield word

    with capture() as records:
        assert [w async for w in tokens("a b c")] == ["a", "b", "c"]
        flush_monitoring()
    [record] = records.of("tokens")
    assert record.outcome == "ok"  # type: ignore[attr-defined]
    assert record.duration == pytest.approx(1.75)  # type: ignore[attr-defined]
    assert record.stream == {  # type: ignore[attr-defined]
        "items": 3,
        "first_item": pytest.approx(0.75),
        "ended": "completed",
    }
    assert set(record.inputs) == {"prompt"}  # type: ignore[attr-defined]
    assert record.output is None  # type: ignore[attr-defined]
    assert "(stream: 3 item(s), the first after 750.0 ms)" in record.getMessage()
    line = json.loads(JsonFormatter().format(record))
    assert line["stream"]["items"] == 3


@pytest.mark.anyio
async def test_failed_cancelled_and_abandoned_streams(buttress_clock: FakeClock) -> None:
    @monitor("chunks")
    async def chunks(n: int, fail: bool = False) -> AsyncIterator[int]:
        for index in range(n):
            await anyio.lowlevel.checkpoint()
            yield index
        if fail:
            raise ConnectionError("reset")
        await anyio.sleep_forever()

    with capture() as records:
        with pytest.raises(ConnectionError):
            async for _ in chunks(2, fail=True):
                pass
        stream = chunks(5)
        await stream.__anext__()
        await stream.aclose()
        with anyio.move_on_after(0.05):
            async for _ in chunks(1):
                pass
        flush_monitoring()
    failed, abandoned, cancelled = records.of("chunks")
    assert (failed.outcome, failed.stream["ended"], failed.stream["items"]) == (  # type: ignore[attr-defined]
        "error",
        "failed",
        2,
    )
    assert failed.exc_info is not None
    assert (abandoned.outcome, abandoned.stream["ended"]) == ("cancelled", "abandoned")  # type: ignore[attr-defined]
    assert "abandoned by its caller" in abandoned.getMessage()
    assert (cancelled.outcome, cancelled.stream["ended"]) == ("cancelled", "cancelled")  # type: ignore[attr-defined]
    assert chunks.monitor.stats().items == 2 + 1 + 1
    assert chunks.monitor.stats().calls == 3


@pytest.mark.anyio
async def test_stream_metrics_reach_prometheus(
    registry: CollectorRegistry, buttress_clock: FakeClock
) -> None:
    @monitor("generate")
    async def generate(n: int, first: float) -> AsyncIterator[int]:
        buttress_clock.advance(first)
        for index in range(n):
            yield index

    for n, first in ((4, 0.02), (6, 0.3), (0, 1.0)):
        assert len([x async for x in generate(n, first)]) == n
    samples = scrape(registry)
    assert value(samples, "buttress_stream_items_total", function="generate") == 10
    assert value(samples, "buttress_calls_total", function="generate", outcome="ok") == 3
    bucket = "buttress_stream_first_item_seconds_bucket"
    assert value(samples, bucket, function="generate", le="0.025") == 1
    assert value(samples, bucket, function="generate", le="0.5") == 2
    assert value(samples, bucket, function="generate", le="+Inf") == 2  # one had no item
    assert value(
        samples, "buttress_stream_first_item_seconds_sum", function="generate"
    ) == pytest.approx(0.32)
    # A function that is not a stream has no stream series.
    assert ("buttress_stream_items_total", frozenset({("function", "other")})) not in samples


def test_in_flight_counts_a_stream_from_first_item_to_end(
    registry: CollectorRegistry,
) -> None:
    @monitor("lines")
    def lines() -> Iterator[str]:
        yield "a"
        yield "b"

    stream = lines()
    assert value(scrape(registry), "buttress_in_flight", function="lines") == 0
    next(stream)
    assert value(scrape(registry), "buttress_in_flight", function="lines") == 1
    stream.close()
    samples = scrape(registry)
    assert value(samples, "buttress_in_flight", function="lines") == 0
    assert value(samples, "buttress_calls_total", function="lines", outcome="cancelled") == 1


@pytest.mark.anyio
async def test_track_output_tracks_each_item(registry: CollectorRegistry) -> None:
    @monitor("scores", track_output=float)
    async def scores() -> AsyncIterator[float]:
        for score in (0.15, 0.55, 0.95):
            yield score

    assert [s async for s in scores()] == [0.15, 0.55, 0.95]
    samples = scrape(registry)
    assert value(samples, "buttress_output_count", function="scores") == 3
    assert value(samples, "buttress_output_sum", function="scores") == pytest.approx(1.65)


@pytest.mark.anyio
async def test_a_stream_is_slow_when_its_first_item_is(buttress_clock: FakeClock) -> None:
    @monitor("slow_start", slow_threshold=1.0)
    async def tokens(first: float) -> AsyncIterator[int]:
        buttress_clock.advance(first)
        yield 0
        buttress_clock.advance(10)  # a long stream after a quick start is not slow
        yield 1

    with capture() as records:
        assert await drain(tokens(0.1)) == [0, 1]
        assert await drain(tokens(2.0)) == [0, 1]
        flush_monitoring()
    quick, slow = records.of("slow_start")
    assert (quick.slow, slow.slow) == (False, True)  # type: ignore[attr-defined]
