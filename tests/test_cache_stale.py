"""@cache_result serving expired values on purpose: stale_while_revalidate, stale_if_error."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from buttress import CacheAccess, cache_result, events
from buttress.testing import FakeClock


class Down(Exception):
    pass


@pytest.mark.anyio
async def test_stale_while_revalidate_serves_at_once_while_one_refreshes(
    buttress_clock: FakeClock,
) -> None:
    version = 0
    gate = anyio.Event()

    @cache_result(ttl=10, stale_while_revalidate=5)
    async def f(x: int) -> int:
        nonlocal version
        version += 1
        if version > 1:
            await gate.wait()
        return version

    assert await f(1) == 1
    buttress_clock.advance(12)  # expired 2 s ago, inside the 5 s window
    refreshed: list[int] = []

    async def refresher() -> None:
        refreshed.append(await f(1))

    async with anyio.create_task_group() as tg:
        tg.start_soon(refresher)
        await anyio.wait_all_tasks_blocked()
        assert version == 2  # the refresh is running
        for _ in range(5):
            with anyio.fail_after(5):  # served at once, not after the refresh
                assert await f(1) == 1
        gate.set()
    assert refreshed == [2]
    assert await f(1) == 2
    stats = f.cache.stats()
    assert stats.stale == 5
    assert stats.misses == 2
    assert version == 2


@pytest.mark.anyio
async def test_past_the_revalidate_window_callers_wait_for_the_computation(
    buttress_clock: FakeClock,
) -> None:
    version = 0

    @cache_result(ttl=10, stale_while_revalidate=5)
    async def f(x: int) -> int:
        nonlocal version
        version += 1
        await anyio.lowlevel.checkpoint()
        return version

    assert await f(1) == 1
    buttress_clock.advance(15)  # 5 s past expiry: the window is [10, 15)
    assert await f(1) == 2
    assert f.cache.stats().stale == 0


@pytest.mark.anyio
async def test_stale_if_error_serves_the_old_value_and_reports_the_error(
    buttress_clock: FakeClock,
) -> None:
    failing = False
    seen: list[CacheAccess] = []

    @cache_result(ttl=10, stale_if_error=30)
    async def f(x: int) -> str:
        if failing:
            raise Down("model endpoint down")
        return "v1"

    assert await f(1) == "v1"
    failing = True
    buttress_clock.advance(20)
    with events.subscribe(seen.append, CacheAccess):
        assert await f(1) == "v1"
    assert [(e.result, type(e.error)) for e in seen] == [("stale", Down)]  # one call, one access
    stats = f.cache.stats()
    assert (stats.stale, stats.errors) == (1, 1)
    buttress_clock.advance(25)  # 35 s past expiry: out of the window
    with pytest.raises(Down):
        await f(1)
    failing = False
    assert await f(1) == "v1"


@pytest.mark.anyio
async def test_waiters_of_a_failed_refresh_get_the_stale_value_too(
    buttress_clock: FakeClock,
) -> None:
    gate = anyio.Event()
    calls = 0

    @cache_result(ttl=1, stale_if_error=60)
    async def f(x: int) -> str:
        nonlocal calls
        calls += 1
        if calls > 1:
            await gate.wait()
            raise Down
        return "old"

    assert await f(1) == "old"
    buttress_clock.advance(2)
    results: list[str] = []

    async def call() -> None:
        results.append(await f(1))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        gate.set()
    assert results == ["old"] * 4
    assert calls == 2


@pytest.mark.anyio
async def test_both_windows_a_failed_revalidation_serves_stale(buttress_clock: FakeClock) -> None:
    failing = False

    @cache_result(ttl=10, stale_while_revalidate=5, stale_if_error=60)
    async def f(x: int) -> int:
        if failing:
            raise Down
        return 1

    await f(1)
    failing = True
    buttress_clock.advance(11)
    assert await f(1) == 1  # the refresher failed: stale instead of the error
    assert await f(1) == 1  # and the next caller refreshes again
    assert f.cache.stats().errors == 2


def test_threads_get_stale_values_while_one_thread_refreshes(buttress_clock: FakeClock) -> None:
    version = 0
    gate = threading.Event()
    started = threading.Event()

    @cache_result(ttl=10, stale_while_revalidate=5)
    def f(x: int) -> int:
        nonlocal version
        version += 1
        if version > 1:
            started.set()
            gate.wait(30)
        return version

    assert f(1) == 1
    buttress_clock.advance(11)
    refreshed: list[Any] = []
    refresher = threading.Thread(target=lambda: refreshed.append(f(1)))
    refresher.start()
    assert started.wait(30)
    begin = time.monotonic()
    assert [f(1) for _ in range(3)] == [1, 1, 1]
    assert time.monotonic() - begin < 10  # not blocked behind the refresh
    gate.set()
    refresher.join(30)
    assert refreshed == [2]
    assert f(1) == 2
    assert f.cache.stats().stale == 3


def test_sync_stale_if_error(buttress_clock: FakeClock) -> None:
    failing = False

    @cache_result(ttl=1, stale_if_error=5)
    def f(x: int) -> str:
        if failing:
            raise Down
        return "ok"

    f(1)
    failing = True
    buttress_clock.advance(3)
    assert f(1) == "ok"
    buttress_clock.advance(5)
    with pytest.raises(Down):
        f(1)
