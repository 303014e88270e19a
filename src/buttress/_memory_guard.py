"""@memory_guard: admit a call only when memory has room for it.

:class:`MemoryGuard` holds one decorator's compiled settings and makes every decision as
plain code: whether a call fits (:meth:`MemoryGuard.try_admit`, a check and a reservation
under a lock held for nanoseconds) and, when it does not, what the action does
(:meth:`MemoryGuard.resolve`, a generator that yields the seconds to wait). The two
shells at the bottom only sleep (``time`` or anyio), call and release.

The figures come from a :class:`~buttress._memory_probe.MemoryProbe` (the process's cgroup,
else the host) and, with ``gpu=``, a GPU probe; a reading is reused for
``sample_interval`` seconds, so an admitted call costs a clock read and a few
comparisons, not a trip to ``/sys``.

The same guard decorates (``guard = memory_guard(...)``, then ``@guard``), admits a
block (``with guard.admit(reserve="2GiB"):``, or ``async with``), and holds a decorated
stream's reservation from its first item asked for to its end, however it ends.
"""

from __future__ import annotations

import gc
import logging
import math
import operator
import os
from collections.abc import Awaitable, Callable, Generator
from datetime import timedelta
from types import TracebackType
from typing import Any, Concatenate, Literal, ParamSpec, Protocol, TypeVar, overload

from . import _clock, _memory_probe, _settings
from ._blocks import caller_name
from ._declare import Decorate, declare
from ._errors import ConfigurationError, MemoryPressureError
from ._events import MemoryGuardDecision, events
from ._memory_probe import (
    GpuPool,
    GpuProbe,
    GpuReading,
    MemoryProbe,
    MemorySnapshot,
    default_gpu_probe,
    default_probe,
    gpu_pool,
)
from ._streams import Holding, Session, async_stream_shell, sync_stream_shell
from ._wrapping import WrapperFactory, stack_name, wrap

__all__ = [
    "Action",
    "MemoryAdmission",
    "MemoryGuard",
    "MemoryGuarded",
    "memory_guard",
    "memory_snapshot",
]

P = ParamSpec("P")
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
_P2 = ParamSpec("_P2")
_T2 = TypeVar("_T2")
Q = ParamSpec("Q")

Action = Literal["raise", "collect", "wait", "warn"]
_ACTIONS: tuple[Action, ...] = ("raise", "collect", "wait", "warn")

#: A reservation: bytes (an int or a size such as ``"512MiB"``), or a callable of the
#: call's arguments returning bytes.
Reserve = int | str | Callable[..., int] | None

logger = logging.getLogger("buttress.memory_guard")

#: At most one warning log record per guard in this many seconds (``action="warn"``).
_WARN_EVERY = 1.0


def memory_snapshot(*, cgroup_root: str | os.PathLike[str] | None = None) -> MemorySnapshot:
    """Read memory now: the container's if it has a limit, else the host's.

    Args:
        cgroup_root: where cgroup hierarchies are mounted; defaults to
            ``BUTTRESS_CGROUP_ROOT``, else ``/sys/fs/cgroup``.

    Returns a frozen :class:`MemorySnapshot` (used, limit, available, percent, rss,
    source, oom_kills, cgroup). Each call reads afresh (tens of microseconds).
    """
    probe = default_probe() if cgroup_root is None else MemoryProbe(cgroup_root)
    return probe.read()


