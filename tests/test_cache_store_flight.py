"""@cache_result with a store: following a flight of this process, the store's flight, early
refresh, and leaving the flight when cancelled; every call still counted once."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from _cache_support import accesses, by_kind, counted, wait_until_blocked
from buttress import (
    CacheEntry,
    CacheKey,
    CacheScope,
    CacheStore,
    CacheStoreFailed,
    cache_result,
    events,
)
from buttress._caching import _shells
from buttress.testing import FakeClock


class Down(Exception):
    pass


class MemoryStore(CacheStore):
    """An in-memory store that counts what it is asked and holds a lock per computation.

    ``refreshing`` plays another process computing every key; ``exit_waits`` makes leaving
    a flight await before it releases the lock (as a store talking to a server does), and
    ``exit_hangs`` makes it never finish.
    """

    name = "memory"

    def __init__(self, beta: float = 0.0) -> None:
        self.early_refresh_beta = beta
        self.entries: dict[str, CacheEntry] = {}
        self.locks: set[str] = set()
        self.reads = 0
        self.flights = 0
        self.refreshing = False
        self.exit_waits = False
        self.exit_hangs = False

    def get(self, key: CacheKey) -> CacheEntry | None:
        self.reads += 1
        return self.entries.get(key.digest())

    def set(self, key: CacheKey, entry: CacheEntry, keep: float | None) -> None:
        self.entries[key.digest()] = entry

    def delete(self, key: CacheKey) -> bool:
        return self.entries.pop(key.digest(), None) is not None

    def clear(self, scope: CacheScope) -> None:
        self.entries.clear()

    async def aget(self, key: CacheKey) -> CacheEntry | None:
        await anyio.lowlevel.checkpoint()
        return self.get(key)

    async def aset(self, key: CacheKey, entry: CacheEntry, keep: float | None) -> None:
        await anyio.lowlevel.checkpoint()
        self.set(key, entry, keep)

    async def adelete(self, key: CacheKey) -> bool:
        return self.delete(key)

    async def aclear(self, scope: CacheScope) -> None:
        self.clear(scope)

    @contextmanager
    def flight(
        self, key: CacheKey, current: CacheEntry | None = None
    ) -> Iterator[CacheEntry | None]:
        self.flights += 1
        if self.refreshing and current is not None:
            yield current
            return
        self.locks.add(key.digest())
        try:
            yield None
        finally:
            self.locks.discard(key.digest())

    @asynccontextmanager
    async def aflight(
        self, key: CacheKey, current: CacheEntry | None = None
    ) -> AsyncIterator[CacheEntry | None]:
        self.flights += 1
        await anyio.lowlevel.checkpoint()
        if self.refreshing and current is not None:
            yield current
            return
        self.locks.add(key.digest())
        try:
            yield None
        finally:
            # no shield of its own, as a store written for asyncio alone might be
            if self.exit_hangs:
                await anyio.sleep_forever()
            if self.exit_waits:
                await anyio.lowlevel.checkpoint()
            self.locks.discard(key.digest())


# --- following a flight of this process -------------------------------------------------


@pytest.mark.anyio
async def test_followers_of_a_flight_in_this_process_never_read_the_store() -> None:
    store = MemoryStore()
    gate = anyio.Event()

    @cache_result(ttl=60, store=store)
    async def f(x: int) -> int:
        await gate.wait()
        return x

    with accesses(f.__qualname__) as seen:
        async with anyio.create_task_group() as tg:
            tg.start_soon(f, 1)
            await anyio.wait_all_tasks_blocked()  # the leader computes
            for _ in range(19):
                tg.start_soon(f, 1)
            await anyio.wait_all_tasks_blocked()
            gate.set()
    assert store.reads == 1  # the leader's; nineteen followers asked nothing
    assert store.flights == 1
    assert by_kind(seen) == counted(f.cache.stats()) == {
        "hit": 0,
        "miss": 1,
        "join": 19,
        "stale": 0,
    }


def test_threads_following_a_flight_never_read_the_store() -> None:
    store = MemoryStore()
    gate = threading.Event()

    @cache_result(ttl=60, store=store)
    def f(x: int) -> int:
        gate.wait(30)
        return x

    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(f(1))) for _ in range(8)]
    with accesses(f.__qualname__) as seen:
        for thread in threads:
            thread.start()
        wait_until_blocked(threads, 8)  # the leader on the gate, the others on its flight
        gate.set()
        for thread in threads:
            thread.join(30)
    assert results == [1] * 8
    assert store.reads == 1
    assert by_kind(seen) == counted(f.cache.stats()) == {
        "hit": 0,
        "miss": 1,
        "join": 7,
        "stale": 0,
    }


@pytest.mark.anyio
async def test_a_stale_value_being_refreshed_is_served_and_judged_when_asked(
    buttress_clock: FakeClock,
) -> None:
    store = MemoryStore()
    gate = anyio.Event()
    calls = 0

    @cache_result(ttl=10, stale_while_revalidate=5, store=store)
    async def f(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            await gate.wait()
        return calls

    assert await f(1) == 1
    buttress_clock.advance(12)  # stale, within stale_while_revalidate
    results: list[int] = []

    async def call() -> None:
        results.append(await f(1))

    with accesses(f.__qualname__) as seen:
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)  # refreshes
            await anyio.wait_all_tasks_blocked()
            for _ in range(3):
                await call()  # served the stale value the leader found, at once
            buttress_clock.advance(5)  # now past the window: the next caller waits
            tg.start_soon(call)
            await anyio.wait_all_tasks_blocked()
            assert results == [1, 1, 1]
            gate.set()
    assert results == [1, 1, 1, 2, 2]
    assert store.reads == 2  # the first call's and the refresher's
    assert by_kind(seen) == {"hit": 0, "miss": 1, "join": 1, "stale": 3}
    assert counted(f.cache.stats()) == {"hit": 0, "miss": 2, "join": 1, "stale": 3}


@pytest.mark.anyio
async def test_without_single_flight_the_store_flight_is_never_entered() -> None:
    store = MemoryStore()
    gate = anyio.Event()
    calls = 0

    @cache_result(ttl=60, store=store, single_flight=False)
    async def f(x: int) -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        return x

    with accesses(f.__qualname__) as seen:
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(f, 1)
            await anyio.wait_all_tasks_blocked()
            gate.set()
    assert calls == 4
    assert store.flights == 0
    assert store.reads == 4  # nobody follows anybody
    assert by_kind(seen) == counted(f.cache.stats()) == {
        "hit": 0,
        "miss": 4,
        "join": 0,
        "stale": 0,
    }


# --- early refresh ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_early_refreshes_count_computations_and_every_call_counts_once(
    buttress_clock: FakeClock,
) -> None:
    store = MemoryStore(beta=1e9)  # every read of a fresh value draws a refresh
    outcomes: list[Any] = []
    gate = anyio.Event()

    @cache_result(ttl=60, store=store)
    async def f(x: int) -> int:
        buttress_clock.advance(1)  # the computation "takes" a second: XFetch weighs it
        outcome = outcomes.pop(0)
        if outcome == "wait":
            await gate.wait()
            outcome = outcomes.pop(0)
        elif outcome == "hang":
            await anyio.sleep_forever()
        if isinstance(outcome, Exception):
            raise outcome
        return int(outcome)

    made = 0

    async def call() -> Any:
        nonlocal made
        made += 1
        try:
            return await f(1)
        except Down as exc:
            return exc

    scope = anyio.CancelScope()

    async def cancelled() -> None:
        nonlocal made
        made += 1
        with scope:
            await f(1)

    with accesses(f.__qualname__) as seen:
        outcomes.append(1)
        assert await call() == 1  # miss
        outcomes.extend(["wait", 2])
        results: list[Any] = []

        async def refresher() -> None:
            results.append(await call())

        async with anyio.create_task_group() as tg:
            tg.start_soon(refresher)  # refreshes early: miss
            await anyio.wait_all_tasks_blocked()
            results.extend([await call() for _ in range(3)])  # served meanwhile: hits
            gate.set()
        assert sorted(results) == [1, 1, 1, 2]
        store.refreshing = True  # another process is refreshing: served, nothing computed
        assert await call() == 2  # hit
        store.refreshing = False
        outcomes.append(Down("endpoint down"))
        assert await call() == 2  # the refresh failed, the value is still fresh: hit
        outcomes.append("hang")
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancelled)  # a cancelled refresh: miss
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
    stats = f.cache.stats()
    kinds = by_kind(seen)
    assert kinds == counted(stats)
    assert sum(kinds.values()) == made
    assert kinds == {"hit": 3 + 1 + 1, "miss": 1 + 1 + 1, "join": 0, "stale": 0}
    assert stats.refreshes == 3  # the one that succeeded, the failed one, the cancelled one
    assert stats.errors == 1
    assert [type(e.error) for e in seen if e.error is not None] == [Down]
    assert store.locks == set()


# --- leaving the store's flight when cancelled ------------------------------------------


@pytest.mark.anyio
async def test_a_cancelled_leader_leaves_the_store_flight_even_if_leaving_awaits() -> None:
    store = MemoryStore()
    store.exit_waits = True  # the store awaits before it releases, with no shield of its own
    started = anyio.Event()

    @cache_result(ttl=60, store=store)
    async def f(x: int) -> int:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    scope = anyio.CancelScope()
    with accesses(f.__qualname__) as seen:
        async with anyio.create_task_group() as tg:

            async def lead() -> None:
                with scope:
                    await f(1)

            tg.start_soon(lead)
            await started.wait()
            assert len(store.locks) == 1
            scope.cancel()
    assert scope.cancelled_caught
    assert store.locks == set()  # released, though the scope around it was cancelled
    assert [e.result for e in seen] == ["miss"]
    assert f.cache.stats().store_errors == 0


@pytest.mark.anyio
async def test_leaving_a_flight_that_hangs_is_cut_short_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_shells, "LEAVE_GRACE", 0.2)
    store = MemoryStore()
    store.exit_hangs = True
    started = anyio.Event()
    failures: list[CacheStoreFailed] = []

    @cache_result(ttl=60, store=store)
    async def f(x: int) -> int:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    @cache_result(ttl=60, store=store)
    async def g(x: int) -> int:
        return x

    scope = anyio.CancelScope()
    with events.subscribe(failures.append, CacheStoreFailed), anyio.fail_after(30):
        async with anyio.create_task_group() as tg:

            async def lead() -> None:
                with scope:
                    await f(1)

            tg.start_soon(lead)
            await started.wait()
            scope.cancel()
        assert scope.cancelled_caught  # the cancellation still reached the caller
        assert await g(2) == 2  # not cancelled: the value is computed, the leave survived
    assert [(e.operation, type(e.error)) for e in failures] == [("flight", TimeoutError)] * 2
    assert (f.cache.stats().store_errors, g.cache.stats().store_errors) == (1, 1)
    assert (f.cache.stats().misses, g.cache.stats().misses) == (1, 1)
