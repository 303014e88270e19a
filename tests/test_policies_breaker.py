"""@circuit_breaker: the state machine driven by a fake clock, sharing by name, handles."""

from __future__ import annotations

import gc
import inspect
import pickle
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

import buttress
from buttress import (
    BreakerStats,
    ButtressError,
    CircuitOpenError,
    CircuitRejected,
    CircuitStateChanged,
    ConfigurationError,
    circuit_breaker,
    events,
)
from buttress.testing import FakeClock


def unique() -> str:
    return f"dep-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def seen() -> Iterator[list[Any]]:
    received: list[Any] = []
    with events.subscribe(received.append, (CircuitStateChanged, CircuitRejected)):
        yield received


def outcomes(fn: Callable[[bool], Any], pattern: str) -> None:
    """Call ``fn`` once per character: ``x`` fails, ``.`` succeeds."""
    for char in pattern:
        try:
            fn(char == "x")
        except ConnectionError:
            pass


def flaky(**settings: Any) -> Any:
    @circuit_breaker(**settings)
    def call(fail: bool) -> str:
        if fail:
            raise ConnectionError("upstream down")
        return "ok"

    return call


# --- closed -> open --------------------------------------------------------------------


def test_opens_at_the_failure_ratio_once_minimum_calls_are_in(buttress_clock: FakeClock) -> None:
    call = flaky(minimum_calls=20, failure_ratio=0.5)
    outcomes(call, "x" * 19)
    assert call.breaker.state == "closed"  # 19 failures are still fewer than 20 calls
    outcomes(call, "x")
    assert call.breaker.state == "open"


def test_ratio_threshold_is_inclusive(buttress_clock: FakeClock) -> None:
    below = flaky(minimum_calls=20, failure_ratio=0.5)
    outcomes(below, "." * 11 + "x" * 9)
    assert below.breaker.state == "closed"
    assert below.breaker.stats().failure_ratio == pytest.approx(0.45)

    at = flaky(minimum_calls=20, failure_ratio=0.5)
    outcomes(at, "." * 10 + "x" * 9)
    assert at.breaker.state == "closed"
    outcomes(at, "x")  # 10 of 20
    assert at.breaker.state == "open"


def test_a_success_can_complete_the_minimum_and_open_it(buttress_clock: FakeClock) -> None:
    call = flaky(minimum_calls=4, failure_ratio=0.5)
    outcomes(call, "xxx")
    assert call.breaker.state == "closed"
    outcomes(call, ".")  # 3 of 4 failed
    assert call.breaker.state == "open"


def test_failures_leave_the_sliding_window(buttress_clock: FakeClock) -> None:
    call = flaky(minimum_calls=10, failure_ratio=0.5, window=10)
    outcomes(call, "x" * 9)
    buttress_clock.advance(10.5)  # a whole window later: those nine are gone
    outcomes(call, "x" * 9)
    assert call.breaker.state == "closed"
    assert call.breaker.stats().calls == 9
    outcomes(call, "x")
    assert call.breaker.state == "open"


def test_window_slides_bucket_by_bucket(buttress_clock: FakeClock) -> None:
    call = flaky(minimum_calls=1, failure_ratio=1.0, window=10)
    outcomes(call, "." * 5)  # t=0
    buttress_clock.advance(5)
    outcomes(call, "." * 3)  # t=5
    assert call.breaker.stats().calls == 8
    buttress_clock.advance(5)  # t=10: the first bucket (t in [0, 1)) has left
    assert call.breaker.stats().calls == 3
    buttress_clock.advance(5)  # t=15: the second has left too
    assert call.breaker.stats().calls == 0


# --- open ------------------------------------------------------------------------------