def _size(value: float) -> str:
    """Bytes for people: ``"1.5 GiB"``, ``"900 MiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


class _Refusal:
    """Why one call does not fit, with the figures of the threshold it crossed.

    For ``max_rss`` the figures are the process's RSS against ``max_rss``; for
    ``gpu_max_percent`` the device's; otherwise the memory limit's.
    """

    __slots__ = (
        "available",
        "detail",
        "limit",
        "percent",
        "reason",
        "requested",
        "reserved",
        "source",
        "used",
    )

    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        used: int,
        limit: int,
        source: str,
        where: str | None,
        requested: int,
        reserved: int,
    ) -> None:
        self.reason = reason
        self.used = used
        self.limit = limit
        self.available = max(0, limit - used)
        self.percent = 100.0 * used / limit if limit else 100.0
        self.source = source
        self.detail = f"{detail} [{source} {where}]" if where else f"{detail} [{source}]"
        self.requested = requested
        self.reserved = reserved

    def error(self, function: str, waited: float = 0.0) -> MemoryPressureError:
        message = f"@memory_guard refused {function}(): {self.detail}"
        if waited:
            message += f"; still so after waiting {waited:.3g}s"
        return MemoryPressureError(
            message,
            used=self.used,
            limit=self.limit,
            available=self.available,
            percent=self.percent,
            source=self.source,
            reason=self.reason,
            requested=self.requested,
            reserved=self.reserved,
            waited=waited,
            function=function,
        )


def _bytes(value: object, name: str) -> int:
    """A reservation a callable returned: a non-negative integer (numpy ints welcome)."""
    try:
        result = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"@memory_guard: {name} must return a number of bytes, got {value!r}"
        ) from None
    if result < 0:
        raise ValueError(f"@memory_guard: {name} returned {result}, a negative number of bytes")
    return result


class MemoryGuard:
    """The settings and decisions of one ``@memory_guard``; the wrapper's ``memory_guard``.

    Read it to see what a guard does (``fn.memory_guard.max_percent``), what it sees
    (:meth:`snapshot`) and what is reserved (:attr:`reserved`). Its attributes are
    settings: change them only by decorating again. Its constructor declares
    ``@memory_guard``'s settings (see :func:`memory_guard` for what each means).
    Calling it decorates a function with this guard; :meth:`admit` admits a block.
    """

    __slots__ = (
        "_suppressed",
        "_warned_at",
        "action",
        "gpu",
        "gpu_max_percent",
        "gpu_pool",
        "gpu_reserve",
        "max_percent",
        "max_rss",
        "min_available",
        "poll_interval",
        "probe",
        "reserve",
        "sample_interval",
        "sized",
        "wait_timeout",
    )

    def __init__(
        self,
        *,
        max_percent: float = 85.0,
        min_available: int | str | None = None,
        max_rss: int | str | None = None,
        action: Action = "raise",
        wait_timeout: float | timedelta = 10.0,
        poll_interval: float | timedelta = 0.05,
        reserve: Reserve = None,
        gpu: bool | int = False,
        gpu_max_percent: float = 90.0,
        sample_interval: float | timedelta = 0.05,
        gpu_reserve: Reserve = None,
        probe: MemoryProbe | None = None,
        gpu_probe: GpuProbe | None = None,
    ) -> None:
        self.max_percent = self._percent(max_percent, "max_percent")
        self.min_available = (
            None if min_available is None else _settings.byte_size(min_available, "min_available")
        )
        self.max_rss = None if max_rss is None else _settings.byte_size(max_rss, "max_rss")
        if self.max_rss == 0:
            raise ConfigurationError("max_rss must be more than 0 bytes")
        self.action: Action = _settings.choice(action, "action", _ACTIONS)
        self.wait_timeout = _settings.seconds(wait_timeout, "wait_timeout")
        self.poll_interval = _settings.seconds(poll_interval, "poll_interval", allow_zero=False)
        self.sample_interval = _settings.seconds(sample_interval, "sample_interval")
        self.reserve = self._reservation(reserve, "reserve")
        self.gpu_reserve = self._reservation(gpu_reserve, "gpu_reserve")
        self.sized = bool(self.reserve) or bool(self.gpu_reserve)
        if probe is not None and not isinstance(probe, MemoryProbe):
            raise ConfigurationError(f"probe must be a MemoryProbe, got {probe!r}")
        self.probe = default_probe() if probe is None else probe

        if isinstance(gpu, bool):
            device: int | None = 0 if gpu else None
        elif isinstance(gpu, int) and gpu >= 0:
            device = gpu
        else:
            raise ConfigurationError(
                f"gpu must be True, False or a device index (an int >= 0), got {gpu!r}"
            )
        self.gpu = device
        self.gpu_max_percent = self._percent(gpu_max_percent, "gpu_max_percent")
        if device is None:
            if gpu_probe is not None:
                raise ConfigurationError("gpu_probe is given but gpu=False; pass gpu=True too")
            if self.gpu_reserve:
                raise ConfigurationError("gpu_reserve needs gpu=True")
            self.gpu_pool: GpuPool | None = None
        else:
            if gpu_probe is not None and not isinstance(gpu_probe, GpuProbe):
                raise ConfigurationError(
                    f"gpu_probe must have name, read() and empty_cache(), got {gpu_probe!r}"
                )
            chosen = default_gpu_probe(device) if gpu_probe is None else gpu_probe
            self.gpu_pool = gpu_pool(chosen)
        self._warned_at = -math.inf
        self._suppressed = 0

    def __repr__(self) -> str:
        return (
            f"MemoryGuard(max_percent={self.max_percent:g}, action={self.action!r}, "
            f"probe={self.probe!r})"
        )

    @staticmethod
    def _percent(value: object, name: str) -> float:
        result = _settings.number(value, name)
        if not 0 < result <= 100:
            raise ConfigurationError(f"{name} must be in (0, 100], got {value!r}")
        return result

    @staticmethod
    def _reservation(value: object, name: str) -> int | Callable[..., Any]:
        if value is None:
            return 0
        if isinstance(value, (int, str)):
            return _settings.byte_size(value, name)
        if callable(value):
            return value
        raise ConfigurationError(
            f"{name} must be bytes (an int or a size such as '512MiB') or a callable of the "
            f"call's arguments returning bytes, got {value!r}"
        )

    def __call__(self, fn: Callable[P, T], /) -> MemoryGuarded[P, T]:
        """Decorate ``fn``: each call (or each stream's life) is admitted by this guard."""
        return wrap(  # type: ignore[no-any-return]
            fn,
            "memory_guard",
            sync=_sync_shell(self),
            async_=_async_shell(self),
            stream=_sync_stream_shell(self),
            astream=_async_stream_shell(self),
            attributes={"memory_guard": self},
        )

    def admit(
        self, reserve: int | str | None = None, *, gpu_reserve: int | str | None = None
    ) -> MemoryAdmission:
        """Admit a block of code as a call: ``with guard.admit(reserve="2GiB"): ...``.

        Entering applies the guard's thresholds and ``action`` (``async with`` sleeps with
        anyio while ``action="wait"`` waits, ``with`` sleeps the thread) and reserves the
        bytes until the block ends, however it ends. Events and errors are named after
        the function the block is in.

        Args:
            reserve: bytes the block will allocate (an int or a size such as
                ``"512MiB"``); the guard's own ``reserve`` when it is a fixed size,
                else nothing.
            gpu_reserve: the same in device memory (needs ``gpu=``).

        Raises:
            ConfigurationError: for a size that cannot work.
            MemoryPressureError: on entering, when the block is refused.
        """
        own = self.reserve if reserve is None else _settings.byte_size(reserve, "reserve")
        gpu_own = (
            self.gpu_reserve
            if gpu_reserve is None
            else _settings.byte_size(gpu_reserve, "gpu_reserve")
        )
        if gpu_own and self.gpu_pool is None:
            raise ConfigurationError("gpu_reserve needs a guard with gpu=True")
        return MemoryAdmission(
            self,
            own if isinstance(own, int) else 0,
            gpu_own if isinstance(gpu_own, int) else 0,
        )

    # -- what is visible --------------------------------------------------------------

    def snapshot(self) -> MemorySnapshot:
        """Read memory now, through this guard's probe."""
        return self.probe.read()

    @property
    def reserved(self) -> int:
        """Bytes reserved by calls in flight, across every guard sharing this probe."""
        return self.probe.reserved

    @property
    def gpu_reserved(self) -> int:
        """GPU bytes reserved by calls in flight (0 without ``gpu=``)."""
        return 0 if self.gpu_pool is None else self.gpu_pool.reserved

    # -- decisions --------------------------------------------------------------------

    def amounts(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, int]:
        """The bytes one call reserves: ``(memory, gpu)``."""
        reserve, gpu_reserve = self.reserve, self.gpu_reserve
        if not isinstance(reserve, int):
            reserve = _bytes(reserve(*args, **kwargs), "reserve")
        if not isinstance(gpu_reserve, int):
            gpu_reserve = _bytes(gpu_reserve(*args, **kwargs), "gpu_reserve")
        return reserve, gpu_reserve

    def try_admit(self, own: int, gpu_own: int, fresh: bool = False) -> _Refusal | None:
        """Admit a call needing ``own`` (and ``gpu_own``) bytes and reserve them; or say why not.

        With ``fresh``, read memory now instead of reusing a reading younger than
        ``sample_interval``.
        """
        probe, pool = self.probe, self.gpu_pool
        snap = probe.read() if fresh else probe.snapshot(self.sample_interval)
        gpu: GpuReading | None = None
        if pool is not None:
            gpu = pool.read() if fresh else pool.snapshot(self.sample_interval)
        if not own and not gpu_own:
            # Nothing to reserve: reading the ledgers needs no lock.
            in_flight, gpu_in_flight = probe.reserved, 0 if pool is None else pool.reserved
            reason = self._verdict(snap, gpu, 0, 0, in_flight, gpu_in_flight)
        else:
            # Check and reserve in one step, so concurrent calls cannot all see the same
            # room; only comparisons happen under the lock.
            with _memory_probe.LEDGER_LOCK:
                in_flight, gpu_in_flight = probe.reserved, 0 if pool is None else pool.reserved
                reason = self._verdict(snap, gpu, own, gpu_own, in_flight, gpu_in_flight)
                if reason is None:
                    probe.reserved = in_flight + own
                    if pool is not None:
                        pool.reserved = gpu_in_flight + gpu_own
        if reason is None:
            return None
        return self._explain(reason, snap, gpu, own, gpu_own, in_flight, gpu_in_flight)

    def _verdict(
        self,
        snap: MemorySnapshot,
        gpu: GpuReading | None,
        own: int,
        gpu_own: int,
        in_flight: int,
        gpu_in_flight: int,
    ) -> str | None:
        """The threshold a call would cross, or ``None`` when it fits. Comparisons only."""
        claimed = in_flight + own
        if (snap.used + claimed) * 100.0 > self.max_percent * snap.limit:
            return "max_percent"
        if self.min_available is not None and snap.available - claimed < self.min_available:
            return "min_available"
        if self.max_rss is not None and snap.rss + claimed > self.max_rss:
            return "max_rss"
        if gpu is not None and (
            (gpu.used + gpu_in_flight + gpu_own) * 100.0 > self.gpu_max_percent * gpu.limit
        ):
            return "gpu_max_percent"
        return None

    def _explain(
        self,
        reason: str,
        snap: MemorySnapshot,
        gpu: GpuReading | None,
        own: int,
        gpu_own: int,
        in_flight: int,
        gpu_in_flight: int,
    ) -> _Refusal:
        """The refusal for ``reason``, with its figures and a sentence saying it."""
        claimed = in_flight + own
        held = f"{_size(in_flight)} reserved by calls in flight and {_size(own)} requested"
        if reason == "gpu_max_percent":
            assert gpu is not None
            total = gpu.used + gpu_in_flight + gpu_own
            projected = 100.0 * total / gpu.limit if gpu.limit else math.inf
            return _Refusal(
                reason,
                f"{_size(gpu.used)} of {_size(gpu.limit)} GPU memory in use "
                f"({gpu.percent:.1f}%); with {_size(gpu_in_flight)} reserved by calls in "
                f"flight and {_size(gpu_own)} requested that is {projected:.1f}%, over "
                f"gpu_max_percent={self.gpu_max_percent:g}",
                used=gpu.used,
                limit=gpu.limit,
                source=gpu.source,
                where=None,
                requested=gpu_own,
                reserved=gpu_in_flight,
            )
        used, limit = snap.used, snap.limit
        if reason == "max_percent":
            projected = 100.0 * (used + claimed) / limit if limit else math.inf
            detail = (
                f"{_size(used)} used of the {_size(limit)} limit ({snap.percent:.1f}%); "
                f"with {held} that is {projected:.1f}%, over max_percent={self.max_percent:g}"
            )
        elif reason == "min_available":
            detail = (
                f"{_size(snap.available)} available of the {_size(limit)} limit; {held} "
                f"would leave {_size(snap.available - claimed)}, under "
                f"min_available={_size(self.min_available or 0)}"
            )
        else:  # max_rss: the figures are the process's RSS against its ceiling
            used, limit = snap.rss, self.max_rss or 0
            detail = (
                f"this process's RSS is {_size(used)}; with {held} that is over "
                f"max_rss={_size(limit)}"
            )
        return _Refusal(
            reason,
            detail,
            used=used,
            limit=limit,
            source=snap.source,
            where=snap.cgroup,
            requested=own,
            reserved=in_flight,
        )

    def force(self, own: int, gpu_own: int) -> None:
        """Reserve without checking (``action="warn"`` runs the call regardless)."""
        with _memory_probe.LEDGER_LOCK:
            self.probe.reserved += own
            if self.gpu_pool is not None:
                self.gpu_pool.reserved += gpu_own

    def release(self, own: int, gpu_own: int) -> None:
        """Give back what one admitted call reserved, whatever its outcome."""
        with _memory_probe.LEDGER_LOCK:
            self.probe.reserved -= own
            if self.gpu_pool is not None:
                self.gpu_pool.reserved -= gpu_own

    def resolve(
        self, function: str, own: int, gpu_own: int, refusal: _Refusal
    ) -> Generator[float, None, None]:
        """Carry out the action for a call that does not fit.

        Yields the seconds the shell must sleep (``action="wait"`` only) and returns once
        the call is admitted and its bytes reserved; raises :class:`MemoryPressureError`
        when it is not admitted.
        """
        action = self.action
        if action == "warn":
            self.force(own, gpu_own)
            self._warn(function, refusal)
            self._emit(function, "warned", refusal, reason=refusal.reason, requested=own)
            return
        if action == "collect":
            freed, collected = self._collect(refusal)
            retry = self.try_admit(own, gpu_own, fresh=True)
            figures = self._figures(refusal)
            if collected:
                self._emit(function, "collected", figures, freed=freed, requested=own)
            if retry is None:
                self._emit(function, "admitted", figures, requested=own)
                return
            self._emit(function, "rejected", retry, reason=retry.reason, requested=own)
            raise retry.error(function)
        if action == "wait":
            start = _clock.monotonic()
            slept = 0.0
            while True:
                waited = max(_clock.monotonic() - start, slept)
                # Counting what was slept too ends the wait under a clock that stands still.
                if waited >= self.wait_timeout:
                    break
                delay = min(self.poll_interval, self.wait_timeout - waited)
                yield delay
                slept += delay
                retry = self.try_admit(own, gpu_own, fresh=True)
                if retry is None:
                    waited = max(_clock.monotonic() - start, slept)
                    figures = self._figures(refusal)
                    self._emit(function, "waited", figures, waited=waited, requested=own)
                    self._emit(function, "admitted", figures, waited=waited, requested=own)
                    return
                refusal = retry
            self._emit(
                function, "waited", refusal, waited=waited, reason=refusal.reason, requested=own
            )
            self._emit(
                function, "rejected", refusal, waited=waited, reason=refusal.reason, requested=own
            )
            raise refusal.error(function, waited)
        self._emit(function, "rejected", refusal, reason=refusal.reason, requested=own)
        raise refusal.error(function)

    def _figures(self, refusal: _Refusal) -> MemorySnapshot | GpuReading | _Refusal:
        """The latest reading of the resource that refused (for events after a re-read)."""
        if refusal.reason == "gpu_max_percent":
            pool = self.gpu_pool
            return pool.last if pool is not None and pool.last is not None else refusal
        return self.probe.last or refusal

    def _measure(self, reason: str) -> int:
        """Read again the quantity a refusal for ``reason`` was about."""
        if reason == "gpu_max_percent" and self.gpu_pool is not None:
            return self.gpu_pool.read().used
        snap = self.probe.read()
        return snap.rss if reason == "max_rss" else snap.used

    def _collect(self, refusal: _Refusal) -> tuple[int, bool]:
        """Run the garbage collector (and empty the GPU cache): ``(freed bytes, ran)``.

        Many calls refused at once would each collect; one collection per
        ``sample_interval`` is enough, the others only read memory again.
        """
        probe = self.probe
        since = _clock.monotonic() - probe.last_collection
        if 0.0 <= since < self.sample_interval:
            return 0, False
        gc.collect()
        pool = self.gpu_pool
        if pool is not None:
            try:
                pool.probe.empty_cache()
            except Exception:  # a failing allocator hook must not break the guarded call
                logger.warning("emptying the GPU cache failed", exc_info=True)
        probe.last_collection = _clock.monotonic()
        return max(0, refusal.used - self._measure(refusal.reason)), True

    def _warn(self, function: str, refusal: _Refusal) -> None:
        # Under sustained pressure every call is over; one record a second tells as much
        # as a thousand, and the events still report each call.
        now = _clock.monotonic()
        if 0.0 <= now - self._warned_at < _WARN_EVERY:
            self._suppressed += 1
            return
        suppressed, self._suppressed, self._warned_at = self._suppressed, 0, now
        more = f" ({suppressed} similar warnings suppressed)" if suppressed else ""
        logger.warning(
            "@memory_guard running %s() anyway (action='warn'): %s%s",
            function,
            refusal.detail,
            more,
        )

    def admitted(self, function: str, own: int) -> None:
        """Report an admission on the fast path (only called while someone listens)."""
        last = self.probe.last
        if last is not None:
            self._emit(function, "admitted", last, requested=own)

    @staticmethod
    def _emit(
        function: str,
        action: Literal["admitted", "rejected", "waited", "collected", "warned"],
        figures: MemorySnapshot | GpuReading | _Refusal,
        *,
        waited: float = 0.0,
        freed: int = 0,
        reason: str | None = None,
        requested: int = 0,
    ) -> None:
        if events.active:
            events.emit(
                MemoryGuardDecision(
                    function=function,
                    action=action,
                    used=figures.used,
                    limit=figures.limit,
                    percent=figures.percent,
                    source=figures.source,
                    waited=waited,
                    freed=freed,
                    reason=reason,
                    requested=requested,
                )
            )


class MemoryAdmission:
    """One block admitted by a :class:`MemoryGuard` (:meth:`MemoryGuard.admit`).

    Enter it once, with ``with`` or ``async with``; the reservation is released when the
    block ends.

    Attributes:
        reserve: bytes reserved for the block.
        gpu_reserve: device bytes reserved for the block.
    """

    __slots__ = ("_entered", "gpu_reserve", "guard", "reserve")

    def __init__(self, guard: MemoryGuard, reserve: int, gpu_reserve: int) -> None:
        self.guard = guard
        self.reserve = reserve
        self.gpu_reserve = gpu_reserve
        self._entered = False

    def __repr__(self) -> str:
        return f"<MemoryAdmission of {_size(self.reserve)} by {self.guard!r}>"

    def _start(self) -> _Refusal | None:
        if self._entered:
            raise RuntimeError("a memory admission is entered once; call admit() again")
        self._entered = True
        return self.guard.try_admit(self.reserve, self.gpu_reserve)

    def __enter__(self) -> MemoryAdmission:
        name = caller_name()
        refusal = self._start()
        guard = self.guard
        if refusal is not None:
            for delay in guard.resolve(name, self.reserve, self.gpu_reserve, refusal):
                _clock.sync_sleep(delay, guard, name, "memory_guard")
        elif events.active:
            guard.admitted(name, self.reserve)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.guard.release(self.reserve, self.gpu_reserve)

    async def __aenter__(self) -> MemoryAdmission:
        name = caller_name()
        refusal = self._start()
        guard = self.guard
        if refusal is not None:
            for delay in guard.resolve(name, self.reserve, self.gpu_reserve, refusal):
                await _clock.async_sleep(delay)
        elif events.active:
            guard.admitted(name, self.reserve)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.guard.release(self.reserve, self.gpu_reserve)


class MemoryGuarded(Protocol[P, T_co]):
    """A function wrapped by ``@memory_guard``: callable as before, plus its guard.

    Type checkers see the original parameters and return type, and the ``memory_guard``
    handle; on a method, the bound call drops ``self`` as usual.
    """

    memory_guard: MemoryGuard

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T_co: ...

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> MemoryGuarded[P, T_co]: ...

    @overload
    def __get__(
        self: MemoryGuarded[Concatenate[Any, _P2], _T2],
        instance: object,
        owner: type[Any] | None = None,
    ) -> MemoryGuarded[_P2, _T2]: ...

    def __get__(self, instance: object, owner: type[Any] | None = None) -> Any: ...


_NOTHING = (0, 0)


def _sync_shell(guard: MemoryGuard) -> WrapperFactory:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        stack = stack_name(fn)
        sized = guard.sized
        try_admit, release = guard.try_admit, guard.release

        def memory_guard_wrapper(*args: Any, **kwargs: Any) -> Any:
            own, gpu_own = guard.amounts(args, kwargs) if sized else _NOTHING
            refusal = try_admit(own, gpu_own)
            if refusal is not None:
                for delay in guard.resolve(stack.value, own, gpu_own, refusal):
                    _clock.sync_sleep(delay, guard, stack.value, "memory_guard")
            elif events.active:
                guard.admitted(stack.value, own)
            if not (own or gpu_own):
                return fn(*args, **kwargs)
            try:
                return fn(*args, **kwargs)
            finally:
                release(own, gpu_own)

        return memory_guard_wrapper

    return build


def _async_shell(guard: MemoryGuard) -> WrapperFactory:
    def build(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        stack = stack_name(fn)
        sized = guard.sized
        try_admit, release = guard.try_admit, guard.release

        async def memory_guard_wrapper(*args: Any, **kwargs: Any) -> Any:
            own, gpu_own = guard.amounts(args, kwargs) if sized else _NOTHING
            refusal = try_admit(own, gpu_own)
            if refusal is not None:
                # Cancelled while sleeping here, the call holds nothing yet: the generator
                # reserves only in the step that ends it.
                for delay in guard.resolve(stack.value, own, gpu_own, refusal):
                    await _clock.async_sleep(delay)
            elif events.active:
                guard.admitted(stack.value, own)
            if not (own or gpu_own):
                return await fn(*args, **kwargs)
            try:
                return await fn(*args, **kwargs)
            finally:
                release(own, gpu_own)

        return memory_guard_wrapper

    return build


# A stream holds its reservation from its first item asked for to its end.

#: The run of a stream that reserved nothing: nothing to give back.
_UNRESERVED = Session()


def _held(guard: MemoryGuard, own: int, gpu_own: int) -> Session:
    if not (own or gpu_own):
        return _UNRESERVED
    return Holding(lambda: guard.release(own, gpu_own))


def _sync_stream_shell(guard: MemoryGuard) -> WrapperFactory:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        stack = stack_name(fn)

        def open_run(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Session:
            own, gpu_own = guard.amounts(args, kwargs) if guard.sized else _NOTHING
            refusal = guard.try_admit(own, gpu_own)
            if refusal is not None:
                for delay in guard.resolve(stack.value, own, gpu_own, refusal):
                    _clock.sync_sleep(delay, guard, stack.value, "memory_guard")
            elif events.active:
                guard.admitted(stack.value, own)
            return _held(guard, own, gpu_own)

        return sync_stream_shell(open_run)(fn)

    return build


def _async_stream_shell(guard: MemoryGuard) -> WrapperFactory:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        stack = stack_name(fn)

        async def open_run(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Session:
            own, gpu_own = guard.amounts(args, kwargs) if guard.sized else _NOTHING
            refusal = guard.try_admit(own, gpu_own)
            if refusal is not None:
                for delay in guard.resolve(stack.value, own, gpu_own, refusal):
                    await _clock.async_sleep(delay)
            elif events.active:
                guard.admitted(stack.value, own)
            return _held(guard, own, gpu_own)

        return async_stream_shell(open_run)(fn)

    return build


class _MemoryGuardDecorator(Protocol[Q]):
    """``@memory_guard`` bare, or called with the settings ``Q`` first."""

    # The settings are keyword-only: the two forms never match one call.
    @overload
    def __call__(self, fn: Callable[P, T], /) -> MemoryGuarded[P, T]: ...  # type: ignore[overload-overlap]

    @overload
    def __call__(self, *args: Q.args, **kwargs: Q.kwargs) -> MemoryGuard: ...


def _declared(
    settings: Callable[Q, MemoryGuard],
) -> Callable[[Callable[[MemoryGuard], Decorate]], _MemoryGuardDecorator[Q]]:
    return lambda build: declare(settings, build)


@_declared(MemoryGuard)
def memory_guard(guard: MemoryGuard) -> Decorate:
    """Admit a call only when memory has room for it: the container's, not the host's.

    Memory is read from the process's cgroup (v2 or v1, the tightest limit up the
    hierarchy, page cache the kernel can drop left out as the kubelet does), or from the
    host where no cgroup limit applies. A call is admitted when, counting the bytes
    reserved by guarded calls already in flight and its own reservation, memory stays
    within every threshold given. Otherwise ``action`` decides.

    Args:
        max_percent: the most of the limit that may be in use, in (0, 100].
        min_available: bytes (or a size such as ``"2GiB"``) that must stay free.
        max_rss: the most this process's resident set may reach.
        action: what to do with a call that does not fit. ``"raise"``: raise
            :class:`MemoryPressureError`. ``"collect"``: run ``gc.collect()`` (and empty
            the GPU allocator cache with ``gpu=``), read again, raise if still over.
            ``"wait"``: poll every ``poll_interval`` (``anyio.sleep`` for coroutine
            functions, so the event loop keeps running; ``time.sleep`` for plain ones)
            until it fits or ``wait_timeout`` passes, then raise. ``"warn"``: log a
            warning and run the call anyway.
        wait_timeout: the longest ``"wait"`` waits, in seconds or as a ``timedelta``.
        poll_interval: how often ``"wait"`` reads memory again.
        reserve: the bytes the call is expected to allocate: an int, a size string, or a
            callable of the call's own arguments (``lambda batch: batch.nbytes * 4``;
            for methods it receives ``self`` too). Held from admission until the call
            ends, however it ends.
        gpu: ``True`` (device 0) or a device index to also guard GPU memory, read with
            ``torch.cuda.mem_get_info`` if torch with CUDA is importable, else NVML.
        gpu_max_percent: the most of the device's memory that may be in use.
        sample_interval: how long one memory reading is reused; 0 reads on every call.
        gpu_reserve: like ``reserve``, in device memory.
        probe: the :class:`MemoryProbe` to read (for another cgroup root); guards sharing
            a probe share its reservations. Defaults to the process-wide probe.
        gpu_probe: a :class:`GpuProbe` to read device memory from instead of torch/NVML.

    Raises:
        ConfigurationError: at decoration, for a setting that cannot work, or for
            ``gpu=`` with neither torch+CUDA nor NVML available (and no ``gpu_probe``).
        MemoryPressureError: at call time, when the call is refused (for a stream: when
            it is first iterated).

    Caveats: a reservation is counted beside the usage it turns into once allocated, so
    a busy guard errs on the side of refusing. A reading is up to ``sample_interval``
    old, and reading and collecting run in the calling thread (microseconds for the
    files under ``/sys``; a full ``gc.collect()`` can take much longer).

    The wrapper carries the guard as ``fn.memory_guard`` (:class:`MemoryGuard`). Called
    with settings, ``memory_guard(...)`` returns that :class:`MemoryGuard`, which
    decorates any number of functions and admits blocks:
    ``with guard.admit(reserve="2GiB"):`` (or ``async with``).

    On a stream (a generator or async-generator function) the call is admitted when the
    stream is first iterated, and its reservation (``reserve`` of the call's arguments)
    is held until the stream ends, however it ends.
    """
    return guard
