"""action="wait": waits without blocking, lets other tasks run, re-reads memory meanwhile."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from _cgroup_trees import CgroupTree, GiB, MiB, limited_v2
from buttress import MemoryGuardDecision, MemoryPressureError, events, memory_guard, testing
from buttress.testing import FakeClock


@pytest.fixture
def tree(tmp_path: Path) -> CgroupTree:
    """A 1 GiB container, over the default 85% threshold."""
    return limited_v2(tmp_path, limit=GiB, usage=950 * MiB)


@pytest.fixture
def decisions() -> Iterator[list[MemoryGuardDecision]]:
    seen: list[MemoryGuardDecision] = []
    with events.subscribe(seen.append, MemoryGuardDecision):
        yield seen


@pytest.mark.anyio
async def test_other_tasks_run_while_a_call_waits(
    tree: CgroupTree, buttress_clock: FakeClock, decisions: list[MemoryGuardDecision]
) -> None:
    order: list[str] = []

    @memory_guard(probe=tree.probe(), action="wait", poll_interval=0.05, wait_timeout=60)
    async def predict() -> str:
        order.append("predict")
        return "ok"

    async def other_work() -> None:
        for step in range(5):
            order.append(f"step {step}")
            await anyio.lowlevel.checkpoint()
        tree.set(usage=100 * MiB)  # the memory is given back

    async with anyio.create_task_group() as group:
        group.start_soon(other_work)
        assert await predict() == "ok"
    assert order[-1] == "predict"
    assert order[:5] == [f"step {step}" for step in range(5)]
    assert buttress_clock.sleeps
    assert set(buttress_clock.sleeps) == {0.05}
    assert [decision.action for decision in decisions] == ["waited", "admitted"]
    assert decisions[0].waited == pytest.approx(0.05 * len(buttress_clock.sleeps))
    assert decisions[1].used == 100 * MiB


@pytest.mark.anyio
async def test_the_event_loop_keeps_running_in_real_time(tree: CgroupTree) -> None:
    """With real time: a ticker keeps ticking while the guarded call waits."""
    ticks = 0

    @memory_guard(probe=tree.probe(), action="wait", poll_interval=0.01, wait_timeout=60)
    async def predict() -> str:
        return "ok"

    async def ticker() -> None:
        nonlocal ticks
        while ticks < 10:
            ticks += 1
            await anyio.sleep(0.005)
        tree.set(usage=100 * MiB)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(ticker)
            assert await predict() == "ok"
    assert ticks == 10


@pytest.mark.anyio
async def test_async_wait_times_out(
    tree: CgroupTree, buttress_clock: FakeClock, decisions: list[MemoryGuardDecision]
) -> None:
    @memory_guard(probe=tree.probe(), action="wait", poll_interval=0.25, wait_timeout=1.0)
    async def predict() -> None:
        raise AssertionError("must not run")

    with pytest.raises(MemoryPressureError) as caught:
        await predict()
    assert buttress_clock.sleeps == [0.25] * 4
    assert caught.value.waited == pytest.approx(1.0)
    assert [decision.action for decision in decisions] == ["waited", "rejected"]


@pytest.mark.anyio
async def test_a_wait_is_cut_short_at_the_timeout(
    tree: CgroupTree, buttress_clock: FakeClock
) -> None:
    @memory_guard(probe=tree.probe(), action="wait", poll_interval=0.4, wait_timeout=1.0)
    async def predict() -> None: ...

    with pytest.raises(MemoryPressureError):
        await predict()
    assert buttress_clock.sleeps == pytest.approx([0.4, 0.4, 0.2])


@pytest.mark.anyio
async def test_cancelling_a_waiting_call(tree: CgroupTree) -> None:
    probe = tree.probe()

    @memory_guard(probe=probe, action="wait", poll_interval=0.01, reserve="1MiB")
    async def predict() -> None:
        raise AssertionError("must not run")

    with anyio.move_on_after(0.05) as scope:
        await predict()
    assert scope.cancelled_caught
    assert probe.reserved == 0


def test_sync_wait_admits_once_memory_is_back(
    tree: CgroupTree, decisions: list[MemoryGuardDecision]
) -> None:
    class FreeingClock(FakeClock):
        def sleep(self, seconds: float) -> None:
            super().sleep(seconds)
            if len(self.sleeps) == 3:
                tree.set(usage=200 * MiB)

    @memory_guard(probe=tree.probe(), action="wait", poll_interval=0.1, wait_timeout=10)
    def predict() -> str:
        return "ok"

    with testing.testing_mode(FreeingClock()) as clock:
        assert predict() == "ok"
    assert clock.sleeps == [0.1, 0.1, 0.1]
    assert [decision.action for decision in decisions] == ["waited", "admitted"]
    assert decisions[0].waited == pytest.approx(0.3)


def test_sync_wait_with_another_thread_freeing_memory(tree: CgroupTree) -> None:
    """Real time and a real thread: the sleeping caller sees the change on a later poll."""

    @memory_guard(probe=tree.probe(), action="wait", poll_interval=0.005, wait_timeout=60)
    def predict() -> str:
        return "ok"

    timer = threading.Timer(0.05, tree.set, kwargs={"usage": 100 * MiB})
    started = time.monotonic()
    timer.start()
    try:
        assert predict() == "ok"
    finally:
        timer.join()
    assert time.monotonic() - started >= 0.04
