"""@memory_guard's actions (raise, collect, wait, warn) on plain and coroutine functions."""

from __future__ import annotations

import gc
import logging
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _cgroup_trees import CgroupTree, GiB, MiB, limited_v2
from buttress import (
    ButtressError,
    MemoryGuardDecision,
    MemoryPressureError,
    events,
    memory_guard,
    testing,
)
from buttress.testing import FakeClock


@pytest.fixture
def tree(tmp_path: Path) -> CgroupTree:
    """A 1 GiB container using 100 MiB."""
    return limited_v2(tmp_path, limit=GiB, usage=100 * MiB)


@pytest.fixture
def decisions() -> Iterator[list[MemoryGuardDecision]]:
    seen: list[MemoryGuardDecision] = []
    with events.subscribe(seen.append, MemoryGuardDecision):
        yield seen


def over(tree: CgroupTree) -> None:
    tree.set(usage=900 * MiB)  # 87.9% of the limit


def actions(seen: list[MemoryGuardDecision]) -> list[str]:
    return [decision.action for decision in seen]


# --- admitted --------------------------------------------------------------------------


def test_admits_under_the_threshold(tree: CgroupTree, decisions: list[MemoryGuardDecision]) -> None:
    @memory_guard(probe=tree.probe())
    def predict(x: int) -> int:
        return x * 2

    assert predict(21) == 42
    assert actions(decisions) == ["admitted"]
    decision = decisions[0]
    assert decision.function.endswith("predict")
    assert (decision.used, decision.limit, decision.source) == (100 * MiB, GiB, "cgroup-v2")
    assert decision.reason is None


@pytest.mark.anyio
async def test_admits_async_under_the_threshold(tree: CgroupTree) -> None:
    @memory_guard(probe=tree.probe())
    async def predict(x: int) -> int:
        return x * 2

    assert await predict(21) == 42


def test_bare_form_uses_the_default_probe() -> None:
    @memory_guard
    def predict(x: int) -> int:
        return x + 1

    # The guard reads this machine's real cgroup or host memory.
    if predict.memory_guard.snapshot().percent < 80:
        assert predict(1) == 2
    else:  # pragma: no cover - a machine nearly out of memory
        with pytest.raises(MemoryPressureError):
            predict(1)
    assert predict.memory_guard.max_percent == 85.0


# --- raise -----------------------------------------------------------------------------


def test_raise_on_sync(tree: CgroupTree, decisions: list[MemoryGuardDecision]) -> None:
    calls: list[int] = []

    @memory_guard(probe=tree.probe(), sample_interval=0)
    def predict(x: int) -> int:
        calls.append(x)
        return x

    over(tree)
    with pytest.raises(MemoryPressureError) as caught:
        predict(1)
    error = caught.value
    assert calls == []
    assert isinstance(error, MemoryError)
    assert isinstance(error, ButtressError)
    assert (error.used, error.limit, error.available) == (900 * MiB, GiB, 124 * MiB)
    assert error.percent == pytest.approx(100 * 900 / 1024)
    assert (error.source, error.reason, error.waited) == ("cgroup-v2", "max_percent", 0.0)
    assert "predict()" in str(error)
    assert "max_percent=85" in str(error)
    assert "cgroup-v2 /app" in str(error)
    assert actions(decisions) == ["rejected"]
    assert decisions[0].reason == "max_percent"


@pytest.mark.anyio
async def test_raise_on_async(tree: CgroupTree) -> None:
    @memory_guard(probe=tree.probe(), sample_interval=0, max_percent=50)
    async def predict() -> None:
        raise AssertionError("must not run")

    tree.set(usage=600 * MiB)
    with pytest.raises(MemoryPressureError, match="max_percent=50"):
        await predict()


