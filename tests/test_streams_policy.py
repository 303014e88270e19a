"""policy() on streams, in canonical order; @fallback and @validate_input on streams."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from _monitor_support import capture, fresh_monitoring
from _stream_support import drain
from buttress import (
    FallbackUsed,
    InputValidationError,
    RetryScheduled,
    StreamTimeoutError,
    events,
    fallback,
    flush_monitoring,
    policy,
    validate_input,
)
from buttress.testing import FakeClock


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    with fresh_monitoring():
        yield


def gateway_policy(**extra: Any) -> Any:
    return policy(
        monitor="relay",
        validate=True,
        fallback=["[unavailable]"],
        timeout={"seconds": 30, "first_item": 5, "idle": 5},
        retry={"max_retries": 2, "base_delay": 0.1, "jitter": None},
        circuit_breaker={"minimum_calls": 100},
        bulkhead=2,
        rate_limit=1000,
        memory_guard={"max_percent": 100},
        attempt_timeout={"first_item": 5},
        **extra,
    )


@pytest.mark.anyio
async def test_the_whole_stack_relays_a_stream(buttress_clock: FakeClock) -> None:
    starts: list[str] = []
    seen: list[RetryScheduled] = []

    @gateway_policy()
    async def relay(prompt: str, n: int) -> AsyncIterator[str]:
        starts.append(prompt)
        if len(starts) == 1:
            raise ConnectionError("connect refused")  # before the first item: retried
        for index in range(n):
            await anyio.lowlevel.checkpoint()
            yield f"{prompt}{index}"

    assert inspect.isasyncgenfunction(relay)
    assert relay.policy.layers[0] == "monitor"
    with capture() as records, events.subscribe(seen.append, RetryScheduled):
        assert await drain(relay("t", "3")) == ["t0", "t1", "t2"]  # "3" coerced to 3
        flush_monitoring()
    assert starts == ["t", "t"]
    assert [event.attempt for event in seen] == [1]
    # The breaker counted each attempt, the bulkhead and memory guard gave back all.
    assert relay.circuit_breaker.stats().calls == 2
    assert relay.circuit_breaker.stats().failures == 1
    assert relay.bulkhead.stats().running == 0
    assert relay.memory_guard.reserved == 0
    assert relay.rate_limit.stats().admitted == 2
    [record] = records.of("relay")  # one record for the stream, retries included
    assert record.stream == {  # type: ignore[attr-defined]
        "items": 3,
        "first_item": record.stream["first_item"],  # type: ignore[attr-defined]
        "ended": "completed",
    }


@pytest.mark.anyio
async def test_bad_input_fails_before_anything_below_runs(buttress_clock: FakeClock) -> None:
    @gateway_policy()
    async def relay(prompt: str, n: int) -> AsyncIterator[str]:
        yield prompt  # pragma: no cover

    with pytest.raises(InputValidationError):
        await drain(relay("t", "many"))
    assert relay.circuit_breaker.stats().calls == 0
    assert relay.rate_limit.stats().admitted == 0
    assert buttress_clock.sleeps == []


@pytest.mark.anyio
async def test_the_fallback_answers_what_retries_gave_up_on_before_the_first_item(
    buttress_clock: FakeClock,
) -> None:
    used: list[FallbackUsed] = []

    @gateway_policy()
    async def relay(prompt: str, n: int) -> AsyncIterator[str]:
        raise ConnectionError("down")
        yield prompt  # pragma: no cover

    with events.subscribe(used.append, FallbackUsed):
        assert await drain(relay("t", 1)) == ["[unavailable]"]
    assert buttress_clock.sleeps == [0.1, 0.2]  # three attempts first
    assert len(used) == 1


@pytest.mark.anyio
async def test_after_the_first_item_a_failure_reaches_the_caller() -> None:
    @gateway_policy()
    async def relay(prompt: str, n: int) -> AsyncIterator[str]:
        yield prompt
        raise ConnectionError("reset mid-stream")

    received: list[str] = []
    with pytest.raises(ConnectionError, match="mid-stream"):
        await drain(relay("t", 1), received)
    assert received == ["t"]


@pytest.mark.anyio
async def test_the_total_timeout_bounds_retries_and_waits_together() -> None:
    @policy(timeout={"seconds": 0.2}, retry={"max_retries": 100, "base_delay": 0.05})
    async def relay() -> AsyncIterator[int]:
        raise ConnectionError("down")
        yield 1  # pragma: no cover

    with pytest.raises(StreamTimeoutError) as caught:
        await drain(relay())
    assert caught.value.limit == "total"


def test_a_cached_policy_refuses_a_stream_naming_the_cache() -> None:
    with pytest.raises(TypeError, match=r"@cache_result cannot decorate .*not cached"):

        @policy(cache=30, retry=2)
        async def relay() -> AsyncIterator[int]:
            yield 1


# --- @fallback and @validate_input alone --------------------------------------------------


@pytest.mark.anyio
async def test_fallback_answers_are_read_as_items() -> None:
    async def failing() -> AsyncIterator[str]:
        raise ConnectionError("down")
        yield "never"  # pragma: no cover

    async def from_factory(error: Exception) -> list[str]:
        return ["async", type(error).__name__]

    assert await drain(fallback(failing)()) == []  # bare: None, no items
    assert await drain(fallback("sorry")(failing)()) == ["sorry"]  # a str is one item
    assert await drain(fallback(factory=from_factory)(failing)()) == [
        "async",
        "ConnectionError",
    ]

    async def items() -> AsyncIterator[str]:
        yield "from"
        yield "an async iterable"

    assert await drain(fallback(factory=lambda error: items())(failing)()) == [
        "from",
        "an async iterable",
    ]
    with pytest.raises(TypeError, match=r"replacement answer must be its items.*got int"):
        await drain(fallback(42)(failing)())


def test_fallback_on_a_sync_generator() -> None:
    @fallback(exceptions=(OSError,), factory=lambda error: ["cached line"])
    def lines(fail: bool) -> Iterator[str]:
        if fail:
            raise OSError("disk")
        yield "fresh line"

    assert list(lines(False)) == ["fresh line"]
    assert list(lines(True)) == ["cached line"]


@pytest.mark.anyio
async def test_validate_input_on_a_stream_checks_when_iterated() -> None:
    @validate_input(on_error=lambda error: ["invalid request"])
    async def tokens(n: int) -> AsyncIterator[int]:
        for index in range(n):
            yield index

    assert await drain(tokens("2")) == [0, 1]  # type: ignore[arg-type]
    assert await drain(tokens("x")) == ["invalid request"]  # type: ignore[arg-type]

    @validate_input
    async def strict(n: int) -> AsyncIterator[int]:
        yield n

    stream = strict("x")  # type: ignore[arg-type]
    with pytest.raises(InputValidationError):
        await stream.__anext__()