def test_open_refuses_without_calling(buttress_clock: FakeClock, seen: list[Any]) -> None:
    calls = []

    @circuit_breaker(minimum_calls=2, open_for=15, name=unique())
    def fetch() -> None:
        calls.append(1)
        raise ConnectionError

    for _ in range(2):
        with pytest.raises(ConnectionError):
            fetch()
    buttress_clock.advance(4)
    with pytest.raises(CircuitOpenError) as caught:
        fetch()
    assert len(calls) == 2
    error = caught.value
    assert isinstance(error, ButtressError)
    assert isinstance(error, ConnectionError)
    assert error.breaker == fetch.breaker.name
    assert error.state == "open"
    assert error.retry_at == 15.0
    assert error.retry_after == pytest.approx(11.0)
    assert error.function.endswith("fetch")
    assert "2 of 2 calls failed" in str(error)
    assert "11s" in str(error)
    assert [type(event) for event in seen] == [CircuitStateChanged, CircuitRejected]
    stats = fetch.breaker.stats()
    assert stats.rejected == 1
    assert stats.times_opened == 1


def test_circuit_open_error_pickles_with_its_facts() -> None:
    error = CircuitOpenError(
        "open", breaker="db", state="open", retry_after=2.5, retry_at=10.0, function="f"
    )
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is CircuitOpenError
    assert str(copy) == "open"
    assert (copy.breaker, copy.state, copy.retry_after, copy.retry_at, copy.function) == (
        "db",
        "open",
        2.5,
        10.0,
        "f",
    )


# --- half-open -------------------------------------------------------------------------


def test_half_open_trial_success_closes(buttress_clock: FakeClock, seen: list[Any]) -> None:
    call = flaky(minimum_calls=2, open_for=10)
    outcomes(call, "xx")
    buttress_clock.advance(9.9)
    with pytest.raises(CircuitOpenError):
        call(False)
    buttress_clock.advance(0.1)
    assert call.breaker.state == "half_open"
    assert call(False) == "ok"
    assert call.breaker.state == "closed"
    changes = [(e.old, e.new) for e in seen if isinstance(e, CircuitStateChanged)]
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_half_open_trial_failure_reopens_for_another_period(buttress_clock: FakeClock) -> None:
    call = flaky(minimum_calls=2, open_for=10)
    outcomes(call, "xx")
    buttress_clock.advance(10)
    with pytest.raises(ConnectionError):
        call(True)
    assert call.breaker.state == "open"
    stats = call.breaker.stats()
    assert stats.retry_at == 20.0
    assert stats.times_opened == 2
    with pytest.raises(CircuitOpenError, match="in half-open trials"):
        call(False)


def test_half_open_admits_only_its_trial_calls(buttress_clock: FakeClock) -> None:
    gate = threading.Event()
    inside = threading.Barrier(4, timeout=30)
    admitted = []

    @circuit_breaker(minimum_calls=1, open_for=5, half_open_calls=3, name=unique())
    def trial(fail: bool = False) -> None:
        if fail:
            raise ConnectionError
        admitted.append(1)
        inside.wait()
        gate.wait(30)

    with pytest.raises(ConnectionError):
        trial(True)
    buttress_clock.advance(5)
    threads = [threading.Thread(target=trial) for _ in range(3)]
    for thread in threads:
        thread.start()
    inside.wait()  # all three trials are running
    with pytest.raises(CircuitOpenError) as caught:
        trial()
    assert caught.value.state == "half_open"
    assert caught.value.retry_after is None
    gate.set()
    for thread in threads:
        thread.join()
    assert len(admitted) == 3
    assert trial.breaker.state == "closed"


def test_half_open_reopens_as_soon_as_the_trials_cannot_pass(buttress_clock: FakeClock) -> None:
    call = flaky(minimum_calls=1, open_for=5, half_open_calls=3, failure_ratio=0.5)
    outcomes(call, "x")
    buttress_clock.advance(5)
    outcomes(call, "x")  # one failure of three planned: 1/3 < 0.5, undecided
    assert call.breaker.state == "half_open"
    assert call.breaker.stats().calls == 1
    outcomes(call, "x")  # two of three failed: can no longer close
    assert call.breaker.state == "open"


