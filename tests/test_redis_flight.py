"""Single-flight across processes: one computation in total, takeover from a dead holder."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from typing import Any

import anyio
import pytest

from _redis_support import (
    COMPUTATIONS,
    GO,
    READY,
    STARTED,
    build,
    command_calls,
    digest,
    expected_value,
    named,
    no_stray_threads,  # noqa: F401  (a fixture)
    raw_client,
    start_worker,
    wait_for,
    workers,
)
from buttress import BlockingCallWarning, CacheKey, CacheScope, RedisStore, cache_result

pytestmark = [pytest.mark.redis, pytest.mark.usefixtures("no_stray_threads")]


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "callers"), [("async", 100), ("sync", 100)])
def test_two_processes_of_concurrent_callers_cause_one_computation(
    redis_url: str, mode: str, callers: int
) -> None:
    client = raw_client(redis_url)
    with workers(
        start_worker(mode, redis_url, callers=callers, compute=0.5),
        start_worker(mode, redis_url, callers=callers, compute=0.5),
    ) as processes:
        wait_for(lambda: int(client.get(READY) or 0) == 2, message="both workers ready")
        client.set(GO, 1)  # both start calling at once
        outputs = []
        for process in processes:
            out, err = process.communicate(timeout=90)
            assert process.returncode == 0, err
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    assert int(client.get(COMPUTATIONS) or 0) == 1  # one computation among 2 x callers
    client.close()
    expected = digest(expected_value("shared"))
    for output in outputs:
        assert output["results"] == [expected] * callers  # array and model, exact
    misses = sorted(output["misses"] for output in outputs)
    assert misses == [0, 1]  # the other process joined through Redis, computing nothing


def _holder_killed_then_taken_over(
    redis_url: str, mode: str, call: Any
) -> tuple[RedisStore, float]:
    client = raw_client(redis_url)
    with workers(start_worker(mode, redis_url, lock_ttl=1.0)) as (holder,):
        wait_for(lambda: client.exists(STARTED), message="the holder started computing")
        lock = next(iter(client.scan_iter(match="buttress:*:lock")))
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        left = client.pttl(lock)
        assert left > 0  # the dead holder's lock is still there
    polls_before = command_calls(client, "get")
    started = time.monotonic()
    store, value = call()
    waited = time.monotonic() - started
    polls = command_calls(client, "get") - polls_before
    assert digest(value) == digest(expected_value("held"))
    assert int(client.get(COMPUTATIONS) or 0) == 2  # the dead one's, and the taker's
    assert store.stats().waits == 1
    assert store.stats().takeovers == 1
    assert waited >= left / 1000 - 0.1  # it waited for the lock to expire...
    assert polls < 100  # ...polling with backoff, not spinning (about 20 polls a second)
    client.close()
    return store, waited


@pytest.mark.slow
def test_a_killed_holder_is_taken_over_after_its_lock_expires_sync(redis_url: str) -> None:
    def call() -> tuple[RedisStore, Any]:
        _, embed_sync, store = build(redis_url, lock_ttl=1.0, compute=0.01)
        try:
            return store, embed_sync("held")
        finally:
            store.close()

    _holder_killed_then_taken_over(redis_url, "hold", call)


@pytest.mark.slow
def test_a_killed_holder_is_taken_over_after_its_lock_expires_async(redis_url: str) -> None:
    def call() -> tuple[RedisStore, Any]:
        embed, _, store = build(redis_url, lock_ttl=1.0, compute=0.01)

        async def run() -> Any:
            try:
                return await embed("held")
            finally:
                await store.aclose()

        return store, anyio.run(run)

    _holder_killed_then_taken_over(redis_url, "hold-async", call)


# --- within one test process: two stores stand for two replicas ------------------------


def _replicas(url: str, lock_ttl: float) -> tuple[RedisStore, RedisStore]:
    return (
        RedisStore(url, lock_ttl=lock_ttl, timeout=5),
        RedisStore(url, lock_ttl=lock_ttl, timeout=5),
    )


def work(x: int) -> int:
    """The replicas' shared function (one qualified name, so one Redis key per x)."""
    return x


async def awork(x: int) -> int:
    return x


def test_the_lock_is_renewed_while_a_long_computation_runs(redis_url: str) -> None:
    first, second = _replicas(redis_url, lock_ttl=1.0)
    calls: list[str] = []
    started = threading.Event()

    def slow(x: int) -> int:
        calls.append(threading.current_thread().name)
        started.set()
        time.sleep(3.0)  # three times the lock's life: only renewal keeps it held
        return x * 2

    slow.__qualname__ = "work"
    a = cache_result(store=first, name=named(work))(slow)
    b = cache_result(store=second, name=named(work))(slow)
    results: list[int] = []
    thread = threading.Thread(target=lambda: results.append(a(21)), name="replica-a")
    thread.start()
    assert started.wait(10)
    results.append(b(21))  # waits for replica a's value instead of taking over
    thread.join()
    assert results == [42, 42]
    assert calls == ["replica-a"]
    assert second.stats().waits == 1
    assert second.stats().takeovers == 0
    assert b.cache.stats().joins == 1
    first.close()
    second.close()


