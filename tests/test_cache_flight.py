"""@cache_result single-flight: coroutines (asyncio, trio), threads, cancellation, errors."""

from __future__ import annotations

import asyncio
import threading
import traceback
from typing import Any

import anyio
import pytest
import trio

from _cache_support import wait_until_blocked
from buttress import CacheAccess, LocalStore, cache_result, events


class Boom(Exception):
    pass


@pytest.mark.anyio
async def test_ten_thousand_concurrent_callers_cause_one_call() -> None:
    calls = 0

    @cache_result
    async def infer(x: int) -> int:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.05)
        return x * 2

    results: list[int] = []

    async def call() -> None:
        results.append(await infer(21))

    async with anyio.create_task_group() as tg:
        for _ in range(10_000):
            tg.start_soon(call)
    assert calls == 1
    assert results == [42] * 10_000
    stats = infer.cache.stats()
    assert (stats.misses, stats.joins) == (1, 9_999)


@pytest.mark.anyio
async def test_distinct_keys_compute_concurrently() -> None:
    running = 0
    peak = 0

    @cache_result
    async def f(x: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.01)
        running -= 1
        return x

    async with anyio.create_task_group() as tg:
        for x in range(10):
            tg.start_soon(f, x)
    assert peak == 10


@pytest.mark.anyio
async def test_an_error_reaches_every_waiter_and_is_not_cached() -> None:
    calls = 0
    gate = anyio.Event()

    @cache_result
    async def f(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            await gate.wait()
            raise Boom("first")
        return x

    outcomes: list[Any] = []

    async def call() -> None:
        try:
            outcomes.append(await f(1))
        except Boom as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        gate.set()
    assert calls == 1
    assert len(outcomes) == 20
    assert all(isinstance(o, Boom) and str(o) == "first" for o in outcomes)
    assert await f(1) == 1  # not cached: computed afresh
    assert calls == 2
    assert f.cache.stats().errors == 1


@pytest.mark.anyio
async def test_a_cancelled_leader_hands_over_to_one_waiter() -> None:
    calls = 0
    release = anyio.Event()

    @cache_result
    async def f(x: int) -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return x * 10

    results: list[int] = []
    leader_scope = anyio.CancelScope()

    async def leader() -> None:
        with leader_scope:
            await f(1)

    async def follower() -> None:
        results.append(await f(1))

    async with anyio.create_task_group() as tg:
        tg.start_soon(leader)
        await anyio.wait_all_tasks_blocked()
        for _ in range(5):
            tg.start_soon(follower)
        await anyio.wait_all_tasks_blocked()
        assert calls == 1
        leader_scope.cancel()
        await anyio.wait_all_tasks_blocked()
        assert calls == 2  # exactly one waiter took over; the others wait for it
        release.set()
    assert leader_scope.cancelled_caught
    assert results == [10] * 5
    assert calls == 2
    assert await f(1) == 10
    assert calls == 2


@pytest.mark.anyio
async def test_a_cancelled_waiter_disturbs_nobody() -> None:
    calls = 0
    release = anyio.Event()

    @cache_result
    async def f(x: int) -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return x

    results: list[int] = []
    waiter_scope = anyio.CancelScope()

    async def call() -> None:
        results.append(await f(7))

    async def cancelled_waiter() -> None:
        with waiter_scope:
            await f(7)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(cancelled_waiter)
        tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        waiter_scope.cancel()
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert waiter_scope.cancelled_caught
    assert results == [7, 7]
    assert calls == 1


@pytest.mark.anyio
async def test_join_and_miss_events() -> None:
    seen: list[str] = []
    gate = anyio.Event()

    @cache_result
    async def f(x: int) -> int:
        await gate.wait()
        return x

    with events.subscribe(lambda e: seen.append(e.result), CacheAccess):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(f, 1)
            await anyio.wait_all_tasks_blocked()
            gate.set()
        await f(1)
    assert seen == ["miss", "join", "join", "hit"]


@pytest.mark.anyio
async def test_single_flight_off_lets_each_miss_compute() -> None:
    calls = 0

    @cache_result(single_flight=False)
    async def f(x: int) -> int:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.01)
        return x

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(f, 1)
    assert calls == 5
    assert await f(1) == 1
    assert calls == 5


@pytest.mark.anyio
async def test_cache_none_false_still_shares_the_flight() -> None:
    calls = 0

    @cache_result(cache_none=False)
    async def f(x: int) -> None:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(f, 1)
    assert calls == 1
    await f(1)
    assert calls == 2  # None was not kept


# --- threads --------------------------------------------------------------------------


def test_threads_calling_a_plain_function_coalesce() -> None:
    calls = 0
    gate = threading.Event()
    lock = threading.Lock()

    @cache_result
    def load(name: str) -> str:
        nonlocal calls
        with lock:
            calls += 1
        gate.wait(30)
        return name.upper()

    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(load("w"))) for _ in range(16)]
    for thread in threads:
        thread.start()
    wait_until_blocked(threads, 16)  # the leader on the gate, the others on its flight
    gate.set()
    for thread in threads:
        thread.join(30)
    assert calls == 1
    assert results == ["W"] * 16
    assert load("w") == "W"
    assert calls == 1


def test_threads_share_an_error_and_do_not_cache_it() -> None:
    calls = 0
    gate = threading.Event()

    @cache_result
    def load(name: str) -> str:
        nonlocal calls
        calls += 1
        gate.wait(30)
        if calls == 1:
            raise Boom(name)
        return name

    outcomes: list[Any] = []

    def call() -> None:
        try:
            outcomes.append(load("x"))
        except Boom as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    wait_until_blocked(threads, 8)  # the leader on the gate, the others on its flight
    gate.set()
    for thread in threads:
        thread.join(30)
    assert calls == 1
    assert len(outcomes) == 8
    assert all(isinstance(o, Boom) for o in outcomes)
    assert load("x") == "x"


