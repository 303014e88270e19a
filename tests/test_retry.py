"""@retry: schedules, jitter, deadline, results, re-raising, refusals, events."""

from __future__ import annotations

import itertools
import traceback
from datetime import timedelta
from typing import Any

import pytest

from buttress import ConfigurationError, RetryError, RetryGaveUp, RetryScheduled, events, retry
from buttress.testing import FakeClock, testing_mode


class Flaky:
    """Fails ``failures`` times with ``error``, then returns ``result``."""

    def __init__(self, failures: int, error: BaseException | None = None, result: Any = "ok"):
        self.failures = failures
        self.error = error or ConnectionError("upstream down")
        self.result = result
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.result

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        return self(*args, **kwargs)


def test_exact_exponential_schedule_sync(buttress_clock: FakeClock) -> None:
    flaky = Flaky(failures=3)
    fetch = retry(max_retries=3, base_delay=0.1, backoff_factor=2, jitter=None)(flaky)
    assert fetch() == "ok"
    assert flaky.calls == 4
    assert buttress_clock.sleeps == pytest.approx([0.1, 0.2, 0.4])


@pytest.mark.anyio
async def test_exact_exponential_schedule_async(buttress_clock: FakeClock) -> None:
    flaky = Flaky(failures=3)
    fetch = retry(max_retries=3, base_delay=0.1, backoff_factor=3, jitter=None)(flaky.acall)
    assert await fetch() == "ok"
    assert buttress_clock.sleeps == pytest.approx([0.1, 0.3, 0.9])


def test_max_delay_caps_every_wait(buttress_clock: FakeClock) -> None:
    fetch = retry(max_retries=6, base_delay=1, max_delay=5, jitter=None)(Flaky(6))
    fetch()
    assert buttress_clock.sleeps == [1, 2, 4, 5, 5, 5]


def test_timedelta_settings(buttress_clock: FakeClock) -> None:
    fetch = retry(
        max_retries=2,
        base_delay=timedelta(milliseconds=250),
        max_delay=timedelta(seconds=1),
        jitter=None,
    )(Flaky(2))
    fetch()
    assert buttress_clock.sleeps == [0.25, 0.5]


def test_exhausted_reraises_the_last_error_itself_with_a_note(buttress_clock: FakeClock) -> None:
    errors = [ConnectionError(f"attempt {n}") for n in range(1, 5)]
    calls = iter(errors)

    def always_fails() -> None:
        raise next(calls)

    fetch = retry(max_retries=3, base_delay=0.1, jitter=None)(always_fails)
    with pytest.raises(ConnectionError) as info:
        fetch()
    assert info.value is errors[-1]
    notes = info.value.__notes__
    assert len(notes) == 1
    assert "always_fails() failed 4 time(s)" in notes[0]
    assert "slept 0.1s, 0.2s, 0.4s" in notes[0]
    # The traceback still points into the function that raised.
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert frames[-1] == "always_fails"


def test_zero_retries_means_one_attempt(buttress_clock: FakeClock) -> None:
    flaky = Flaky(1)
    with pytest.raises(ConnectionError):
        retry(max_retries=0)(flaky)()
    assert flaky.calls == 1
    assert buttress_clock.sleeps == []


def test_only_listed_exceptions_are_retried(buttress_clock: FakeClock) -> None:
    flaky = Flaky(2, error=KeyError("missing"))
    with pytest.raises(KeyError):
        retry(exceptions=(ConnectionError, TimeoutError))(flaky)()
    assert flaky.calls == 1
    subclass = Flaky(2, error=ConnectionRefusedError("refused"))
    assert retry(exceptions=ConnectionError)(subclass)() == "ok"


@pytest.mark.parametrize("fatal", [KeyboardInterrupt(), SystemExit(1), GeneratorExit()])
def test_exits_are_never_retried(fatal: BaseException, buttress_clock: FakeClock) -> None:
    flaky = Flaky(2, error=fatal)
    with pytest.raises(type(fatal)):
        retry(exceptions=(BaseException,))(flaky)()
    assert flaky.calls == 1
    assert buttress_clock.sleeps == []


@pytest.mark.parametrize(
    ("jitter", "low", "high"),
    [("full", 0.0, 1.0), ("equal", 0.5, 1.0)],
)
def test_jitter_stays_in_its_band(jitter: Any, low: float, high: float) -> None:
    with testing_mode() as clock:
        for _ in range(200):
            retry(max_retries=1, base_delay=1, jitter=jitter)(Flaky(1))()
    assert len(clock.sleeps) == 200
    assert all(low <= delay <= high for delay in clock.sleeps)
    assert len(set(clock.sleeps)) > 100  # really random, not a constant


def test_decorrelated_jitter() -> None:
    with testing_mode() as clock:
        for _ in range(50):
            retry(max_retries=5, base_delay=0.1, max_delay=2, jitter="decorrelated")(Flaky(5))()
    assert len(clock.sleeps) == 250
    assert all(0.1 <= delay <= 2 for delay in clock.sleeps)
    for index in range(0, 250, 5):
        schedule = clock.sleeps[index : index + 5]
        for previous, delay in itertools.pairwise(schedule):
            assert delay <= max(0.1, 3 * previous) + 1e-12


