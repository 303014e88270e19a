"""fn.cache: stats, invalidate, clear, bypass; honest wrappers; events."""

from __future__ import annotations

import dataclasses
import inspect

import anyio
import pytest

import buttress
from buttress import CacheAccess, CacheStats, cache_result, events


def test_stats_is_a_frozen_record() -> None:
    @cache_result
    def f(x: int) -> int:
        return x

    f(1)
    f(1)
    f(2)
    stats = f.cache.stats()
    assert isinstance(stats, CacheStats)
    assert (stats.hits, stats.misses, stats.size) == (1, 2, 2)
    assert stats.hit_ratio == pytest.approx(1 / 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.hits = 5  # type: ignore[misc]
    f(1)
    assert stats.hits == 1  # a snapshot
    assert f.cache.stats().hits == 2


def test_invalidate_drops_one_entry_bound_like_a_call() -> None:
    calls: list[int] = []

    @cache_result
    def f(a: int, b: int = 2) -> int:
        calls.append(a)
        return a + b

    f(1)
    f(5)
    assert f.cache.invalidate(a=1, b=2) is True  # same key as f(1)
    assert f.cache.invalidate(1) is False
    f(1)
    f(5)
    assert calls == [1, 5, 1]
    with pytest.raises(TypeError, match="signature"):
        f.cache.invalidate(1, 2, 3)  # type: ignore[call-arg]


def test_clear_drops_everything_and_keeps_counters() -> None:
    @cache_result
    def f(x: int) -> int:
        return x

    for x in range(5):
        f(x)
    f.cache.clear()
    stats = f.cache.stats()
    assert stats.size == 0
    assert stats.misses == 5
    f(1)
    assert f.cache.stats().misses == 6


def test_bypass_calls_the_function_without_the_cache() -> None:
    calls: list[int] = []

    @cache_result
    def f(x: int) -> int:
        calls.append(x)
        return x * 2

    assert f(3) == 6
    assert f.cache.bypass(3) == 6
    assert f.cache.bypass(3) == 6
    assert calls == [3, 3, 3]
    assert f.cache.stats().size == 1
    assert f.cache.stats().misses == 1


@pytest.mark.anyio
async def test_async_forms_of_the_handle() -> None:
    calls: list[int] = []

    @cache_result
    async def f(x: int) -> int:
        calls.append(x)
        return x

    await f(1)
    await f(2)
    assert await f.cache.ainvalidate(1) is True
    await f(1)
    assert calls == [1, 2, 1]
    await f.cache.aclear()
    assert f.cache.stats().size == 0
    assert await f.cache.bypass(9) == 9  # the coroutine function itself
    assert f.cache.stats().size == 0


@pytest.mark.anyio
async def test_a_computation_running_during_invalidation_does_not_store() -> None:
    gate = anyio.Event()
    version = 0

    @cache_result
    async def f(x: int) -> int:
        nonlocal version
        version += 1
        seen = version
        await gate.wait()
        return seen

    results: list[int] = []

    async def call() -> None:
        results.append(await f(1))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        f.cache.invalidate(1)  # what f read may be what is being invalidated
        gate.set()
    assert results == [1]  # its caller still gets the value it waited for
    assert f.cache.stats().size == 0
    assert await f(1) == 2


def test_wrappers_are_honest() -> None:
    def plain(a: int, b: str = "x") -> str:
        """Doc."""
        return b * a

    async def coroutine(a: int) -> int:
        return a

    cached_plain = cache_result(plain)
    cached_coroutine = cache_result(ttl=5)(coroutine)
    assert cached_plain.__name__ == "plain"
    assert cached_plain.__doc__ == "Doc."
    assert inspect.signature(cached_plain) == inspect.signature(plain)
    assert not inspect.iscoroutinefunction(cached_plain)
    assert inspect.iscoroutinefunction(cached_coroutine)
    assert cached_plain.__wrapped__ is plain  # type: ignore[attr-defined]


def test_generators_are_refused() -> None:
    def numbers() -> object:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        cache_result(numbers)


@pytest.mark.anyio
async def test_hits_and_misses_are_events() -> None:
    seen: list[tuple[str, str]] = []

    @cache_result
    async def f(x: int) -> int:
        return x

    with events.subscribe(lambda e: seen.append((e.function, e.result)), CacheAccess):
        await f(1)
        await f(1)
    name = f.__qualname__
    assert seen == [(name, "miss"), (name, "hit")]


def test_a_subscriber_may_call_back_into_the_cache() -> None:
    @cache_result(maxsize=1)
    def f(x: int) -> int:
        return x

    def on_event(event: buttress.Event) -> None:
        f.cache.stats()
        if isinstance(event, buttress.CacheEviction):
            f.cache.clear()

    with events.subscribe(on_event):
        f(1)
        f(2)  # evicts 1; the subscriber clears while the cache reports
    assert f.cache.stats().size == 0


def test_public_names() -> None:
    for name in (
        "cache_result",
        "CacheStats",
        "CacheHandle",
        "CachedFunction",
        "CachedMethod",
        "CacheStore",
        "CacheEntry",
        "CacheKey",
        "CacheScope",
        "LocalStore",
        "UnkeyableArgumentError",
        "CacheStoreError",
    ):
        assert name in buttress.__all__
        assert getattr(buttress, name) is not None
    assert list(buttress.__all__) == sorted(buttress.__all__)