def test_call_admitted_while_closed_is_not_a_trial(buttress_clock: FakeClock) -> None:
    release = threading.Event()
    started = threading.Event()

    @circuit_breaker(minimum_calls=2, open_for=5, name=unique())
    def call(mode: str) -> str:
        if mode == "slow":
            started.set()
            release.wait(30)
            raise ConnectionError("late failure")
        if mode == "fail":
            raise ConnectionError
        return "ok"

    def late() -> None:
        with pytest.raises(ConnectionError):
            call("slow")

    worker = threading.Thread(target=late)
    worker.start()
    started.wait(30)
    outcomes(lambda fail: call("fail"), "xx")
    assert call.breaker.state == "open"
    buttress_clock.advance(5)
    assert call.breaker.state == "half_open"
    release.set()  # the old call fails now, while half-open: it must not count
    worker.join()
    assert call.breaker.state == "half_open"
    assert call("ok") == "ok"
    assert call.breaker.state == "closed"


# --- slow calls ------------------------------------------------------------------------


def test_slow_call_ratio_opens_the_breaker(buttress_clock: FakeClock) -> None:
    @circuit_breaker(minimum_calls=4, slow_call_duration=2.0, slow_call_ratio=0.5, name=unique())
    def infer(seconds: float) -> str:
        buttress_clock.advance(seconds)
        return "done"

    for seconds in (0.1, 2.0, 1.9, 0.5):  # one slow of four
        infer(seconds)
    assert infer.breaker.state == "closed"
    stats = infer.breaker.stats()
    assert (stats.calls, stats.slow_calls, stats.failures) == (4, 1, 0)
    infer(3.0)  # two slow of five: 0.4
    assert infer.breaker.state == "closed"
    infer(2.5)  # three of six
    assert infer.breaker.state == "open"
    with pytest.raises(CircuitOpenError, match="took 2s or longer"):
        infer(0.0)


def test_slow_trial_reopens(buttress_clock: FakeClock) -> None:
    @circuit_breaker(minimum_calls=1, slow_call_duration=1.0, open_for=5, name=unique())
    def infer(seconds: float) -> None:
        buttress_clock.advance(seconds)

    infer(1.0)
    assert infer.breaker.state == "open"
    buttress_clock.advance(5)
    infer(1.5)  # the trial succeeded, but slowly
    assert infer.breaker.state == "open"


def test_without_slow_call_duration_nothing_is_slow(buttress_clock: FakeClock) -> None:
    @circuit_breaker(minimum_calls=1)
    def infer() -> None:
        buttress_clock.advance(1000)

    infer()
    assert infer.breaker.stats().slow_calls == 0
    assert infer.breaker.state == "closed"


# --- which errors count ----------------------------------------------------------------


