"""Redis hangs (SIGSTOP) under load, then resumes (SIGCONT): commands the store gave up on
still run then, locks among them. No healthy call afterwards waits for such a lock."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest

from _redis_support import no_stray_threads, raw_client  # noqa: F401  (a fixture)
from buttress import RedisStore, cache_result

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.usefixtures("no_stray_threads")]

#: Far longer than any call may take: a call that waits for an abandoned lock shows.
LOCK_TTL = 30.0
TIMEOUT = 0.25
KEYS = 12
HANG = 3.0
#: After SIGCONT, the store's own outage window (1 s) and a margin: from then on, every
#: call is a healthy call against a healthy Redis.
SETTLED = 1.5
AFTER = 4.0
#: Generous for a loaded 2-core machine; waiting for an abandoned lock takes LOCK_TTL.
BOUND = 5.0


async def afetch(key: int) -> int:
    await anyio.sleep(0.005)  # the model call
    return key * 3


def fetch(key: int) -> int:
    time.sleep(0.005)
    return key * 3


@contextmanager
def _hung(server: Any) -> Iterator[list[int]]:
    """Redis hangs (SIGSTOP) inside the block and resumes (SIGCONT) when it ends, however
    it ends. Yields a list that then gets how many computation locks Redis held as it
    resumed (taken by commands their callers had given up on)."""
    locks: list[int] = []
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield locks
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    client = raw_client(server.url)
    try:
        locks.append(sum(1 for _ in client.scan_iter(match="buttress:*:lock")))
    finally:
        client.close()


def _judge(calls: list[tuple[float, float, bool]], resumed: float, store: RedisStore) -> float:
    """The worst latency of the calls started once Redis was healthy; checks them."""
    healthy = [(start, took, ok) for start, took, ok in calls if start >= resumed + SETTLED]
    assert len(healthy) > 20, "too few calls after Redis resumed to judge"
    assert all(ok for _, _, ok in healthy)  # every one returned its value
    worst = max(took for _, took, _ in healthy)
    assert worst < BOUND, f"a healthy call waited {worst:.2f}s (an abandoned lock?)"
    assert store.stats().failures > 0  # the hang did happen to the store
    return worst


def _no_lock_left(url: str) -> None:
    client = raw_client(url)
    try:
        deadline = time.monotonic() + 10
        while list(client.scan_iter(match="buttress:*:lock")):
            assert time.monotonic() < deadline, "locks left in Redis"
            time.sleep(0.05)
    finally:
        client.close()


@pytest.mark.anyio
async def test_no_call_waits_for_a_lock_left_by_a_hang_async(
    private_redis: Any, anyio_backend: Any
) -> None:
    store = RedisStore(private_redis.url, timeout=TIMEOUT, lock_ttl=LOCK_TTL)
    fn = cache_result(ttl=0.05, store=store)(afetch)  # short: keys miss again and again
    calls: list[tuple[float, float, bool]] = []
    stop = False

    async def caller() -> None:
        while not stop:
            key = random.randrange(KEYS)
            start = time.monotonic()
            ok = False
            with anyio.move_on_after(LOCK_TTL / 2):
                ok = await fn(key) == key * 3
            calls.append((start, time.monotonic() - start, ok))

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(caller)
            await anyio.sleep(1.0)
            with _hung(private_redis) as locks:
                await anyio.sleep(HANG)
            resumed = time.monotonic()
            await anyio.sleep(SETTLED + AFTER)
            stop = True
        worst = _judge(calls, resumed, store)
        print(f"\n{locks[0]} locks as Redis resumed; worst healthy call {worst * 1000:.0f} ms")
    finally:
        await store.aclose()
        store.close()
    _no_lock_left(private_redis.url)


def test_no_call_waits_for_a_lock_left_by_a_hang_threads(private_redis: Any) -> None:
    store = RedisStore(private_redis.url, timeout=TIMEOUT, lock_ttl=LOCK_TTL)
    fn = cache_result(ttl=0.05, store=store)(fetch)
    calls: list[tuple[float, float, bool]] = []
    stop = threading.Event()

    def caller() -> None:
        while not stop.is_set():
            key = random.randrange(KEYS)
            start = time.monotonic()
            ok = fn(key) == key * 3
            calls.append((start, time.monotonic() - start, ok))

    threads = [threading.Thread(target=caller) for _ in range(20)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        with _hung(private_redis) as locks:
            time.sleep(HANG)
        resumed = time.monotonic()
        time.sleep(SETTLED + AFTER)
    finally:
        stop.set()
        for thread in threads:
            thread.join(LOCK_TTL * 2)
    worst = _judge(calls, resumed, store)
    print(f"\n{locks[0]} locks as Redis resumed; worst healthy call {worst * 1000:.0f} ms")
    store.close()
    _no_lock_left(private_redis.url)
