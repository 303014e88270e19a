"""@circuit_breaker on streams (the outcome is what counts) and breakers as blocks."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from buttress import CircuitBreaker, CircuitOpenError, circuit_breaker
from buttress.testing import FakeClock


def counts(breaker: CircuitBreaker) -> tuple[int, int]:
    stats = breaker.stats()
    return stats.calls, stats.failures


def stream_through(breaker: Any) -> Any:
    @breaker
    async def tokens(n: int, fail_after: int = -1) -> AsyncIterator[int]:
        for index in range(n):
            if index == fail_after:
                raise ConnectionError("reset")
            await anyio.lowlevel.checkpoint()
            yield index

    return tokens


@pytest.mark.anyio
async def test_a_completed_stream_is_a_success_and_a_failed_one_a_failure() -> None:
    tokens = stream_through(circuit_breaker(minimum_calls=100))
    breaker = tokens.breaker
    assert [x async for x in tokens(3)] == [0, 1, 2]
    assert counts(breaker) == (1, 0)  # one stream, one outcome, whatever its items
    with pytest.raises(ConnectionError):
        async for _ in tokens(3, fail_after=0):
            pass
    assert counts(breaker) == (2, 1)
    with pytest.raises(ConnectionError):
        async for _ in tokens(3, fail_after=2):  # after its first item: still a failure
            pass
    assert counts(breaker) == (3, 2)


@pytest.mark.anyio
async def test_an_abandoned_or_cancelled_stream_counts_as_neither(
    anyio_backend: tuple[str, Any],
) -> None:
    tokens = stream_through(circuit_breaker(minimum_calls=100))
    breaker = tokens.breaker
    stream = tokens(5)
    await stream.__anext__()
    await stream.aclose()
    assert counts(breaker) == (0, 0)

    with anyio.CancelScope() as scope:
        stream = tokens(5)
        await stream.__anext__()
        scope.cancel()
        await stream.__anext__()
    assert counts(breaker) == (0, 0)

    stream = tokens(5)
    await stream.__anext__()
    warns = (
        pytest.warns(ResourceWarning)
        if anyio_backend[0] == "trio"
        else contextlib.nullcontext()
    )
    with warns:
        del stream
        gc.collect()
    for _ in range(100):
        await anyio.lowlevel.checkpoint()
    assert counts(breaker) == (0, 0)

    stream = tokens(5)
    await stream.__anext__()
    with pytest.raises(KeyError):  # the caller's own error, thrown in: not the stream's
        await stream.athrow(KeyError("caller"))
    assert counts(breaker) == (0, 0)


@pytest.mark.anyio
async def test_failing_streams_open_the_breaker_and_then_are_refused(
    buttress_clock: FakeClock,
) -> None:
    tokens = stream_through(circuit_breaker(minimum_calls=2, failure_ratio=0.5, open_for=30))
    for _ in range(2):
        with pytest.raises(ConnectionError):
            async for _ in tokens(3, fail_after=1):
                pass
    assert tokens.breaker.state == "open"
    stream = tokens(3)  # created: refused only when iterated
    with pytest.raises(CircuitOpenError):
        await stream.__anext__()


@pytest.mark.anyio
async def test_an_abandoned_half_open_trial_gives_its_permit_back(
    buttress_clock: FakeClock,
) -> None:
    tokens = stream_through(circuit_breaker(minimum_calls=1, open_for=10, half_open_calls=1))
    breaker = tokens.breaker
    with pytest.raises(ConnectionError):
        async for _ in tokens(2, fail_after=0):
            pass
    assert breaker.state == "open"
    buttress_clock.advance(10)
    trial = tokens(3)
    await trial.__anext__()
    assert breaker.state == "half_open"
    with pytest.raises(CircuitOpenError):  # the one permit is taken
        await tokens(1).__anext__()
    await trial.aclose()
    assert [x async for x in tokens(2)] == [0, 1]  # the permit came back: a trial runs
    assert breaker.state == "closed"


@pytest.mark.anyio
async def test_a_slow_first_item_is_a_slow_call_not_a_long_stream(
    buttress_clock: FakeClock,
) -> None:
    @circuit_breaker(minimum_calls=100, slow_call_duration=1.0)
    async def tokens(first_wait: float, n: int) -> AsyncIterator[int]:
        buttress_clock.advance(first_wait)
        yield 0
        for index in range(1, n):
            buttress_clock.advance(5)  # long gaps after the first item: not slow
            yield index

    assert [x async for x in tokens(0.1, 4)] == [0, 1, 2, 3]
    assert tokens.breaker.stats().slow_calls == 0
    assert [x async for x in tokens(2.0, 1)] == [0]
    assert tokens.breaker.stats().slow_calls == 1


def test_sync_generators_are_counted_the_same_way() -> None:
    @circuit_breaker(minimum_calls=100)
    def lines(fail: bool) -> Iterator[str]:
        yield "a"
        if fail:
            raise OSError("broken")
        yield "b"

    assert list(lines(False)) == ["a", "b"]
    with pytest.raises(OSError):
        list(lines(True))
    stream = lines(False)
    next(stream)
    stream.close()
    assert counts(lines.breaker) == (2, 1)


# --- blocks ---------------------------------------------------------------------------


def test_a_named_breaker_decorates_and_guards_blocks() -> None:
    db = circuit_breaker(name="streams-test-db", minimum_calls=2, failure_ratio=0.5)
    assert isinstance(db, CircuitBreaker)
    assert circuit_breaker(name="streams-test-db", minimum_calls=2, failure_ratio=0.5) is db

    @db
    def query() -> str:
        return "row"

    assert query() == "row"
    assert query.breaker is db
    with db:
        pass
    assert counts(db) == (2, 0)
    for _ in range(2):
        with pytest.raises(TimeoutError), db:
            raise TimeoutError("slow disk")
    assert db.state == "open"
    with pytest.raises(CircuitOpenError) as caught, db:
        pass  # pragma: no cover
    assert caught.value.function.endswith("test_a_named_breaker_decorates_and_guards_blocks")
    with pytest.raises(CircuitOpenError):
        query()
    db.reset()


@pytest.mark.anyio
async def test_async_blocks_are_judged_like_calls() -> None:
    breaker = circuit_breaker(name="streams-test-async", minimum_calls=100, exclude=(KeyError,))
    async with breaker:
        await anyio.lowlevel.checkpoint()
    with pytest.raises(ValueError):
        async with breaker:
            raise ValueError("counted as a failure: a default exceptions type")
    with pytest.raises(KeyError):
        async with breaker:
            raise KeyError("excluded: neither")
    with anyio.move_on_after(0.01):
        async with breaker:
            await anyio.sleep_forever()  # cancelled: neither
    assert counts(breaker) == (2, 1)


@pytest.mark.anyio
async def test_concurrent_blocks_keep_their_own_tickets(buttress_clock: FakeClock) -> None:
    # Half-open with two permits: each block must give back (or count) its own.
    breaker = circuit_breaker(
        name="streams-test-tickets", minimum_calls=1, open_for=5, half_open_calls=2
    )
    with pytest.raises(OSError), breaker:
        raise OSError("down")
    buttress_clock.advance(5)
    order: list[str] = []
    release = anyio.Event()

    async def trial(label: str, fail: bool) -> None:
        with contextlib.suppress(OSError):
            async with breaker:
                order.append(f"{label} in")
                await release.wait()
                if fail:
                    raise OSError(label)
        order.append(f"{label} out")

    async with anyio.create_task_group() as group:
        group.start_soon(trial, "a", False)
        group.start_soon(trial, "b", False)
        await anyio.wait_all_tasks_blocked()
        assert breaker.state == "half_open"
        release.set()
    assert breaker.state == "closed"
    assert sorted(order) == ["a in", "a out", "b in", "b out"]


@pytest.mark.anyio
async def test_a_block_in_a_generator_finalised_elsewhere_releases_its_permit(
    buttress_clock: FakeClock, anyio_backend: tuple[str, Any]
) -> None:
    breaker = circuit_breaker(
        name="streams-test-finalised", minimum_calls=1, open_for=5, half_open_calls=1
    )
    with pytest.raises(OSError), breaker:
        raise OSError("down")
    buttress_clock.advance(5)

    async def undecorated() -> AsyncIterator[int]:
        async with breaker:  # a trial, inside a plain generator
            yield 1
            yield 2

    stream = undecorated()
    assert await stream.__anext__() == 1
    warns = (
        pytest.warns(ResourceWarning)
        if anyio_backend[0] == "trio"
        else contextlib.nullcontext()
    )
    with warns:
        del stream  # finalised by the event loop, in another task
        gc.collect()
    for _ in range(100):
        await anyio.lowlevel.checkpoint()
        if breaker.stats().state == "half_open" and _permit_free(breaker):
            break
    assert _permit_free(breaker)


def _permit_free(breaker: CircuitBreaker) -> bool:
    try:
        with breaker:
            return True
    except CircuitOpenError:
        return False


def test_blocks_entered_through_an_exit_stack_and_nested() -> None:
    breaker = circuit_breaker(name="streams-test-stack", minimum_calls=100)
    with contextlib.ExitStack() as stack:
        stack.enter_context(breaker)
        with breaker:
            pass

    def failing_in_a_stack() -> None:
        with contextlib.ExitStack() as stack:
            stack.enter_context(breaker)
            raise OSError("x")

    with pytest.raises(OSError):
        failing_in_a_stack()
    assert counts(breaker) == (3, 1)
    assert len(breaker._blocks) == 0


def test_an_exit_without_an_entry_is_an_error() -> None:
    breaker = circuit_breaker(name="streams-test-exit", minimum_calls=100)
    with pytest.raises(RuntimeError, match="never entered"):
        breaker.__exit__(None, None, None)
