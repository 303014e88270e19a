"""@memory_guard's settings, checked at decoration, and the honesty of its wrappers."""

from __future__ import annotations

import functools
import inspect
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import buttress
from _cgroup_trees import CgroupTree, GiB, MiB, limited_v2
from buttress import ConfigurationError, MemoryGuard, MemoryProbe, memory_guard


@pytest.fixture
def tree(tmp_path: Path) -> CgroupTree:
    return limited_v2(tmp_path, limit=GiB, usage=100 * MiB)


@pytest.mark.parametrize(
    ("settings", "parameter"),
    [
        ({"max_percent": 0}, "max_percent"),
        ({"max_percent": 101}, "max_percent"),
        ({"max_percent": "85%"}, "max_percent"),
        ({"max_percent": float("nan")}, "max_percent"),
        ({"min_available": -1}, "min_available"),
        ({"min_available": "lots"}, "min_available"),
        ({"max_rss": 0}, "max_rss"),
        ({"max_rss": "2 gallons"}, "max_rss"),
        ({"action": "panic"}, "action"),
        ({"wait_timeout": -1}, "wait_timeout"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"sample_interval": "often"}, "sample_interval"),
        ({"reserve": 1.5}, "reserve"),
        ({"reserve": -5}, "reserve"),
        ({"gpu": -1}, "gpu"),
        ({"gpu": "cuda:0"}, "gpu"),
        ({"gpu_max_percent": 0}, "gpu_max_percent"),
        ({"gpu_reserve": "1GiB"}, "gpu_reserve"),
        ({"gpu_probe": object()}, "gpu_probe"),
        ({"probe": "/sys/fs/cgroup"}, "probe"),
    ],
)
def test_bad_settings_fail_at_decoration(settings: dict[str, Any], parameter: str) -> None:
    with pytest.raises(ConfigurationError, match=parameter):
        memory_guard(**settings)


def test_settings_accept_natural_forms(tree: CgroupTree) -> None:
    guard = MemoryGuard(
        probe=tree.probe(),
        min_available="1.5GiB",
        max_rss="2G",
        wait_timeout=timedelta(seconds=3),
        poll_interval=timedelta(milliseconds=20),
        sample_interval=0,
        reserve="64MiB",
    )
    assert guard.min_available == 1536 * MiB
    assert guard.max_rss == 2 * 1000**3
    assert (guard.wait_timeout, guard.poll_interval, guard.sample_interval) == (3.0, 0.02, 0.0)
    assert guard.reserve == 64 * MiB
    assert guard.gpu is None
    assert guard.gpu_pool is None
    assert "max_percent=85" in repr(guard)


def test_defaults_use_the_process_wide_probe() -> None:
    first, second = memory_guard(lambda: 1), memory_guard(lambda: 2)
    assert first.memory_guard.probe is second.memory_guard.probe
    assert isinstance(first.memory_guard.probe, MemoryProbe)
    assert first.memory_guard.snapshot().limit > 0


def test_generators_are_guarded_as_streams() -> None:
    @memory_guard
    def numbers() -> Any:
        yield 1

    assert inspect.isgeneratorfunction(numbers)
    assert list(numbers()) == [1]


def test_wrappers_are_honest(tree: CgroupTree) -> None:
    async def embed(text: str, *, dims: int = 8) -> list[float]:
        """Embed text."""
        return [0.0] * dims

    def rank(items: list[int], top: int = 3) -> list[int]:
        return sorted(items)[:top]

    for original in (embed, rank):
        wrapped = memory_guard(probe=tree.probe())(original)
        assert wrapped.__wrapped__ is original  # type: ignore[attr-defined]
        assert wrapped.__name__ == original.__name__
        assert inspect.signature(wrapped) == inspect.signature(original)
        assert inspect.iscoroutinefunction(wrapped) == inspect.iscoroutinefunction(original)
        assert isinstance(wrapped.memory_guard, MemoryGuard)
    assert memory_guard(embed).__doc__ == "Embed text."


@pytest.mark.anyio
async def test_methods_partials_and_callables(tree: CgroupTree) -> None:
    probe = tree.probe()

    class Model:
        def __init__(self, scale: int) -> None:
            self.scale = scale

        @memory_guard(probe=probe, reserve=lambda self, x: self.scale * MiB)
        def predict(self, x: int) -> int:
            assert probe.reserved == self.scale * MiB
            return x * self.scale

        @classmethod
        @memory_guard(probe=probe)
        def build(cls) -> Model:
            return cls(2)

        @memory_guard(probe=probe)
        async def apredict(self, x: int) -> int:
            return x * self.scale

    model = Model.build()
    assert model.predict(5) == 10
    assert await model.apredict(5) == 10

    async def scaled(x: int, factor: int) -> int:
        return x * factor

    triple = memory_guard(probe=probe)(functools.partial(scaled, factor=3))
    assert inspect.iscoroutinefunction(triple)
    assert await triple(2) == 6


def test_public_names() -> None:
    for name in (
        "GpuProbe",
        "MemoryGuard",
        "MemoryGuarded",
        "MemoryPressureError",
        "MemoryProbe",
        "MemorySnapshot",
        "memory_guard",
        "memory_snapshot",
    ):
        assert name in buttress.__all__
        assert getattr(buttress, name) is not None
    assert buttress.__all__ == sorted(buttress.__all__)
