"""@rate_limit: at most ``rate`` calls (or units of cost) per ``per`` seconds, with an exact
burst, in this process or across every process that shares a :class:`~buttress.FleetStore`.

The limiter is GCRA (the generic cell rate algorithm; a token bucket stated in time): one
number, the theoretical arrival time ``tat``. A call of cost ``c`` reserves the earliest
start it may have, ``max(tat, now) + c * interval - capacity``, in arrival order, and then
sleeps until exactly that time, once. That gives first-come, first-served order without
any queue or wake-up (no thundering herd), and it works from any number of threads and
event loops at once, because nothing but the sleep touches a loop.

In process, times are integer picoseconds (:class:`_Gcra`, under a ``threading.Lock``),
so that ``stats().available`` and the burst are exact however large the monotonic clock
reads. Shared, the same arithmetic runs in integer microseconds of the Redis server's
clock in one Lua script per admission (:data:`ADMIT`), so replicas whose clocks differ
still agree; while Redis is unreachable each replica admits on its own share of the limit
(the same :class:`_Gcra`), and goes back to Redis by itself once it answers.

The same :class:`RateLimiter` is the decorator (``quota = rate_limit(10)``, then
``@quota``) and the block (``with quota.acquire(cost):``); a decorated stream takes one
start, when it is first iterated, and holds nothing afterwards.
"""

from __future__ import annotations

import inspect
import math
import numbers
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any, Concatenate, Final, ParamSpec, Protocol, TypeVar, final, overload

import anyio

from buttress import _clock, _settings
from buttress._blocks import caller_name
from buttress._caching._naming import shared_name
from buttress._declare import suggests_keywords
from buttress._errors import ConfigurationError, RateLimitCostError, RateLimitExceeded
from buttress._events import RateLimited, events
from buttress._redis import LOST, FleetStore, Script, SharedState
from buttress._signature import MISSING, Misfit, signature_of
from buttress._streams import Session, async_stream_shell, sync_stream_shell
from buttress._wrapping import WrapperFactory, function_name, stack_name, wrap

__all__ = [
    "ADMIT",
    "RELEASE",
    "RateLimitedFunction",
    "RateLimiter",
    "RateLimiterStats",
    "rate_limit",
]

P = ParamSpec("P")
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
T2 = TypeVar("T2")
S = TypeVar("S")
P2 = ParamSpec("P2")

#: The local engine's unit: picoseconds, well below what a float clock reading resolves,
#: so converting readings loses nothing a caller could see.
_PS: Final = 1_000_000_000_000
_US: Final = 1_000_000  # the shared engine's unit: microseconds of the server's clock
_LONG_AGO: Final = -(1 << 62)

#: A reservation to give back if its waiter is cancelled: (shared, tat, increment).
Reservation = tuple[bool, int, int]
_GO: Final[tuple[float, Reservation | None]] = (0.0, None)  # "start now", allocation-free
#: What a cost reader returns for a call that does not fit the function's signature.
_MISFIT: Final = object()

#: One admission of a shared limit. KEYS[1]: the tat (server microseconds); ARGV: the
#: call's increment, the capacity (burst times the interval) and the longest wait accepted
#: (-1: any), all in microseconds. Returns {admitted, wait, new tat, room left}; a key
#: idle long enough to be a fresh limit expires.
ADMIT: Final = Script(
    "rate-limit-admit",
    """
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local increment = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new = tat + increment
local wait = new - capacity - now
if wait > 0 and max_wait >= 0 and wait > max_wait then
  return {0, wait, '0', now + capacity - tat}
end
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.floor((new - now) / 1000) + 1)
return {1, wait, string.format('%.0f', new), now + capacity - new}
""",
)

