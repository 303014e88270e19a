"""@batch's metrics: batch sizes, waits, batches in flight and rejected items, from events
to Prometheus (parsed by prometheus-client) and DogStatsD (a real UDP listener)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import anyio
import pytest
from prometheus_client import CollectorRegistry

from _monitor_support import fresh_monitoring, parse, value
from buttress import BatchQueueFullError, batch, flush_monitoring, metrics
from buttress.testing import FakeClock
from test_monitor_statsd import receive, total


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    with fresh_monitoring():
        yield


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    metrics.enable(registry)
    return registry


@pytest.mark.anyio
async def test_batch_metrics_in_prometheus(
    registry: CollectorRegistry, buttress_clock: FakeClock
) -> None:
    release = anyio.Event()

    @batch(max_size=4, max_wait=0.004, max_concurrency=1, max_queue=5)
    async def embed(texts: list[str]) -> list[int | Exception]:
        await release.wait()
        return [len(t) if t else ValueError("empty") for t in texts]

    name = embed.batcher.function

    async def call(text: str) -> None:
        try:
            await embed.one(text)
        except ValueError:
            pass

    async with anyio.create_task_group() as group:
        for text in ("a", "bb", "", "dddd"):  # a full batch, in flight
            group.start_soon(call, text)
        await anyio.wait_all_tasks_blocked()
        for text in ("f", "g", "h", "i", "j"):  # a full batch queued, one item gathering
            group.start_soon(call, text)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(BatchQueueFullError):  # max_queue=5: a sixth waiting is refused
            await embed.one("k")
        in_flight = parse(metrics.generate_latest(registry))
        release.set()

    function = {"function": name}
    assert value(in_flight, "buttress_batches_in_flight", **function) == 1
    found = parse(metrics.generate_latest(registry))
    assert value(found, "buttress_batch_rejections_total", **function) == 1
    assert value(found, "buttress_batches_in_flight", **function) == 0
    assert value(found, "buttress_batches_total", outcome="ok", **function) == 3
    assert value(found, "buttress_batch_item_errors_total", **function) == 1  # the "" item
    assert value(found, "buttress_batch_size_count", **function) == 3
    assert value(found, "buttress_batch_size_sum", **function) == 9
    assert value(found, "buttress_batch_size_bucket", le="1.0", **function) == 1
    assert value(found, "buttress_batch_size_bucket", le="2.0", **function) == 1
    assert value(found, "buttress_batch_size_bucket", le="4.0", **function) == 3
    # The first batch was sent as it filled; the others waited for the only slot, and
    # the last gathered for max_wait first (on the fake clock, exactly 4 ms).
    assert value(found, "buttress_batch_wait_seconds_count", **function) == 3
    assert value(found, "buttress_batch_wait_seconds_bucket", le="0.0005", **function) == 1
    assert value(found, "buttress_batch_wait_seconds_bucket", le="0.0025", **function) == 1
    assert value(found, "buttress_batch_wait_seconds_bucket", le="0.005", **function) == 3
    stats = embed.batcher.stats()
    assert (stats.batches, stats.items, stats.rejected, stats.failed_items) == (3, 9, 1, 1)


def test_batch_metrics_in_dogstatsd(buttress_clock: FakeClock) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        metrics.enable_dogstatsd(port=sock.getsockname()[1], prefix="ml")

        @batch(max_size=3, max_wait=0.002)
        def square(items: list[int]) -> list[int]:
            return [x * x for x in items]

        assert square.one(3) == 9
        assert square([1, 2]) == [1, 4]  # a direct call is not a batch of the batcher's
        assert flush_monitoring()
        lines = receive(sock, prefix="ml.")
    finally:
        metrics.disable_dogstatsd()
        sock.close()
    function = "function:" + square.batcher.function.replace("<", "_").replace(">", "_")
    assert total(lines, "ml.batch_size.count", function) == 1
    assert total(lines, "ml.batch_size.sum", function) == 1
    assert total(lines, "ml.batch_wait_seconds.sum", function) == pytest.approx(0.002)
    assert total(lines, "ml.batches", function, "outcome:ok") == 1
    gauges = [line for line in lines if line.name == "ml.batches_in_flight"]
    assert [line.value for line in gauges] == [0]
