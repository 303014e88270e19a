"""The public API as a user's type checker sees it. Type-checked by mypy, never executed.

    mypy --strict tests/typing
"""

from __future__ import annotations

from typing_extensions import assert_type

import buttress
from buttress import MemoryGuard, MemoryPressureError, MemorySnapshot, memory_guard

# --- @memory_guard keeps parameters and return types, bare and called -----------------


@memory_guard
def guarded_bare(x: int, *, label: str = "a") -> str:
    return f"{x}{label}"


@memory_guard(max_percent=80, action="wait", reserve=lambda batch: len(batch) * 4)
async def guarded_async(batch: list[float]) -> list[float]:
    return batch


@memory_guard(min_available="2GiB", gpu=False, sample_interval=0.1)
def guarded_sizes(n: int) -> bytes:
    return bytes(n)


class GuardedModel:
    @memory_guard(max_rss="8GiB")
    def predict(self, batch: list[float]) -> float:
        return sum(batch)


async def memory_callers() -> None:
    assert_type(guarded_bare(1), str)
    assert_type(guarded_bare(1, label="b"), str)
    assert_type(await guarded_async([1.0]), list[float])
    assert_type(guarded_sizes(3), bytes)
    assert_type(guarded_bare.memory_guard, MemoryGuard)
    assert_type(guarded_async.memory_guard.reserved, int)
    assert_type(GuardedModel().predict([1.0]), float)
    guarded_bare("1")  # type: ignore[arg-type]
    await guarded_async()  # type: ignore[call-arg]
    snapshot = buttress.memory_snapshot()
    assert_type(snapshot, MemorySnapshot)
    assert_type(snapshot.percent, float)
    assert_type(snapshot.oom_kills, int | None)
    try:
        guarded_sizes(1)
    except MemoryPressureError as error:
        assert_type(error.available, int)
        assert_type(error.source, str)


class GuardedMethods:
    @memory_guard(reserve=lambda self, batch: len(batch))
    async def apredict(self, batch: list[float]) -> float:
        return sum(batch)

    @staticmethod
    @memory_guard
    def helper(x: int) -> int:
        return x


async def memory_methods() -> None:
    model = GuardedMethods()
    assert_type(await model.apredict([1.0]), float)
    assert_type(await GuardedMethods.apredict(model, [1.0]), float)
    assert_type(model.apredict.memory_guard, MemoryGuard)
    assert_type(GuardedMethods.helper(1), int)
    await model.apredict("x")  # type: ignore[arg-type]