#: A cancelled waiter gives its start back if nobody reserved after it. KEYS[1]: the tat;
#: ARGV: the tat it reserved, its increment.
RELEASE: Final = Script(
    "rate-limit-release",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  local back = tonumber(ARGV[1]) - tonumber(ARGV[2])
  redis.call('SET', KEYS[1], string.format('%.0f', back), 'KEEPTTL')
  return 1
end
return 0
""",
)


@dataclass(frozen=True, slots=True)
class RateLimiterStats:
    """A snapshot of one rate limiter (this process' part of it, when shared).

    Attributes:
        rate: calls (or units of cost) allowed per ``per`` seconds.
        per: the period, in seconds.
        burst: calls (units) that may start back to back after a quiet spell.
        admitted: calls that started without waiting, since creation.
        delayed: calls that had to wait for their turn, since creation.
        rejected: calls refused (``wait=False``, over ``max_wait``, or a cost over
            ``burst``), since creation.
        available: units that could start right now without waiting (0 to ``burst``);
            exact in process; for a shared limit, as of this process' last admission plus
            what refilled since (the other replicas' calls since are not seen).
        spent: the cost of the calls admitted (started or waiting), since creation.
        shared: whether the limit is shared and Redis answered the last admission.
        fallbacks: calls admitted on this process' local share while Redis was
            unreachable, since creation.
    """

    rate: float
    per: float
    burst: int
    admitted: int
    delayed: int
    rejected: int
    available: int
    spent: float = 0.0
    shared: bool = False
    fallbacks: int = 0


@final
class _Gcra:
    """GCRA in integer units of ``1 / scale`` seconds: exact, whatever the clock reads."""

    __slots__ = ("_lock", "_tat", "admitted", "capacity", "delayed", "interval", "spent")

    def __init__(self, rate: float, per: float, burst: int, scale: int) -> None:
        # rounded up: the limit errs toward fewer calls, never more
        self.interval = max(1, math.ceil(per * scale / rate))
        self.capacity = burst * self.interval
        self._lock = threading.Lock()
        self._tat = _LONG_AGO
        #: the calls it admitted at once, those it made wait, and what they cost
        self.admitted = 0
        self.delayed = 0
        self.spent = 0.0

    def increment(self, cost: float) -> int:
        if type(cost) is int:
            return cost * self.interval
        return math.ceil(cost * self.interval)

    def reserve(
        self, now: int, increment: int, max_wait: int, cost: float
    ) -> tuple[int, int | None]:
        """``(wait, new tat)``; ``new tat`` is ``None`` (nothing reserved) past
        ``max_wait`` (negative: any wait). Counts what it admits."""
        with self._lock:
            tat = self._tat
            new = (tat if tat > now else now) + increment
            wait = new - self.capacity - now
            if wait <= 0:
                self.admitted += 1
            elif 0 <= max_wait < wait:
                return wait, None
            else:
                self.delayed += 1
            self._tat = new
            self.spent += cost
            return wait, new

    def release(self, reserved: int, increment: int) -> None:
        with self._lock:
            if self._tat == reserved:
                self._tat = reserved - increment

    def available(self, now: int) -> int:
        with self._lock:
            tat = self._tat
        room = now + self.capacity - (tat if tat > now else now)
        return max(0, room // self.interval)


def _validate_cost(value: object, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigurationError(f"{name} must be a number >= 0 or a callable, got {value!r}")
    return value


class RateLimiter:
    """The state of one ``rate_limit(...)``; reach it as ``fn.rate_limit`` (or ``fn.limiter``).

    Thread safe and loop-agnostic; reads time through the ``buttress`` clock, so
    :func:`buttress.testing.testing_mode` makes its waits instant and recorded (a shared
    limit reads the Redis server's clock). Calling it decorates a function (every
    function it decorates shares its starts); :meth:`acquire` takes a start for a block
    of code.
    """

    __slots__ = (
        "_admitted",
        "_capacity_us",
        "_delayed",
        "_interval_us",
        "_last_room",
        "_local",
        "_max_wait_ps",
        "_max_wait_us",
        "_rejected",
        "_spent",
        "_state",
        "_stats_lock",
        "burst",
        "cost",
        "fallback_share",
        "interval",
        "max_wait",
        "name",
        "per",
        "rate",
        "store",
    )

    def __init__(
        self,
        rate: float,
        per: float,
        burst: int,
        max_wait: float,
        *,
        cost: float | Callable[..., float] = 1,
        store: FleetStore | None = None,
        name: str | None = None,
        fallback_share: float = 1.0,
    ) -> None:
        self.rate = rate
        self.per = per
        self.burst = burst
        self.max_wait = max_wait
        self.cost = cost
        self.store = store
        self.name = name
        self.fallback_share = fallback_share
        #: Seconds between calls of cost 1 at the sustained rate.
        self.interval = per / rate
        # In process: the whole limit. Shared: this process' share, used while Redis is
        # unreachable (at least one call's room, so a cost up to burst still passes).
        share = 1.0 if store is None else fallback_share
        local_burst = burst if store is None else max(1, math.floor(burst * share))
        self._local = _Gcra(rate * share, per, local_burst, _PS)
        self._max_wait_ps = -1 if math.isinf(max_wait) else round(max_wait * _PS)
        self._max_wait_us = -1 if math.isinf(max_wait) else round(max_wait * _US)
        self._interval_us = max(1, math.ceil(per * _US / rate))
        self._capacity_us = burst * self._interval_us
        self._state: SharedState | None = None
        self._last_room: tuple[int, int] | None = None  # (room in µs, local ps then)
        self._stats_lock = threading.Lock()
        self._admitted = 0
        self._delayed = 0
        self._rejected = 0
        self._spent = 0.0
        if store is not None and name is not None:
            self._share(name)

    def __repr__(self) -> str:
        where = "" if self.store is None else f", shared as {self.name!r}"
        return f"<RateLimiter {self.rate:g} per {self.per:g}s, burst {self.burst}{where}>"

    def __call__(self, fn: Callable[P, T], /) -> RateLimitedFunction[P, T]:
        """Decorate ``fn``: its calls (or its streams) take starts from this limiter."""
        if self.store is not None and self._state is None:
            qualname, module = shared_name(fn, None, "rate_limit")
            self._share(f"{module}.{qualname}" if module else qualname)
        return wrap(  # type: ignore[no-any-return]
            fn,
            "rate_limit",
            sync=_sync_shell(self),
            async_=_async_shell(self),
            stream=_sync_stream_shell(self),
            astream=_async_stream_shell(self),
            attributes={"rate_limit": self, "limiter": self},
        )

    def _share(self, name: str) -> None:
        assert self.store is not None
        self.name = name
        settings = {"rate": self.rate, "per": self.per, "burst": self.burst}
        self._state = self.store.shared("rate_limit", name, settings)

    @property
    def shared(self) -> SharedState | None:
        """The state shared through the store (``None`` without ``store=``)."""
        return self._state

    def acquire(self, cost: float = 1) -> _Turn:
        """A start for a block of code that costs ``cost``, as a context manager:
        ``with limiter.acquire(tokens):`` or ``async with limiter.acquire(tokens):``.

        Entering waits for the start (``anyio.sleep`` in ``async with``) or raises what a
        decorated call raises (:class:`RateLimitExceeded`, :class:`RateLimitCostError`);
        leaving gives nothing back (a rate limit counts starts, not durations).

        Raises:
            ConfigurationError: a shared limiter that decorates nothing has no name:
                give ``rate_limit(..., store=..., name=...)``.
        """
        if self.store is not None and self._state is None:
            raise ConfigurationError(
                "this rate limit has store= but no name: a shared limiter used through "
                "acquire() alone is known to the other processes by name=, give it one"
            )
        return _Turn(self, cost)

    def stats(self) -> RateLimiterStats:
        """A frozen snapshot of the counts and of the units available now (no I/O)."""
        now = _now_ps()
        room = self._last_room
        state = self._state
        if state is None:
            available = self._local.available(now)
        elif state.lost or room is None:
            available = self._local.available(now) if state.lost else self.burst
        else:
            scale = _PS // _US
            units = (room[0] * scale + now - room[1]) // (self._interval_us * scale)
            available = max(0, min(self.burst, units))
        local = self._local
        with self._stats_lock:
            return RateLimiterStats(
                rate=self.rate,
                per=self.per,
                burst=self.burst,
                admitted=self._admitted + local.admitted,
                delayed=self._delayed + local.delayed,
                rejected=self._rejected,
                available=available,
                spent=self._spent + local.spent,
                shared=state is not None and not state.lost,
                fallbacks=0 if state is None else local.admitted + local.delayed,
            )

    # --- the engine -------------------------------------------------------------------
    # reserve() decides for plain functions and in-process limits (no I/O without a
    # store); areserve() for coroutines of a shared one. Both end in the same steps.

    def reserve(self, function: str, cost: float = 1) -> tuple[float, Reservation | None]:
        """Reserve the earliest start for one call of ``cost``: ``(seconds to wait,
        reservation)``; ``(0.0, None)`` means "start now".

        Raises:
            RateLimitExceeded: the wait would pass ``max_wait``; nothing is reserved.
            RateLimitCostError: ``cost`` exceeds ``burst`` (or is not a number >= 0).
        """
        if cost != 1:
            self._check_cost(function, cost)
        state = self._state
        if state is not None:
            reply = state.run("admit", ADMIT, [state.key("tat")], self._admit_args(cost))
            if reply is not LOST:
                return self._decide_shared(function, cost, reply)
        local = self._local
        increment = local.interval if cost == 1 else local.increment(cost)
        now = int(_clock.monotonic() * _PS)
        wait, reserved = local.reserve(now, increment, self._max_wait_ps, cost)
        if wait <= 0:
            return _GO
        return self._decided(function, cost, wait / _PS, reserved, False, increment)

    async def areserve(self, function: str, cost: float = 1) -> tuple[float, Reservation | None]:
        """:meth:`reserve` from a coroutine: a shared limit's round trip never blocks
        the event loop."""
        if cost != 1:
            self._check_cost(function, cost)
        state = self._state
        if state is not None:
            reply = await state.arun("admit", ADMIT, [state.key("tat")], self._admit_args(cost))
            if reply is not LOST:
                return self._decide_shared(function, cost, reply)
        return self.reserve(function, cost)  # decided locally: no I/O

    def cancel(self, reservation: Reservation) -> None:
        """A caller gave up waiting: give its start back if no one reserved after it.

        A start with later reservations behind it stays unused, so a cancelled waiter
        can only make the limiter stricter, never let two calls share a start.
        """
        shared, tat, increment = reservation
        if not shared:
            self._local.release(tat, increment)
        elif self._state is not None:
            self._state.run("release", RELEASE, [self._state.key("tat")], [tat, increment])

    async def acancel(self, reservation: Reservation) -> None:
        """:meth:`cancel` from a coroutine (shielded by its caller)."""
        shared, tat, increment = reservation
        if not shared:
            self._local.release(tat, increment)
        elif self._state is not None:
            await self._state.arun("release", RELEASE, [self._state.key("tat")], [tat, increment])

    # --- the steps both share ----------------------------------------------------------

    def _check_cost(self, function: str, cost: object) -> None:
        number = not isinstance(cost, bool) and isinstance(cost, numbers.Real)
        amount = float(cost) if number else math.nan  # type: ignore[arg-type]
        if 0 <= amount <= self.burst:
            return
        with self._stats_lock:
            self._rejected += 1
        if events.active:
            events.emit(RateLimited(function=function, waited=0.0, rejected=True))
        what = (
            f"costs {cost!r}, more than burst={self.burst} (the most that can ever start "
            "at once), so it would wait forever"
            if amount > 0
            else f"has cost {cost!r}, which is not a number >= 0"
        )
        raise RateLimitCostError(
            f"the call of {function}() {what}; the call was not made",
            cost=cost,
            burst=self.burst,
            function=function,
        )

    def _admit_args(self, cost: float) -> list[int]:
        if type(cost) is int:
            increment = cost * self._interval_us
        else:
            increment = math.ceil(cost * self._interval_us)
        return [increment, self._capacity_us, self._max_wait_us]

    def _decide_shared(
        self, function: str, cost: float, reply: Any
    ) -> tuple[float, Reservation | None]:
        admitted, wait, tat, room = int(reply[0]), int(reply[1]), int(reply[2]), int(reply[3])
        self._last_room = (room, _now_ps())
        with self._stats_lock:
            if admitted:
                self._spent += cost
                if wait <= 0:
                    self._admitted += 1
                    return _GO
                self._delayed += 1
        increment = self._admit_args(cost)[0]
        return self._decided(function, cost, wait / _US, tat if admitted else None, True, increment)

    def _decided(
        self,
        function: str,
        cost: float,
        wait: float,
        reserved: int | None,
        shared: bool,
        increment: int,
    ) -> tuple[float, Reservation | None]:
        """A call that waits (``reserved``: its reservation) or is refused (``None``)."""
        if reserved is not None:
            if events.active:
                events.emit(RateLimited(function=function, waited=wait, rejected=False))
            return wait, (shared, reserved, increment)
        with self._stats_lock:
            self._rejected += 1
        if events.active:
            events.emit(RateLimited(function=function, waited=0.0, rejected=True))
        where = f" shared as {self.name!r}," if shared else ""
        raise RateLimitExceeded(
            f"rate limit of {function}() ({self.rate:g} per {self.per:g}s, burst "
            f"{self.burst},{where} cost {cost:g}): the next start is free in {wait:.3g}s, "
            + ("and wait=False" if self.max_wait == 0 else f"past max_wait={self.max_wait:g}s")
            + "; the call was not made",
            rate=self.rate,
            per=self.per,
            retry_after=wait,
            retry_at=_clock.monotonic() + wait,
            function=function,
        )

    def cost_reader(self, fn: Callable[..., Any]) -> Callable[..., Any] | None:
        """What reads a call's cost for ``fn``: ``None`` for a constant cost, else a
        function of ``(args, kwargs)`` that calls ``cost`` with the arguments it names
        (defaults filled in), bound through the function's signature.

        Raises:
            ConfigurationError: ``cost`` names an argument ``fn`` does not take.
        """
        cost = self.cost
        if not callable(cost):
            return None
        target = signature_of(fn)
        wanted = signature_of(cost)
        label = function_name(fn)
        if not target.readable or not wanted.readable:
            raise ConfigurationError(
                f"cost= of rate_limit on {label} needs readable signatures to bind the "
                f"call's arguments: {target.problem or wanted.problem}"
            )
        if wanted.var_positional is not None:
            raise ConfigurationError(
                f"cost= of rate_limit on {label} is called with the arguments it names, by "
                f"name: it cannot take *{wanted.var_positional}"
            )
        picks: list[tuple[str, int]] = []
        for index, parameter in enumerate(wanted.names):
            if parameter not in target.names:
                if wanted.defaults[index] is MISSING:
                    raise ConfigurationError(
                        f"cost= of rate_limit on {label} reads the argument {parameter!r}, "
                        f"which {label} does not take (it takes {', '.join(target.names)})"
                    )
                continue
            picks.append((parameter, target.names.index(parameter)))
        defaults = target.defaults

        def read(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            try:
                values, _, _ = target.bind(args, kwargs)
            except Misfit:
                return _MISFIT
            chosen = {}
            for parameter, index in picks:
                value = values[index]
                if value is MISSING:
                    value = defaults[index]
                if value is not MISSING:
                    chosen[parameter] = value
            return cost(**chosen)

        return read


def _now_ps() -> int:
    return int(_clock.monotonic() * _PS)


@final
class _Turn:
    """``with limiter.acquire(cost):`` / ``async with ...``: one start for a block."""

    __slots__ = ("cost", "limiter")

    def __init__(self, limiter: RateLimiter, cost: float) -> None:
        self.limiter = limiter
        self.cost = cost

    def __enter__(self) -> RateLimiter:
        limiter = self.limiter
        name = caller_name()
        wait, reserved = limiter.reserve(name, self.cost)
        if reserved is not None:
            _wait_turn(limiter, wait, reserved, name)
        return limiter

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def __aenter__(self) -> RateLimiter:
        limiter = self.limiter
        wait, reserved = await limiter.areserve(caller_name(), self.cost)
        if reserved is not None:
            await _await_turn(limiter, wait, reserved)
        return limiter

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


# --- the shells --------------------------------------------------------------------------
# Each admission is a reservation (the decision, which waits for nothing but a shared
# limit's one round trip) and, when the start it reserved is later, one of the two waits
# below, which give the start back if the waiter is cancelled meanwhile. Calls, streams
# and blocks share them.


def _wait_turn(limiter: RateLimiter, wait: float, reserved: Reservation, name: str) -> None:
    try:
        _clock.sync_sleep(wait, limiter, name, "rate_limit")
    except BaseException:
        limiter.cancel(reserved)
        raise


async def _await_turn(limiter: RateLimiter, wait: float, reserved: Reservation) -> None:
    try:
        await _clock.async_sleep(wait)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await limiter.acancel(reserved)
        raise


def _sync_shell(limiter: RateLimiter) -> WrapperFactory:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        stack = stack_name(fn)
        reserve = limiter.reserve
        read_cost = limiter.cost_reader(fn)
        cost: Any = limiter.cost

        if read_cost is None:

            def rate_limit_wrapper(*args: Any, **kwargs: Any) -> Any:
                wait, reserved = reserve(stack.value, cost)
                if reserved is not None:
                    _wait_turn(limiter, wait, reserved, stack.value)
                return fn(*args, **kwargs)

            return rate_limit_wrapper

        def weighed_rate_limit_wrapper(*args: Any, **kwargs: Any) -> Any:
            spend = read_cost(args, kwargs)
            if spend is not _MISFIT:  # a misfit: the function raises its TypeError
                wait, reserved = reserve(stack.value, spend)
                if reserved is not None:
                    _wait_turn(limiter, wait, reserved, stack.value)
            return fn(*args, **kwargs)

        return weighed_rate_limit_wrapper

    return build


def _async_shell(limiter: RateLimiter) -> WrapperFactory:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        stack = stack_name(fn)
        reserve = limiter.reserve
        areserve = limiter.areserve if limiter.store is not None else None
        read_cost = limiter.cost_reader(fn)
        cost: Any = limiter.cost

        async def rate_limit_wrapper(*args: Any, **kwargs: Any) -> Any:
            spend: Any = cost if read_cost is None else read_cost(args, kwargs)
            if spend is not _MISFIT:
                if areserve is None:
                    wait, reserved = reserve(stack.value, spend)
                else:
                    wait, reserved = await areserve(stack.value, spend)
                if reserved is not None:
                    await _await_turn(limiter, wait, reserved)
            return await fn(*args, **kwargs)

        return rate_limit_wrapper

    return build


#: A stream's run holds nothing once started: one session serves them all.
_STARTED = Session()


def _sync_stream_shell(limiter: RateLimiter) -> WrapperFactory:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        stack = stack_name(fn)
        read_cost = limiter.cost_reader(fn)

        def open_run(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Session:
            spend: Any = limiter.cost if read_cost is None else read_cost(args, kwargs)
            if spend is not _MISFIT:
                wait, reserved = limiter.reserve(stack.value, spend)
                if reserved is not None:
                    _wait_turn(limiter, wait, reserved, stack.value)
            return _STARTED

        return sync_stream_shell(open_run)(fn)

    return build


def _async_stream_shell(limiter: RateLimiter) -> WrapperFactory:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        stack = stack_name(fn)
        read_cost = limiter.cost_reader(fn)

        async def open_run(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Session:
            spend: Any = limiter.cost if read_cost is None else read_cost(args, kwargs)
            if spend is not _MISFIT:
                wait, reserved = await limiter.areserve(stack.value, spend)
                if reserved is not None:
                    await _await_turn(limiter, wait, reserved)
            return _STARTED

        return async_stream_shell(open_run)(fn)

    return build


class RateLimitedFunction(Protocol[P, T_co]):
    """A function decorated with ``@rate_limit``: callable as before, plus its limiter.

    The limiter is ``.rate_limit``, named after the decorator, and ``.limiter``.
    """

    rate_limit: RateLimiter
    limiter: RateLimiter

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T_co: ...

    # Decorated methods bind like functions: the instance fills the first parameter.
    @overload
    def __get__(
        self, instance: None, owner: type[Any] | None = None
    ) -> RateLimitedFunction[P, T_co]: ...

    @overload
    def __get__(
        self: RateLimitedFunction[Concatenate[S, P2], T2],
        instance: S,
        owner: type[Any] | None = None,
    ) -> RateLimitedFunction[P2, T2]: ...


@suggests_keywords
def rate_limit(
    rate: float,
    per: float | timedelta = 1.0,
    *,
    burst: int | None = None,
    wait: bool = True,
    max_wait: float | timedelta | None = None,
    cost: float | Callable[..., float] = 1,
    store: FleetStore | None = None,
    name: str | None = None,
    replicas: int | None = None,
    fallback_share: float | None = None,
) -> RateLimiter:
    """Start at most ``rate`` calls (or units of ``cost``) per ``per`` seconds; make the
    rest wait their turn.

    Calls are spaced ``per / rate`` seconds apart (a call of cost ``c`` takes ``c`` such
    spaces). After a quiet spell, ``burst`` units may start back to back; the room refills
    at the sustained rate. Exactly: over any span of ``d`` seconds, at most ``burst +
    floor(d * rate / per)`` units are scheduled to start. With the default burst of 1 no
    ``per``-second window (its end excluded) is given more than ``rate`` starts, which
    keeps you under a provider's "N per second/minute" quota however it counts;
    ``burst=rate`` behaves like a token bucket of ``rate`` tokens (aiolimiter's
    ``AsyncLimiter``), which admits up to ``2 * rate - 1`` starts in one window. The bound
    is on scheduled starts: on a busy event loop a timer that fires late delays its call
    while the next one starts on time, so measured start times can crowd one extra call
    into a window. Leave the provider that much slack.

    Waiting callers start in the order they arrived: each reserves its start time on
    arrival and sleeps until it, once (``anyio.sleep`` for coroutine functions, so the
    event loop keeps running; ``time.sleep`` for plain ones). The limiter is shared by
    every thread and event loop that calls the function, and by every function decorated
    with the same decorator object; with ``store=``, by every process that names it.

    Args:
        rate: calls (units of cost) per ``per`` seconds; a positive number (``0.5`` per
            second is one call every two seconds).
        per: the period, in seconds or as a ``timedelta``.
        burst: units that may start back to back after a quiet spell; at least 1 (the
            default). A call cannot cost more.
        wait: ``False`` refuses a call that would have to wait, raising
            :class:`RateLimitExceeded`, instead of waiting.
        max_wait: the longest wait accepted, in seconds; a call that would wait longer is
            refused at once (and reserves nothing). ``None``: no bound.
        cost: what one call spends: a number (default 1), or a callable that receives the
            call's arguments it names, by name (``cost=lambda texts: len(texts)``), so a
            limit reads "90,000 tokens per minute".
        store: a :class:`~buttress.FleetStore`: the limit holds across every process that
            uses the same ``name`` (one Lua script per admission, one round trip, on the
            Redis server's clock).
        name: the shared name (with ``store``); default: the decorated function's
            ``module.qualname``. Processes that use one name must use the same ``rate``,
            ``per`` and ``burst`` (:class:`~buttress.SharedSettingsError` otherwise).
        replicas: with ``store``, how many processes share the limit: while Redis is
            unreachable each admits ``1 / replicas`` of it on its own.
        fallback_share: with ``store``, the fraction of the limit (rate and burst) each
            process admits on its own while Redis is unreachable; default ``1 /
            replicas``, or the whole limit when ``replicas`` is not given.

    Raises:
        ConfigurationError: at decoration, for a setting that cannot work.
        RateLimitExceeded: at call time, for a refused call; its ``retry_after`` says when
            a start is free (``@retry`` honours it like an HTTP ``Retry-After``).
        RateLimitCostError: at call time, for a call whose cost exceeds ``burst`` (it
            could never start) or is not a number >= 0; nothing waits.
        SharedStateError: with a ``FleetStore(fail_open=False)``, when Redis is
            unreachable.

    Each wait and each refusal emits :class:`RateLimited`. Waits count only start times,
    not how long calls run (use ``@bulkhead`` to bound concurrency). A caller cancelled
    while waiting gives its start time back when nobody has queued behind it; otherwise
    that start stays unused (the limiter errs toward fewer calls). The wrapper carries
    ``fn.rate_limit`` (also ``fn.limiter``), a :class:`RateLimiter` with ``.stats()`` and
    ``.acquire(cost)``; the decorator *is* that limiter, so one object applied to several
    functions gives them one shared quota.

    On a stream (a generator or async-generator function) the start is taken when the
    stream is first iterated: one start per stream, however many items it yields. A
    stream cancelled or closed while it waits for its turn gives the start back as a
    waiting call does; once started it holds nothing that could leak.
    """
    sustained = _settings.number(rate, "rate")
    if sustained <= 0:
        raise ConfigurationError(f"rate must be positive, got {rate!r}")
    period = _settings.seconds(per, "per", allow_zero=False)
    allowed_burst = 1 if burst is None else _settings.positive_int(burst, "burst")
    if not isinstance(wait, bool):
        raise ConfigurationError(f"wait must be True or False, got {wait!r}")
    if not wait and max_wait is not None:
        raise ConfigurationError("max_wait has no effect with wait=False; drop one of them")
    longest = _settings.optional_seconds(max_wait, "max_wait")
    limit = 0.0 if not wait else (math.inf if longest is None else longest)
    if not callable(cost):
        spend = _validate_cost(cost, "cost")
        if spend > allowed_burst:
            raise ConfigurationError(
                f"cost={cost!r} exceeds burst={allowed_burst}: no call could ever start"
            )
    elif inspect.isclass(cost):
        raise ConfigurationError(f"cost must be a number or a function, got {cost!r}")
    share = 1.0
    if store is None:
        for setting, value in (("name", name), ("replicas", replicas)):
            if value is not None:
                raise ConfigurationError(f"{setting} has no effect without store=")
        if fallback_share is not None:
            raise ConfigurationError("fallback_share has no effect without store=")
    else:
        if not isinstance(store, FleetStore):
            raise ConfigurationError(f"store must be a FleetStore, got {store!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigurationError(f"name must be a non-empty str, got {name!r}")
        if replicas is not None and fallback_share is not None:
            raise ConfigurationError("give replicas or fallback_share, not both")
        if replicas is not None:
            share = 1.0 / _settings.positive_int(replicas, "replicas")
        elif fallback_share is not None:
            share = _settings.ratio(fallback_share, "fallback_share")
    return RateLimiter(
        sustained,
        period,
        allowed_burst,
        limit,
        cost=cost,
        store=store,
        name=name,
        fallback_share=share,
    )