def test_other_errors_count_as_success_and_excluded_as_nothing(
    buttress_clock: FakeClock,
) -> None:
    class Throttled(ConnectionError):
        pass

    @circuit_breaker(
        minimum_calls=2, failure_ratio=0.6, exceptions=ConnectionError, exclude=Throttled
    )
    def call(error: BaseException | None) -> None:
        if error is not None:
            raise error

    for error in (ValueError("bad input"), Throttled(), Throttled(), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            call(error)
    stats = call.breaker.stats()
    assert (stats.calls, stats.failures) == (1, 0)  # only the ValueError, as a success
    with pytest.raises(ConnectionError):
        call(ConnectionError())
    assert call.breaker.state == "closed"  # 1 of 2 failed: under 0.6...
    with pytest.raises(ConnectionError):
        call(ConnectionError())
    assert call.breaker.state == "open"  # ...at 2 of 3


# --- sharing by name -------------------------------------------------------------------


def test_same_name_shares_one_state(buttress_clock: FakeClock) -> None:
    name = unique()

    @circuit_breaker(name=name, minimum_calls=3)
    def search(fail: bool) -> str:
        if fail:
            raise ConnectionError
        return "hits"

    @circuit_breaker(name=name, minimum_calls=3)
    async def upsert(fail: bool) -> str:
        if fail:
            raise ConnectionError
        return "done"

    assert search.breaker is upsert.breaker
    assert search.breaker.name == name
    outcomes(search, "xxx")
    assert upsert.breaker.state == "open"
    with pytest.raises(CircuitOpenError):
        anyio.run(upsert, False)


def test_same_name_with_other_settings_is_refused() -> None:
    name = unique()

    @circuit_breaker(name=name, minimum_calls=3)
    def one() -> None: ...

    with pytest.raises(ConfigurationError, match="name="):
        circuit_breaker(name=name, minimum_calls=4)
    assert one.breaker.settings.minimum_calls == 3


def test_a_name_is_released_when_no_function_uses_it() -> None:
    name = unique()

    @circuit_breaker(name=name, minimum_calls=3)
    def one() -> None: ...

    del one
    gc.collect()
    decorate = circuit_breaker(name=name, minimum_calls=4)  # no conflict any more

    @decorate
    def two() -> None: ...

    assert two.breaker.settings.minimum_calls == 4


def test_unnamed_breakers_are_separate_and_named_after_the_function() -> None:
    decorate = circuit_breaker(minimum_calls=1)

    @decorate
    def one() -> None: ...

    @decorate
    def two() -> None: ...

    assert one.breaker is not two.breaker
    assert one.breaker.name.endswith("one")


# --- handle ----------------------------------------------------------------------------


def test_force_open_holds_until_reset(buttress_clock: FakeClock, seen: list[Any]) -> None:
    call = flaky(open_for=1)
    call.breaker.force_open()
    buttress_clock.advance(1000)
    assert call.breaker.state == "open"
    with pytest.raises(CircuitOpenError, match="forced open") as caught:
        call(False)
    assert caught.value.retry_after is None
    stats = call.breaker.stats()
    assert stats.forced
    assert stats.retry_at is None
    call.breaker.reset()
    assert call(False) == "ok"
    assert not call.breaker.stats().forced
    changes = [(e.old, e.new, e.function) for e in seen if isinstance(e, CircuitStateChanged)]
    name = call.breaker.name
    assert changes == [("closed", "open", name), ("open", "closed", name)]


def test_reset_forgets_the_window(buttress_clock: FakeClock) -> None:
    call = flaky(minimum_calls=4)
    outcomes(call, "xxx")
    call.breaker.reset()
    outcomes(call, "x")
    assert call.breaker.state == "closed"
    assert call.breaker.stats().calls == 1


def test_stats_is_a_frozen_record(buttress_clock: FakeClock) -> None:
    call = flaky(minimum_calls=10)
    outcomes(call, "x..x")
    stats = call.breaker.stats()
    assert isinstance(stats, BreakerStats)
    assert (stats.calls, stats.failures, stats.failure_ratio) == (4, 2, 0.5)
    assert stats.state == "closed"
    with pytest.raises(AttributeError):
        stats.calls = 0  # type: ignore[misc]
    assert "closed" in repr(call.breaker)


# --- concurrency -----------------------------------------------------------------------


def test_no_lock_is_held_while_the_call_runs() -> None:
    both_inside = threading.Barrier(2, timeout=10)

    @circuit_breaker(name=unique())
    def call() -> str:
        both_inside.wait()  # breaks (raising) if the calls were serialised
        return "ok"

    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(call())) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["ok", "ok"]


def test_reentrant_use_of_the_same_breaker() -> None:
    name = unique()

    @circuit_breaker(name=name)
    def inner() -> int:
        return 1

    @circuit_breaker(name=name)
    def outer() -> int:
        return inner() + 1

    assert outer() == 2
    assert outer.breaker.stats().calls == 2


# --- async, cancellation ---------------------------------------------------------------


@pytest.mark.anyio
async def test_async_breaker_counts_and_opens(buttress_clock: FakeClock) -> None:
    @circuit_breaker(minimum_calls=2, open_for=3)
    async def fetch(fail: bool) -> str:
        await anyio.lowlevel.checkpoint()
        if fail:
            raise ConnectionError
        return "ok"

    assert inspect.iscoroutinefunction(fetch)
    assert await fetch(False) == "ok"
    with pytest.raises(ConnectionError):
        await fetch(True)
    assert fetch.breaker.state == "open"
    with pytest.raises(CircuitOpenError):
        await fetch(False)
    buttress_clock.advance(3)
    assert await fetch(False) == "ok"
    assert fetch.breaker.state == "closed"