def test_an_interrupted_leader_thread_hands_over_to_a_waiter() -> None:
    calls = 0
    gate = threading.Event()

    @cache_result
    def load(name: str) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            gate.wait(30)
            raise KeyboardInterrupt  # the way a thread's work is "cancelled"
        return name

    outcomes: list[Any] = []

    def call() -> None:
        try:
            outcomes.append(load("x"))
        except KeyboardInterrupt as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_until_blocked(threads, 4)  # the leader on the gate, the others on its flight
    gate.set()
    for thread in threads:
        thread.join(30)
    assert calls == 2
    assert sum(isinstance(o, KeyboardInterrupt) for o in outcomes) == 1
    assert outcomes.count("x") == 3


# --- several event loops ----------------------------------------------------------------

calls_across_loops = 0


@cache_result(ttl=None)  # decorated at import, outside any event loop
async def shared(x: int) -> int:
    global calls_across_loops
    calls_across_loops += 1
    await anyio.sleep(0.01)
    return x + 1


def test_one_function_serves_asyncio_twice_and_trio() -> None:
    shared.cache.clear()

    async def stampede(x: int) -> list[int]:
        return list(await asyncio.gather(*[shared(x) for _ in range(50)]))

    assert asyncio.run(stampede(1)) == [2] * 50
    assert asyncio.run(stampede(2)) == [3] * 50  # a second loop: no "different loop" error

    async def trio_stampede() -> list[int]:
        results: list[int] = []

        async def call() -> None:
            results.append(await shared(3))

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(call)
        return results

    assert trio.run(trio_stampede) == [4] * 50
    assert asyncio.run(stampede(1)) == [2] * 50  # entries outlive the loop that made them
    stats = shared.cache.stats()
    assert stats.misses == 3
    assert stats.hits == 50


def test_threads_each_running_their_own_loop() -> None:
    barrier = threading.Barrier(2, timeout=30)
    calls = 0
    lock = threading.Lock()

    @cache_result
    async def f(x: int) -> int:
        nonlocal calls
        with lock:
            calls += 1
        await anyio.to_thread.run_sync(barrier.wait)  # both loops are computing at once
        return x * 3

    results: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        async def many() -> list[int]:
            return list(await asyncio.gather(*[f(5) for _ in range(100)]))

        try:
            results[name] = asyncio.run(many()) if name == "asyncio" else trio.run(
                _trio_many, f
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("asyncio", "trio")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert results == {"asyncio": [15] * 100, "trio": [15] * 100}
    assert calls == 2  # one flight per loop; neither waited on the other's event


async def _trio_many(f: Any) -> list[int]:
    results: list[int] = []

    async def call() -> None:
        results.append(await f(5))

    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(call)
    return results


def test_a_plain_function_asking_for_its_own_key_fails_instead_of_hanging() -> None:
    @cache_result
    def f(x: int) -> int:
        return f(x) if x > 0 else 0

    with pytest.raises(RecursionError, match="called itself"):
        f(1)
    assert f(0) == 0
    assert f.cache.stats().size == 1  # the failed flight left nothing behind


def test_stats_and_clear_of_a_shared_store_while_threads_hit() -> None:
    store = LocalStore(maxsize=5_000)
    hot = cache_result(ttl=None, store=store)(lambda x: x)
    other = cache_result(ttl=None, store=store)(lambda x: -x)
    for x in range(2_000):
        hot(x)
    stop = threading.Event()
    errors: list[BaseException] = []

    def hit() -> None:  # hits move keys to the recent end, without the table's lock
        try:
            while not stop.is_set():
                for x in range(0, 2_000, 3):
                    hot(x)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hit) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(30):
            assert hot.cache.stats().size == 2_000  # iterates the shared table
            other(1)
            other.cache.clear()  # iterates it too
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert errors == []


@pytest.mark.anyio
async def test_a_shared_error_keeps_a_short_traceback() -> None:
    @cache_result
    async def f(x: int) -> int:
        await anyio.sleep(0.01)
        raise Boom("x")

    errors: list[BaseException] = []

    async def call() -> None:
        try:
            await f(1)
        except Boom as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(300):
            tg.start_soon(call)
    assert len(errors) == 300
    assert all(e is errors[0] for e in errors)
    frames = traceback.extract_tb(errors[-1].__traceback__)
    assert len(frames) < 20  # not one frame per waiter that raised it
    assert frames[-1].name == "f"


@pytest.mark.anyio
async def test_closures_of_one_factory_never_join_each_others_flights() -> None:
    # Both functions share a qualified name; each must compute its own value, also on
    # anyio versions whose per-loop storage is keyed on a name.
    started = anyio.Event()

    def make(model: str) -> Any:
        @cache_result
        async def embed(text: str) -> str:
            if model == "A":
                started.set()
                await anyio.sleep(0.2)
            return f"{model}:{text}"

        return embed

    first, second = make("A"), make("B")
    assert first.__qualname__ == second.__qualname__
    results: dict[str, str] = {}

    async def call(name: str, fn: Any) -> None:
        results[name] = await fn("hello")

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "A", first)
        await started.wait()  # A's flight is in progress
        tg.start_soon(call, "B", second)
    assert results == {"A": "A:hello", "B": "B:hello"}
