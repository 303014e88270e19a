"""@cache_result counting: every call is exactly one CacheAccess and one increment of stats().

hits + misses + joins + stale equals the number of calls that read the cache, and the
CacheAccess events of each kind equal the counter of that kind, however a call ends: a
value, an error, a stale value in place of an error, or a cancellation.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from _cache_support import accesses, by_kind, counted, wait_until_blocked
from buttress import cache_result
from buttress.testing import FakeClock, testing_mode


class Down(Exception):
    pass


# --- a failed refresh answered by stale_if_error ---------------------------------------


@pytest.mark.anyio
async def test_a_failed_refresh_served_stale_is_one_stale_access(
    buttress_clock: FakeClock,
) -> None:
    failing = False

    @cache_result(ttl=10, stale_if_error=30)
    async def f(x: int) -> str:
        if failing:
            raise Down("endpoint down")
        return "v1"

    assert await f(1) == "v1"
    failing = True
    buttress_clock.advance(20)
    with accesses(f.__qualname__) as seen:
        assert await f(1) == "v1"
    assert [(e.result, type(e.error)) for e in seen] == [("stale", Down)]
    stats = f.cache.stats()
    assert counted(stats) == {"hit": 0, "miss": 1, "join": 0, "stale": 1}
    assert stats.errors == 1


def test_a_failed_sync_refresh_served_stale_is_one_stale_access(
    buttress_clock: FakeClock,
) -> None:
    failing = False

    @cache_result(ttl=1, stale_if_error=5)
    def f(x: int) -> str:
        if failing:
            raise Down
        return "ok"

    f(1)
    failing = True
    buttress_clock.advance(3)
    with accesses(f.__qualname__) as seen:
        assert f(1) == "ok"
    assert [(e.result, type(e.error)) for e in seen] == [("stale", Down)]
    assert counted(f.cache.stats()) == {"hit": 0, "miss": 1, "join": 0, "stale": 1}


@pytest.mark.anyio
async def test_waiters_of_a_failed_refresh_count_as_stale_with_the_error(
    buttress_clock: FakeClock,
) -> None:
    gate = anyio.Event()
    calls = 0

    @cache_result(ttl=1, stale_if_error=60)
    async def f(x: int) -> str:
        nonlocal calls
        calls += 1
        if calls > 1:
            await gate.wait()
            raise Down
        return "old"

    assert await f(1) == "old"
    buttress_clock.advance(2)
    results: list[str] = []

    async def call() -> None:
        results.append(await f(1))

    with accesses(f.__qualname__) as seen:
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(call)
            await anyio.wait_all_tasks_blocked()
            gate.set()
    assert results == ["old"] * 4
    assert calls == 2
    assert [(e.result, type(e.error)) for e in seen] == [("stale", Down)] * 4
    stats = f.cache.stats()
    assert counted(stats) == {"hit": 0, "miss": 1, "join": 0, "stale": 4}
    assert stats.errors == 1  # one computation failed, whoever it answered


def test_threads_waiting_on_a_failed_refresh_count_as_stale(buttress_clock: FakeClock) -> None:
    gate = threading.Event()
    calls = 0

    @cache_result(ttl=1, stale_if_error=60)
    def f(x: int) -> str:
        nonlocal calls
        calls += 1
        if calls > 1:
            gate.wait(30)
            raise Down
        return "old"

    assert f(1) == "old"
    buttress_clock.advance(2)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(f(1))) for _ in range(4)]
    with accesses(f.__qualname__) as seen:
        for thread in threads:
            thread.start()
        wait_until_blocked(threads, 4)
        gate.set()
        for thread in threads:
            thread.join(30)
    assert results == ["old"] * 4
    assert calls == 2
    assert [(e.result, type(e.error)) for e in seen] == [("stale", Down)] * 4
    assert counted(f.cache.stats()) == {"hit": 0, "miss": 1, "join": 0, "stale": 4}


# --- a cancelled leader, a cancelled waiter ---------------------------------------------


@pytest.mark.anyio
async def test_a_follower_taking_over_from_a_cancelled_leader_counts_as_a_miss() -> None:
    release = anyio.Event()
    calls = 0

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

    with accesses(f.__qualname__) as seen:
        async with anyio.create_task_group() as tg:
            tg.start_soon(leader)
            await anyio.wait_all_tasks_blocked()
            for _ in range(5):
                tg.start_soon(follower)
            await anyio.wait_all_tasks_blocked()
            leader_scope.cancel()
            await anyio.wait_all_tasks_blocked()
            release.set()
    assert results == [10] * 5
    assert calls == 2
    # the cancelled leader ran the function, and so did the follower that took over
    assert len(seen) == 6
    assert by_kind(seen) == {"hit": 0, "miss": 2, "join": 4, "stale": 0}
    assert counted(f.cache.stats()) == by_kind(seen)


def test_a_thread_taking_over_from_an_interrupted_leader_counts_as_a_miss() -> None:
    gate = threading.Event()
    calls = 0

    @cache_result
    def f(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            gate.wait(30)
            raise KeyboardInterrupt  # the way a thread's work is "cancelled"
        return x

    outcomes: list[Any] = []

    def call() -> None:
        try:
            outcomes.append(f(1))
        except KeyboardInterrupt as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    with accesses(f.__qualname__) as seen:
        for thread in threads:
            thread.start()
        wait_until_blocked(threads, 4)
        gate.set()
        for thread in threads:
            thread.join(30)
    assert calls == 2
    assert outcomes.count(1) == 3
    assert len(seen) == 4
    kinds = by_kind(seen)
    # the interrupted leader and the thread that took over ran the function; the other
    # two either joined the new flight or, waking after it ended, found its entry
    assert kinds["miss"] == 2
    assert kinds["join"] + kinds["hit"] == 2
    assert counted(f.cache.stats()) == by_kind(seen)


@pytest.mark.anyio
async def test_a_cancelled_waiter_counts_as_one_join() -> None:
    release = anyio.Event()

    @cache_result
    async def f(x: int) -> int:
        await release.wait()
        return x

    scope = anyio.CancelScope()

    async def cancelled_waiter() -> None:
        with scope:
            await f(1)

    with accesses(f.__qualname__) as seen:
        async with anyio.create_task_group() as tg:
            tg.start_soon(f, 1)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(cancelled_waiter)
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
            await anyio.wait_all_tasks_blocked()
            release.set()
    assert scope.cancelled_caught
    assert [e.result for e in seen] == ["join", "miss"]  # the waiter left first
    assert counted(f.cache.stats()) == by_kind(seen)


# --- many mixed calls ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_mixed_concurrent_calls_each_count_once(buttress_clock: FakeClock) -> None:
    failing: set[int] = set()
    gates: dict[int, anyio.Event] = {}

    @cache_result(ttl=10, stale_while_revalidate=5, stale_if_error=60)
    async def f(x: int) -> int:
        gate = gates.get(x)
        if gate is not None:
            await gate.wait()
        else:
            await anyio.lowlevel.checkpoint()
        if x in failing:
            raise Down(x)
        return x

    made = 0  # calls started, whatever became of them

    async def call(x: int) -> None:
        nonlocal made
        made += 1
        try:
            await f(x)
        except Down:
            pass

    async def crowd(x: int, callers: int, *, cancel_first: bool = False) -> None:
        """``callers`` concurrent calls of ``x`` held on a gate; maybe cancel the first."""
        nonlocal made
        gates[x] = anyio.Event()
        scope = anyio.CancelScope()

        async def first() -> None:
            nonlocal made
            made += 1
            with scope:
                try:
                    await f(x)
                except Down:
                    pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await anyio.wait_all_tasks_blocked()
            for _ in range(callers - 1):
                tg.start_soon(call, x)
            await anyio.wait_all_tasks_blocked()
            if cancel_first:
                scope.cancel()
                await anyio.wait_all_tasks_blocked()
            gates.pop(x).set()

    with accesses(f.__qualname__) as seen:
        await crowd(1, 20)  # one miss, nineteen joins
        for _ in range(10):
            await call(1)  # hits
        await crowd(2, 4, cancel_first=True)  # two misses (leader, taker), two joins
        failing.add(3)
        await crowd(3, 5)  # one failed computation shared by five callers
        buttress_clock.advance(12)  # 1 and 2 are stale: revalidate while serving stale
        await crowd(1, 6)  # one refresh (miss), five stale
        failing.add(2)
        buttress_clock.advance(30)  # 2 is past the revalidate window, within stale_if_error
        await crowd(2, 3)  # a failed refresh: all three get the old value, counted stale
        buttress_clock.advance(100)  # everything is dead now
        await crowd(2, 3)  # the failure is shared: one miss, two joins
        failing.clear()
        await crowd(2, 3)
    assert made == 20 + 10 + 4 + 5 + 6 + 3 + 3 + 3
    assert len(seen) == made
    kinds = by_kind(seen)
    assert kinds == counted(f.cache.stats())
    assert sum(kinds.values()) == made
    assert kinds == {
        "hit": 10,
        "miss": 1 + 2 + 1 + 1 + 1 + 1,
        "join": 19 + 2 + 4 + 2 + 2,
        "stale": 5 + 3,
    }
    assert f.cache.stats().errors == 3


def test_mixed_calls_from_threads_each_count_once() -> None:
    calls_per_thread = 300
    rng = random.Random(7)
    plans = [[rng.randrange(20) for _ in range(calls_per_thread)] for _ in range(8)]
    barrier = threading.Barrier(len(plans), timeout=30)

    @cache_result(ttl=0.005, maxsize=12, stale_while_revalidate=0.005, stale_if_error=0.05)
    def f(x: int) -> int:
        threading.Event().wait(0.0005)  # a short real computation: threads meet in flights
        if x % 7 == 0 or rng.random() < 0.3:  # some keys always fail, some refreshes fail
            raise Down(x)
        return x

    errors: list[BaseException] = []

    def run(plan: list[int]) -> None:
        try:
            barrier.wait()
            for x in plan:
                try:
                    f(x)
                except Down:
                    pass
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(plan,)) for plan in plans]
    with accesses(f.__qualname__) as seen:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert errors == []
    made = sum(map(len, plans))
    kinds = by_kind(seen)
    assert len(seen) == made
    assert kinds == counted(f.cache.stats())
    assert kinds["miss"] > 0
    assert kinds["hit"] > 0
    assert kinds["stale"] > 0


_steps = st.lists(
    st.one_of(
        st.tuples(st.just("call"), st.integers(0, 3)),
        st.tuples(st.just("advance"), st.sampled_from([0.5, 3, 6, 11, 40, 100])),
        st.tuples(st.just("fail"), st.booleans()),
        st.tuples(st.just("invalidate"), st.integers(0, 3)),
    ),
    max_size=60,
)


@settings(max_examples=100, deadline=None)
@given(steps=_steps, swr=st.sampled_from([0, 5]), sie=st.sampled_from([0, 30]))
@example(steps=[("call", 0), ("advance", 11), ("fail", True), ("call", 0)], swr=0, sie=30)
def test_any_sequence_of_calls_counts_each_once(
    steps: list[tuple[str, Any]], swr: float, sie: float
) -> None:
    failing = False

    @cache_result(ttl=10, maxsize=2, stale_while_revalidate=swr, stale_if_error=sie)
    def f(x: int) -> int:
        if failing:
            raise Down
        return x

    made = 0
    with testing_mode() as clock, accesses(f.__qualname__) as seen:
        for kind, arg in steps:
            if kind == "call":
                made += 1
                try:
                    f(arg)
                except Down:
                    pass
            elif kind == "advance":
                clock.advance(arg)
            elif kind == "fail":
                failing = arg
            else:
                f.cache.invalidate(arg)
    kinds = by_kind(seen)
    assert kinds == counted(f.cache.stats())
    assert sum(kinds.values()) == made
    # one call at a time: nobody is ever refreshing, so stale is only ever stale_if_error
    assert all(event.error is not None for event in seen if event.result == "stale")
