"""@cache_result(store=...): the store protocol, LocalStore, failures, the flight hook."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import numpy as np
import pytest

from buttress import (
    CacheEntry,
    CacheKey,
    CacheScope,
    CacheStore,
    CacheStoreError,
    CacheStoreFailed,
    LocalStore,
    UnkeyableArgumentError,
    cache_result,
    events,
    flush_monitoring,
)
from buttress._events import event_log
from buttress.testing import FakeClock


class RecordingStore(CacheStore):
    """An in-memory store keyed like a remote one (digest of the stable bytes)."""

    name = "recording"

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], CacheEntry] = {}
        self.sets: list[tuple[CacheKey, CacheEntry, float | None]] = []
        self.failing: Exception | None = None
        self.found: CacheEntry | None = None  # what flight() reports another process made
        self.flights = 0

    def _key(self, key: CacheKey) -> tuple[str, str]:
        if self.failing is not None:
            raise self.failing
        return (key.scope.function, key.digest())

    def get(self, key: CacheKey) -> CacheEntry | None:
        return self.entries.get(self._key(key))

    def set(self, key: CacheKey, entry: CacheEntry, keep: float | None) -> None:
        self.entries[self._key(key)] = entry
        self.sets.append((key, entry, keep))

    def delete(self, key: CacheKey) -> bool:
        return self.entries.pop(self._key(key), None) is not None

    def clear(self, scope: CacheScope) -> None:
        for k in [k for k in self.entries if k[0] == scope.function]:
            del self.entries[k]

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
        yield self.found

    @asynccontextmanager
    async def aflight(
        self, key: CacheKey, current: CacheEntry | None = None
    ) -> AsyncIterator[CacheEntry | None]:
        self.flights += 1
        await anyio.lowlevel.checkpoint()
        yield self.found


@pytest.mark.anyio
async def test_a_store_receives_entries_with_their_metadata(buttress_clock: FakeClock) -> None:
    store = RecordingStore()
    buttress_clock.advance(100)

    @cache_result(ttl=30, stale_if_error=10, store=store)
    async def f(x: int) -> np.ndarray:
        await buttress_clock.async_sleep(2)  # the computation "takes" two seconds
        return np.ones(4)

    first = await f(1)
    assert not first.flags.writeable
    ((key, entry, keep),) = store.sets
    assert key.scope.function == f.__qualname__
    assert key.parts == (1,)
    assert (entry.stored_at, entry.ttl, entry.duration) == (102, 30, 2)
    assert (entry.size, entry.arrays, entry.expires) == (32, True, 132)
    assert keep == 40  # ttl plus the longest stale window
    await f(1)
    assert len(store.sets) == 1
    assert f.cache.stats().hits == 1
    assert f.cache.stats().size is None  # this store cannot tell


def test_sync_functions_use_the_sync_interface(buttress_clock: FakeClock) -> None:
    store = RecordingStore()
    calls: list[int] = []

    @cache_result(store=store)
    def f(x: int) -> int:
        calls.append(x)
        return x

    assert f(1) == f(1) == f(x=1) == 1
    assert calls == [1]
    assert store.flights == 1
    assert f.cache.invalidate(1) is True
    f(1)
    f.cache.clear()
    assert store.entries == {}
    assert calls == [1, 1]


@pytest.mark.anyio
async def test_single_flight_in_the_process_comes_before_the_store() -> None:
    store = RecordingStore()
    calls = 0

    @cache_result(store=store)
    async def f(x: int) -> int:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.01)
        return x

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(f, 1)
    assert calls == 1
    assert store.flights == 1
    assert len(store.sets) == 1


@pytest.mark.anyio
async def test_an_entry_found_by_the_flight_hook_is_served(buttress_clock: FakeClock) -> None:
    store = RecordingStore()
    store.found = CacheEntry("from another process", stored_at=0.0, ttl=60)

    @cache_result(store=store)
    async def f(x: int) -> str:
        raise AssertionError("must not run: another process computed it")

    assert await f(1) == "from another process"
    stats = f.cache.stats()
    assert (stats.joins, stats.misses) == (1, 0)


@pytest.mark.anyio
async def test_a_failing_store_is_survived_counted_reported_and_logged_on_one_channel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = RecordingStore()
    store.failing = ConnectionError("redis is down")
    failures: list[CacheStoreFailed] = []
    calls = 0

    @cache_result(store=store)
    async def f(x: int) -> int:
        nonlocal calls
        calls += 1
        return x

    event_log.reset()  # the log's rate limit counts per function name: start afresh
    with caplog.at_level(logging.WARNING), events.subscribe(failures.append, CacheStoreFailed):
        assert await f(1) == 1
        assert await f(1) == 1
        assert flush_monitoring()  # the records are built in the exporter thread
    assert calls == 2
    operations = [(e.store, e.operation) for e in failures]
    assert operations == [("recording", "get"), ("recording", "set")] * 2
    assert f.cache.stats().store_errors == 4
    logged = [r for r in caplog.records if "redis is down" in r.getMessage()]
    # one channel: buttress.events, one record per failure within its rate limit
    assert {r.name for r in logged} == {"buttress.events"}
    assert [(r.store, r.operation) for r in logged] == operations  # type: ignore[attr-defined]
    assert {r.levelno for r in logged} == {logging.WARNING}
    store.failing = None  # back: caching resumes by itself
    await f(1)
    await f(1)
    assert calls == 3


def test_a_store_that_fails_closed_reaches_the_caller() -> None:
    store = RecordingStore()
    store.failing = CacheStoreError("refusing to run uncached")

    @cache_result(store=store)
    def f(x: int) -> int:
        return x

    with pytest.raises(CacheStoreError):
        f(1)


def test_identity_keyed_arguments_cannot_reach_a_shared_store() -> None:
    store = RecordingStore()

    class Client:
        pass

    @cache_result(store=store)
    def f(client: Client, x: int) -> int:
        return x

    with pytest.raises(UnkeyableArgumentError, match="'client'"):
        f(Client(), 1)


@pytest.mark.anyio
async def test_local_store_shared_by_two_functions_keeps_their_entries_apart() -> None:
    store = LocalStore(maxsize=3)

    @cache_result(store=store)
    async def double(x: int) -> int:
        return 2 * x

    @cache_result(store=store)
    def triple(x: int) -> int:
        return 3 * x

    assert await double(1) == 2
    assert triple(1) == 3  # same arguments, another function: another entry
    assert await double(1) == 2
    assert double.cache.stats().size == 1
    assert len(store) == 2
    triple(2)
    triple(3)  # the fourth entry: the least recently used (triple(1)) goes
    assert triple.cache.stats().evictions == 1
    assert double.cache.stats().evictions == 0
    await double.cache.aclear()
    assert len(store) == 2
    assert triple.cache.stats().size == 2


def test_local_store_shares_one_byte_ceiling(buttress_clock: FakeClock) -> None:
    store = LocalStore(max_bytes=3 * 800)

    @cache_result(store=store)
    def a(seed: int) -> np.ndarray:
        return np.zeros(100)

    @cache_result(store=store)
    def b(seed: int) -> np.ndarray:
        return np.zeros(100)

    a(1)
    b(1)
    a(2)
    b(2)
    assert a.cache.stats().bytes == 800
    assert b.cache.stats().bytes == 1600
    assert a.cache.stats().evictions == 1


def test_local_store_expiry(buttress_clock: FakeClock) -> None:
    store = LocalStore()
    calls: list[Any] = []

    @cache_result(ttl=5, store=store)
    def f(x: int) -> int:
        calls.append(x)
        return x

    f(1)
    buttress_clock.advance(6)
    f(1)
    assert len(calls) == 2
    buttress_clock.advance(6)
    assert f.cache.stats().size == 0
    assert f.cache.stats().expirations == 2


def test_max_bytes_with_a_store_is_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        cache_result(store=LocalStore(), max_bytes=10)
