"""RedisStore when Redis fails: calls go on uncached, caching resumes, or fail closed."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import anyio
import numpy as np
import pytest
import redis

from _redis_support import (
    no_stray_threads,  # noqa: F401  (a fixture)
    raw_client,
)
from buttress import (
    CacheStoreFailed,
    RedisStore,
    RedisStoreError,
    UnencodableResultError,
    cache_result,
    events,
    flush_monitoring,
)
from buttress._events import event_log

pytestmark = [pytest.mark.redis, pytest.mark.usefixtures("no_stray_threads")]


def square(x: int) -> int:
    return x * x


async def asquare(x: int) -> int:
    await anyio.sleep(0.001)
    return x * x


def _resumed(fn: Any, store: RedisStore, call: Any) -> bool:
    """Whether a new key, computed now, is stored and then served from Redis."""
    writes = store.stats().writes
    hits = fn.cache.stats().hits
    key = 1000 + writes
    call(key)
    call(key)
    return store.stats().writes > writes and fn.cache.stats().hits > hits


@pytest.mark.slow
def test_redis_stopped_mid_run_then_restarted_sync(private_redis: Any, caplog: Any) -> None:
    store = RedisStore(private_redis.url, timeout=0.5)
    fn = cache_result(ttl=60, store=store)(square)
    failures: list[BaseException] = []
    results = 0
    stop = threading.Event()

    def caller(offset: int) -> None:
        nonlocal results
        i = 0
        while not stop.is_set():
            i += 1
            try:
                assert fn((i + offset) % 7) == ((i + offset) % 7) ** 2
                results += 1
            except BaseException as exc:  # any failure at all is what this test is about
                failures.append(exc)
            time.sleep(0.002)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(4)]
    event_log.reset()  # the log's rate limit counts per function name: start afresh
    with caplog.at_level(logging.WARNING):
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.3)
            assert fn.cache.stats().hits > 0  # caching works before the outage
            private_redis.stop()
            time.sleep(0.5)
            during = fn.cache.stats().store_errors
            assert during > 0  # the outage was noticed...
            private_redis.start()
            deadline = time.monotonic() + 15
            while not _resumed(fn, store, fn):
                assert time.monotonic() < deadline, "caching did not resume"
                time.sleep(0.05)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    assert failures == []  # ...yet no call failed
    assert results > 100
    assert flush_monitoring()
    failed = [r for r in caplog.records if "failed on" in r.getMessage()]
    # one channel (buttress.events), rate-limited to its burst however many calls failed
    assert {r.name for r in failed} == {"buttress.events"}
    assert 1 <= len(failed) <= event_log.burst
    store.close()


@pytest.mark.slow
@pytest.mark.anyio
async def test_redis_stopped_mid_run_then_restarted_async(private_redis: Any) -> None:
    store = RedisStore(private_redis.url, timeout=0.5)
    fn = cache_result(ttl=60, store=store)(asquare)
    failures: list[BaseException] = []
    done = anyio.Event()

    async def caller(offset: int) -> None:
        i = 0
        while not done.is_set():
            i += 1
            try:
                assert await fn((i + offset) % 7) == ((i + offset) % 7) ** 2
            except Exception as exc:
                failures.append(exc)
            await anyio.sleep(0.002)

    async def call(key: int) -> None:
        await fn(key)

    async with anyio.create_task_group() as tg:
        for n in range(4):
            tg.start_soon(caller, n)
        for _ in range(200):  # up to 10 s: a loaded machine may take a while to warm up
            if fn.cache.stats().hits:
                break
            await anyio.sleep(0.05)
        assert fn.cache.stats().hits > 0
        await anyio.to_thread.run_sync(private_redis.stop)
        await anyio.sleep(0.5)
        assert fn.cache.stats().store_errors > 0
        await anyio.to_thread.run_sync(private_redis.start)
        with anyio.fail_after(15):
            while True:
                writes, hits = store.stats().writes, fn.cache.stats().hits
                await call(2000 + writes)
                await call(2000 + writes)
                if store.stats().writes > writes and fn.cache.stats().hits > hits:
                    break
                await anyio.sleep(0.05)
        done.set()
    assert failures == []
    await store.aclose()
    store.close()


def test_fail_closed_raises_a_buttress_error_and_recovers(private_redis: Any) -> None:
    store = RedisStore(private_redis.url, fail_open=False, timeout=5)
    fn = cache_result(store=store)(square)
    assert fn(2) == 4
    private_redis.stop()
    with pytest.raises(RedisStoreError) as info:
        fn(3)
    assert info.value.operation == "get"
    assert info.value.address == private_redis.url.removeprefix("redis://")
    assert isinstance(info.value.__cause__, redis.ConnectionError)
    started = time.monotonic()
    with pytest.raises(RedisStoreError, match="not tried again yet"):
        fn(3)  # marked down: fails at once instead of paying a timeout per call
    assert time.monotonic() - started < 0.2
    assert store.stats().skipped == 1
    private_redis.start()
    time.sleep(1.1)
    assert fn(3) == 9
    assert fn(3) == 9
    assert fn.cache.stats().hits == 1
    store.close()


@pytest.mark.anyio
async def test_fail_closed_raises_in_coroutines_too(private_redis: Any) -> None:
    store = RedisStore(private_redis.url, fail_open=False, timeout=5)
    fn = cache_result(store=store)(asquare)
    await anyio.to_thread.run_sync(private_redis.stop)
    with pytest.raises(RedisStoreError) as info:
        await fn(3)
    assert isinstance(info.value.__cause__, (redis.ConnectionError, OSError))
    await store.aclose()
    store.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_slow_redis_costs_at_most_the_timeout(redis_url: str, kind: str) -> None:
    store = RedisStore(redis_url, timeout=0.25)
    admin = raw_client(redis_url)
    if kind == "sync":
        fn: Any = cache_result(store=store)(square)
        call = fn
    else:
        fn = cache_result(store=store)(asquare)

        def call(x: int) -> int:
            async def run() -> int:
                try:
                    return int(await fn(x))
                finally:
                    await store.aclose()

            return anyio.run(run)

    assert call(1) == 1  # connected
    admin.execute_command("CLIENT", "PAUSE", "2000", "ALL")  # Redis stops answering
    started = time.monotonic()
    assert call(5) == 25
    elapsed = time.monotonic() - started
    assert elapsed < 1.5  # one timed-out read, then Redis is skipped (not 2 s of pause)
    assert fn.cache.stats().store_errors >= 1
    assert store.stats().failures >= 1
    time.sleep(2.2)  # the pause ends; the store tries Redis again
    assert call(6) == 36
    assert call(6) == 36
    assert fn.cache.stats().hits >= 1
    admin.close()
    store.close()


def vectors(n: int) -> Any:
    return {"ids": {1, 2}, "vector": np.zeros(n)}  # a set: the safe codec refuses it


def test_an_unencodable_result_is_returned_uncached_with_fail_open(redis_url: str) -> None:
    store = RedisStore(redis_url, timeout=5)
    calls: list[int] = []

    def counted(n: int) -> Any:
        calls.append(n)
        return vectors(n)

    fn = cache_result(store=store)(counted)
    seen: list[CacheStoreFailed] = []
    with events.subscribe(seen.append, CacheStoreFailed):
        assert fn(2)["ids"] == {1, 2}
        assert fn(2)["ids"] == {1, 2}
    assert calls == [2, 2]  # uncached
    assert fn.cache.stats().store_errors == 2
    assert seen[0].operation == "set"
    assert isinstance(seen[0].error, UnencodableResultError)
    assert seen[0].error.path == "result['ids']"
    store.close()


def test_an_unencodable_result_raises_with_fail_closed(redis_url: str) -> None:
    store = RedisStore(redis_url, fail_open=False, timeout=5)
    fn = cache_result(store=store)(vectors)
    with pytest.raises(RedisStoreError, match="cannot store") as info:
        fn(2)
    assert isinstance(info.value.__cause__, UnencodableResultError)
    assert info.value.__cause__.type_name == "set"
    store.close()
