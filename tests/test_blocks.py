"""Blocks: retrying() loops, and the engines of the decorators used as context managers.

The block and the decorator share one engine, so the checks here compare them side by
side: the same decisions, waits, notes and events for the same failures.
"""

from __future__ import annotations

import threading
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from buttress import (
    Attempt,
    AttemptTimeoutError,
    ConfigurationError,
    MemoryAdmission,
    MemoryGuard,
    MemoryGuardDecision,
    MemoryPressureError,
    MemoryProbe,
    MemorySnapshot,
    RetryBudget,
    RetryError,
    RetryGaveUp,
    Retrying,
    RetryScheduled,
    bulkhead,
    events,
    retry,
    retrying,
)
from buttress.testing import FakeClock

# --- retrying(): the same decisions as @retry ---------------------------------------


def run_decorated(settings: dict[str, Any], outcomes: list[Any]) -> tuple[Any, list[Any]]:
    """Call a @retry-decorated function that raises or returns ``outcomes`` in turn."""
    seen: list[Any] = []
    queue = iter(outcomes)

    @retry(**settings)
    def call() -> Any:
        outcome = next(queue)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    with events.subscribe(seen.append, (RetryScheduled, RetryGaveUp)):
        try:
            return call(), seen
        except Exception as exc:
            return exc, seen


def run_block(settings: dict[str, Any], outcomes: list[Any]) -> tuple[Any, list[Any]]:
    """The same, as a block."""
    seen: list[Any] = []
    queue = iter(outcomes)
    result = None
    with events.subscribe(seen.append, (RetryScheduled, RetryGaveUp)):
        try:
            for attempt in retrying(**settings):
                with attempt:
                    outcome = next(queue)
                    if isinstance(outcome, BaseException):
                        raise outcome
                    attempt.result = result = outcome
        except Exception as exc:
            return exc, seen
    return result, seen


def describe(events_seen: list[Any]) -> list[tuple[Any, ...]]:
    described: list[tuple[Any, ...]] = []
    for event in events_seen:
        if isinstance(event, RetryScheduled):
            described.append(("scheduled", event.attempt, type(event.error), event.delay))
        else:
            described.append(("gave up", event.attempts, event.reason, type(event.error)))
    return described


CASES: list[tuple[str, dict[str, Any], list[Any]]] = [
    ("success after two failures", {"max_retries": 3}, [OSError(), OSError(), "ok"]),
    ("attempts run out", {"max_retries": 2}, [OSError("1"), OSError("2"), OSError("3")]),
    ("not retriable", {"exceptions": (OSError,)}, [ValueError("bad")]),
    (
        "the on predicate",
        {"max_retries": 5, "exceptions": (OSError,), "on": lambda e: e.errno != 2},
        [OSError(1, "again"), OSError(2, "missing")],
    ),
    (
        "a deadline",
        {"max_retries": 10, "deadline": 2.5, "backoff_factor": 1.0},
        [OSError()] * 5,
    ),
    (
        "retry_on_result",
        {"max_retries": 2, "retry_on_result": lambda r: r is None},
        [None, None, None],
    ),
    (
        "a Retry-After",
        {"max_retries": 1},
        [type("Busy", (Exception,), {"retry_after": 7.0})(), "ok"],
    ),
]


@pytest.mark.parametrize(("case", "settings", "outcomes"), CASES, ids=[c[0] for c in CASES])
def test_a_block_decides_exactly_as_the_decorator(
    case: str, settings: dict[str, Any], outcomes: list[Any], buttress_clock: FakeClock
) -> None:
    settings = {"base_delay": 1.0, "jitter": None, **settings}
    decorated, decorated_events = run_decorated(settings, outcomes)
    decorated_sleeps = list(buttress_clock.sleeps)
    buttress_clock.sleeps.clear()
    block, block_events = run_block(settings, outcomes)
    assert buttress_clock.sleeps == decorated_sleeps
    assert describe(block_events) == describe(decorated_events)
    assert type(block) is type(decorated)
    if isinstance(decorated, BaseException):
        assert block is outcomes[-1] or isinstance(block, RetryError)
        notes = [note.split(" in ")[0] for note in getattr(decorated, "__notes__", [])]
        block_notes = [note.split(" in ")[0] for note in getattr(block, "__notes__", [])]
        assert len(block_notes) == len(notes)
    else:
        assert block == decorated
    if isinstance(decorated, RetryError):
        assert (block.attempts, block.last_result) == (decorated.attempts, decorated.last_result)