def test_min_available(tree: CgroupTree) -> None:
    @memory_guard(probe=tree.probe(), sample_interval=0, max_percent=100, min_available="200MiB")
    def predict() -> str:
        return "ok"

    tree.set(usage=800 * MiB)
    assert predict() == "ok"  # 224 MiB left
    tree.set(usage=850 * MiB)
    with pytest.raises(MemoryPressureError) as caught:
        predict()
    assert caught.value.reason == "min_available"
    assert caught.value.available == 174 * MiB


def test_max_rss(tree: CgroupTree) -> None:
    rss = tree.probe().read().rss

    @memory_guard(probe=tree.probe(), sample_interval=0, max_rss=rss // 2)
    def predict() -> None:
        raise AssertionError("must not run")

    with pytest.raises(MemoryPressureError) as caught:
        predict()
    error = caught.value
    assert error.reason == "max_rss"
    assert error.limit == rss // 2
    assert error.used > error.limit
    assert "RSS" in str(error)


def test_the_error_pickles(tree: CgroupTree) -> None:
    @memory_guard(probe=tree.probe(), sample_interval=0)
    def predict() -> None: ...

    over(tree)
    with pytest.raises(MemoryPressureError) as caught:
        predict()
    copy = pickle.loads(pickle.dumps(caught.value))
    assert isinstance(copy, MemoryPressureError)
    assert str(copy) == str(caught.value)
    assert vars(copy) == vars(caught.value)


# --- collect ---------------------------------------------------------------------------


class FreeOnCollect:
    """Lowers the fake cgroup's usage when a full garbage collection finishes."""

    def __init__(self, tree: CgroupTree, usage: int) -> None:
        self.tree, self.usage, self.collections = tree, usage, 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 2:
            self.collections += 1
            self.tree.set(usage=self.usage)

    def __enter__(self) -> FreeOnCollect:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def test_collect_then_admit(tree: CgroupTree, decisions: list[MemoryGuardDecision]) -> None:
    @memory_guard(probe=tree.probe(), action="collect", sample_interval=0)
    def predict() -> str:
        return "ok"

    over(tree)
    with FreeOnCollect(tree, usage=500 * MiB) as freer:
        assert predict() == "ok"
    assert freer.collections >= 1
    assert actions(decisions) == ["collected", "admitted"]
    assert decisions[0].freed == 400 * MiB
    assert decisions[1].used == 500 * MiB  # the reading after the collection


@pytest.mark.anyio
async def test_collect_still_over_raises(
    tree: CgroupTree, decisions: list[MemoryGuardDecision]
) -> None:
    @memory_guard(probe=tree.probe(), action="collect", sample_interval=0)
    async def predict() -> str:
        return "ok"

    over(tree)
    with FreeOnCollect(tree, usage=880 * MiB), pytest.raises(MemoryPressureError) as caught:
        await predict()
    assert caught.value.used == 880 * MiB
    assert actions(decisions) == ["collected", "rejected"]
    assert decisions[0].freed == 20 * MiB


def test_collect_runs_once_per_sample_interval(
    tree: CgroupTree, buttress_clock: FakeClock, decisions: list[MemoryGuardDecision]
) -> None:
    @memory_guard(probe=tree.probe(), action="collect", sample_interval=1.0)
    def predict() -> None: ...

    over(tree)
    with FreeOnCollect(tree, usage=900 * MiB) as freer:
        for _ in range(3):
            with pytest.raises(MemoryPressureError):
                predict()
        assert freer.collections == 1
        buttress_clock.advance(1.0)
        with pytest.raises(MemoryPressureError):
            predict()
        assert freer.collections == 2
    assert actions(decisions).count("collected") == 2


def test_collect_frees_real_garbage_of_this_process() -> None:
    """End to end on real memory: garbage in a reference cycle, found by RSS."""
    from buttress import MemoryProbe

    np = pytest.importorskip("numpy")
    probe = MemoryProbe()
    gc.collect()
    gc.disable()  # keep the cycle alive until the guard collects it
    try:

        class Node:
            pass

        node = Node()
        node.self = node  # type: ignore[attr-defined]
        node.data = np.ones(256 * MiB // 8)  # type: ignore[attr-defined]  # pages touched
        del node
        with_garbage = probe.read().rss

        @memory_guard(
            probe=probe, action="collect", max_percent=100, max_rss=with_garbage - 128 * MiB
        )
        def predict() -> str:
            return "ok"

        seen: list[MemoryGuardDecision] = []
        with events.subscribe(seen.append, MemoryGuardDecision):
            assert predict() == "ok"
    finally:
        gc.enable()
    assert actions(seen) == ["collected", "admitted"]
    assert seen[0].freed >= 128 * MiB


# --- warn ------------------------------------------------------------------------------


def test_warn_runs_the_call(
    tree: CgroupTree,
    buttress_clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    decisions: list[MemoryGuardDecision],
) -> None:
    probe = tree.probe()

    @memory_guard(probe=probe, action="warn", sample_interval=0, reserve="10MiB")
    def predict(x: int) -> int:
        assert probe.reserved == 10 * MiB  # counted while it runs, like any admitted call
        return x

    over(tree)
    with caplog.at_level(logging.WARNING, logger="buttress.memory_guard"):
        assert predict(1) == 1
        assert predict(2) == 2  # within a second: no second record
        assert len(caplog.records) == 1
        buttress_clock.advance(1.0)
        assert predict(3) == 3
    assert len(caplog.records) == 2
    assert "running" in caplog.records[0].getMessage()
    assert "max_percent=85" in caplog.records[0].getMessage()
    assert "1 similar warnings suppressed" in caplog.records[1].getMessage()
    assert actions(decisions) == ["warned"] * 3
    assert decisions[0].reason == "max_percent"
    assert decisions[0].requested == 10 * MiB
    assert probe.reserved == 0


@pytest.mark.anyio
async def test_warn_on_async(tree: CgroupTree, caplog: pytest.LogCaptureFixture) -> None:
    @memory_guard(probe=tree.probe(), action="warn", sample_interval=0)
    async def predict(x: int) -> int:
        return x

    over(tree)
    with caplog.at_level(logging.WARNING, logger="buttress.memory_guard"):
        assert await predict(7) == 7
    assert "predict" in caplog.text


# --- wait (the rest of it lives in test_memory_guard_wait.py) ---------------------------


def test_wait_times_out_sync(
    tree: CgroupTree, buttress_clock: FakeClock, decisions: list[MemoryGuardDecision]
) -> None:
    @memory_guard(probe=tree.probe(), action="wait", wait_timeout=0.2, poll_interval=0.05)
    def predict() -> None:
        raise AssertionError("must not run")

    over(tree)
    with pytest.raises(MemoryPressureError) as caught:
        predict()
    assert buttress_clock.sleeps == pytest.approx([0.05] * 4)
    assert caught.value.waited == pytest.approx(0.2)
    assert "after waiting 0.2s" in str(caught.value)
    assert actions(decisions) == ["waited", "rejected"]
    assert decisions[0].waited == pytest.approx(0.2)


def test_wait_ends_under_a_clock_that_stands_still(tree: CgroupTree) -> None:
    @memory_guard(probe=tree.probe(), action="wait", wait_timeout=0.3, poll_interval=0.1)
    def predict() -> None: ...

    over(tree)
    with (
        testing.testing_mode(FakeClock(auto_advance=False)) as clock,
        pytest.raises(MemoryPressureError),
    ):
        predict()
    assert clock.sleeps == pytest.approx([0.1, 0.1, 0.1])


def test_sample_interval_reuses_a_reading(tree: CgroupTree, buttress_clock: FakeClock) -> None:
    @memory_guard(probe=tree.probe(), sample_interval=0.5)
    def predict() -> str:
        return "ok"

    assert predict() == "ok"
    over(tree)
    assert predict() == "ok"  # the reading is at most half a second old: no /sys read
    buttress_clock.advance(0.6)
    with pytest.raises(MemoryPressureError):
        predict()
