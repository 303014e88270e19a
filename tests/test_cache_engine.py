"""@cache_result's one engine: what reaches it, what it hands back, stores counted once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from _cache_support import accesses, by_kind, counted
from buttress import (
    CacheEntry,
    CacheKey,
    CacheScope,
    CacheStore,
    CacheStoreError,
    LocalStore,
    cache_result,
)
from buttress._caching import _engine
from buttress.testing import FakeClock


@pytest.fixture
def plans(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The keys of every call that reached the engine (patched before decorating)."""
    seen: list[Any] = []
    original = _engine.Engine.plan

    def plan(self: Any, key: Any, *rest: Any) -> Any:
        seen.append(key)
        return original(self, key, *rest)

    monkeypatch.setattr(_engine.Engine, "plan", plan)
    return seen


def test_a_sync_hit_never_reaches_the_engine(plans: list[Any]) -> None:
    @cache_result
    def f(x: int) -> int:
        return x

    for _ in range(5):
        f(1)
    assert plans == [1]  # one int argument is its own key
    assert f.cache.stats().hits == 4


@pytest.mark.anyio
async def test_async_hits_and_stampede_joins_never_reach_the_engine(plans: list[Any]) -> None:
    gate = anyio.Event()

    @cache_result
    async def f(x: int) -> int:
        await gate.wait()
        return x

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(f, 1)
        await anyio.wait_all_tasks_blocked()
        gate.set()
    for _ in range(5):
        await f(1)
    assert plans == [1]  # one int argument is its own key  # the leader only
    assert counted(f.cache.stats()) == {"hit": 5, "miss": 1, "join": 49, "stale": 0}


def test_a_stop_iteration_from_the_function_reaches_the_caller_unchanged() -> None:
    # The engine is a generator: an exception leaving it as StopIteration would be turned
    # into a RuntimeError, so errors leave it as values and the shell raises them.
    @cache_result
    def f(x: int) -> int:
        return next(iter([]))  # type: ignore[no-any-return]

    with pytest.raises(StopIteration):
        f(1)
    assert f.cache.stats().errors == 1


# --- stores: one count per call too ------------------------------------------------------


class FlakyStore(CacheStore):
    """An in-memory store that can fail, fail closed, or report another process's value."""

    name = "flaky"

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], CacheEntry] = {}
        self.failing: Exception | None = None
        self.found: CacheEntry | None = None

    def _key(self, key: CacheKey) -> tuple[str, str]:
        if self.failing is not None:
            raise self.failing
        return (key.scope.function, key.digest())

    def get(self, key: CacheKey) -> CacheEntry | None:
        return self.entries.get(self._key(key))

    def set(self, key: CacheKey, entry: CacheEntry, keep: float | None) -> None:
        self.entries[self._key(key)] = entry

    def delete(self, key: CacheKey) -> bool:
        return self.entries.pop(self._key(key), None) is not None

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
        found, self.found = self.found, None
        yield found

    @asynccontextmanager
    async def aflight(
        self, key: CacheKey, current: CacheEntry | None = None
    ) -> AsyncIterator[CacheEntry | None]:
        await anyio.lowlevel.checkpoint()
        found, self.found = self.found, None
        yield found


@pytest.mark.anyio
async def test_store_calls_each_count_once(buttress_clock: FakeClock) -> None:
    store = FlakyStore()
    gate = anyio.Event()
    failing = False

    @cache_result(ttl=10, stale_if_error=30, store=store)
    async def f(x: int) -> int:
        if x == 9:
            await gate.wait()
        if failing:
            raise ValueError("down")
        return x

    made = 0

    async def call(x: int) -> None:
        nonlocal made
        made += 1
        try:
            await f(x)
        except (ValueError, CacheStoreError):
            pass

    with accesses(f.__qualname__) as seen:
        await call(1)  # miss
        await call(1)  # hit, read from the store
        store.found = CacheEntry(2, stored_at=0.0, ttl=60)
        await call(2)  # another process computed it: join
        store.failing = ConnectionError("store down")
        await call(3)  # the read is survived: miss (the write too)
        store.failing = CacheStoreError("fail closed")
        await call(3)  # the read is refused: the call ends before reading, not counted
        made -= 1
        store.failing = None
        async with anyio.create_task_group() as tg:  # single-flight before the store
            for _ in range(4):
                tg.start_soon(call, 9)
            await anyio.wait_all_tasks_blocked()
            gate.set()
        buttress_clock.advance(15)
        failing = True
        await call(1)  # expired, the refresh fails: stale with the error
    kinds = by_kind(seen)
    assert kinds == counted(f.cache.stats())
    assert sum(kinds.values()) == made
    assert kinds == {"hit": 1, "miss": 1 + 1 + 1, "join": 1 + 3, "stale": 1}
    assert [type(e.error) for e in seen if e.result == "stale"] == [ValueError]
    assert f.cache.stats().store_errors == 2


def test_sync_store_calls_each_count_once(buttress_clock: FakeClock) -> None:
    store = LocalStore()
    failing = False

    @cache_result(ttl=10, stale_if_error=30, store=store)
    def f(x: int) -> int:
        if failing:
            raise ValueError("down")
        return x

    with accesses(f.__qualname__) as seen:
        f(1)
        f(1)
        buttress_clock.advance(15)
        failing = True
        assert f(1) == 1
        with pytest.raises(ValueError):
            f(2)
    assert [(e.result, type(e.error).__name__) for e in seen] == [
        ("miss", "NoneType"),
        ("hit", "NoneType"),
        ("stale", "ValueError"),
        ("miss", "NoneType"),
    ]
    assert by_kind(seen) == counted(f.cache.stats())