@pytest.mark.anyio
async def test_an_async_loop_sleeps_with_the_event_loop_running(buttress_clock: FakeClock) -> None:
    seen: list[RetryScheduled] = []
    tries = 0
    with events.subscribe(seen.append, RetryScheduled):
        async for attempt in retrying(max_retries=3, base_delay=0.5, jitter=None):
            with attempt:
                tries += 1
                assert isinstance(attempt, Attempt)
                assert attempt.number == tries
                if tries < 3:
                    raise ConnectionError("not yet")
    assert tries == 3
    assert buttress_clock.sleeps == [0.5, 1.0]
    assert {event.function for event in seen} == {
        "test_an_async_loop_sleeps_with_the_event_loop_running"
    }


@pytest.mark.anyio
async def test_attempt_timeout_cancels_a_hung_attempt_and_retries_it() -> None:
    tries = 0
    async for attempt in retrying(max_retries=2, attempt_timeout=0.05, base_delay=0):
        with attempt:
            tries += 1
            if tries == 1:
                await anyio.sleep_forever()
    assert tries == 2

    async def always_hung() -> None:
        async for attempt in retrying(max_retries=1, attempt_timeout=0.02, base_delay=0):
            with attempt:
                await anyio.sleep_forever()

    with pytest.raises(AttemptTimeoutError, match="attempt 2 of the block in"):
        await always_hung()


@pytest.mark.anyio
async def test_cancellation_is_never_retried_by_a_block() -> None:
    tries = 0
    with anyio.move_on_after(0.05) as scope:
        async for attempt in retrying(max_retries=5, base_delay=0):
            with attempt:
                tries += 1
                await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert tries == 1


def test_a_loop_ends_after_an_attempt_that_succeeds_or_is_not_used(
    buttress_clock: FakeClock,
) -> None:
    attempts = list(retrying(max_retries=5))  # never entered: the first one ends the loop
    assert len(attempts) == 1
    loop = iter(retrying(max_retries=5))
    with next(loop):
        pass
    with pytest.raises(StopIteration):
        next(loop)


def test_a_shared_retrying_object_runs_each_loop_afresh(buttress_clock: FakeClock) -> None:
    policy = retrying(max_retries=1, base_delay=0.1, jitter=None)
    assert isinstance(policy, Retrying)
    for _ in range(3):
        tries = 0
        for attempt in policy:
            with attempt:
                tries += 1
                if tries == 1:
                    raise OSError("once")
        assert tries == 2
    assert buttress_clock.sleeps == [0.1, 0.1, 0.1]


def test_the_budget_is_shared_with_decorated_calls(buttress_clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.0)

    def always_down() -> None:
        for attempt in retrying(max_retries=3, budget=budget):
            with attempt:
                raise OSError("down")

    with pytest.raises(OSError) as caught:
        always_down()
    assert "retry budget" in caught.value.__notes__[0]
    assert budget.stats().exhausted == 1


def test_misuse_is_refused_clearly() -> None:
    with pytest.raises(ConfigurationError, match="max_retries"):
        retrying(max_retries=-1)
    with pytest.raises(TypeError, match="retrying\\(\\): got an unexpected keyword"):
        retrying(max_retry=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="needs `async for`"):
        iter(retrying(attempt_timeout=1))
    with pytest.raises(ConfigurationError, match="resume applies to decorated streams"):
        retrying(resume=lambda state: None)
    loop = iter(retrying())
    attempt = next(loop)
    with attempt:
        pass
    with pytest.raises(RuntimeError, match="entered once"), attempt:
        pass  # pragma: no cover


