"""The one deadline (buttress._deadline): anyio's cancel semantics, native on asyncio."""

from __future__ import annotations

import asyncio
import sys

import anyio
import anyio.lowlevel
import pytest
import sniffio

from buttress import CallTimeoutError, timeout
from buttress._deadline import Deadline

pytestmark = pytest.mark.anyio


async def test_the_block_is_cancelled_and_the_deadline_says_so() -> None:
    cleaned = []
    with Deadline(0.05) as limit:
        try:
            await anyio.sleep(30)
        finally:
            cleaned.append(True)
    assert limit.expired
    assert cleaned == [True]


async def test_a_block_that_ends_in_time_keeps_its_result() -> None:
    with Deadline(30) as limit:
        await anyio.lowlevel.checkpoint()
        value = 42
    assert value == 42
    assert not limit.expired


async def test_a_shield_inside_the_block_holds_the_cancellation_off() -> None:
    steps = []
    with Deadline(0.02) as limit:
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.2)  # past the deadline, shielded: not cancelled
            steps.append("shielded work done")
        steps.append("after the shield")  # no wait here: reached
        await anyio.sleep(30)  # the first wait outside the shield is cancelled
        steps.append("never")
    assert limit.expired
    assert steps == ["shielded work done", "after the shield"]


async def test_a_shield_around_the_block_does_not_stop_it() -> None:
    with anyio.CancelScope(shield=True), Deadline(0.02) as limit:
        await anyio.sleep(30)
    assert limit.expired


async def test_the_cancellation_is_level_triggered_until_the_block_ends() -> None:
    # As with anyio's scopes: a wait in a `finally` inside the block is cancelled too.
    reached = []
    start = anyio.current_time()
    with Deadline(0.02) as limit:
        try:
            await anyio.sleep(30)
        finally:
            await anyio.sleep(10)
            reached.append("cleanup slept out")  # pragma: no cover
    assert limit.expired
    assert reached == []
    assert anyio.current_time() - start < 5


async def test_an_outer_cancellation_passes_through() -> None:
    with anyio.move_on_after(0.05) as outer:
        with Deadline(30) as limit:
            await anyio.sleep(30)
        pytest.fail("the outer cancellation was swallowed")  # pragma: no cover
    assert outer.cancelled_caught
    assert not limit.expired


async def test_the_outer_cancellation_wins_when_both_land_together() -> None:
    with anyio.CancelScope() as outer:
        with Deadline(0) as limit:
            outer.cancel()
            await anyio.sleep(30)
    assert outer.cancelled_caught
    assert not limit.expired


async def test_inner_scopes_catch_their_own_cancellations() -> None:
    with Deadline(30) as limit:
        with anyio.move_on_after(0.02) as inner:
            await anyio.sleep(30)
        await anyio.lowlevel.checkpoint()
    assert inner.cancelled_caught
    assert not limit.expired


async def test_the_deadline_under_a_task_group_cancels_its_children() -> None:
    finished = []

    async def child() -> None:
        try:
            await anyio.sleep(30)
        finally:
            finished.append("child")

    with Deadline(0.05) as limit:
        async with anyio.create_task_group() as group:
            group.start_soon(child)
            await anyio.sleep(30)
    assert limit.expired
    assert finished == ["child"]


def _asyncio_only() -> None:
    if sniffio.current_async_library() != "asyncio":
        pytest.skip("asyncio's own tasks and waits")


async def test_asyncio_tasks_and_native_waits() -> None:
    _asyncio_only()
    cancelled = []

    async def wait() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    with Deadline(0.02) as limit:
        await wait()
    assert limit.expired
    assert cancelled == [True]
    task = asyncio.current_task()
    assert task is not None
    if sys.version_info >= (3, 11):
        assert task.cancelling() == 0  # the deadline took back every cancel it made


async def test_a_native_cancel_from_outside_is_not_a_timeout() -> None:
    _asyncio_only()
    async def timed() -> None:
        with Deadline(30):
            await asyncio.sleep(30)

    task = asyncio.get_running_loop().create_task(timed())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_timeout_uses_it_and_respects_shields() -> None:
    done = []

    @timeout(0.02)
    async def commit() -> None:
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.1)
            done.append("committed")
        await anyio.sleep(30)

    with pytest.raises(CallTimeoutError):
        await commit()
    assert done == ["committed"]
