"""@batch under random arrivals, cancellations, failures and limits (hypothesis).

Whatever happens, every caller gets exactly its own result or error (or its own
cancellation), no batch holds more than ``max_size`` items or mixes keys, no item is in
two batches, at most ``max_concurrency`` batches run at once, and the counters add up.

On trio the runs use ``trio.testing.MockClock`` with autojump: virtual milliseconds, so
hundreds of runs take seconds and a hang fails (``fail_after``) instead of waiting. On
asyncio they run in real time, with fewer examples; threads have no cancellation.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buttress import batch

MAX_WAIT = 0.005


class ItemFailed(Exception):
    """Returned by the batch function in the place of one item."""


class BatchFailed(Exception):
    """Raised by the batch function for a whole batch."""


@dataclass(frozen=True)
class Caller:
    arrive: int  # milliseconds after the start
    cancel_after: int | None  # milliseconds after arriving; None: never
    kind: str  # "ok", "item_error" or "poison" (the whole batch raises)
    group: int  # its key, when the batcher partitions


callers_strategy = st.lists(
    st.builds(
        Caller,
        arrive=st.integers(0, 25),
        cancel_after=st.one_of(st.none(), st.integers(0, 30)),
        kind=st.sampled_from(["ok", "ok", "ok", "item_error", "poison"]),
        group=st.integers(0, 2),
    ),
    min_size=1,
    max_size=25,
)


@dataclass
class Scenario:
    callers: list[Caller]
    max_size: int
    max_concurrency: int | None
    keyed: bool
    call_ms: int
    batches: list[list[int]] = field(default_factory=list)
    outcomes: dict[int, tuple[str, Any]] = field(default_factory=dict)
    running: int = 0
    peak: int = 0

    def decorate(self, asynchronous: bool) -> Any:
        key = (lambda index: self.callers[index].group) if self.keyed else None
        decorator = batch(
            max_size=self.max_size,
            max_wait=MAX_WAIT,
            key=key,
            max_concurrency=self.max_concurrency,
        )
        if asynchronous:

            async def embed(items: list[int]) -> list[Any]:
                self.enter(items)
                try:
                    await anyio.sleep(self.call_ms / 1000)
                finally:
                    self.running -= 1
                return self.answer(items)

            return decorator(embed)

        lock = threading.Lock()

        def embed_sync(items: list[int]) -> list[Any]:
            with lock:
                self.enter(items)
            time.sleep(self.call_ms / 1000)
            with lock:
                self.running -= 1
            return self.answer(items)

        return decorator(embed_sync)

    def enter(self, items: list[int]) -> None:
        self.batches.append(list(items))
        self.running += 1
        self.peak = max(self.peak, self.running)

    def answer(self, items: list[int]) -> list[Any]:
        if any(self.callers[i].kind == "poison" for i in items):
            raise BatchFailed(tuple(items))
        return [
            ItemFailed(i) if self.callers[i].kind == "item_error" else ("result", i) for i in items
        ]

    def check(self, stats: Any, cancellable: bool = True) -> None:
        sent = [i for b in self.batches for i in b]
        # No item in two batches, none over max_size, no batch mixing keys.
        assert len(sent) == len(set(sent)), self.batches
        assert all(1 <= len(b) <= self.max_size for b in self.batches), self.batches
        if self.keyed:
            for b in self.batches:
                assert len({self.callers[i].group for i in b}) == 1, b
        if self.max_concurrency is not None:
            assert self.peak <= self.max_concurrency
        batch_of = {i: tuple(b) for b in self.batches for i in b}
        # Every caller has an outcome, and it is its own.
        assert set(self.outcomes) == set(range(len(self.callers)))
        for index, (how, value) in self.outcomes.items():
            caller = self.callers[index]
            if how == "cancelled":
                assert cancellable
                assert caller.cancel_after is not None
                continue
            assert index in batch_of, (index, self.batches)
            members = batch_of[index]
            poisoned = any(self.callers[i].kind == "poison" for i in members)
            if how == "value":
                assert not poisoned
                assert caller.kind == "ok"
                assert value == ("result", index)
            elif poisoned:
                assert isinstance(value, BatchFailed)
                assert value.args == (members,)
            else:
                assert caller.kind == "item_error"
                assert isinstance(value, ItemFailed)
                assert value.args == (index,)
        # The counters agree with what happened.
        cancelled_unsent = sum(
            1 for i, (how, _) in self.outcomes.items() if how == "cancelled" and i not in batch_of
        )
        assert stats.batches == len(self.batches)
        assert stats.items == len(sent)
        assert stats.left == cancelled_unsent
        assert (stats.queued, stats.in_flight) == (0, 0)
        assert stats.failed == sum(
            1 for b in self.batches if any(self.callers[i].kind == "poison" for i in b)
        )


async def run_callers(scenario: Scenario, fn: Any) -> None:
    async def call(index: int, caller: Caller) -> None:
        await anyio.sleep(caller.arrive / 1000)
        with anyio.CancelScope() as scope:
            if caller.cancel_after is not None:
                scope.deadline = anyio.current_time() + caller.cancel_after / 1000
            try:
                value = await fn.one(index)
            except (ItemFailed, BatchFailed) as exc:
                scenario.outcomes[index] = ("error", exc)
            else:
                scenario.outcomes[index] = ("value", value)
        if scope.cancelled_caught:
            scenario.outcomes[index] = ("cancelled", None)

    async with anyio.create_task_group() as group:
        for index, caller in enumerate(scenario.callers):
            group.start_soon(call, index, caller)
    # Batches whose callers all left run on to the end (the event loop must outlive them:
    # at its end, trio and asyncio cancel the tasks still running).
    while fn.batcher.stats().in_flight:  # noqa: ASYNC110 - nothing to wait on but time
        await anyio.sleep(0.001)


def scenarios(examples: int, longest_call_ms: int) -> Any:
    """The hypothesis decorators of a scenario test: callers, settings, call duration."""

    def decorate(test: Any) -> Any:
        return settings(
            max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
        )(
            given(
                callers=callers_strategy,
                max_size=st.integers(1, 6),
                max_concurrency=st.one_of(st.none(), st.integers(1, 3)),
                keyed=st.booleans(),
                call_ms=st.integers(0, longest_call_ms),
            )(test)
        )

    return decorate


@scenarios(examples=150, longest_call_ms=12)
def test_trio_in_virtual_time(
    callers: list[Caller], max_size: int, max_concurrency: int | None, keyed: bool, call_ms: int
) -> None:
    scenario = Scenario(callers, max_size, max_concurrency, keyed, call_ms)
    fn = scenario.decorate(asynchronous=True)

    async def main() -> None:
        with trio.fail_after(60):  # virtual seconds: a caller left hanging fails here
            await run_callers(scenario, fn)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    scenario.check(fn.batcher.stats())


@scenarios(examples=20, longest_call_ms=5)
def test_asyncio_in_real_time(
    callers: list[Caller], max_size: int, max_concurrency: int | None, keyed: bool, call_ms: int
) -> None:
    scenario = Scenario(callers, max_size, max_concurrency, keyed, call_ms)
    fn = scenario.decorate(asynchronous=True)

    async def main() -> None:
        with anyio.fail_after(30):
            await run_callers(scenario, fn)

    anyio.run(main, backend="asyncio")
    scenario.check(fn.batcher.stats())


@scenarios(examples=12, longest_call_ms=5)
def test_threads_in_real_time(
    callers: list[Caller], max_size: int, max_concurrency: int | None, keyed: bool, call_ms: int
) -> None:
    scenario = Scenario(callers, max_size, max_concurrency, keyed, call_ms)
    fn = scenario.decorate(asynchronous=False)

    def call(index: int, caller: Caller) -> None:
        time.sleep(caller.arrive / 1000)
        try:
            scenario.outcomes[index] = ("value", fn.one(index))
        except (ItemFailed, BatchFailed) as exc:
            scenario.outcomes[index] = ("error", exc)

    threads = [
        threading.Thread(target=functools.partial(call, index, caller))
        for index, caller in enumerate(callers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()
    scenario.check(fn.batcher.stats(), cancellable=False)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_burst_is_cut_into_full_batches(backend: str) -> None:
    """10,000 callers at once, no partition: full batches only, but for the last."""
    seen: Counter[int] = Counter()

    @batch(max_size=64, max_wait=0.5)
    async def echo(items: list[int]) -> list[int]:
        seen[len(items)] += 1
        return items

    async def main() -> None:
        results: list[int] = []

        async def call(x: int) -> None:
            results.append(await echo.one(x))

        async with anyio.create_task_group() as group:
            for x in range(10_000):
                group.start_soon(call, x)
        assert sorted(results) == list(range(10_000))

    anyio.run(main, backend=backend)
    assert seen == {64: 10_000 // 64, 10_000 % 64: 1}