# --- the block forms of bulkhead and memory guard ---------------------------------------


def test_a_bulkhead_block_in_threads_waits_for_a_slot() -> None:
    pool = bulkhead(1, max_waiting=4)
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def first() -> None:
        with pool:
            order.append("first in")
            inside.set()
            release.wait(10)
        order.append("first out")

    def second() -> None:
        inside.wait(10)
        with pool:
            order.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    inside.wait(10)
    for _ in range(200):
        if pool.stats().waiting == 1:
            break
        threading.Event().wait(0.005)
    assert pool.stats().waiting == 1
    release.set()
    for thread in threads:
        thread.join(10)
    assert order == ["first in", "first out", "second in"]
    assert pool.stats().running == 0


class Readings(MemoryProbe):
    """A probe reporting a fixed figure (the guard's arithmetic is what is tested)."""

    def __init__(self, used: int, limit: int) -> None:
        super().__init__()
        self.used, self.limit = used, limit

    def read(self) -> MemorySnapshot:
        self.last = MemorySnapshot(
            used=self.used,
            limit=self.limit,
            available=self.limit - self.used,
            percent=100.0 * self.used / self.limit,
            rss=self.used,
            source="host",
            oom_kills=0,
            cgroup=None,
        )
        return self.last


def test_an_admission_reserves_for_the_block_and_refuses_what_does_not_fit() -> None:
    guard = MemoryGuard(max_percent=50, probe=Readings(used=300, limit=1000), sample_interval=0)
    decisions: list[MemoryGuardDecision] = []
    with events.subscribe(decisions.append, MemoryGuardDecision):
        with guard.admit(reserve=150) as admission:
            assert isinstance(admission, MemoryAdmission)
            assert admission.reserve == 150
            assert guard.reserved == 150
            with pytest.raises(MemoryPressureError) as caught, guard.admit(reserve="100B"):
                pass  # pragma: no cover
        assert guard.reserved == 0
    error = caught.value
    assert (error.requested, error.reserved, error.reason) == (100, 150, "max_percent")
    assert error.function.endswith(
        "test_an_admission_reserves_for_the_block_and_refuses_what_does_not_fit"
    )
    assert [d.action for d in decisions] == ["admitted", "rejected"]
    with pytest.raises(ConfigurationError, match="reserve"):
        guard.admit(reserve="lots")
    with pytest.raises(ConfigurationError, match="gpu_reserve needs"):
        guard.admit(gpu_reserve=10)


@pytest.mark.anyio
async def test_an_async_admission_waits_without_blocking_the_loop(
    buttress_clock: FakeClock,
) -> None:
    probe = Readings(used=900, limit=1000)
    guard = MemoryGuard(
        max_percent=80, action="wait", wait_timeout=5, poll_interval=0.5, probe=probe
    )
    polls = 0

    async def free_memory() -> None:
        nonlocal polls
        while len(buttress_clock.sleeps) < 2:
            await anyio.lowlevel.checkpoint()
        probe.used = 100
        polls = len(buttress_clock.sleeps)

    async with anyio.create_task_group() as group:
        group.start_soon(free_memory)
        async with guard.admit(reserve=10):
            assert guard.reserved == 10
    assert guard.reserved == 0
    assert polls >= 2
    assert all(sleep == 0.5 for sleep in buttress_clock.sleeps)


def test_an_admission_is_entered_once_and_a_fixed_reserve_is_the_default() -> None:
    guard = MemoryGuard(max_percent=100, reserve="1KiB", probe=Readings(1, 10**9))
    admission = guard.admit()
    assert admission.reserve == 1024
    with admission:
        pass
    with pytest.raises(RuntimeError, match="entered once"), admission:
        pass  # pragma: no cover
    sized = MemoryGuard(max_percent=100, reserve=lambda n: n, probe=Readings(1, 10**9))
    assert sized.admit().reserve == 0  # a block has no arguments to size it by
