"""@timeout on streams (first item, idle, total) and as a block (``async with timeout()``)."""

from __future__ import annotations

import pickle
from collections.abc import AsyncIterator, Iterator

import anyio
import anyio.lowlevel
import pytest

from _stream_support import drain
from buttress import (
    ButtressError,
    CallTimeoutError,
    ConfigurationError,
    StreamTimeoutError,
    TimedOut,
    Timeout,
    events,
    timeout,
)

# Limits are generous beside the stalls (which never end by themselves), so a busy
# machine cannot make a healthy step look stalled.


class Source:
    """A stream whose steps wait as told; it records how it ended."""

    def __init__(self, *waits: float) -> None:
        self.waits = waits
        self.closed = False
        self.cancelled = False

    async def run(self) -> AsyncIterator[int]:
        try:
            for index, wait in enumerate(self.waits):
                if wait == float("inf"):
                    await anyio.sleep_forever()
                await anyio.sleep(wait)
                yield index
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            raise
        finally:
            self.closed = True


@pytest.mark.anyio
async def test_first_item_bounds_the_wait_for_the_first_item() -> None:
    source = Source(float("inf"))
    seen: list[TimedOut] = []

    tokens = timeout(first_item=0.05)(source.run)

    with events.subscribe(seen.append, TimedOut), pytest.raises(StreamTimeoutError) as caught:
        async for _ in tokens():
            pass  # pragma: no cover
    error = caught.value
    assert (error.limit, error.seconds, error.items) == ("first_item", 0.05, 0)
    assert error.function == "Source.run"
    assert "delivered no item within first_item=0.05s" in str(error)
    assert isinstance(error, CallTimeoutError)
    assert isinstance(error, TimeoutError)
    assert isinstance(error, ButtressError)
    assert source.cancelled
    assert source.closed
    assert [(event.function, event.seconds) for event in seen] == [(error.function, 0.05)]


@pytest.mark.anyio
async def test_idle_bounds_the_wait_between_items() -> None:
    source = Source(0, 0, float("inf"))

    tokens = timeout(first_item=5, idle=0.05)(source.run)

    received: list[int] = []
    with pytest.raises(StreamTimeoutError) as caught:
        await drain(tokens(), received)
    assert received == [0, 1]
    assert (caught.value.limit, caught.value.items) == ("idle", 2)
    assert "after item 2" in str(caught.value)
    assert source.closed


@pytest.mark.anyio
async def test_a_slow_first_item_does_not_count_against_idle() -> None:
    @timeout(first_item=5, idle=0.5)
    async def tokens() -> AsyncIterator[int]:
        await anyio.sleep(0.6)  # longer than idle, shorter than first_item
        yield 1
        yield 2

    assert [x async for x in tokens()] == [1, 2]


@pytest.mark.anyio
async def test_the_total_deadline_counts_the_callers_time_between_items() -> None:
    source = Source(0, 0, 0, 0)

    tokens = timeout(0.2, idle=5)(source.run)

    received: list[int] = []
    with pytest.raises(StreamTimeoutError) as caught:
        await drain(tokens(), received, pause=0.15)  # a slow reader; the stream is quick
    assert received == [0, 1]
    assert (caught.value.limit, caught.value.seconds) == ("total", 0.2)
    assert "did not end within 0.2s (after 2 item(s))" in str(caught.value)
    assert source.closed
    assert not source.cancelled  # it was closed where it waited for the reader


@pytest.mark.anyio
async def test_the_total_deadline_cancels_a_stalled_step() -> None:
    source = Source(0, float("inf"))

    tokens = timeout(0.1, idle=30)(source.run)

    with pytest.raises(StreamTimeoutError) as caught:
        async for _ in tokens():
            pass
    assert caught.value.limit == "total"
    assert source.cancelled


@pytest.mark.anyio
async def test_a_stream_within_its_limits_is_untouched() -> None:
    @timeout(10, first_item=10, idle=10)
    async def tokens(n: int) -> AsyncIterator[int]:
        for index in range(n):
            await anyio.lowlevel.checkpoint()
            yield index

    assert [x async for x in tokens(50)] == list(range(50))


