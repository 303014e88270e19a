"""A cancelled leader leaves the RedisStore's flight at once: its lock is released, not left
to expire, so another replica computes without waiting for ``lock_ttl``."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio

from _cache_support import accesses, by_kind, counted
from _redis_support import named, no_stray_threads, raw_client  # noqa: F401  (a fixture)
from buttress import CacheKey, CacheScope, RedisStore, cache_result

pytestmark = [pytest.mark.redis, pytest.mark.usefixtures("no_stray_threads")]

#: Far longer than any test here may take: a lock still there was not released.
LOCK_TTL = 600.0


async def embed(x: int) -> int:
    """The replicas' shared function (one qualified name, so one Redis key per x)."""
    return x * 10


def _lock_name(store: RedisStore, x: int) -> str:
    scope = CacheScope(embed.__qualname__, module=embed.__module__)
    return store.key_name(CacheKey(scope, (x,))) + ":lock"


async def _cancel_while_computing(
    store: RedisStore, client: redis.Redis, x: int
) -> Callable[[int], Awaitable[int]]:
    """Start computing ``x`` through ``store``, check the lock is held, cancel the call."""
    started = anyio.Event()

    async def hang(x: int) -> int:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    hang.__qualname__ = embed.__qualname__
    hang.__module__ = embed.__module__
    leader = cache_result(ttl=60, store=store, name=named(embed))(hang)
    scope = anyio.CancelScope()

    async def lead() -> None:
        with scope:
            await leader(x)

    with accesses(hang.__qualname__) as seen:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lead)
            await started.wait()
            assert client.exists(_lock_name(store, x)) == 1  # held while it computes
            scope.cancel()
    assert scope.cancelled_caught
    # released on the way out, not left to expire LOCK_TTL seconds from now
    assert client.exists(_lock_name(store, x)) == 0
    assert [event.result for event in seen] == ["miss"]
    assert by_kind(seen) == counted(leader.cache.stats())
    assert leader.cache.stats().store_errors == 0
    return leader


async def _another_replica_computes_at_once(redis_url: str, x: int) -> None:
    other = RedisStore(redis_url, lock_ttl=LOCK_TTL, timeout=5)
    try:
        fn = cache_result(ttl=60, store=other)(embed)
        with anyio.fail_after(LOCK_TTL / 10):  # generous; waiting for the lock would hang
            assert await fn(x) == x * 10
        assert other.stats().waits == 0  # it found no lock to wait for
        assert other.stats().takeovers == 0
        assert fn.cache.stats().misses == 1
    finally:
        await other.aclose()
        other.close()


@pytest.mark.anyio
async def test_a_cancelled_leader_releases_its_redis_lock_at_once(redis_url: str) -> None:
    client = raw_client(redis_url)
    store = RedisStore(redis_url, lock_ttl=LOCK_TTL, timeout=5)
    try:
        await _cancel_while_computing(store, client, 1)
        await _another_replica_computes_at_once(redis_url, 1)
    finally:
        await store.aclose()
        store.close()
        client.close()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_cancelled_leader_releases_a_lock_renewed_by_a_task(
    redis_url: str, anyio_backend: Any
) -> None:
    # Given only a redis.asyncio client, the store renews its lock from a task group it
    # opens inside the flight: leaving the flight must keep that group's scope nested.
    client = raw_client(redis_url)
    given = redis.asyncio.Redis.from_url(redis_url)
    store = RedisStore(client=given, lock_ttl=LOCK_TTL)
    try:
        await _cancel_while_computing(store, client, 2)
        await _another_replica_computes_at_once(redis_url, 2)
    finally:
        await store.aclose()
        await given.aclose()
        client.close()


@pytest.mark.anyio
async def test_a_cancelled_leader_lets_a_waiting_replica_take_over_at_once(
    redis_url: str,
) -> None:
    # Replica b waits on a's lock (polling Redis); a is cancelled: b takes over as soon as
    # the lock is gone, long before LOCK_TTL.
    client = raw_client(redis_url)
    first = RedisStore(redis_url, lock_ttl=LOCK_TTL, timeout=5)
    second = RedisStore(redis_url, lock_ttl=LOCK_TTL, timeout=5)
    started = anyio.Event()

    async def hang(x: int) -> int:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    hang.__qualname__ = embed.__qualname__
    hang.__module__ = embed.__module__
    a = cache_result(ttl=60, store=first, name=named(embed))(hang)
    b = cache_result(ttl=60, store=second)(embed)
    results: list[int] = []
    scope = anyio.CancelScope()

    async def replica_a() -> None:
        with scope:
            await a(3)

    async def replica_b() -> None:
        await started.wait()  # a holds the lock now
        results.append(await b(3))

    try:
        with anyio.fail_after(LOCK_TTL / 10):  # generous; b would otherwise wait LOCK_TTL
            async with anyio.create_task_group() as tg:
                tg.start_soon(replica_a)
                tg.start_soon(replica_b)
                # no event tells that b found a's lock and waits for it: its store counts
                while second.stats().waits == 0:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
                scope.cancel()
        assert results == [30]
        assert second.stats().takeovers == 1  # b took the lock a released, and computed
        assert (a.cache.stats().misses, b.cache.stats().misses) == (1, 1)
        assert client.exists(_lock_name(first, 3)) == 0
    finally:
        for store in (first, second):
            await store.aclose()
            store.close()
        client.close()


async def slowly(x: int) -> int:
    await anyio.sleep(0.2)
    return x


@pytest.mark.anyio
async def test_every_call_counts_once_when_callers_are_cancelled(redis_url: str) -> None:
    # 10 callers of a cold key at once, 5 of them cancelled after 0-10 ms: while they read
    # Redis, or while they wait for the leader. Each call counts once, however it ended.
    store = RedisStore(redis_url, timeout=5)
    fn = cache_result(ttl=60, store=store)(slowly)
    rng = random.Random(13)
    rounds = 6
    try:
        with accesses(slowly.__qualname__) as seen:
            for key in range(rounds):
                scopes = [anyio.CancelScope() for _ in range(10)]

                async def call(scope: anyio.CancelScope, key: int = key) -> None:
                    with scope:
                        assert await fn(key) == key

                async def cancel(scope: anyio.CancelScope, after: float) -> None:
                    await anyio.sleep(after)
                    scope.cancel()

                async with anyio.create_task_group() as tg:
                    for scope in scopes:
                        tg.start_soon(call, scope)
                    for scope in scopes[5:]:
                        tg.start_soon(cancel, scope, rng.uniform(0, 0.01))
        stats = fn.cache.stats()
        assert sum(counted(stats).values()) == 10 * rounds
        assert by_kind(seen) == counted(stats)  # one event per call, of the same kind
        assert stats.misses >= rounds  # each key computed (a cancelled leader's waiter too)
    finally:
        await store.aclose()
        store.close()
