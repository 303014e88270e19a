"""What RedisStore asks Redis: a hit is one command, a miss two; waiters are woken, not
polling; scripts come back after the server forgot them."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest

from _redis_support import commands_sent, no_stray_threads, raw_client  # noqa: F401
from buttress import RedisStore, cache_result

pytestmark = [pytest.mark.redis, pytest.mark.usefixtures("no_stray_threads")]


def work(x: int) -> int:
    return x + 1


async def awork(x: int) -> int:
    return x + 1


def test_a_miss_is_two_commands_and_a_hit_one_sync(redis_url: str) -> None:
    with RedisStore(redis_url, timeout=5) as store:
        fn = cache_result(ttl=60, store=store)(work)
        fn(0)  # scripts loaded, connections open
        with commands_sent(redis_url) as sent:
            assert fn(1) == 2
        assert sent == {"evalsha": 2}  # read-or-lock; store-and-release
        with commands_sent(redis_url) as sent:
            assert fn(1) == 2
        assert sent == {"evalsha": 1}  # read (the lock is not touched)


@pytest.mark.anyio
async def test_a_miss_is_two_commands_and_a_hit_one_async(redis_url: str) -> None:
    store = RedisStore(redis_url, timeout=5)
    try:
        fn = cache_result(ttl=60, store=store)(awork)
        await fn(0)
        with commands_sent(redis_url) as sent:
            assert await fn(1) == 2
        assert sent == {"evalsha": 2}
        with commands_sent(redis_url) as sent:
            assert await fn(1) == 2
        assert sent == {"evalsha": 1}
    finally:
        await store.aclose()
        store.close()


def test_without_single_flight_a_miss_is_a_get_and_a_set(redis_url: str) -> None:
    with RedisStore(redis_url, timeout=5) as store:
        fn = cache_result(ttl=60, store=store, single_flight=False)(work)
        fn(0)
        with commands_sent(redis_url) as sent:
            assert fn(1) == 2
        assert sent == {"get": 1, "set": 1}


def test_scripts_are_loaded_again_after_a_script_flush(redis_url: str) -> None:
    client = raw_client(redis_url)
    with RedisStore(redis_url, timeout=5) as store:
        fn = cache_result(ttl=60, store=store)(work)
        assert fn(1) == 2
        client.script_flush()
        with commands_sent(redis_url) as sent:
            assert fn(2) == 3
        # each script: EVALSHA answered NOSCRIPT, SCRIPT LOAD, EVALSHA again
        assert sent == {"evalsha": 4, "script": 2}
        assert fn(2) == 3
        assert fn.cache.stats().store_errors == 0
    client.close()


def _hold_and_wait(
    redis_url: str, holding: float, **options: Any
) -> tuple[float, dict[str, int], RedisStore]:
    """Replica a computes for ``holding`` seconds; replica b asks for the same key meanwhile
    and waits. Returns how long b took to return after a's value was written, the commands
    sent while b waited, and b's store."""
    first = RedisStore(redis_url, timeout=5, **options)
    second = RedisStore(redis_url, timeout=5, **options)
    computing = threading.Event()
    written: list[float] = []

    def slow(x: int) -> int:
        computing.set()
        time.sleep(holding)
        written.append(time.monotonic())  # the store's write follows at once
        return x * 2

    a = cache_result(ttl=60, store=first, name="round_trips.slow")(slow)
    b = cache_result(ttl=60, store=second, name="round_trips.slow")(slow)
    thread = threading.Thread(target=a, args=(21,))
    thread.start()
    try:
        assert computing.wait(10)
        with commands_sent(redis_url) as sent:
            assert b(21) == 42
            returned = time.monotonic()
    finally:
        thread.join(10)
        first.close()
        second.close()
    assert b.cache.stats().joins == 1
    return returned - written[0], dict(sent), second


def test_a_waiting_replica_is_woken_not_polling(redis_url: str) -> None:
    late, commands, waiter = _hold_and_wait(redis_url, 1.0)
    assert waiter.stats().waits == 1
    # blocked on the holder's wake-up: a couple of BLMOVEs (each at most half the
    # timeout) and one read once woken, where polling would GET some 20 times a second
    assert 1 <= commands.get("blmove", 0) <= 3
    assert commands.get("get", 0) <= 2
    assert late < 1.0  # woken by the write, not by a timer (generous: a loaded machine)


def test_without_blmove_a_waiting_replica_polls(private_redis: Any) -> None:
    # A server where the command is not allowed (as some managed services do), or older
    # than Redis 6.2: the store falls back to polling with backoff.
    client = raw_client(private_redis.url)
    client.acl_setuser("default", enabled=True, nopass=True, commands=["+@all", "-blmove"])
    late, commands, waiter = _hold_and_wait(private_redis.url, 0.5)
    assert waiter.stats().waits == 1
    assert "blmove" not in commands or commands["blmove"] == 1  # refused once, then polls
    assert commands.get("get", 0) >= 5  # polled (2 ms doubling to 50 ms)
    assert late < 1.0
    client.close()


@pytest.mark.anyio
async def test_a_waiting_coroutine_is_woken_too(redis_url: str) -> None:
    first = RedisStore(redis_url, timeout=5)
    second = RedisStore(redis_url, timeout=5)
    computing = anyio.Event()
    release = anyio.Event()

    async def slow(x: int) -> int:
        computing.set()
        await release.wait()
        return x * 2

    a = cache_result(ttl=60, store=first, name="round_trips.aslow")(slow)
    b = cache_result(ttl=60, store=second, name="round_trips.aslow")(slow)
    results: list[int] = []
    try:
        with commands_sent(redis_url) as sent:
            async with anyio.create_task_group() as tg:
                tg.start_soon(a, 4)
                await computing.wait()

                async def wait() -> None:
                    results.append(await b(4))

                tg.start_soon(wait)
                for _ in range(1000):  # until b waits on a's lock
                    if second.stats().waits:
                        break
                    await anyio.sleep(0.01)
                await anyio.sleep(0.5)
                release.set()
        assert results == [8]
        assert b.cache.stats().joins == 1
        assert 1 <= sent["blmove"] <= 3
        assert sent["get"] <= 1  # woken once, read once: no polling
    finally:
        for store in (first, second):
            await store.aclose()
            store.close()
