"""Reservations: concurrent calls that each fit alone cannot together overshoot."""

from __future__ import annotations

import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import anyio.lowlevel
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _cgroup_trees import CgroupTree, GiB, MiB, limited_v2
from buttress import MemoryGuard, MemoryPressureError, memory_guard
from buttress.testing import FakeClock


@pytest.fixture
def tree(tmp_path: Path) -> CgroupTree:
    """1 GiB with nothing used: room for exactly ten 100 MiB calls at max_percent=100."""
    return limited_v2(tmp_path, limit=1000 * MiB, usage=0)


class Gauge:
    """Counts calls running at once, and the most that ever did."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.most = self.total = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.total += 1
            self.most = max(self.most, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


@pytest.mark.anyio
async def test_a_hundred_tasks_cannot_overshoot(tree: CgroupTree) -> None:
    probe = tree.probe()
    gauge = Gauge()
    release = anyio.Event()
    rejections: list[MemoryPressureError] = []

    @memory_guard(probe=probe, max_percent=100, reserve="100MiB")
    async def predict() -> None:
        gauge.enter()
        try:
            await release.wait()
        finally:
            gauge.leave()

    async def call() -> None:
        try:
            await predict()
        except MemoryPressureError as error:
            rejections.append(error)

    async with anyio.create_task_group() as group:
        for _ in range(100):
            group.start_soon(call)
        while gauge.now + len(rejections) < 100:
            await anyio.lowlevel.checkpoint()
        assert probe.reserved == 1000 * MiB
        release.set()
    assert (gauge.most, len(rejections)) == (10, 90)
    assert {(error.requested, error.reserved) for error in rejections} == {(100 * MiB, 1000 * MiB)}
    assert probe.reserved == 0


@pytest.mark.anyio
async def test_a_hundred_waiting_tasks_all_finish_ten_at_a_time(
    tree: CgroupTree, buttress_clock: FakeClock
) -> None:
    probe = tree.probe()
    gauge = Gauge()

    @memory_guard(probe=probe, max_percent=100, reserve="100MiB", action="wait", wait_timeout=1e6)
    async def predict(i: int) -> int:
        gauge.enter()
        try:
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            return i
        finally:
            gauge.leave()

    results: list[int] = []

    async def call(i: int) -> None:
        results.append(await predict(i))

    async with anyio.create_task_group() as group:
        for i in range(100):
            group.start_soon(call, i)
    assert sorted(results) == list(range(100))
    assert gauge.most == 10
    assert probe.reserved == 0


def test_a_hundred_threads_cannot_overshoot(tree: CgroupTree) -> None:
    probe = tree.probe()
    gauge = Gauge()
    start = threading.Barrier(100)

    @memory_guard(
        probe=probe,
        max_percent=100,
        reserve=100 * MiB,
        action="wait",
        poll_interval=0.002,
        wait_timeout=60,
    )
    def predict(i: int) -> int:
        gauge.enter()
        try:
            assert probe.reserved <= 1000 * MiB
            time.sleep(0.002)
            return i
        finally:
            gauge.leave()

    def call(i: int) -> int:
        start.wait()
        return predict(i)

    with ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(call, range(100)))
    assert results == list(range(100))
    assert 1 <= gauge.most <= 10
    assert probe.reserved == 0


def test_calls_without_a_reservation_see_those_in_flight(tree: CgroupTree) -> None:
    probe = tree.probe()

    @memory_guard(probe=probe, max_percent=50)
    def small() -> str:
        return "small"

    @memory_guard(probe=probe, max_percent=100, reserve="600MiB")
    def big() -> str:
        # While the big call holds 600 MiB, a guard on the same probe counts it.
        with pytest.raises(MemoryPressureError) as caught:
            small()
        assert caught.value.reserved == 600 * MiB
        return "big"

    assert big() == "big"
    assert small() == "small"


def test_released_on_error(tree: CgroupTree) -> None:
    probe = tree.probe()

    @memory_guard(probe=probe, reserve="64MiB")
    def predict() -> None:
        assert probe.reserved == 64 * MiB
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        predict()
    assert probe.reserved == 0


@pytest.mark.anyio
async def test_released_on_error_async(tree: CgroupTree) -> None:
    probe = tree.probe()

    @memory_guard(probe=probe, reserve="64MiB")
    async def predict() -> None:
        await anyio.lowlevel.checkpoint()
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await predict()
    assert probe.reserved == 0


@pytest.mark.anyio
async def test_released_on_cancellation(tree: CgroupTree) -> None:
    probe = tree.probe()
    started = anyio.Event()

    @memory_guard(probe=probe, reserve="64MiB")
    async def predict() -> None:
        started.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as group:
        group.start_soon(predict)
        await started.wait()
        assert probe.reserved == 64 * MiB
        group.cancel_scope.cancel()
    assert probe.reserved == 0


def test_reserve_from_the_arguments(tree: CgroupTree) -> None:
    probe = tree.probe()
    seen: list[int] = []

    @memory_guard(probe=probe, max_percent=100, reserve=lambda batch, scale=1: batch.nbytes * scale)
    def predict(batch: np.ndarray, scale: int = 1) -> int:
        seen.append(probe.reserved)
        return int(batch.sum())

    batch = np.ones(1024, dtype=np.float64)  # 8 KiB
    assert predict(batch) == 1024
    assert predict(batch, scale=4) == 1024
    assert seen == [8 * 1024, 32 * 1024]
    with pytest.raises(MemoryPressureError) as caught:
        predict(batch, scale=1000 * MiB // 8192 + 1)
    assert caught.value.requested == batch.nbytes * (1000 * MiB // 8192 + 1)
    assert probe.reserved == 0


def test_reserve_callable_returning_numpy_ints(tree: CgroupTree) -> None:
    @memory_guard(probe=tree.probe(), reserve=lambda n: np.int64(n))
    def predict(n: int) -> int:
        return n

    assert predict(10) == 10


@pytest.mark.parametrize(
    ("returned", "error", "match"),
    [
        (-1, ValueError, "negative"),
        (1.5, TypeError, "number of bytes"),
        ("1GiB", TypeError, "1GiB"),
    ],
)
def test_reserve_callable_returning_nonsense(
    tree: CgroupTree, returned: object, error: type[Exception], match: str
) -> None:
    @memory_guard(probe=tree.probe(), reserve=lambda: returned)
    def predict() -> None:
        raise AssertionError("must not run")

    with pytest.raises(error, match=match):
        predict()


def test_reserve_callable_raising_propagates(tree: CgroupTree) -> None:
    probe = tree.probe()

    def size(batch: object) -> int:
        raise AttributeError("no nbytes")

    @memory_guard(probe=probe, reserve=size)
    def predict(batch: object) -> None:
        raise AssertionError("must not run")

    with pytest.raises(AttributeError, match="no nbytes"):
        predict(object())
    assert probe.reserved == 0


@settings(max_examples=60, deadline=None)
@given(
    used=st.integers(0, 1000),
    max_percent=st.floats(1, 100),
    operations=st.lists(
        st.one_of(st.integers(0, 400), st.just(-1)),  # -1: release the oldest admitted call
        max_size=40,
    ),
)
def test_admission_matches_the_arithmetic(
    used: int, max_percent: float, operations: list[int]
) -> None:
    """Whatever arrives and leaves, admitted = fits with everything in flight."""
    with tempfile.TemporaryDirectory() as directory:
        tree = limited_v2(Path(directory), limit=1000 * MiB, usage=used * MiB)
        guard = MemoryGuard(probe=tree.probe(), max_percent=max_percent)
        in_flight: list[int] = []
        for operation in operations:
            if operation < 0:
                if in_flight:
                    guard.release(in_flight.pop(0), 0)
            else:
                own = operation * MiB
                fits = (used * MiB + sum(in_flight) + own) * 100 <= max_percent * 1000 * MiB
                refusal = guard.try_admit(own, 0)
                assert (refusal is None) == fits
                if refusal is None:
                    in_flight.append(own)
            assert guard.reserved == sum(in_flight)
            assert (used * MiB + guard.reserved) * 100 <= max(
                max_percent * 1000 * MiB, used * MiB * 100
            )
        for own in in_flight:
            guard.release(own, 0)
        assert guard.reserved == 0


def test_separate_probes_keep_separate_ledgers(tmp_path: Path) -> None:
    first = limited_v2(tmp_path / "a", limit=GiB).probe()
    second = limited_v2(tmp_path / "b", limit=GiB).probe()

    @memory_guard(probe=first, reserve="512MiB")
    def outer() -> int:
        return inner()

    @memory_guard(probe=second, reserve="512MiB")
    def inner() -> int:
        return first.reserved + second.reserved

    assert outer() == GiB
