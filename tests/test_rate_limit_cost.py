"""@rate_limit with weights: cost=, the acquire(cost) block, and an exact available count."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest

from buttress import (
    ConfigurationError,
    RateLimitCostError,
    RateLimited,
    RateLimitExceeded,
    _clock,
    events,
    rate_limit,
    testing,
)
from buttress.testing import FakeClock


def test_available_is_exact_on_a_fresh_limiter_and_after_a_burst() -> None:
    # real time, and a large monotonic reading: the float rounding this used to suffer
    limit = rate_limit(3, per=1, burst=3)

    @limit
    def call() -> None:
        return None

    assert limit.stats().available == 3
    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = limit.stats()
    assert (stats.admitted, stats.available) == (3, 0)


def test_available_exact_at_a_huge_clock_reading() -> None:
    clock = FakeClock(start=10_000_000.123456789)
    with testing.testing_mode(clock):
        limit = rate_limit(3, per=1, burst=3)
        assert limit.stats().available == 3
        for _ in range(3):
            assert limit.reserve("f") == (0.0, None)
        assert limit.stats().available == 0
        clock.advance(1 / 3)
        assert limit.stats().available == 1


def test_cost_spends_units_of_the_limit(buttress_clock: FakeClock) -> None:
    starts: list[float] = []

    @rate_limit(100, per=1, burst=100, cost=lambda texts: len(texts))
    def embed(model: str, texts: list[str]) -> int:
        starts.append(_clock.monotonic())
        return len(texts)

    assert embed("e5", ["a"] * 60) == 60
    assert embed("e5", texts=["a"] * 40) == 40  # by keyword too
    assert embed("e5", ["a"] * 50) == 50  # the bucket is empty: 50 units take 0.5 s
    assert starts == pytest.approx([0, 0, 0.5])
    stats = embed.limiter.stats()
    assert (stats.admitted, stats.delayed, stats.spent) == (2, 1, 150)


def test_cost_reads_defaults_and_methods(buttress_clock: FakeClock) -> None:
    class Client:
        @rate_limit(10, burst=10, cost=lambda n=1: n)
        def fetch(self, n: int = 4) -> int:
            return n

    client = Client()
    assert client.fetch() == 4
    assert Client.fetch.limiter.stats().spent == 4
    client.fetch(6)
    assert Client.fetch.limiter.stats().available == 0


def test_a_constant_cost(buttress_clock: FakeClock) -> None:
    @rate_limit(10, burst=10, cost=5)
    def call() -> None:
        return None

    call()
    call()
    assert call.limiter.stats().available == 0
    call()
    assert buttress_clock.sleeps == pytest.approx([0.5])


def test_a_cost_over_burst_fails_at_once(buttress_clock: FakeClock) -> None:
    seen: list[RateLimited] = []
    ran: list[int] = []

    @rate_limit(1000, per=60, burst=1000, cost=lambda tokens: tokens)
    def complete(tokens: int) -> None:
        ran.append(tokens)

    with events.subscribe(seen.append, RateLimited), pytest.raises(RateLimitCostError) as caught:
        complete(5000)
    error = caught.value
    assert isinstance(error, ValueError)
    assert (error.cost, error.burst, error.function) == (5000, 1000, error.function)
    assert "burst=1000" in str(error)
    assert "complete" in error.function
    assert ran == []
    assert buttress_clock.sleeps == []  # never waited
    assert [event.rejected for event in seen] == [True]
    assert complete.limiter.stats().rejected == 1
    with pytest.raises(RateLimitCostError, match="not a number"):
        complete(-1)
    with pytest.raises(RateLimitCostError, match="not a number"):
        complete("many")  # type: ignore[arg-type]


def test_cost_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="exceeds burst"):
        rate_limit(10, cost=2)
    with pytest.raises(ConfigurationError, match="cost"):
        rate_limit(10, cost=-1)
    with pytest.raises(ConfigurationError, match="cost"):
        rate_limit(10, cost=int)
    with pytest.raises(ConfigurationError, match="'tokens'"):

        @rate_limit(10, cost=lambda tokens: tokens)
        def call(texts: list[str]) -> None: ...

    with pytest.raises(ConfigurationError, match=r"\*args"):

        @rate_limit(10, cost=lambda *args: 1)
        def other(texts: list[str]) -> None: ...

    for setting in ("name", "replicas", "fallback_share"):
        with pytest.raises(ConfigurationError, match=f"{setting} has no effect without store="):
            rate_limit(10, **{setting: "x" if setting == "name" else 2})


def test_a_call_that_does_not_fit_raises_its_own_type_error(buttress_clock: FakeClock) -> None:
    @rate_limit(1, cost=lambda texts: len(texts))
    def embed(texts: list[str]) -> None: ...

    with pytest.raises(TypeError, match="unexpected keyword"):
        embed(txts=["a"])  # type: ignore[call-arg]
    assert embed.limiter.stats().spent == 0


def test_acquire_as_a_block(buttress_clock: FakeClock) -> None:
    limit = rate_limit(10, burst=10)
    seen: list[RateLimited] = []
    with events.subscribe(seen.append, RateLimited):
        with limit.acquire(8) as limiter:
            assert limiter is limit
        with limit.acquire(4):
            pass
    assert buttress_clock.sleeps == pytest.approx([0.2])
    assert seen[0].function.endswith("test_acquire_as_a_block")
    with pytest.raises(RateLimitCostError), limit.acquire(11):
        pass


@pytest.mark.anyio
async def test_acquire_in_async_with(buttress_clock: FakeClock) -> None:
    limit = rate_limit(100, per=60, burst=100, wait=False)
    async with limit.acquire(70):
        pass
    with pytest.raises(RateLimitExceeded) as caught:
        async with limit.acquire(40):
            pass
    assert caught.value.retry_after == pytest.approx(6.0)
    async with limit.acquire(30):
        pass
    assert limit.stats().available == 0


@pytest.mark.anyio
async def test_async_calls_with_a_cost_wait_with_anyio() -> None:
    limit = rate_limit(50, per=1, burst=10, cost=lambda n: n)

    @limit
    async def call(n: int) -> int:
        return n

    began = time.monotonic()
    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(call, 10)
    # 30 units at 50/s with 10 at once: the last starts 0.4 s in
    assert time.monotonic() - began >= 0.39
    stats: Any = limit.stats()
    assert (stats.admitted, stats.delayed, stats.spent) == (1, 2, 30)
