"""Probabilistic early refresh (XFetch), decided by @cache_result for stores that offer it."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from buttress import CacheEntry, CacheKey, CacheScope, CacheStore, cache_result
from buttress._caching._policy import refresh_early
from buttress.testing import FakeClock

positive = st.floats(min_value=1e-6, max_value=1e6)


@given(now=st.floats(0, 1e6), left=positive, duration=positive, beta=positive, u=st.floats(0, 1))
def test_a_refresh_due_now_stays_due_later(
    now: float, left: float, duration: float, beta: float, u: float
) -> None:
    draw = min(u, 1 - 1e-12)
    expires = now + left
    if refresh_early(now, expires, duration, beta, draw):
        assert refresh_early(now + left / 2, expires, duration, beta, draw)
    assert not refresh_early(now, expires, 0.0, beta, draw)  # nothing measured: never


def test_the_refresh_probability_is_exp_of_minus_left_over_duration_beta() -> None:
    rng = random.Random(7)
    left, duration, beta = 2.0, 1.0, 1.5
    draws = 20_000
    due = sum(refresh_early(0.0, left, duration, beta, rng.random()) for _ in range(draws))
    expected = math.exp(-left / (duration * beta))
    assert abs(due / draws - expected) < 0.02


class EagerStore(CacheStore):
    """An in-memory store that offers early refresh; ``refreshing`` plays another process."""

    name = "eager"

    def __init__(self, beta: float) -> None:
        self.early_refresh_beta = beta
        self.entries: dict[tuple[str, str], CacheEntry] = {}
        self.refreshing = False

    def get(self, key: CacheKey) -> CacheEntry | None:
        return self.entries.get((key.scope.function, key.digest()))

    def set(self, key: CacheKey, entry: CacheEntry, keep: float | None) -> None:
        self.entries[(key.scope.function, key.digest())] = entry

    def delete(self, key: CacheKey) -> bool:
        return self.entries.pop((key.scope.function, key.digest()), None) is not None

    def clear(self, scope: CacheScope) -> None:
        self.entries.clear()

    async def aget(self, key: CacheKey) -> CacheEntry | None:
        return self.get(key)

    async def aset(self, key: CacheKey, entry: CacheEntry, keep: float | None) -> None:
        self.set(key, entry, keep)

    async def adelete(self, key: CacheKey) -> bool:
        return self.delete(key)

    async def aclear(self, scope: CacheScope) -> None:
        self.clear(scope)

    @contextmanager
    def flight(
        self, key: CacheKey, current: CacheEntry | None = None
    ) -> Iterator[CacheEntry | None]:
        yield current if self.refreshing and current is not None else None

    @asynccontextmanager
    async def aflight(
        self, key: CacheKey, current: CacheEntry | None = None
    ) -> AsyncIterator[CacheEntry | None]:
        yield current if self.refreshing and current is not None else None


@pytest.mark.anyio
async def test_while_one_caller_refreshes_early_the_others_get_the_value_at_once(
    buttress_clock: FakeClock,
) -> None:
    store = EagerStore(beta=1e9)  # every read of a fresh value draws a refresh
    release = anyio.Event()
    calls = 0

    @cache_result(ttl=60, store=store)
    async def f(x: int) -> int:
        nonlocal calls
        calls += 1
        buttress_clock.advance(1)  # the computation "took" a second
        if calls == 2:
            await release.wait()  # the refresh hangs until the others were served
        return calls

    assert await f(1) == 1
    served: list[int] = []

    async def call() -> None:
        served.append(await f(1))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)  # draws the refresh and computes
        await anyio.wait_all_tasks_blocked()
        for _ in range(5):
            tg.start_soon(call)  # served the current value, not joined to the refresh
        await anyio.wait_all_tasks_blocked()
        assert served == [1] * 5
        release.set()
    assert served == [1] * 5 + [2]
    stats = f.cache.stats()
    assert (stats.misses, stats.refreshes, stats.hits, stats.joins) == (2, 1, 5, 0)


def test_a_refresh_another_process_does_is_not_repeated(buttress_clock: FakeClock) -> None:
    store = EagerStore(beta=1e9)
    calls: list[int] = []

    @cache_result(ttl=60, store=store)
    def f(x: int) -> int:
        buttress_clock.advance(1)
        calls.append(x)
        return len(calls)

    f(1)
    store.refreshing = True
    assert f(1) == 1  # the flight handed back the current value: no computation
    assert calls == [1]
    assert f.cache.stats().hits == 1
    store.refreshing = False
    assert f(1) == 2


def test_threads_are_served_while_one_thread_refreshes(buttress_clock: FakeClock) -> None:
    store = EagerStore(beta=1e9)
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    @cache_result(ttl=60, store=store)
    def f(x: int) -> int:
        buttress_clock.advance(1)
        calls.append(x)
        if len(calls) == 2:
            started.set()
            assert release.wait(10)
        return len(calls)

    f(1)
    refresher = threading.Thread(target=f, args=(1,))
    refresher.start()
    assert started.wait(10)
    assert [f(1) for _ in range(3)] == [1, 1, 1]
    release.set()
    refresher.join()
    assert len(calls) == 2
    assert f.cache.stats().refreshes == 1


def test_without_a_store_nothing_is_refreshed_early(buttress_clock: FakeClock) -> None:
    calls: list[int] = []

    @cache_result(ttl=60)
    def f(x: int) -> int:
        buttress_clock.advance(1)
        calls.append(x)
        return x

    for _ in range(10):
        f(1)
    buttress_clock.advance(58.9)
    f(1)
    assert calls == [1]
