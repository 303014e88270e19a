"""RetryBudget and @retry(budget=...): a failing upstream sees a bounded retry storm."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest

from buttress import (
    ConfigurationError,
    RetryBudget,
    RetryBudgetExhausted,
    RetryBudgetStats,
    RetryError,
    RetryGaveUp,
    events,
    retry,
)
from buttress.testing import FakeClock


def test_retries_stay_within_the_ratio_of_calls(buttress_clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0)
    for _ in range(10):
        budget.record_call()
    assert budget.try_spend()
    assert budget.try_spend()
    assert not budget.try_spend()  # 2 retries per 10 calls
    stats = budget.stats()
    assert isinstance(stats, RetryBudgetStats)
    assert (stats.calls, stats.retries, stats.available, stats.exhausted) == (10, 2, 0, 1)


def test_the_floor_lets_a_quiet_client_retry(buttress_clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.5, window=10)
    assert budget.stats().available == 5
    assert all(budget.try_spend() for _ in range(5))
    assert not budget.try_spend()


def test_calls_and_retries_leave_with_the_window(buttress_clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=0, window=10)
    for _ in range(4):
        budget.record_call()
    assert budget.try_spend()
    assert budget.try_spend()
    assert not budget.try_spend()
    buttress_clock.advance(10)
    assert budget.stats() == RetryBudgetStats(calls=0, retries=0, available=0, exhausted=1)
    budget.record_call()
    budget.record_call()
    assert budget.try_spend()


def test_calls_leave_the_window_slice_by_slice(buttress_clock: FakeClock) -> None:
    # Calls are tallied without a lock and folded into the window once per slice; they
    # still leave it in steps of window / 10, those of each slice together.
    budget = RetryBudget(ratio=1.0, min_per_second=0, window=10)
    for second in range(5):
        for _ in range(second + 1):
            budget.record_call()
        buttress_clock.advance(1)
    assert budget.stats().calls == 15  # 1 + 2 + 3 + 4 + 5, all within 10 s
    buttress_clock.advance(5)  # the first slice (1 call) is now older than the window
    assert budget.stats().calls == 14
    buttress_clock.advance(1)
    assert budget.stats().calls == 12
    budget.record_call()
    assert budget.stats().calls == 13
    buttress_clock.advance(30)
    assert budget.stats().calls == 0


def test_calls_from_many_threads_are_all_counted() -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=0, window=3600)
    per_thread, threads = 20_000, 8

    def caller() -> None:
        for _ in range(per_thread):
            budget.record_call()

    workers = [threading.Thread(target=caller) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    # A call can only be lost when it ticks a tally just as a new slice replaces it; an
    # hour-long window in slices of 6 minutes gives at most one new slice here.
    assert budget.stats().calls >= per_thread * threads - threads


def test_bounded_retries_under_a_total_outage(buttress_clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=3, window=10)
    attempts = 0
    exhausted: list[Any] = []
    gave_up: list[Any] = []

    @retry(max_retries=3, base_delay=0, jitter=None, budget=budget)
    def fetch() -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionError("upstream down")

    with (
        events.subscribe(exhausted.append, RetryBudgetExhausted),
        events.subscribe(gave_up.append, RetryGaveUp),
    ):
        for _ in range(1000):
            with pytest.raises(ConnectionError) as caught:
                fetch()
    retries = attempts - 1000
    # Without a budget: 3000 retries. With it: 20% of the calls plus the 3/s floor.
    assert 200 <= retries <= 0.2 * 1000 + 3 * 10
    assert budget.stats().retries == retries
    assert exhausted
    assert all(event.function.endswith("fetch") for event in exhausted)
    assert len(exhausted) == sum(1 for event in gave_up if event.reason == "budget")
    assert "retry budget" in "\n".join(getattr(caught.value, "__notes__", []))


@pytest.mark.anyio
async def test_bounded_retries_for_concurrent_async_calls(buttress_clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.1, min_per_second=0)
    attempts = 0

    @retry(max_retries=5, base_delay=0, jitter=None, budget=budget)
    async def fetch() -> None:
        nonlocal attempts
        attempts += 1
        await anyio.lowlevel.checkpoint()
        raise ConnectionError

    async def caller() -> None:
        with pytest.raises(ConnectionError):
            await fetch()

    async with anyio.create_task_group() as group:
        for _ in range(300):
            group.start_soon(caller)
    assert attempts - 300 <= 30


def test_one_budget_is_shared_by_every_function(buttress_clock: FakeClock) -> None:
    def make(budget: RetryBudget) -> tuple[Any, Any, list[int]]:
        failures: list[int] = []

        @retry(max_retries=1, base_delay=0, jitter=None, budget=budget)
        def ok() -> str:
            return "ok"

        @retry(max_retries=1, base_delay=0, jitter=None, budget=budget)
        def down() -> None:
            failures.append(1)
            raise ConnectionError

        return ok, down, failures

    ok, down, failures = make(RetryBudget(ratio=0.5, min_per_second=0))
    with pytest.raises(ConnectionError):
        down()  # 1 call * 0.5: not even one retry earned
    assert len(failures) == 1

    ok, down, failures = make(RetryBudget(ratio=0.5, min_per_second=0))
    for _ in range(4):
        ok()  # successful calls of another function earn retries too
    with pytest.raises(ConnectionError):
        down()  # 5 calls * 0.5 = 2.5 retries allowed
    assert len(failures) == 2
    for _ in range(10):
        with pytest.raises(ConnectionError):
            down()
    # 15 calls * 0.5 = 7.5: seven retries in all, however the failures came.
    assert len(failures) == 11 + 7


def test_flagged_results_give_up_with_retry_error(buttress_clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0)

    @retry(max_retries=3, retry_on_result=lambda r: r is None, budget=budget)
    def poll() -> None:
        return None

    with pytest.raises(RetryError, match="retry budget") as caught:
        poll()
    assert caught.value.attempts == 1


def test_budget_spent_only_on_retries_that_happen(buttress_clock: FakeClock) -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=0)

    @retry(max_retries=0, budget=budget)
    def once() -> None:
        raise ConnectionError

    @retry(max_retries=3, deadline=0.001, base_delay=1, jitter=None, budget=budget)
    def late() -> None:
        raise ConnectionError

    @retry(max_retries=3, exceptions=KeyError, budget=budget)
    def not_retriable() -> None:
        raise ConnectionError

    for fn in (once, late, not_retriable):
        with pytest.raises(ConnectionError):
            fn()
    stats = budget.stats()
    assert (stats.calls, stats.retries, stats.exhausted) == (3, 0, 0)


def test_settings_are_checked() -> None:
    for kwargs, word in [
        ({"ratio": -0.1}, "ratio"),
        ({"min_per_second": -1}, "min_per_second"),
        ({"window": 0}, "window"),
    ]:
        with pytest.raises(ConfigurationError, match=word):
            RetryBudget(**kwargs)
    with pytest.raises(ConfigurationError, match="budget"):
        retry(budget=0.2)  # type: ignore[arg-type]
    assert "ratio=0.2" in repr(RetryBudget())
