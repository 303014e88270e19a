"""@retry on coroutine functions: cancellation, attempt timeouts, never blocking the loop."""

from __future__ import annotations

import asyncio
import threading
import time

import anyio
import pytest

from buttress import AttemptTimeoutError, retry
from buttress.testing import FakeClock


@pytest.mark.anyio
async def test_cancellation_during_backoff_is_not_retried() -> None:
    calls = 0

    @retry(max_retries=5, base_delay=30, jitter=None)
    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    started = time.monotonic()
    with anyio.move_on_after(0.1) as scope:
        await failing()
    assert scope.cancelled_caught
    assert calls == 1
    assert time.monotonic() - started < 5


@pytest.mark.anyio
async def test_cancellation_during_an_attempt_is_not_retried() -> None:
    calls = 0

    @retry(max_retries=5, base_delay=0, exceptions=(BaseException,))
    async def hangs() -> None:
        nonlocal calls
        calls += 1
        await anyio.sleep(30)

    with anyio.move_on_after(0.1) as scope:
        await hangs()
    assert scope.cancelled_caught
    assert calls == 1


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_raised_cancelled_error_is_not_retried() -> None:
    calls = 0

    @retry(max_retries=5, base_delay=0, exceptions=(BaseException,))
    async def cancelled() -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await cancelled()
    assert calls == 1


@pytest.mark.anyio
async def test_attempt_timeout_cancels_hung_attempts_and_retries() -> None:
    calls = 0

    @retry(max_retries=3, base_delay=0, attempt_timeout=0.05, exceptions=(ValueError,))
    async def hangs_twice() -> str:
        nonlocal calls
        calls += 1
        if calls <= 2:
            await anyio.sleep(30)
        return "answered"

    started = time.monotonic()
    assert await hangs_twice() == "answered"
    assert calls == 3
    assert time.monotonic() - started < 5


@pytest.mark.anyio
async def test_attempt_timeout_exhausted_raises_a_timeout_error() -> None:
    @retry(max_retries=1, base_delay=0, attempt_timeout=0.02)
    async def always_hangs() -> None:
        await anyio.sleep(30)

    with pytest.raises(AttemptTimeoutError, match=r"attempt 2 of .*always_hangs\(\)") as info:
        await always_hangs()
    assert isinstance(info.value, TimeoutError)
    assert "failed 2 time(s)" in info.value.__notes__[0]


@pytest.mark.anyio
async def test_attempt_timeout_is_clamped_to_the_deadline() -> None:
    @retry(max_retries=10, base_delay=0.05, jitter=None, attempt_timeout=20, deadline=0.3)
    async def always_hangs() -> None:
        await anyio.sleep(30)

    started = time.monotonic()
    with pytest.raises(AttemptTimeoutError):
        await always_hangs()
    assert time.monotonic() - started < 5


@pytest.mark.anyio
async def test_a_thousand_failing_coroutines_share_the_loop() -> None:
    """1,000 coroutines each failing twice take about one schedule (0.05 + 0.1 s), not 1,000."""
    attempts: dict[int, int] = {}

    @retry(max_retries=2, base_delay=0.05, jitter=None)
    async def flaky(n: int) -> int:
        attempts[n] = attempts.get(n, 0) + 1
        if attempts[n] <= 2:
            raise ConnectionError("busy")
        return n

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    results: list[int] = []

    async def one(n: int) -> None:
        results.append(await flaky(n))

    started = time.monotonic()
    async with anyio.create_task_group() as group:
        group.start_soon(ticker)
        async with anyio.create_task_group() as callers:
            for n in range(1000):
                callers.start_soon(one, n)
        group.cancel_scope.cancel()
    elapsed = time.monotonic() - started
    assert sorted(results) == list(range(1000))
    assert all(count == 3 for count in attempts.values())
    assert elapsed < 5, elapsed  # sequential sleeping would take 150 s
    assert ticks >= 3  # the loop kept turning while they all waited


@pytest.mark.anyio
async def test_async_schedule_with_the_fake_clock(buttress_clock: FakeClock) -> None:
    calls = 0

    @retry(max_retries=4, base_delay=1, jitter=None)
    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 5:
            raise TimeoutError
        return "ok"

    assert await flaky() == "ok"
    assert buttress_clock.sleeps == [1, 2, 4, 8]


def test_reused_across_event_loops_and_threads() -> None:
    calls = 0

    @retry(max_retries=1, base_delay=0.001)
    async def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls % 2:
            raise ConnectionError
        return calls

    assert asyncio.run(flaky()) == 2
    assert asyncio.run(flaky()) == 4
    results: list[int] = []
    thread = threading.Thread(target=lambda: results.append(asyncio.run(flaky())))
    thread.start()
    thread.join()
    assert results == [6]
    import trio

    assert trio.run(flaky) == 8


def test_sync_function_sleeps_with_time_sleep() -> None:
    calls = 0

    @retry(max_retries=2, base_delay=0.05, jitter=None)
    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError
        return "ok"

    started = time.monotonic()
    assert flaky() == "ok"
    assert time.monotonic() - started >= 0.14  # 0.05 + 0.1 really slept
