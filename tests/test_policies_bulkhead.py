"""@bulkhead: a process-wide limit, a fair bounded queue, cancellation that releases."""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from buttress import (
    Bulkhead,
    BulkheadFullError,
    BulkheadRejected,
    BulkheadStats,
    ButtressError,
    ConfigurationError,
    bulkhead,
    events,
)
from buttress._policies._bulkhead import _Waiter


class Peak:
    """Counts calls running at once, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


@pytest.mark.anyio
async def test_calls_beyond_slots_and_queue_are_refused_at_once() -> None:
    release = anyio.Event()
    seen: list[Any] = []

    @bulkhead(2)
    async def infer(x: int) -> int:
        await release.wait()
        return x

    results: list[int] = []

    async def run(x: int) -> None:
        results.append(await infer(x))

    with events.subscribe(seen.append, BulkheadRejected):
        async with anyio.create_task_group() as group:
            group.start_soon(run, 1)
            group.start_soon(run, 2)
            await anyio.wait_all_tasks_blocked()
            assert infer.bulkhead.stats().running == 2
            with pytest.raises(BulkheadFullError) as caught:
                await infer(3)
            release.set()
    assert sorted(results) == [1, 2]
    error = caught.value
    assert isinstance(error, ButtressError)
    assert isinstance(error, RuntimeError)
    assert (error.reason, error.max_concurrent, error.max_waiting) == ("full", 2, 0)
    assert error.function.endswith("infer")
    assert len(seen) == 1
    stats = infer.bulkhead.stats()
    assert isinstance(stats, BulkheadStats)
    assert (stats.running, stats.waiting, stats.admitted, stats.rejected) == (0, 0, 2, 1)


@pytest.mark.anyio
async def test_fair_under_a_thousand_concurrent_callers() -> None:
    slots = 10
    peak = Peak()
    arrivals: list[int] = []
    entries: list[int] = []

    @bulkhead(slots, max_waiting=1000)
    async def infer(i: int) -> None:
        entries.append(i)
        peak.enter()
        await anyio.lowlevel.checkpoint()
        await anyio.lowlevel.checkpoint()
        peak.leave()

    async def caller(i: int) -> None:
        arrivals.append(i)  # nothing yields between this and joining the queue
        await infer(i)

    async with anyio.create_task_group() as group:
        for i in range(1000):
            group.start_soon(caller, i)
    assert peak.peak == slots
    assert sorted(entries) == list(range(1000))
    # Slots are granted strictly in arrival order. Only the tasks granted a slot but not
    # yet running (at most ``slots`` of them) may start in another order, as the
    # scheduler wakes them.
    position = {caller: index for index, caller in enumerate(arrivals)}
    displacement = max(abs(index - position[i]) for index, i in enumerate(entries))
    assert displacement < slots
    stats = infer.bulkhead.stats()
    assert (stats.admitted, stats.rejected, stats.running, stats.waiting) == (1000, 0, 0, 0)


@pytest.mark.anyio
async def test_cancelled_waiter_leaves_the_queue() -> None:
    release = anyio.Event()

    @bulkhead(1, max_waiting=5)
    async def infer() -> str:
        await release.wait()
        return "done"

    async with anyio.create_task_group() as group:
        group.start_soon(infer)
        await anyio.wait_all_tasks_blocked()
        with anyio.move_on_after(0.02):
            await infer()  # waits, then is cancelled
        assert infer.bulkhead.stats().waiting == 0
        release.set()
    stats = infer.bulkhead.stats()
    assert (stats.running, stats.waiting) == (0, 0)
    assert await infer() == "done"  # a slot is free straight away


@pytest.mark.anyio
async def test_cancelled_running_call_frees_its_slot() -> None:
    @bulkhead(1)
    async def hang() -> None:
        await anyio.sleep_forever()

    for _ in range(3):
        with anyio.move_on_after(0.01):
            await hang()
        assert hang.bulkhead.stats().running == 0


@pytest.mark.anyio
async def test_wait_timeout_refuses_after_waiting() -> None:
    release = anyio.Event()

    @bulkhead(1, max_waiting=1, wait_timeout=0.05)
    async def infer() -> None:
        await release.wait()

    async with anyio.create_task_group() as group:
        group.start_soon(infer)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(BulkheadFullError, match="wait_timeout") as caught:
            await infer()
        release.set()
    assert caught.value.reason == "timeout"
    stats = infer.bulkhead.stats()
    assert (stats.waiting, stats.rejected) == (0, 1)


@pytest.mark.anyio
async def test_a_waiter_is_woken_when_a_slot_frees() -> None:
    order: list[str] = []
    release = anyio.Event()

    @bulkhead(1, max_waiting=1)
    async def infer(name: str) -> None:
        order.append(f"start {name}")
        if name == "first":
            await release.wait()
        order.append(f"end {name}")

    async with anyio.create_task_group() as group:
        group.start_soon(infer, "first")
        await anyio.wait_all_tasks_blocked()
        group.start_soon(infer, "second")
        await anyio.wait_all_tasks_blocked()
        assert infer.bulkhead.stats().waiting == 1
        release.set()
    assert order == ["start first", "end first", "start second", "end second"]


@pytest.mark.anyio
async def test_a_slot_freed_on_another_thread_wakes_the_waiter() -> None:
    gpu = bulkhead(1, max_waiting=1)
    holding = threading.Event()
    release = threading.Event()

    @gpu
    def train() -> None:  # runs on a plain thread, holding the only slot
        holding.set()
        release.wait(30)

    @gpu
    async def infer() -> str:
        return "ok"

    worker = threading.Thread(target=train)
    worker.start()
    try:
        await anyio.to_thread.run_sync(holding.wait, 30)

        async def waiter() -> None:
            assert await infer() == "ok"

        with anyio.fail_after(30):  # a lost wake-up would hang here
            async with anyio.create_task_group() as group:
                group.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                assert infer.bulkhead.stats().waiting == 1
                release.set()  # the slot is freed on the worker thread, not on this loop
    finally:
        release.set()
        worker.join(30)
    assert infer.bulkhead.stats().running == 0


def test_one_limit_across_threads_and_event_loops() -> None:
    peak = Peak()
    shared = bulkhead(2, max_waiting=1000)

    @shared
    async def infer() -> None:
        peak.enter()
        await anyio.sleep(0.002)
        peak.leave()

    async def many() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(15):
                group.start_soon(infer)

    runners = [
        lambda: asyncio.run(many()),
        lambda: asyncio.run(many()),
        lambda: anyio.run(many, backend="trio"),
    ]
    errors: list[BaseException] = []

    def guarded(run: Any) -> None:
        try:
            run()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(run,)) for run in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert peak.peak == 2
    stats = infer.bulkhead.stats()
    assert (stats.admitted, stats.running, stats.waiting) == (45, 0, 0)


def test_sync_functions_queue_fairly_on_threads() -> None:
    peak = Peak()
    release = threading.Event()
    entries: list[int] = []

    @bulkhead(2, max_waiting=50)
    def infer(i: int) -> None:
        peak.enter()
        entries.append(i)
        release.wait(30)
        # Hold the slot long enough that a woken waiter's own scheduling delay (on a
        # loaded machine) cannot let a later waiter enter first: entry order is then
        # grant order, which is what this test checks.
        time.sleep(0.05)
        peak.leave()

    threads = []
    for i in range(20):
        thread = threading.Thread(target=infer, args=(i,))
        thread.start()
        threads.append(thread)
        # Start the next caller only once this one holds a slot or its place in line.
        deadline = time.monotonic() + 30
        while True:
            stats = infer.bulkhead.stats()
            if stats.running + stats.waiting == i + 1 or time.monotonic() > deadline:
                break
            time.sleep(0.001)
    release.set()
    for thread in threads:
        thread.join(30)
    assert peak.peak == 2
    assert sorted(entries) == list(range(20))
    assert max(abs(index - i) for index, i in enumerate(entries)) < 2


def test_sync_wait_timeout_and_full() -> None:
    release = threading.Event()
    inside = threading.Event()

    @bulkhead(1, max_waiting=1, wait_timeout=0.05)
    def infer() -> None:
        inside.set()
        release.wait(30)

    holder = threading.Thread(target=infer)
    holder.start()
    inside.wait(30)
    with pytest.raises(BulkheadFullError) as caught:
        infer()
    assert caught.value.reason == "timeout"
    release.set()
    holder.join(30)
    assert infer.bulkhead.stats().running == 0


def test_one_decorator_shares_its_slots_between_functions() -> None:
    gpu = bulkhead(1)
    inside = threading.Event()
    release = threading.Event()

    @gpu
    def train() -> None:
        inside.set()
        release.wait(30)

    @gpu
    def infer() -> str:
        return "ok"

    assert train.bulkhead is infer.bulkhead
    worker = threading.Thread(target=train)
    worker.start()
    inside.wait(30)
    with pytest.raises(BulkheadFullError):
        infer()
    release.set()
    worker.join(30)
    assert infer() == "ok"


# --- the engine's hand-over rules ------------------------------------------------------


class _Recorder(_Waiter):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.woken = 0

    def wake(self) -> None:
        if self.fail:
            raise RuntimeError("event loop is closed")
        self.woken += 1


def test_a_slot_granted_while_giving_up_is_passed_on() -> None:
    engine = Bulkhead(1, 5, None)
    assert engine.enter("f", _Recorder) is None  # takes the slot
    first = engine.enter("f", _Recorder)
    second = engine.enter("f", _Recorder)
    assert isinstance(first, _Recorder)
    assert isinstance(second, _Recorder)
    engine.leave()  # the slot goes to the first waiter
    assert first.granted
    assert first.woken == 1
    # The first waiter was cancelled in that same instant: it owns the slot, and must
    # pass it on rather than lose it.
    assert engine.abandon(first) is True
    engine.leave()
    assert second.granted
    assert second.woken == 1
    engine.leave()
    assert engine.stats().running == 0


def test_a_waiter_whose_loop_is_gone_does_not_strand_the_slot() -> None:
    engine = Bulkhead(1, 5, None)
    assert engine.enter("f", _Recorder) is None
    dead = engine.enter("f", lambda: _Recorder(fail=True))
    alive = engine.enter("f", _Recorder)
    assert isinstance(alive, _Recorder)
    assert dead is not None
    engine.leave()
    assert alive.granted
    assert alive.woken == 1
    assert engine.stats().waiting == 0


def test_abandoning_an_ungranted_waiter_removes_it() -> None:
    engine = Bulkhead(1, 5, None)
    assert engine.enter("f", _Recorder) is None
    waiter = engine.enter("f", _Recorder)
    assert waiter is not None
    assert engine.abandon(waiter) is False
    assert engine.stats().waiting == 0
    engine.leave()
    assert engine.stats().running == 0


def test_settings_are_checked() -> None:
    for args, kwargs, word in [
        ((0,), {}, "max_concurrent"),
        ((1.5,), {}, "max_concurrent"),
        ((1,), {"max_waiting": -1}, "max_waiting"),
        ((1,), {"wait_timeout": 0}, "wait_timeout"),
    ]:
        with pytest.raises(ConfigurationError, match=word):
            bulkhead(*args, **kwargs)


def test_bulkhead_full_error_pickles() -> None:
    error = BulkheadFullError(
        "full", max_concurrent=2, max_waiting=3, reason="timeout", waited=0.5, function="f"
    )
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.max_concurrent, copy.max_waiting, copy.reason, copy.waited) == (
        2,
        3,
        "timeout",
        0.5,
    )
