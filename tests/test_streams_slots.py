"""Bulkhead slots, rate-limit starts and memory reservations held for a stream's life.

A stream takes its slot when it is first iterated and gives it back when it ends, however
it ends: completed, failed, cancelled, closed by its caller, or finalised by the garbage
collector after the caller dropped it. Checked on asyncio and trio, for async and sync
generators, and by hypothesis under random cancellations and early closes.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _stream_support import drain
from buttress import (
    BulkheadFullError,
    MemoryGuard,
    MemoryProbe,
    RateLimitExceeded,
    bulkhead,
    memory_guard,
    rate_limit,
)
from buttress.testing import FakeClock


async def settle(check: Any, rounds: int = 200) -> None:
    """Let the event loop run (garbage-collector finalisers are scheduled) until ``check()``."""
    for _ in range(rounds):
        if check():
            return
        await anyio.lowlevel.checkpoint()
    assert check()


def collecting(backend: str) -> contextlib.AbstractContextManager[Any]:
    """Around dropping an unfinished stream: trio warns that it finalises it for us.

    (Its finaliser warns first, then closes the generator; under ``filterwarnings =
    error`` the warning would stop it, so the test takes the warning instead.)
    """
    if backend == "trio":
        return pytest.warns(ResourceWarning, match="garbage collected before it had been")
    return contextlib.nullcontext()


def numbers_through(decorate: Any) -> Any:
    """A decorated async stream of ``n`` numbers that may fail after ``fail_after`` items."""

    @decorate
    async def numbers(n: int, fail_after: int = -1) -> AsyncIterator[int]:
        for index in range(n):
            if index == fail_after:
                raise ConnectionError("upstream reset")
            await anyio.lowlevel.checkpoint()
            yield index

    return numbers


# --- bulkhead ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_stream_holds_its_slot_from_first_item_to_completion() -> None:
    numbers = numbers_through(bulkhead(1))
    slots = numbers.bulkhead
    stream = numbers(3)
    assert slots.stats().running == 0  # created, not iterated: nothing taken
    assert await stream.__anext__() == 0
    assert slots.stats().running == 1
    with pytest.raises(BulkheadFullError):
        await numbers(1).__anext__()
    assert [x async for x in stream] == [1, 2]
    assert slots.stats().running == 0
    assert [x async for x in numbers(2)] == [0, 1]


@pytest.mark.anyio
async def test_the_slot_comes_back_on_error_aclose_and_cancellation() -> None:
    numbers = numbers_through(bulkhead(1))
    slots = numbers.bulkhead

    with pytest.raises(ConnectionError):
        async for _ in numbers(5, fail_after=2):
            pass
    assert slots.stats().running == 0

    stream = numbers(5)
    await stream.__anext__()
    await stream.aclose()
    assert slots.stats().running == 0

    with anyio.CancelScope() as scope:
        stream = numbers(5)
        await stream.__anext__()
        scope.cancel()
        await stream.__anext__()  # cancelled inside the generator
    assert slots.stats().running == 0
    await stream.aclose()  # already finished: nothing more to give back
    assert slots.stats().running == 0


@pytest.mark.anyio
async def test_the_slot_comes_back_when_a_dropped_stream_is_collected(
    anyio_backend: tuple[str, Any],
) -> None:
    numbers = numbers_through(bulkhead(2))
    slots = numbers.bulkhead
    stream = numbers(10)
    async for item in stream:
        if item == 3:
            break  # `break` does not close the stream: the garbage collector will
    assert slots.stats().running == 1
    with collecting(anyio_backend[0]):
        del stream
        gc.collect()
    await settle(lambda: slots.stats().running == 0)


@pytest.mark.anyio
async def test_a_waiting_stream_cancelled_in_the_queue_leaves_it() -> None:
    numbers = numbers_through(bulkhead(1, max_waiting=2))
    slots = numbers.bulkhead
    holder = numbers(5)
    await holder.__anext__()
    with anyio.move_on_after(0.05) as scope:
        await numbers(1).__anext__()  # queued, then cancelled while waiting
    assert scope.cancelled_caught
    assert (slots.stats().running, slots.stats().waiting) == (1, 0)

    received: list[int] = []

    async def waiter() -> None:
        received.extend([x async for x in numbers(2)])

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert slots.stats().waiting == 1
        await holder.aclose()  # hands the slot to the waiting stream
    assert received == [0, 1]
    assert (slots.stats().running, slots.stats().waiting) == (0, 0)


@pytest.mark.anyio
async def test_streams_and_blocks_share_one_bulkhead() -> None:
    gpu = bulkhead(1)
    numbers = numbers_through(gpu)
    stream = numbers(3)
    await stream.__anext__()
    with pytest.raises(BulkheadFullError) as caught:
        async with gpu:
            pass  # pragma: no cover
    assert "test_streams_and_blocks_share_one_bulkhead" in caught.value.function
    await stream.aclose()
    async with gpu:
        assert gpu.stats().running == 1
    assert gpu.stats().running == 0


def test_sync_generators_hold_and_release_a_slot_the_same_way() -> None:
    gpu = bulkhead(1)

    @gpu
    def lines(n: int) -> Iterator[int]:
        yield from range(n)

    stream = lines(3)
    assert next(stream) == 0
    assert gpu.stats().running == 1
    with pytest.raises(BulkheadFullError):
        next(lines(1))
    stream.close()
    assert gpu.stats().running == 0

    stream = lines(3)
    next(stream)
    del stream  # a generator is closed when its last reference goes
    gc.collect()
    assert gpu.stats().running == 0
    with gpu:
        assert gpu.stats().running == 1
    assert list(lines(2)) == [0, 1]
    assert gpu.stats().running == 0


# --- rate limit -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_stream_takes_one_start_however_many_items(buttress_clock: FakeClock) -> None:
    quota = rate_limit(1, per=10, wait=False)
    numbers = numbers_through(quota)
    assert [x async for x in numbers(5)] == list(range(5))
    assert quota.stats().admitted == 1
    created = numbers(1)  # never iterated: takes nothing
    del created
    with pytest.raises(RateLimitExceeded):
        await numbers(1).__anext__()
    assert quota.stats().rejected == 1


@pytest.mark.anyio
async def test_a_stream_cancelled_while_waiting_its_turn_gives_the_start_back() -> None:
    quota = rate_limit(1, per=60)  # the second start is a minute away
    numbers = numbers_through(quota)
    assert [x async for x in numbers(1)] == [0]
    with anyio.move_on_after(0.05):
        await numbers(1).__anext__()
    assert quota.stats().delayed == 1
    # the cancelled wait returned its start: the next caller waits one interval, not two
    assert quota.stats().available == 0
    wait, reserved = quota.reserve("probe")
    assert 59 < wait <= 60
    quota.cancel(reserved)


# --- memory guard -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_streams_memory_reservation_is_held_for_its_life(
    anyio_backend: tuple[str, Any],
) -> None:
    guard = MemoryGuard(
        max_percent=100, reserve=lambda n, fail_after=-1: n * 1000, probe=MemoryProbe()
    )
    numbers = numbers_through(guard)
    stream = numbers(4)
    await stream.__anext__()
    assert guard.reserved == 4000
    await stream.aclose()
    assert guard.reserved == 0
    reserved: list[int] = []
    with pytest.raises(ConnectionError):
        await drain(numbers(3, fail_after=1), each=lambda item: reserved.append(guard.reserved))
    assert reserved == [3000]
    assert guard.reserved == 0

    stream = numbers(7)
    await stream.__anext__()
    with collecting(anyio_backend[0]):
        del stream
        gc.collect()
    await settle(lambda: guard.reserved == 0)


def test_memory_guard_returns_the_guard_that_decorates() -> None:
    guard = memory_guard(max_percent=99)
    assert isinstance(guard, MemoryGuard)

    @guard
    def lines() -> Iterator[str]:
        yield "x"

    assert lines.memory_guard is guard
    assert list(lines()) == ["x"]


# --- hypothesis: random cancellations and early closes -----------------------------------

ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["step", "step", "cancel", "aclose", "drop", "fail", "throw"]),
        st.integers(min_value=0, max_value=4),
    ),
    max_size=40,
)


async def _scenario(backend: str, actions: list[tuple[str, int]]) -> None:
    guard = MemoryGuard(max_percent=100, reserve=1000, probe=MemoryProbe())
    slots = bulkhead(2, max_waiting=2)
    failing: set[int] = set()

    @slots
    @guard
    async def endless(index: int) -> AsyncIterator[int]:
        count = 0
        while True:
            await anyio.lowlevel.checkpoint()
            if index in failing:
                failing.discard(index)
                raise ConnectionError("reset")
            yield count
            count += 1

    streams: dict[int, Any] = {}
    holding: set[int] = set()  # streams suspended after an item: they hold a slot

    def check() -> None:
        stats = slots.stats()
        assert stats.running == len(holding) <= 2
        assert stats.waiting == 0
        assert guard.reserved == 1000 * len(holding)

    for action, index in actions:
        stream = streams.get(index)
        if stream is None and action in ("step", "cancel"):
            stream = streams[index] = endless(index)
        if stream is None:
            continue
        if action == "step":
            # A step that must wait for a slot is cancelled after a moment: a random
            # cancellation of a queued stream.
            with anyio.move_on_after(0.01):
                try:
                    await stream.__anext__()
                except (ConnectionError, StopAsyncIteration, BulkheadFullError):
                    holding.discard(index)
                    del streams[index]
                else:
                    holding.add(index)
            if index in streams and index not in holding:
                del streams[index]  # cancelled while queued: the stream is finished
        elif action == "cancel":
            with anyio.CancelScope() as scope:
                scope.cancel()
                await stream.__anext__()  # cancelled at its first checkpoint
            holding.discard(index)
            del streams[index]
        elif action == "aclose":
            await stream.aclose()
            holding.discard(index)
            del streams[index]
        elif action == "throw":
            with pytest.raises(KeyError):
                await stream.athrow(KeyError("caller"))
            holding.discard(index)
            del streams[index]
        elif action == "drop":
            with collecting(backend) if index in holding else contextlib.nullcontext():
                del streams[index], stream
                gc.collect()
            holding.discard(index)
            await settle(lambda: slots.stats().running == len(holding))
        elif action == "fail":
            failing.add(index)
        check()
    for stream in list(streams.values()):
        await stream.aclose()
    holding.clear()
    check()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(actions=ACTIONS)
def test_slots_balance_under_random_cancellation_and_early_close(
    backend: str, actions: list[tuple[str, int]]
) -> None:
    anyio.run(_scenario, backend, actions, backend=backend)
