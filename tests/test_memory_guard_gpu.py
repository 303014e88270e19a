"""GPU guarding through an injected probe (these machines have no GPU), and the torch/NVML
adapters and their absence."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _cgroup_trees import CgroupTree, GiB, MiB, limited_v2
from buttress import (
    ConfigurationError,
    GpuProbe,
    MemoryGuardDecision,
    MemoryPressureError,
    _memory_probe,
    events,
    memory_guard,
)


class DeviceMemory:
    """A GPU probe over numbers the test sets; ``cached`` is what ``empty_cache`` frees."""

    name = "test-gpu:0"

    def __init__(self, total: int, used: int, cached: int = 0) -> None:
        self.total, self.used, self.cached = total, used, cached
        self.emptied = 0

    def read(self) -> tuple[int, int]:
        return self.total - self.used, self.total

    def empty_cache(self) -> None:
        self.emptied += 1
        self.used -= self.cached
        self.cached = 0


@pytest.fixture
def tree(tmp_path: Path) -> CgroupTree:
    return limited_v2(tmp_path, limit=GiB, usage=100 * MiB)


@pytest.fixture
def decisions() -> Iterator[list[MemoryGuardDecision]]:
    seen: list[MemoryGuardDecision] = []
    with events.subscribe(seen.append, MemoryGuardDecision):
        yield seen


def test_the_injected_probe_satisfies_the_protocol() -> None:
    assert isinstance(DeviceMemory(GiB, 0), GpuProbe)


def test_gpu_under_and_over(tree: CgroupTree, decisions: list[MemoryGuardDecision]) -> None:
    device = DeviceMemory(total=16 * GiB, used=8 * GiB)

    @memory_guard(probe=tree.probe(), gpu=True, gpu_probe=device, sample_interval=0)
    def infer() -> str:
        return "ok"

    assert infer() == "ok"
    device.used = 15 * GiB  # 93.75% > 90%
    with pytest.raises(MemoryPressureError) as caught:
        infer()
    error = caught.value
    assert (error.reason, error.source) == ("gpu_max_percent", "gpu test-gpu:0")
    assert (error.used, error.limit, error.available) == (15 * GiB, 16 * GiB, GiB)
    assert "GPU memory" in str(error)
    assert "gpu_max_percent=90" in str(error)
    assert decisions[-1].action == "rejected"
    assert decisions[-1].source == "gpu test-gpu:0"


@pytest.mark.anyio
async def test_gpu_reservations(tree: CgroupTree) -> None:
    device = DeviceMemory(total=10 * GiB, used=0)
    seen: list[int] = []

    @memory_guard(
        probe=tree.probe(),
        gpu=0,
        gpu_probe=device,
        gpu_max_percent=100,
        gpu_reserve=lambda n: n * GiB,
    )
    async def infer(n: int) -> int:
        seen.append(infer.memory_guard.gpu_reserved)
        if n == 6:
            with pytest.raises(MemoryPressureError) as caught:
                await infer(5)  # 6 + 5 GiB of a 10 GiB device
            assert caught.value.reserved == 6 * GiB
        return n

    assert await infer(6) == 6
    assert seen == [6 * GiB]
    assert infer.memory_guard.gpu_reserved == 0
    assert infer.memory_guard.reserved == 0  # host memory was not reserved


def test_collect_empties_the_gpu_cache(
    tree: CgroupTree, decisions: list[MemoryGuardDecision]
) -> None:
    device = DeviceMemory(total=16 * GiB, used=15 * GiB, cached=3 * GiB)

    @memory_guard(
        probe=tree.probe(), gpu=True, gpu_probe=device, action="collect", sample_interval=0
    )
    def infer() -> str:
        return "ok"

    assert infer() == "ok"
    assert device.emptied == 1
    assert [decision.action for decision in decisions] == ["collected", "admitted"]
    assert decisions[0].freed == 3 * GiB
    assert decisions[0].source == "gpu test-gpu:0"


def test_a_failing_empty_cache_does_not_break_the_call(tree: CgroupTree) -> None:
    class Broken(DeviceMemory):
        def empty_cache(self) -> None:
            raise RuntimeError("CUDA error")

    device = Broken(total=16 * GiB, used=15 * GiB)

    @memory_guard(
        probe=tree.probe(), gpu=True, gpu_probe=device, action="collect", sample_interval=0
    )
    def infer() -> None: ...

    with pytest.raises(MemoryPressureError):
        infer()


def test_gpu_pools_are_shared_per_probe(tree: CgroupTree) -> None:
    device = DeviceMemory(total=10 * GiB, used=0)
    kwargs: dict[str, Any] = {"probe": tree.probe(), "gpu": True, "gpu_probe": device}

    @memory_guard(**kwargs, gpu_reserve="4GiB")
    def first() -> int:
        return second.memory_guard.gpu_reserved

    @memory_guard(**kwargs)
    def second() -> None: ...

    assert first() == 4 * GiB


# --- torch, NVML, neither --------------------------------------------------------------


@pytest.fixture
def fresh_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_memory_probe, "_DEFAULT_GPUS", {})


def test_neither_torch_nor_nvml_fails_at_decoration(
    fresh_defaults: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(ConfigurationError) as caught:

        @memory_guard(gpu=True)
        def infer() -> None: ...

    message = str(caught.value)
    assert message.startswith("gpu:")
    assert "torch" in message
    assert "nvidia-ml-py" in message
    assert "gpu_probe=" in message


def _stub_torch(free: int, total: int, *, available: bool = True) -> types.ModuleType:
    torch = types.ModuleType("torch")
    emptied: list[bool] = []

    class Cuda:
        @staticmethod
        def is_available() -> bool:
            return available

        @staticmethod
        def device_count() -> int:
            return 1

        @staticmethod
        def mem_get_info(device: int) -> tuple[int, int]:
            assert device == 0
            return free, total

        @staticmethod
        def empty_cache() -> None:
            emptied.append(True)

    torch.cuda = Cuda  # type: ignore[attr-defined]
    torch.emptied = emptied  # type: ignore[attr-defined]
    return torch


def test_torch_is_read_when_it_has_cuda(
    fresh_defaults: None, monkeypatch: pytest.MonkeyPatch, tree: CgroupTree
) -> None:
    torch = _stub_torch(free=GiB, total=16 * GiB)
    monkeypatch.setitem(sys.modules, "torch", torch)

    @memory_guard(probe=tree.probe(), gpu=True, action="collect", sample_interval=0)
    def infer() -> None: ...

    with pytest.raises(MemoryPressureError) as caught:
        infer()
    assert caught.value.source == "gpu cuda:0 (torch)"
    assert caught.value.used == 15 * GiB
    assert torch.emptied == [True]  # type: ignore[attr-defined]


def test_torch_with_too_few_devices(fresh_defaults: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", _stub_torch(free=GiB, total=GiB))
    with pytest.raises(ConfigurationError, match="only 1 CUDA device"):
        memory_guard(gpu=3)


def test_nvml_when_torch_has_no_cuda(
    fresh_defaults: None, monkeypatch: pytest.MonkeyPatch, tree: CgroupTree
) -> None:
    monkeypatch.setitem(sys.modules, "torch", _stub_torch(0, 0, available=False))
    nvml = types.ModuleType("pynvml")
    nvml.nvmlInit = lambda: None  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByIndex = lambda index: ("handle", index)  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(  # type: ignore[attr-defined]
        free=12 * GiB, total=16 * GiB, used=4 * GiB
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)

    @memory_guard(probe=tree.probe(), gpu=1, gpu_max_percent=20)
    def infer() -> None: ...

    with pytest.raises(MemoryPressureError) as caught:
        infer()
    assert caught.value.source == "gpu gpu:1 (nvml)"
    assert caught.value.used == 4 * GiB
