"""@rate_limit: exact spacing and burst, FIFO waiters, several loops and threads at once."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import pickle
import threading
import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buttress import (
    ButtressError,
    ConfigurationError,
    RateLimited,
    RateLimiter,
    RateLimiterStats,
    RateLimitExceeded,
    _clock,
    events,
    rate_limit,
    testing,
)
from buttress.testing import FakeClock


def test_calls_are_spaced_at_the_sustained_rate(buttress_clock: FakeClock) -> None:
    starts: list[float] = []

    @rate_limit(10)
    def call() -> None:
        starts.append(_clock.monotonic())

    for _ in range(5):
        call()
    assert starts == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert buttress_clock.sleeps == pytest.approx([0.1] * 4)


def test_burst_goes_at_once_and_refills_at_the_rate(buttress_clock: FakeClock) -> None:
    starts: list[float] = []

    @rate_limit(1, per=2.0, burst=3)
    def call() -> None:
        starts.append(_clock.monotonic())

    for _ in range(5):
        call()
    assert starts == pytest.approx([0, 0, 0, 2, 4])
    buttress_clock.advance(6)  # t=10: three intervals idle, the burst is whole again
    assert call.limiter.stats().available == 3
    for _ in range(4):
        call()
    assert starts[5:] == pytest.approx([10, 10, 10, 12])


arrivals = st.lists(st.floats(min_value=0, max_value=3, allow_nan=False), max_size=60)


@settings(max_examples=150, deadline=None)
@given(
    gaps=arrivals,
    rate=st.sampled_from([1, 3, 10, 25]),
    per=st.sampled_from([0.5, 1.0, 4.0]),
    burst=st.integers(min_value=1, max_value=6),
)
def test_no_span_holds_more_than_burst_plus_rate(
    gaps: list[float], rate: int, per: float, burst: int
) -> None:
    """Over any span of d seconds at most burst + floor(d * rate / per) calls start."""
    with testing.testing_mode() as clock:
        starts: list[float] = []

        @rate_limit(rate, per, burst=burst)
        def call() -> None:
            starts.append(_clock.monotonic())

        for gap in gaps:
            clock.advance(gap)
            arrival = clock.monotonic()
            call()
            assert starts[-1] >= arrival
        interval = per / rate
        for i, j in itertools.combinations(range(len(starts)), 2):
            span = starts[j] - starts[i]
            assert j - i + 1 <= burst + math.floor(span / interval + 1e-9)
        assert starts == sorted(starts)


def test_wait_false_refuses_instead_of_waiting(buttress_clock: FakeClock) -> None:
    seen: list[Any] = []

    @rate_limit(2, wait=False)
    def call() -> str:
        return "ok"

    with events.subscribe(seen.append, RateLimited):
        assert call() == "ok"
        with pytest.raises(RateLimitExceeded, match="wait=False") as caught:
            call()
    error = caught.value
    assert isinstance(error, ButtressError)
    assert (error.rate, error.per) == (2, 1.0)
    assert error.retry_after == pytest.approx(0.5)
    assert error.retry_at == pytest.approx(0.5)
    assert [(event.rejected, event.waited) for event in seen] == [(True, 0.0)]
    buttress_clock.advance(0.5)
    assert call() == "ok"  # the refusal reserved nothing
    stats = call.limiter.stats()
    assert isinstance(stats, RateLimiterStats)
    assert (stats.admitted, stats.delayed, stats.rejected) == (2, 0, 1)


def test_max_wait_refuses_only_longer_waits(buttress_clock: FakeClock) -> None:
    @rate_limit(10, max_wait=0.25)
    def call() -> None: ...

    for _ in range(3):  # one after another: each waits 0.1 and the sleep moves the clock
        call()
    buttress_clock.auto_advance = False  # from here on "now" stays put: waits pile up
    before = buttress_clock.monotonic()
    call()  # waits 0.1
    assert buttress_clock.monotonic() == before
    call()  # waits 0.2
    with pytest.raises(RateLimitExceeded, match="max_wait") as caught:
        call()  # +0.3 would pass max_wait
    assert caught.value.retry_after == pytest.approx(0.3)


def test_wait_events_carry_the_wait(buttress_clock: FakeClock) -> None:
    seen: list[Any] = []

    @rate_limit(4)
    def call() -> None: ...

    with events.subscribe(seen.append, RateLimited):
        call()
        call()
    assert [(e.waited, e.rejected) for e in seen] == [(pytest.approx(0.25), False)]
    assert seen[0].function.endswith("call")


# --- fairness --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_thousand_waiters_each_sleep_once_until_their_turn() -> None:
    """Reservations follow arrival order, and each waiter sleeps once: no herd."""
    with testing.testing_mode(FakeClock(auto_advance=False)) as clock:
        order: list[int] = []

        @rate_limit(100)
        async def call(i: int) -> int:
            return i

        async def caller(i: int) -> None:
            order.append(i)  # nothing yields between this and the reservation
            await call(i)

        async with anyio.create_task_group() as group:
            for i in range(1000):
                group.start_soon(caller, i)
    assert len(clock.sleeps) == 999
    assert clock.sleeps == pytest.approx([k / 100 for k in range(1, 1000)])
    assert call.limiter.stats().delayed == 999


class VirtualClock:
    """Sleepers wake one at a time, in deadline order, as the test's driver releases them."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleepers: list[tuple[float, int, anyio.Event]] = []
        self.counter = itertools.count()

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        raise AssertionError("no sync sleeps here")

    async def async_sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        heapq.heappush(self.sleepers, (self.now + seconds, next(self.counter), event))
        await event.wait()


