"""Where memory figures come from: the process's cgroup (v2 or v1), the host, a GPU.

``psutil.virtual_memory()`` describes the host: a pod limited to 1 GiB on a 754 GiB node
looks nearly empty to it, and the kernel kills the pod long before the host is full. So
:class:`MemoryProbe` finds the process's own cgroup through ``/proc/self/cgroup``, reads
its limit and usage and those of every ancestor (a parent's limit does not show in the
child's files), and keeps the tightest. Only where no cgroup limit applies does it fall
back to the host's figures.

Usage follows the kubelet's "working set": usage minus the inactive file cache, which the
kernel can drop on demand instead of killing anyone.

A probe also holds the ledger of bytes reserved by guarded calls in flight, so every
``@memory_guard`` that reads the same memory also shares one account of it.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import psutil

from . import _clock
from ._errors import ConfigurationError

__all__ = [
    "CGROUP_ROOT_ENV",
    "GpuProbe",
    "MemoryProbe",
    "MemorySnapshot",
    "default_gpu_probe",
    "default_probe",
]

logger = logging.getLogger("buttress.memory_guard")

#: Environment variable naming the directory where cgroup hierarchies are mounted.
CGROUP_ROOT_ENV = "BUTTRESS_CGROUP_ROOT"
_DEFAULT_ROOT = "/sys/fs/cgroup"
_DEFAULT_PROC_CGROUP = "/proc/self/cgroup"

Source = Literal["cgroup-v2", "cgroup-v1", "host"]

#: Guards the reservation ledgers of every probe. It is held for a few comparisons and
#: an addition, never across I/O or an await, so one lock for all is cheaper than many.
LEDGER_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class MemorySnapshot:
    """Memory as one reading saw it.

    Attributes:
        used: bytes in use that count against ``limit``. For a cgroup, its usage minus
            the inactive file cache (the kubelet's working set); for the host,
            ``total - available``.
        limit: the bytes ``used`` counts against: the tightest cgroup limit found (the
            lower of ``memory.max`` and ``memory.high`` in v2), or the host's total.
        available: ``limit - used`` (never negative); the host's ``available`` in host
            mode.
        percent: ``used / limit * 100``.
        rss: this process's resident set size (psutil).
        source: ``"cgroup-v2"``, ``"cgroup-v1"`` or ``"host"``.
        oom_kills: processes of this cgroup killed by the OOM killer so far (``oom_kill``
            in v2's ``memory.events``, v1's ``memory.oom_control``), or ``None`` where the
            kernel does not say.
        cgroup: the cgroup whose limit binds, as ``/proc/self/cgroup`` names it (for
            example ``"/kubepods/pod1234"``); ``None`` in host mode.
        taken_at: when the reading was taken, on buttress's monotonic clock.
    """

    used: int
    limit: int
    available: int
    percent: float
    rss: int
    source: Source
    oom_kills: int | None = None
    cgroup: str | None = None
    taken_at: float = 0.0


@dataclass(frozen=True, slots=True)
class _Level:
    directory: str  # where its files are, under the probe's root
    name: str  # the cgroup path as /proc/self/cgroup spells it


@dataclass(frozen=True, slots=True)
class _Layout:
    version: Literal[1, 2]
    levels: tuple[_Level, ...]  # the process's own cgroup first, then each ancestor


def _read(path: str) -> bytes | None:
    """The file's bytes, or ``None`` when it does not exist (a root cgroup lacks some)."""
    try:
        with open(path, "rb") as file:
            return file.read()
    except FileNotFoundError:
        return None


def _limit(raw: bytes | None) -> int | None:
    """A limit file's value: ``None`` for absent or ``max`` (no limit)."""
    if raw is None:
        return None
    text = raw.strip()
    if text == b"max":
        return None
    return int(text)


def _field(raw: bytes | None, key: bytes) -> int | None:
    """The value of ``key`` in a flat-keyed file such as ``memory.stat``."""
    if raw is None:
        return None
    for line in raw.splitlines():
        name, _, value = line.partition(b" ")
        if name == key:
            return int(value)
    return None


def _v2_mount(root: Path) -> Path | None:
    # Unified mode mounts cgroup2 at the root; hybrid mode (systemd) under "unified",
    # where the memory controller is usually not enabled.
    for candidate in (root, root / "unified"):
        raw = _read(str(candidate / "cgroup.controllers"))
        if raw is not None and b"memory" in raw.split():
            return candidate
    return None


def _v1_mount(root: Path) -> Path | None:
    memory = root / "memory"
    if memory.is_dir():
        return memory
    try:  # co-mounted controllers, such as "memory,cpu"
        for child in root.iterdir():
            if "memory" in child.name.split(",") and child.is_dir():
                return child
    except OSError:
        pass
    return None


def _levels(mount: Path, path: str) -> tuple[_Level, ...]:
    parts = [part for part in path.split("/") if part and part != ".."]
    # In a container without its own cgroup namespace, /proc/self/cgroup names the full
    # host path while the mount shows only the container's subtree; drop leading
    # components until the path exists (in the end, the mount itself is the cgroup).
    skip = 0
    while skip < len(parts) and not mount.joinpath(*parts[skip:]).is_dir():
        skip += 1
    own = parts[skip:]
    return tuple(
        _Level(str(mount.joinpath(*own[:depth])), "/" + "/".join(parts[: skip + depth]))
        for depth in range(len(own), -1, -1)
    )


def discover(root: Path, proc_cgroup: Path) -> _Layout | None:
    """The process's memory cgroup and its ancestors, or ``None`` without one."""
    try:
        text = proc_cgroup.read_text()
    except OSError:  # not Linux, or /proc not mounted
        return None
    v1_path = v2_path = None
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hierarchy, controllers, path = fields
        if hierarchy == "0" and not controllers:
            v2_path = path
        elif "memory" in controllers.split(","):
            v1_path = path
    # A v1 memory line means the memory controller is bound to v1 (hybrid systems list a
    # v2 line too, for a hierarchy without the memory controller).
    if v1_path is not None:
        mount = _v1_mount(root)
        if mount is not None:
            return _Layout(1, _levels(mount, v1_path))
    if v2_path is not None:
        mount = _v2_mount(root)
        if mount is not None:
            return _Layout(2, _levels(mount, v2_path))
    return None


class _Reading:
    """The binding level of one cgroup read: its numbers, before RSS and time are added."""

    __slots__ = ("available", "limit", "name", "used")

    def __init__(self, used: int, limit: int, available: int, name: str) -> None:
        self.used = used
        self.limit = limit
        self.available = available
        self.name = name


class MemoryProbe:
    """Reads memory for the current process: cgroup v2, cgroup v1, else the host.

    Args:
        cgroup_root: where the cgroup hierarchies are mounted. Defaults to the
            ``BUTTRESS_CGROUP_ROOT`` environment variable, else ``/sys/fs/cgroup``. Point
            it elsewhere when the host's cgroup tree is mounted at another path, or at a
            fake tree in tests.
        proc_cgroup: the file naming the process's cgroups (``/proc/self/cgroup``).

    The cgroup is found on the first reading and kept; if its files disappear or garble
    (the process was moved), it is looked up again once, and the host's figures are used
    if that fails too. A cgroup limit at least as large as the host's memory (v1 writes
    ``9223372036854771712`` for "unlimited") is treated as no limit.

    :meth:`snapshot` reuses a reading for ``max_age`` seconds; :meth:`read` always reads.
    Reading costs a few file reads per cgroup level (tens of microseconds); reusing one
    costs a clock read. Probes are safe to share between threads and event loops.
    """

    def __init__(
        self,
        cgroup_root: str | os.PathLike[str] | None = None,
        *,
        proc_cgroup: str | os.PathLike[str] = _DEFAULT_PROC_CGROUP,
    ) -> None:
        if cgroup_root is None:
            cgroup_root = os.environ.get(CGROUP_ROOT_ENV) or _DEFAULT_ROOT
        self.cgroup_root = Path(cgroup_root)
        self.proc_cgroup = Path(proc_cgroup)
        self._layout: _Layout | None = None
        self._discovered = False
        self._host_total: int | None = None
        self._process: psutil.Process | None = None
        self._pid = 0
        self._failed = False
        #: The latest reading; replaced whole, so readers never see half of one.
        self.last: MemorySnapshot | None = None
        #: Bytes reserved by guarded calls in flight (changed under ``LEDGER_LOCK``).
        self.reserved = 0
        #: When the last ``gc.collect()`` on behalf of this probe's guards ended.
        self.last_collection = float("-inf")
        _PROBES.add(self)

    def __repr__(self) -> str:
        return f"MemoryProbe(cgroup_root={str(self.cgroup_root)!r}, source={self.source!r})"

    # -- where the figures come from --------------------------------------------------

    def _find(self) -> _Layout | None:
        if not self._discovered:
            self._layout = discover(self.cgroup_root, self.proc_cgroup)
            self._discovered = True
        return self._layout

    @property
    def cgroup_version(self) -> Literal[1, 2] | None:
        """1 or 2 when the process's memory cgroup was found under the root, else ``None``."""
        layout = self._find()
        return None if layout is None else layout.version

    @property
    def cgroup_directory(self) -> Path | None:
        """The directory of the process's own memory cgroup, or ``None``."""
        layout = self._find()
        return None if layout is None else Path(layout.levels[0].directory)

    @property
    def source(self) -> Source:
        """Where the latest reading came from (``"host"`` before any reading)."""
        last = self.last
        return "host" if last is None else last.source

    # -- reading ----------------------------------------------------------------------

    def snapshot(self, max_age: float = 0.0) -> MemorySnapshot:
        """The latest reading if it is at most ``max_age`` seconds old, else a new one."""
        last = self.last
        if last is not None and 0.0 <= _clock.monotonic() - last.taken_at <= max_age:
            return last
        return self.read()

    def read(self) -> MemorySnapshot:
        """Read memory now."""
        layout = self._find()
        reading: _Reading | None = None
        oom_kills: int | None = None
        source: Source = "host"
        if layout is not None and not self._failed:
            try:
                reading, oom_kills = self._read_cgroup(layout)
            except (OSError, ValueError):
                # Moved to another cgroup, or a file read half-written: look again once.
                self._layout = layout = discover(self.cgroup_root, self.proc_cgroup)
                try:
                    if layout is not None:
                        reading, oom_kills = self._read_cgroup(layout)
                except (OSError, ValueError):
                    self._failed = True
                    logger.warning(
                        "buttress.memory_guard: cannot read the memory cgroup under %s; "
                        "using the host's figures from now on",
                        self.cgroup_root,
                        exc_info=True,
                    )
            if reading is not None and layout is not None:
                source = "cgroup-v2" if layout.version == 2 else "cgroup-v1"
        rss = self._rss()
        if reading is None:
            host = psutil.virtual_memory()
            used = host.total - host.available
            snapshot = MemorySnapshot(
                used=used,
                limit=host.total,
                available=host.available,
                percent=100.0 * used / host.total if host.total else 0.0,
                rss=rss,
                source="host",
                oom_kills=oom_kills,
                cgroup=None,
                taken_at=_clock.monotonic(),
            )
        else:
            snapshot = MemorySnapshot(
                used=reading.used,
                limit=reading.limit,
                available=reading.available,
                percent=100.0 * reading.used / reading.limit if reading.limit else 100.0,
                rss=rss,
                source=source,
                oom_kills=oom_kills,
                cgroup=reading.name,
                taken_at=_clock.monotonic(),
            )
        self.last = snapshot
        return snapshot

    def _host_limit(self) -> int:
        if self._host_total is None:
            self._host_total = psutil.virtual_memory().total
        return self._host_total

    def _read_cgroup(self, layout: _Layout) -> tuple[_Reading | None, int | None]:
        """The level with the least room left, and the OOM-kill count of our own cgroup."""
        ceiling = self._host_limit()
        best: _Reading | None = None
        v2 = layout.version == 2
        for index, level in enumerate(layout.levels):
            base = level.directory + "/memory."
            usage_file = base + ("current" if v2 else "usage_in_bytes")
            if index == 0 and not os.path.isdir(level.directory):
                # Our cgroup is gone: the process was moved. (A missing file alone is no
                # sign: a root cgroup, or one without the memory controller, lacks some.)
                raise FileNotFoundError(level.directory)
            if v2:
                hard = _limit(_read(base + "max"))
                high = _limit(_read(base + "high"))
                limits = [value for value in (hard, high) if value is not None]
                limit = min(limits) if limits else None
            else:
                limit = _limit(_read(base + "limit_in_bytes"))
            if limit is None or limit >= ceiling:
                continue
            usage = _limit(_read(usage_file))
            if usage is None:
                continue
            stat = _read(base + "stat")
            inactive = _field(stat, b"inactive_file" if v2 else b"total_inactive_file")
            if inactive is None and not v2:
                inactive = _field(stat, b"inactive_file")
            used = max(0, usage - (inactive or 0))
            available = max(0, limit - used)
            if best is None or available < best.available:
                best = _Reading(used, limit, available, level.name)
        own = layout.levels[0].directory + ("/memory.events" if v2 else "/memory.oom_control")
        return best, _field(_read(own), b"oom_kill")

    def _rss(self) -> int:
        pid = os.getpid()
        if self._process is None or self._pid != pid:  # first use, or a forked child
            self._process = psutil.Process(pid)
            self._pid = pid
        try:
            return int(self._process.memory_info().rss)
        except psutil.Error:
            return 0


# -- GPU ------------------------------------------------------------------------------


@runtime_checkable
class GpuProbe(Protocol):
    """Where ``@memory_guard(gpu=...)`` reads device memory from.

    buttress provides one for PyTorch (``torch.cuda.mem_get_info``) and one for NVML
    (``nvidia-ml-py``); pass your own as ``gpu_probe=`` for other runtimes or in tests.
    """

    @property
    def name(self) -> str:
        """A short label for errors and events, such as ``"cuda:0"``."""
        ...

    def read(self) -> tuple[int, int]:
        """``(free, total)`` bytes of device memory now."""
        ...

    def empty_cache(self) -> None:
        """Give cached, unused device memory back (``action="collect"``); may do nothing."""
        ...


class _TorchGpu:
    def __init__(self, torch: Any, device: int) -> None:
        self._torch = torch
        self.device = device
        self.name = f"cuda:{device} (torch)"

    def read(self) -> tuple[int, int]:
        free, total = self._torch.cuda.mem_get_info(self.device)
        return int(free), int(total)

    def empty_cache(self) -> None:
        self._torch.cuda.empty_cache()


class _NvmlGpu:
    def __init__(self, nvml: Any, device: int) -> None:
        self._nvml = nvml
        self._handle = nvml.nvmlDeviceGetHandleByIndex(device)
        self.device = device
        self.name = f"gpu:{device} (nvml)"

    def read(self) -> tuple[int, int]:
        info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        return int(info.free), int(info.total)

    def empty_cache(self) -> None:
        # NVML only observes. If PyTorch is in use, its allocator cache is what can go.
        torch = sys.modules.get("torch")
        if torch is not None:
            try:
                if torch.cuda.is_initialized():
                    torch.cuda.empty_cache()
            except Exception:  # a broken CUDA runtime must not break the guarded call
                logger.debug("torch.cuda.empty_cache() failed", exc_info=True)


_DEFAULT_GPUS: dict[int, GpuProbe] = {}


def default_gpu_probe(device: int) -> GpuProbe:
    """PyTorch's view of ``device`` if torch with CUDA is importable, else NVML's.

    Raises:
        ConfigurationError: neither is usable; the message says why for each.
    """
    known = _DEFAULT_GPUS.get(device)
    if known is not None:
        return known
    reasons: list[str] = []
    probe: GpuProbe | None = None
    try:
        has_torch = (
            sys.modules.get("torch") is not None or importlib.util.find_spec("torch") is not None
        )
    except (ImportError, ValueError):  # a broken or blocked installation
        has_torch = False
    if has_torch:
        try:
            torch = importlib.import_module("torch")
            if torch.cuda.is_available():
                count = int(torch.cuda.device_count())
                if device >= count:
                    raise ConfigurationError(
                        f"gpu={device}: torch sees only {count} CUDA device(s)"
                    )
                probe = _TorchGpu(torch, device)
            else:
                reasons.append("torch is installed but torch.cuda.is_available() is False")
        except ConfigurationError:
            raise
        except Exception as exc:
            reasons.append(f"importing torch failed ({exc!r})")
    else:
        reasons.append("torch is not installed")
    if probe is None:
        try:
            nvml = importlib.import_module("pynvml")
            nvml.nvmlInit()
            probe = _NvmlGpu(nvml, device)
        except ImportError:
            reasons.append("nvidia-ml-py (pynvml) is not installed")
        except Exception as exc:
            reasons.append(f"NVML failed ({exc!r})")
    if probe is None:
        raise ConfigurationError(
            "gpu: @memory_guard cannot read GPU memory: "
            + "; ".join(reasons)
            + ". Install PyTorch with CUDA or nvidia-ml-py (pip install 'buttress[gpu]'), "
            "pass gpu_probe=, or drop gpu=."
        )
    return _DEFAULT_GPUS.setdefault(device, probe)


@dataclass(frozen=True, slots=True)
class GpuReading:
    """Device memory as one reading saw it (internal; the numbers of a GPU rejection)."""

    used: int
    limit: int
    available: int
    percent: float
    source: str
    taken_at: float


class GpuPool:
    """A GPU probe's cached reading and its ledger of reserved bytes (one per probe)."""

    __slots__ = ("__weakref__", "last", "probe", "reserved")

    def __init__(self, probe: GpuProbe) -> None:
        self.probe = probe
        self.last: GpuReading | None = None
        self.reserved = 0
        _PROBES.add(self)

    def snapshot(self, max_age: float) -> GpuReading:
        last = self.last
        if last is not None and 0.0 <= _clock.monotonic() - last.taken_at <= max_age:
            return last
        return self.read()

    def read(self) -> GpuReading:
        free, total = self.probe.read()
        used = max(0, total - free)
        reading = GpuReading(
            used=used,
            limit=total,
            available=max(0, free),
            percent=100.0 * used / total if total else 100.0,
            source=f"gpu {self.probe.name}",
            taken_at=_clock.monotonic(),
        )
        self.last = reading
        return reading


_GPU_POOLS: dict[int, tuple[GpuProbe, GpuPool]] = {}
_POOLS_LOCK = threading.Lock()


def gpu_pool(probe: GpuProbe) -> GpuPool:
    """The one pool of ``probe``, so guards sharing a device share its ledger."""
    with _POOLS_LOCK:
        # Keyed by identity; the entry keeps the probe alive, so the id is never reused.
        entry = _GPU_POOLS.get(id(probe))
        if entry is None:
            entry = _GPU_POOLS[id(probe)] = (probe, GpuPool(probe))
        return entry[1]


_DEFAULT_PROBES: dict[str, MemoryProbe] = {}


def default_probe() -> MemoryProbe:
    """The process-wide probe for the current ``BUTTRESS_CGROUP_ROOT`` (or the default root)."""
    root = os.environ.get(CGROUP_ROOT_ENV) or _DEFAULT_ROOT
    probe = _DEFAULT_PROBES.get(root)
    if probe is None:
        with _POOLS_LOCK:
            probe = _DEFAULT_PROBES.get(root)
            if probe is None:
                probe = _DEFAULT_PROBES[root] = MemoryProbe(root)
    return probe


#: Every probe and pool, so a forked child starts with empty ledgers: the calls whose
#: reservations the parent counted are not running in the child.
_PROBES: weakref.WeakSet[MemoryProbe | GpuPool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global LEDGER_LOCK
    LEDGER_LOCK = threading.Lock()
    for probe in list(_PROBES):
        probe.reserved = 0
        probe.last = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