@pytest.mark.anyio
async def test_the_lock_is_renewed_while_a_long_coroutine_runs(redis_url: str) -> None:
    first, second = _replicas(redis_url, lock_ttl=1.0)
    calls = 0
    started = anyio.Event()

    async def slow(x: int) -> int:
        nonlocal calls
        calls += 1
        started.set()
        await anyio.sleep(3.0)  # three times the lock's life: only renewal keeps it held
        return x * 2

    slow.__qualname__ = "work"
    a = cache_result(store=first, name=named(work))(slow)
    b = cache_result(store=second, name=named(work))(slow)
    results: list[int] = []

    async def call(fn: Any) -> None:
        results.append(await fn(21))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, a)
        await started.wait()  # replica a holds the lock now
        tg.start_soon(call, b)
    assert results == [42, 42]
    assert calls == 1
    assert second.stats().waits == 1
    assert second.stats().takeovers == 0
    for store in (first, second):
        await store.aclose()
        store.close()


def test_when_the_holder_fails_a_waiter_computes_itself(redis_url: str) -> None:
    first, second = _replicas(redis_url, lock_ttl=5.0)
    started = threading.Event()
    calls: list[str] = []

    def flaky(x: int) -> int:
        calls.append(threading.current_thread().name)
        if threading.current_thread().name == "replica-a":
            started.set()
            time.sleep(0.3)
            raise ConnectionError("the model endpoint went away")
        return x

    flaky.__qualname__ = "work"
    a = cache_result(store=first, name=named(work))(flaky)
    b = cache_result(store=second, name=named(work))(flaky)
    errors: list[BaseException] = []

    def run_a() -> None:
        try:
            a(5)
        except ConnectionError as exc:
            errors.append(exc)

    thread = threading.Thread(target=run_a, name="replica-a")
    thread.start()
    assert started.wait(10)
    assert b(5) == 5  # errors are not shared across processes: b computes after a released
    thread.join()
    assert len(errors) == 1
    assert calls == ["replica-a", "MainThread"]
    assert second.stats().takeovers == 1
    first.close()
    second.close()


def test_a_plain_function_waiting_for_another_process_on_a_loop_thread_is_warned(
    redis_url: str,
) -> None:
    # The sync path waits for the holder on its thread: on an event loop's thread, the
    # whole loop waits with it, which the guardrail says once.
    first, second = _replicas(redis_url, lock_ttl=5.0)
    started = threading.Event()

    def slow(x: int) -> int:
        if threading.current_thread().name == "replica-a":
            started.set()
            time.sleep(0.3)
        return x

    slow.__qualname__ = "work"
    a = cache_result(store=first, name=named(work))(slow)
    b = cache_result(store=second, name=named(work))(slow)
    thread = threading.Thread(target=a, args=(7,), name="replica-a")
    thread.start()
    assert started.wait(10)

    async def endpoint() -> int:
        return b(7)  # a plain cached function called from a coroutine

    with pytest.warns(BlockingCallWarning, match=r"@cache_result is about to wait"):
        assert asyncio.run(endpoint()) == 7
    thread.join()
    assert second.stats().waits == 1  # it did wait for replica a's value
    first.close()
    second.close()


@pytest.mark.anyio
async def test_waiting_for_another_process_never_blocks_the_event_loop(redis_url: str) -> None:
    client = raw_client(redis_url)
    store = RedisStore(redis_url, lock_ttl=1.0, timeout=5)
    fn = cache_result(store=store)(awork)
    name = store.key_name(_key_of(awork, 3))
    client.set(name + ":lock", "someone else", px=1000)  # a holder that died
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        assert await fn(3) == 3
        tg.cancel_scope.cancel()
    assert ticks >= 20  # the loop kept running for the ~1 s the caller waited (~100 ticks)
    assert store.stats().takeovers == 1
    client.close()
    await store.aclose()
    store.close()


def _key_of(fn: Any, *args: Any) -> CacheKey:
    """The key a call of ``fn`` (positional, hashable arguments) has in a shared store."""
    return CacheKey(CacheScope(fn.__qualname__, module=fn.__module__), args)


def test_a_coroutine_blocking_its_event_loop_keeps_its_lock(redis_url: str) -> None:
    """The watchdog renews from a thread: CPU work in ``async def`` does not starve it."""
    first, second = _replicas(redis_url, lock_ttl=1.0)
    started = threading.Event()
    calls: list[str] = []

    async def heavy(x: int) -> int:
        calls.append(threading.current_thread().name)
        started.set()
        time.sleep(3.0)  # noqa: ASYNC251  (on purpose: CPU work that blocks the loop)
        return x * 2

    heavy.__qualname__ = "work"
    a = cache_result(store=first, name=named(work))(heavy)
    b = cache_result(store=second, name=named(work))(heavy)
    results: list[int] = []
    thread = threading.Thread(target=lambda: results.append(anyio.run(a, 4)), name="replica-a")
    thread.start()
    assert started.wait(10)
    results.append(anyio.run(b, 4))
    thread.join()
    assert results == [8, 8]
    assert calls == ["replica-a"]
    assert second.stats().takeovers == 0
    for store in (first, second):
        store.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("buttress-redis")]
