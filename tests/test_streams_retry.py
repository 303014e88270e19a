"""@retry on streams: retried while no item reached the caller, resumed only on request."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from _stream_support import drain, drain_sync
from buttress import (
    AttemptTimeoutError,
    RetryBudget,
    RetryGaveUp,
    RetryScheduled,
    StreamResume,
    events,
    retry,
)
from buttress.testing import FakeClock


class Flaky:
    """A stream source that fails ``failures`` times, each time after ``after`` items."""

    def __init__(self, failures: int, after: int = 0, error: type[Exception] = ConnectionError):
        self.failures = failures
        self.after = after
        self.error = error
        self.starts: list[dict[str, Any]] = []
        self.closed = 0

    def should_fail(self) -> bool:
        if self.failures:
            self.failures -= 1
            return True
        return False


@pytest.mark.anyio
async def test_failures_before_the_first_item_are_retried(buttress_clock: FakeClock) -> None:
    source = Flaky(failures=2)
    scheduled: list[RetryScheduled] = []

    @retry(max_retries=3, base_delay=0.5, jitter=None)
    async def tokens(prompt: str) -> AsyncIterator[str]:
        source.starts.append({"prompt": prompt})
        if source.should_fail():
            raise ConnectionError("connect failed")
        for word in prompt.split():
            yield word

    with events.subscribe(scheduled.append, RetryScheduled):
        assert [word async for word in tokens("a b c")] == ["a", "b", "c"]
    assert len(source.starts) == 3
    assert buttress_clock.sleeps == [0.5, 1.0]
    assert [record.attempt for record in scheduled] == [1, 2]
    assert all(isinstance(record.error, ConnectionError) for record in scheduled)
    assert {record.function for record in scheduled} == {tokens.__qualname__}


@pytest.mark.anyio
async def test_a_failure_after_the_first_item_propagates_with_a_note(
    buttress_clock: FakeClock,
) -> None:
    starts = 0

    @retry(max_retries=5)
    async def tokens() -> AsyncIterator[int]:
        nonlocal starts
        starts += 1
        yield 1
        yield 2
        raise ConnectionError("reset mid-stream")

    received: list[int] = []
    with pytest.raises(ConnectionError, match="reset mid-stream") as caught:
        await drain(tokens(), received)
    assert received == [1, 2]
    assert starts == 1  # never replayed
    assert buttress_clock.sleeps == []
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "after delivering 2 item(s)" in notes
    assert "resume=" in notes


@pytest.mark.anyio
async def test_resume_continues_a_stream_from_where_the_caller_is(
    buttress_clock: FakeClock,
) -> None:
    text = list("abcdefgh")
    failures = iter([3, 6])  # the first run breaks after 3 items, the second after 6
    asked: list[StreamResume] = []
    starts: list[int] = []

    def resume(state: StreamResume) -> dict[str, int]:
        asked.append(state)
        return {"offset": state.items}

    @retry(max_retries=3, base_delay=0.25, jitter=None, resume=resume)
    async def letters(prefix: str, offset: int = 0) -> AsyncIterator[str]:
        starts.append(offset)
        stop = next(failures, None)
        for index in range(offset, len(text)):
            if index == stop:
                raise ConnectionError(f"dropped at {index}")
            yield prefix + text[index]

    assert [x async for x in letters(">")] == [">" + letter for letter in text]
    assert starts == [0, 3, 6]
    assert [(state.attempt, state.items) for state in asked] == [(1, 3), (2, 6)]
    assert asked[0].arguments == {"prefix": ">", "offset": 0}
    assert asked[1].arguments == {"prefix": ">", "offset": 3}
    assert asked[0].function == letters.__qualname__
    assert isinstance(asked[0].error, ConnectionError)
    assert buttress_clock.sleeps == [0.25, 0.5]  # a resume is a retry: it waits its backoff


@pytest.mark.anyio
async def test_resume_declining_lets_the_error_through(buttress_clock: FakeClock) -> None:
    @retry(max_retries=3, resume=lambda state: None)
    async def stream() -> AsyncIterator[int]:
        yield 1
        raise ConnectionError("gone")

    with pytest.raises(ConnectionError, match="gone"):
        async for _ in stream():
            pass
    assert buttress_clock.sleeps == []


@pytest.mark.anyio
async def test_resume_naming_no_parameter_is_a_clear_error(buttress_clock: FakeClock) -> None:
    @retry(max_retries=3, resume=lambda state: {"ofset": 1})
    async def stream(offset: int = 0) -> AsyncIterator[int]:
        yield offset
        raise ConnectionError("gone")

    with pytest.raises(TypeError, match=r"\['ofset'\], which names no parameter"):
        async for _ in stream():
            pass


@pytest.mark.anyio
async def test_resumes_count_against_max_retries(buttress_clock: FakeClock) -> None:
    gave_up: list[RetryGaveUp] = []

    @retry(max_retries=2, resume=lambda state: {"start": state.items})
    async def stream(start: int = 0) -> AsyncIterator[int]:
        yield start
        raise ConnectionError("again")

    received: list[int] = []
    with events.subscribe(gave_up.append, RetryGaveUp), pytest.raises(ConnectionError):
        await drain(stream(), received)
    assert received == [0, 1, 2]
    assert [(event.reason, event.attempts) for event in gave_up] == [("attempts", 3)]


@pytest.mark.anyio
async def test_errors_not_worth_retrying_pass_through_before_the_first_item(
    buttress_clock: FakeClock,
) -> None:
    starts = 0

    @retry(exceptions=(ConnectionError,))
    async def stream() -> AsyncIterator[int]:
        nonlocal starts
        starts += 1
        raise ValueError("bad request")
        yield 1  # pragma: no cover - makes it a generator

    with pytest.raises(ValueError, match="bad request"):
        async for _ in stream():
            pass
    assert starts == 1


@pytest.mark.anyio
async def test_the_on_predicate_decides_for_streams_too(buttress_clock: FakeClock) -> None:
    class Status(Exception):
        def __init__(self, status: int) -> None:
            super().__init__(status)
            self.status = status

    statuses = iter([503, 500, 404])

    @retry(max_retries=5, exceptions=(Status,), on=lambda e: e.status >= 500)
    async def stream() -> AsyncIterator[int]:
        raise Status(next(statuses))
        yield 1  # pragma: no cover

    with pytest.raises(Status) as caught:
        async for _ in stream():
            pass
    assert caught.value.status == 404
    assert len(buttress_clock.sleeps) == 2


@pytest.mark.anyio
async def test_cancellation_is_never_retried() -> None:
    starts = 0

    @retry(max_retries=5, base_delay=0)
    async def stream() -> AsyncIterator[int]:
        nonlocal starts
        starts += 1
        await anyio.sleep_forever()
        yield 1  # pragma: no cover

    with anyio.move_on_after(0.05) as scope:
        async for _ in stream():
            pass  # pragma: no cover
    assert scope.cancelled_caught
    assert starts == 1


@pytest.mark.anyio
async def test_attempt_timeout_bounds_each_attempts_first_item_only(
    buttress_clock: FakeClock,
) -> None:
    runs = 0

    @retry(max_retries=2, attempt_timeout=0.05, base_delay=0)
    async def stream() -> AsyncIterator[int]:
        nonlocal runs
        runs += 1
        if runs == 1:
            await anyio.sleep_forever()  # hangs before its first item: cancelled, retried
        yield 1
        await anyio.sleep(0.1)  # longer than attempt_timeout, but after the first item
        yield 2

    assert [x async for x in stream()] == [1, 2]
    assert runs == 2


@pytest.mark.anyio
async def test_attempt_timeouts_run_out_as_attempt_timeout_errors(
    buttress_clock: FakeClock,
) -> None:
    @retry(max_retries=1, attempt_timeout=0.02, base_delay=0)
    async def stream() -> AsyncIterator[int]:
        await anyio.sleep_forever()
        yield 1  # pragma: no cover

    with pytest.raises(AttemptTimeoutError, match=r"delivered no item within 0\.02s"):
        async for _ in stream():
            pass  # pragma: no cover


@pytest.mark.anyio
async def test_the_budget_and_deadline_apply_to_streams(buttress_clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.0)

    @retry(max_retries=5, budget=budget)
    async def stream() -> AsyncIterator[int]:
        raise ConnectionError("down")
        yield 1  # pragma: no cover

    with pytest.raises(ConnectionError):
        async for _ in stream():
            pass
    assert buttress_clock.sleeps == []
    assert (budget.stats().calls, budget.stats().exhausted) == (1, 1)

    @retry(max_retries=50, base_delay=1.0, jitter=None, backoff_factor=1.0, deadline=3.5)
    async def late() -> AsyncIterator[int]:
        raise ConnectionError("down")
        yield 1  # pragma: no cover

    with pytest.raises(ConnectionError) as caught:
        async for _ in late():
            pass
    assert buttress_clock.sleeps == [1.0, 1.0, 1.0]
    assert "deadline" in "\n".join(caught.value.__notes__)


def test_sync_generators_are_retried_the_same_way(buttress_clock: FakeClock) -> None:
    source = Flaky(failures=1)

    @retry(max_retries=2, base_delay=0.1, jitter=None)
    def lines() -> Iterator[str]:
        if source.should_fail():
            raise OSError("not yet")
        yield "one"
        yield "two"
        raise OSError("broken pipe")

    received: list[str] = []
    with pytest.raises(OSError, match="broken pipe"):
        drain_sync(lines(), received)
    assert received == ["one", "two"]
    assert buttress_clock.sleeps == [0.1]


def test_settings_that_mean_nothing_for_streams_are_refused() -> None:
    with pytest.raises(TypeError, match=r"retry_on_result.*stream"):

        @retry(retry_on_result=lambda r: r is None)
        async def stream() -> AsyncIterator[int]:
            yield 1

    with pytest.raises(TypeError, match=r"resume.*not a\s+stream"):

        @retry(resume=lambda state: None)
        async def call() -> int:
            return 1

    with pytest.raises(TypeError, match="attempt_timeout"):

        @retry(attempt_timeout=1)
        def lines() -> Iterator[str]:
            yield "x"


@pytest.mark.anyio
async def test_values_sent_and_errors_thrown_reach_the_generator() -> None:
    got: list[Any] = []

    @retry
    async def echo() -> Any:
        value = yield "ready"
        while True:
            try:
                got.append(value)
                value = yield f"echo {value}"
            except KeyError as exc:
                got.append(f"caught {exc.args[0]}")
                value = yield "recovered"

    stream = echo()
    assert await stream.asend(None) == "ready"
    assert await stream.asend("a") == "echo a"
    assert await stream.athrow(KeyError("k")) == "recovered"
    assert await stream.asend("b") == "echo b"
    await stream.aclose()
    assert got == ["a", "caught k", "b"]