def test_deadline_gives_up_before_a_wait_that_would_cross_it(buttress_clock: FakeClock) -> None:
    flaky = Flaky(10)
    fetch = retry(max_retries=10, base_delay=1, jitter=None, deadline=5)(flaky)
    gave_up: list[RetryGaveUp] = []
    with events.subscribe(gave_up.append, RetryGaveUp), pytest.raises(ConnectionError) as info:
        fetch()
    # Waits 1 and 2 fit (t=3); the next wait of 4 would end at 7 > 5: give up at t=3.
    assert buttress_clock.sleeps == [1, 2]
    assert flaky.calls == 3
    assert "5s deadline" in info.value.__notes__[0]
    assert [(event.reason, event.attempts) for event in gave_up] == [("deadline", 3)]


def test_deadline_counts_the_time_attempts_take(buttress_clock: FakeClock) -> None:
    def slow_failure() -> None:
        buttress_clock.advance(2)  # each attempt takes two (fake) seconds
        raise ConnectionError("slow")

    fetch = retry(max_retries=10, base_delay=0.5, jitter=None, deadline=6)(slow_failure)
    with pytest.raises(ConnectionError):
        fetch()
    # t=2 fail, sleep .5; t=4.5 fail, sleep 1 -> 5.5; t=7.5 fail: 2 more would pass 6.
    assert buttress_clock.sleeps == [0.5, 1.0]


def test_retry_on_result_retries_and_then_raises_retry_error(buttress_clock: FakeClock) -> None:
    results = iter([None, None, None, None])
    fetch = retry(max_retries=3, jitter=None, retry_on_result=lambda r: r is None)(
        lambda: next(results)
    )
    with pytest.raises(RetryError) as info:
        fetch()
    assert info.value.attempts == 4
    assert info.value.last_result is None
    assert buttress_clock.sleeps == pytest.approx([0.1, 0.2, 0.4])


def test_retry_on_result_accepts_a_good_result(buttress_clock: FakeClock) -> None:
    results = iter([{"status": "pending"}, {"status": "done"}])
    fetch = retry(jitter=None, retry_on_result=lambda r: r["status"] == "pending")(
        lambda: next(results)
    )
    assert fetch() == {"status": "done"}
    assert buttress_clock.sleeps == [0.1]


@pytest.mark.anyio
async def test_retry_on_result_async(buttress_clock: FakeClock) -> None:
    flaky = Flaky(0, result=-1)
    fetch = retry(max_retries=2, retry_on_result=lambda r: r < 0)(flaky.acall)
    with pytest.raises(RetryError, match=r"still rejected: int$"):
        await fetch()
    assert flaky.calls == 3


def test_on_retry_receives_typed_details(buttress_clock: FakeClock) -> None:
    details: list[RetryScheduled] = []

    def slow_failure() -> None:
        buttress_clock.advance(1)
        raise ConnectionError("x")

    fetch = retry(max_retries=2, base_delay=0.5, jitter=None, on_retry=details.append)(
        slow_failure
    )
    with pytest.raises(ConnectionError):
        fetch()
    assert [(d.attempt, d.delay, d.elapsed) for d in details] == [(1, 0.5, 1.0), (2, 1.0, 2.5)]
    assert all(isinstance(d.error, ConnectionError) and d.result is None for d in details)


def test_events_for_scheduled_and_exhausted(buttress_clock: FakeClock) -> None:
    seen: list[Any] = []
    with events.subscribe(seen.append, (RetryScheduled, RetryGaveUp)), pytest.raises(OSError):
        retry(max_retries=2, jitter=None)(Flaky(5, error=OSError("disk")))()
    assert [type(event).__name__ for event in seen] == [
        "RetryScheduled",
        "RetryScheduled",
        "RetryGaveUp",
    ]
    assert seen[-1].reason == "attempts"
    assert seen[-1].attempts == 3


def test_same_function_reused_and_counters_are_per_call(buttress_clock: FakeClock) -> None:
    flaky = Flaky(1)
    fetch = retry(max_retries=1, jitter=None)(flaky)
    assert fetch() == "ok"
    flaky.calls = 0
    assert fetch() == "ok"
    assert buttress_clock.sleeps == [0.1, 0.1]


def test_arguments_are_passed_through_every_attempt(buttress_clock: FakeClock) -> None:
    seen: list[tuple[Any, ...]] = []

    @retry(jitter=None)
    def record(a: int, *, b: str) -> str:
        seen.append((a, b))
        if len(seen) < 2:
            raise ConnectionError
        return f"{a}{b}"

    assert record(1, b="x") == "1x"
    assert seen == [(1, "x"), (1, "x")]


@pytest.mark.parametrize(
    ("settings", "name"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1.5}, "max_retries"),
        ({"base_delay": -0.1}, "base_delay"),
        ({"max_delay": -1}, "max_delay"),
        ({"base_delay": 5, "max_delay": 1}, "max_delay"),
        ({"backoff_factor": 0.5}, "backoff_factor"),
        ({"jitter": "random"}, "jitter"),
        ({"exceptions": ()}, "exceptions"),
        ({"exceptions": (ValueError, int)}, "exceptions"),
        ({"exceptions": "ValueError"}, "exceptions"),
        ({"deadline": 0}, "deadline"),
        ({"deadline": -5}, "deadline"),
        ({"attempt_timeout": 0}, "attempt_timeout"),
        ({"retry_on_result": "yes"}, "retry_on_result"),
        ({"on_retry": 3}, "on_retry"),
    ],
)
def test_bad_configuration_fails_at_decoration(settings: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        retry(**settings)


def test_attempt_timeout_refused_for_plain_functions() -> None:
    with pytest.raises(TypeError, match=r"@retry needs a coroutine function.*attempt_timeout"):
        retry(attempt_timeout=1)(lambda: None)
