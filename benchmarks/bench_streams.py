"""Decorated streams: the cost per item, and per stream, beside the bare generator.

No library decorates generators, so there is no peer; the floor is the least any wrapper
that acts per stream can cost: a hand-written relay generator (``async for item in
source: yield item`` inside ``aclosing``, or ``yield from`` for a plain generator), the
extra hop every item then takes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import buttress
from _harness import Comparison, Timing, median_of, time_async, time_sync

ITEMS = 1000  # items per stream in the per-item tables


def _async_relay(fn: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def relay(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async with contextlib.aclosing(fn(*args, **kwargs)) as source:
            async for item in source:
                yield item

    return relay


def _sync_relay(fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    def relay(*args: Any, **kwargs: Any) -> Iterator[Any]:
        yield from fn(*args, **kwargs)

    return relay


def _async_decorators() -> list[tuple[str, str, Callable[[Any], Any]]]:
    """(name, kind, decorate) for an async generator function."""
    return [
        ("hand-written relay (aclosing + async for)", "floor", _async_relay),
        ("buttress.retry", "ours", buttress.retry(max_retries=3)),
        (
            "buttress.timeout (first_item, idle, total)",
            "ours",
            buttress.timeout(60, first_item=10, idle=10),
        ),
        ("buttress.circuit_breaker", "ours", buttress.circuit_breaker(minimum_calls=10**9)),
        ("buttress.bulkhead", "ours", buttress.bulkhead(1000)),
        ("buttress.rate_limit", "ours", buttress.rate_limit(10**9)),
        ("buttress.memory_guard", "ours", buttress.memory_guard(max_percent=100)),
        ("buttress.monitor", "ours", buttress.monitor("bench_stream")),
        (
            "buttress.policy (monitor, timeout, retry, breaker, bulkhead)",
            "ours",
            buttress.policy(
                monitor="bench_policy_stream",
                timeout={"seconds": 60, "idle": 10},
                retry=3,
                circuit_breaker={"minimum_calls": 10**9},
                bulkhead=1000,
            ),
        ),
    ]


def _sync_decorators() -> list[tuple[str, str, Callable[[Any], Any]]]:
    return [
        ("hand-written relay (yield from)", "floor", _sync_relay),
        ("buttress.retry", "ours", buttress.retry(max_retries=3)),
        ("buttress.circuit_breaker", "ours", buttress.circuit_breaker(minimum_calls=10**9)),
        ("buttress.bulkhead", "ours", buttress.bulkhead(1000)),
        ("buttress.monitor", "ours", buttress.monitor("bench_sync_stream")),
    ]


def _per_item(timing: Timing, items: int) -> Timing:
    return median_of(value / items for value in timing.rounds)


def collect(quick: bool) -> list[Comparison]:
    items = 50 if quick else ITEMS

    async def tokens(n: int) -> AsyncIterator[int]:
        for index in range(n):
            yield index

    def lines(n: int) -> Iterator[int]:
        yield from range(n)

    per_item = Comparison(
        f"stream, per item, async generator ({items} items a stream)",
        note="The cost each item pays on its way through the decorator, once the stream "
        "has started.",
    )
    per_item_sync = Comparison(f"stream, per item, plain generator ({items} items a stream)")
    per_stream = Comparison(
        "stream of one item, per stream, async generator",
        note="Opening, admitting, relaying one item and closing a stream.",
    )

    def consume(fn: Callable[[int], AsyncIterator[int]], n: int) -> Callable[[], Any]:
        async def run() -> None:
            async for _ in fn(n):
                pass

        return run

    def consume_sync(fn: Callable[[int], Iterator[int]], n: int) -> Callable[[], Any]:
        def run() -> None:
            for _ in fn(n):
                pass

        return run

    per_item.add(
        "bare async generator",
        _per_item(time_async(consume(tokens, items), quick=quick), items),
        "bare",
    )
    per_stream.add("bare async generator", time_async(consume(tokens, 1), quick=quick), "bare")
    for name, kind, decorate in _async_decorators():
        wrapped = decorate(tokens)
        timing = time_async(consume(wrapped, items), quick=quick)
        per_item.add(name, _per_item(timing, items), kind)
        per_stream.add(name, time_async(consume(wrapped, 1), quick=quick), kind)

    per_item_sync.add(
        "bare generator",
        _per_item(time_sync(consume_sync(lines, items), quick=quick), items),
        "bare",
    )
    for name, kind, decorate in _sync_decorators():
        wrapped = decorate(lines)
        timing = time_sync(consume_sync(wrapped, items), quick=quick)
        per_item_sync.add(name, _per_item(timing, items), kind)
    return [per_item, per_item_sync, per_stream]
