"""@timeout: cancellation at the deadline through anyio; plain functions refused honestly."""

from __future__ import annotations

import inspect
import pickle
from datetime import timedelta
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from buttress import (
    ButtressError,
    CallTimeoutError,
    ConfigurationError,
    TimedOut,
    events,
    retry,
    timeout,
)


@pytest.mark.anyio
async def test_a_call_past_the_limit_is_cancelled_and_raises_timeout_error() -> None:
    cleaned_up = []
    seen: list[Any] = []

    @timeout(0.05)
    async def embed(text: str) -> list[float]:
        try:
            await anyio.sleep(30)
        finally:
            cleaned_up.append(text)
        return [1.0]

    with events.subscribe(seen.append, TimedOut):
        start = anyio.current_time()
        with pytest.raises(TimeoutError) as caught:
            await embed("hello")
        elapsed = anyio.current_time() - start
    assert elapsed < 10  # cancelled, not slept out
    error = caught.value
    assert isinstance(error, CallTimeoutError)
    assert isinstance(error, ButtressError)
    assert error.seconds == 0.05
    assert error.function.endswith("embed")
    assert "0.05s" in str(error)
    assert cleaned_up == ["hello"]  # the coroutine's finally ran before we raised
    assert len(seen) == 1
    assert seen[0].seconds == 0.05


@pytest.mark.anyio
async def test_a_call_within_the_limit_returns_its_result() -> None:
    @timeout(timedelta(seconds=30))
    async def add(a: int, b: int = 1) -> int:
        await anyio.lowlevel.checkpoint()
        return a + b

    assert await add(1, b=2) == 3
    assert inspect.iscoroutinefunction(add)


@pytest.mark.anyio
async def test_errors_pass_through_unchanged() -> None:
    @timeout(30)
    async def fail() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        await fail()


@pytest.mark.anyio
async def test_outer_cancellation_is_not_turned_into_a_timeout() -> None:
    @timeout(30)
    async def hang() -> None:
        await anyio.sleep_forever()

    with anyio.move_on_after(0.05) as outer:
        await hang()  # must not raise TimeoutError: the cancellation is the caller's
    assert outer.cancelled_caught


@pytest.mark.anyio
async def test_the_inner_limit_wins_when_shorter() -> None:
    @timeout(0.05)
    async def hang() -> None:
        await anyio.sleep_forever()

    with anyio.move_on_after(30) as outer:
        with pytest.raises(CallTimeoutError):
            await hang()
    assert not outer.cancelled_caught


@pytest.mark.anyio
async def test_per_attempt_timeout_under_retry() -> None:
    attempts = []

    @retry(max_retries=2, base_delay=0, jitter=None)
    @timeout(0.05)
    async def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            await anyio.sleep_forever()
        return "second time"

    assert await flaky() == "second time"
    assert len(attempts) == 2


def test_plain_functions_are_refused_with_the_reason() -> None:
    with pytest.raises(TypeError, match="cannot be cancelled") as caught:

        @timeout(1)
        def blocking() -> None: ...

    assert "to_thread.run_sync" in str(caught.value)


@pytest.mark.parametrize("bad", [0, -1, "1s", None, float("nan")])
def test_the_limit_is_checked(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="seconds"):
        timeout(bad)


def test_call_timeout_error_pickles() -> None:
    error = CallTimeoutError("late", seconds=2.0, function="f")
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.seconds, copy.function) == (
        CallTimeoutError,
        "late",
        2.0,
        "f",
    )