@pytest.mark.anyio
async def test_cancellation_is_never_counted(buttress_clock: FakeClock) -> None:
    @circuit_breaker(minimum_calls=1)
    async def hang() -> None:
        await anyio.sleep_forever()

    for _ in range(3):
        with anyio.move_on_after(0.01):
            await hang()
    stats = hang.breaker.stats()
    assert (stats.calls, stats.failures, stats.state) == (0, 0, "closed")


@pytest.mark.anyio
async def test_cancelled_trial_gives_its_permit_back(buttress_clock: FakeClock) -> None:
    @circuit_breaker(minimum_calls=1, open_for=5, name=unique())
    async def call(mode: str) -> str:
        if mode == "fail":
            raise ConnectionError
        if mode == "hang":
            await anyio.sleep_forever()
        return "ok"

    with pytest.raises(ConnectionError):
        await call("fail")
    buttress_clock.advance(5)
    async with anyio.create_task_group() as group:
        group.start_soon(call, "hang")  # takes the only trial permit
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(CircuitOpenError):
            await call("ok")
        group.cancel_scope.cancel()
    assert call.breaker.state == "half_open"
    assert await call("ok") == "ok"  # the permit came back
    assert call.breaker.state == "closed"


def test_settings_are_checked_with_their_names() -> None:
    for kwargs, word in [
        ({"failure_ratio": 0}, "failure_ratio"),
        ({"failure_ratio": 1.5}, "failure_ratio"),
        ({"minimum_calls": 0}, "minimum_calls"),
        ({"window": 0}, "window"),
        ({"open_for": -1}, "open_for"),
        ({"half_open_calls": 0}, "half_open_calls"),
        ({"slow_call_duration": 0}, "slow_call_duration"),
        ({"slow_call_ratio": 2}, "slow_call_ratio"),
        ({"exceptions": ()}, "exceptions"),
        ({"exclude": (int,)}, "exclude"),
        ({"name": ""}, "name"),
    ]:
        with pytest.raises(ConfigurationError, match=word):
            circuit_breaker(**kwargs)


def test_bare_use_and_honest_wrapper() -> None:
    def original(x: int, *, scale: float = 1.0) -> float:
        """Docstring."""
        return x * scale

    predict = circuit_breaker(original)
    assert predict(2, scale=2.0) == 4.0
    assert predict.__doc__ == "Docstring."
    assert inspect.signature(predict) == inspect.signature(original)
    assert isinstance(predict.breaker, buttress.CircuitBreaker)


def test_retry_waits_for_the_trial_call_an_open_breaker_announces(
    buttress_clock: FakeClock,
) -> None:
    healthy = False

    @buttress.retry(max_retries=2, base_delay=0.1, max_delay=60, jitter=None)
    @circuit_breaker(minimum_calls=2, open_for=7, name=unique())
    def fetch() -> str:
        if not healthy:
            raise ConnectionError("down")
        return "ok"

    for _ in range(2):
        with pytest.raises(ConnectionError):
            fetch.__wrapped__()  # type: ignore[attr-defined]  # the breaker alone
    assert fetch.__wrapped__.breaker.state == "open"  # type: ignore[attr-defined]
    healthy = True
    buttress_clock.sleeps.clear()
    assert fetch() == "ok"
    # The refusal said "a trial in 7s": retry slept exactly that, not its 0.1s backoff.
    assert buttress_clock.sleeps == [7.0]


@pytest.mark.anyio
async def test_methods_keep_their_binding_and_handles() -> None:
    class Model:
        def __init__(self) -> None:
            self.scale = 2.0

        @circuit_breaker
        def predict(self, x: float) -> float:
            return x * self.scale

        @buttress.bulkhead(2)
        async def apredict(self, x: float) -> float:
            return x * self.scale

        @classmethod
        @circuit_breaker
        def build(cls) -> Model:
            return cls()

    model = Model.build()
    assert model.predict(3.0) == 6.0
    assert await model.apredict(1.5) == 3.0
    assert model.predict.breaker is Model.predict.breaker
    assert model.predict.breaker.stats().calls == 1
    assert model.apredict.bulkhead.stats().admitted == 1