@pytest.mark.anyio
async def test_outside_cancellation_is_not_a_timeout() -> None:
    @timeout(first_item=10)
    async def tokens() -> AsyncIterator[int]:
        await anyio.sleep_forever()
        yield 1  # pragma: no cover

    with anyio.move_on_after(0.05) as scope:
        async for _ in tokens():
            pass  # pragma: no cover
    assert scope.cancelled_caught


def test_stream_timeout_errors_pickle_with_their_facts() -> None:
    error = StreamTimeoutError("m", seconds=1.5, function="f", limit="idle", items=3)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.seconds, copy.function, copy.limit, copy.items) == (1.5, "f", "idle", 3)
    assert str(copy) == "m"


def test_limits_that_cannot_work_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="needs a limit"):
        timeout()
    with pytest.raises(ConfigurationError, match="idle"):
        timeout(idle=0)
    with pytest.raises(TypeError, match=r"first_item and idle bound the items of a stream"):

        @timeout(first_item=1)
        async def call() -> int:
            return 1

    with pytest.raises(TypeError, match=r"@timeout cannot decorate .*generator.*async generator"):

        @timeout(5)
        def lines() -> Iterator[str]:
            yield "x"


def test_a_timeout_object_says_what_it_bounds() -> None:
    limits = timeout(30, first_item=2, idle=5)
    assert isinstance(limits, Timeout)
    assert (limits.seconds, limits.first_item, limits.idle) == (30, 2, 5)
    assert repr(limits) == "timeout(seconds=30, first_item=2, idle=5)"


# --- the block -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_block_past_its_limit_raises_call_timeout_error_named_after_its_function() -> None:
    seen: list[TimedOut] = []
    cleaned = False

    async def handler() -> None:
        nonlocal cleaned
        async with timeout(0.05):
            try:
                await anyio.sleep_forever()
            finally:
                cleaned = True

    with events.subscribe(seen.append, TimedOut), pytest.raises(CallTimeoutError) as caught:
        await handler()
    assert cleaned
    assert caught.value.seconds == 0.05
    assert caught.value.function.endswith("handler")
    assert "a block in" in str(caught.value)
    assert [event.function for event in seen] == [caught.value.function]


@pytest.mark.anyio
async def test_one_timeout_object_bounds_blocks_in_many_tasks_and_decorates() -> None:
    limit = timeout(0.2)
    outcomes: dict[int, str] = {}

    async def work(index: int, wait: float) -> None:
        try:
            async with limit:
                await anyio.sleep(wait)
            outcomes[index] = "done"
        except CallTimeoutError:
            outcomes[index] = "timed out"

    @limit
    async def call() -> str:
        return "ok"

    async with anyio.create_task_group() as group:
        for index in range(6):
            group.start_soon(work, index, 0 if index % 2 else 10)
    assert outcomes == {i: "done" if i % 2 else "timed out" for i in range(6)}
    assert await call() == "ok"


@pytest.mark.anyio
async def test_blocks_nest_and_outside_cancellation_passes_through() -> None:
    outer = timeout(10)
    with anyio.move_on_after(0.05) as scope:
        async with outer, timeout(20):
            await anyio.sleep_forever()
    assert scope.cancelled_caught

    async def inner_fires() -> None:
        async with outer, timeout(0.05):
            await anyio.sleep_forever()

    with pytest.raises(CallTimeoutError) as caught:
        await inner_fires()
    assert caught.value.seconds == 0.05  # the inner one fired; the outer is left intact


@pytest.mark.anyio
async def test_an_error_in_the_block_propagates_unchanged() -> None:
    with pytest.raises(KeyError):
        async with timeout(5):
            raise KeyError("k")


def test_a_sync_block_is_refused() -> None:
    with pytest.raises(TypeError, match="running thread cannot be cancelled"), timeout(1):
        pass  # pragma: no cover


@pytest.mark.anyio
async def test_a_stream_only_timeout_is_no_block() -> None:
    with pytest.raises(TypeError, match="a block needs seconds"):
        async with timeout(idle=1):
            pass  # pragma: no cover