@pytest.mark.anyio
async def test_waiters_start_in_arrival_order_at_their_slots() -> None:
    clock = VirtualClock()
    previous = _clock.install(clock)
    try:
        arrivals: list[int] = []
        starts: list[tuple[int, float]] = []

        @rate_limit(50, burst=5)
        async def call(i: int) -> None:
            starts.append((i, _clock.monotonic()))

        async def caller(i: int) -> None:
            arrivals.append(i)
            await call(i)

        callers = 1000
        async with anyio.create_task_group() as group:
            for i in range(callers):
                group.start_soon(caller, i)
            while len(starts) + len(clock.sleepers) < callers:
                await anyio.lowlevel.checkpoint()
            # Release sleepers one by one; the next only after the woken one has started.
            while clock.sleepers:
                deadline, _, event = heapq.heappop(clock.sleepers)
                clock.now = deadline
                expected = len(starts) + 1
                event.set()
                while len(starts) < expected:
                    await anyio.lowlevel.checkpoint()
    finally:
        _clock.install(previous)
    assert [i for i, _ in starts] == arrivals
    expected_times = [max(0, k - 4) * 0.02 for k in range(callers)]
    assert [t for _, t in starts] == pytest.approx(expected_times)


# --- cancellation ----------------------------------------------------------------------


def test_cancelled_last_reservation_is_returned() -> None:
    with testing.testing_mode(FakeClock(auto_advance=False)):
        limiter = RateLimiter(10, 1.0, 1, math.inf)
        assert limiter.reserve("f") == (0.0, None)
        wait, reserved = limiter.reserve("f")
        assert wait == pytest.approx(0.1)
        assert reserved is not None
        limiter.cancel(reserved)  # nobody queued behind it: its start comes back
        assert limiter.reserve("f")[0] == pytest.approx(0.1)


def test_cancelled_reservation_with_others_behind_stays_unused() -> None:
    with testing.testing_mode(FakeClock(auto_advance=False)):
        limiter = RateLimiter(10, 1.0, 1, math.inf)
        limiter.reserve("f")
        _, middle = limiter.reserve("f")  # start at 0.1
        limiter.reserve("f")  # start at 0.2
        assert middle is not None
        limiter.cancel(middle)
        # Handing 0.1 to a newcomer would overtake the waiter at 0.2; it stays unused.
        assert limiter.reserve("f")[0] == pytest.approx(0.3)


@pytest.mark.anyio
async def test_cancelled_waiter_gives_its_start_back() -> None:
    with testing.testing_mode(FakeClock(auto_advance=False)) as clock:

        @rate_limit(10)
        async def call() -> str:
            return "ok"

        assert await call() == "ok"
        with anyio.CancelScope() as scope:
            scope.cancel()
            await call()  # reserves 0.1, then is cancelled in its sleep
        assert scope.cancelled_caught
        assert await call() == "ok"
    assert clock.sleeps == pytest.approx([0.1, 0.1])  # the second waiter got 0.1 again


# --- real time, several loops and threads ----------------------------------------------


def test_one_limiter_across_event_loops_and_threads() -> None:
    rate = 100.0
    starts: list[float] = []
    lock = threading.Lock()
    limit = rate_limit(rate)

    @limit
    async def fetch() -> None:
        with lock:
            starts.append(time.monotonic())

    @limit
    def fetch_sync() -> None:
        with lock:
            starts.append(time.monotonic())

    async def many() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(12):
                group.start_soon(fetch)

    def sync_many() -> None:
        for _ in range(12):
            fetch_sync()

    errors: list[BaseException] = []

    def guarded(run: Any) -> None:
        try:
            run()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    runners = [lambda: asyncio.run(many()), lambda: anyio.run(many, backend="trio"), sync_many]
    threads = [threading.Thread(target=guarded, args=(run,)) for run in runners]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert fetch.limiter is fetch_sync.limiter
    stats = fetch.limiter.stats()
    assert stats.admitted + stats.delayed == 36
    assert len(starts) == 36
    # 36 starts at 100/s with a burst of 1 need at least 0.35 s, however they interleave.
    assert max(starts) - began >= 35 / rate * 0.98


def test_settings_are_checked() -> None:
    for args, kwargs, word in [
        ((0,), {}, "rate"),
        ((-1,), {}, "rate"),
        (("10",), {}, "rate"),
        ((1, 0), {}, "per"),
        ((1,), {"burst": 0}, "burst"),
        ((1,), {"max_wait": -1}, "max_wait"),
        ((1,), {"wait": False, "max_wait": 1}, "max_wait"),
        ((1,), {"wait": "no"}, "wait"),
    ]:
        with pytest.raises(ConfigurationError, match=word):
            rate_limit(*args, **kwargs)


def test_rate_limit_exceeded_pickles() -> None:
    error = RateLimitExceeded(
        "slow down", rate=5, per=1.0, retry_after=0.2, retry_at=3.0, function="f"
    )
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.rate, copy.per, copy.retry_after, copy.retry_at, str(copy)) == (
        5,
        1.0,
        0.2,
        3.0,
        "slow down",
    )
