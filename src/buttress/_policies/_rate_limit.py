"""@rate_limit: at most ``rate`` calls per ``per`` seconds, with an exact burst.

The limiter is GCRA (the generic cell rate algorithm; a token bucket stated in time): one
number, the theoretical arrival time ``tat``, updated under a ``threading.Lock``. Each
caller reserves the earliest start time it may have, in arrival order, and then sleeps
until exactly that time, once. That gives first-come, first-served order without any
queue or wake-up (no thundering herd: nobody is woken to find the slot taken), and it
works from any number of threads and event loops at once, because nothing but the
sleep touches a loop.

The same :class:`RateLimiter` is the decorator (``quota = rate_limit(10)``, then
``@quota``); a decorated stream takes one start, when it is first iterated (a stream is
one call, however many items it yields), and holds nothing afterwards.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, overload

from buttress import _clock, _settings
from buttress._errors import ConfigurationError, RateLimitExceeded
from buttress._events import RateLimited, events
from buttress._streams import Session, async_stream_shell, sync_stream_shell
from buttress._wrapping import WrapperFactory, stack_name, wrap

__all__ = ["RateLimitedFunction", "RateLimiter", "RateLimiterStats", "rate_limit"]

P = ParamSpec("P")
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
T2 = TypeVar("T2")
S = TypeVar("S")
P2 = ParamSpec("P2")

_GO = (0.0, 0.0)  # acquire()'s answer for "start now": shared, so the fast path allocates nothing


@dataclass(frozen=True, slots=True)
class RateLimiterStats:
    """A snapshot of one rate limiter.

    Attributes:
        rate: calls allowed per ``per`` seconds.
        per: the period, in seconds.
        burst: calls that may start back to back after a quiet spell.
        admitted: calls that started without waiting, since creation.
        delayed: calls that had to wait for their turn, since creation.
        rejected: calls refused (``wait=False`` or over ``max_wait``), since creation.
        available: calls that could start right now without waiting (0 to ``burst``).
    """

    rate: float
    per: float
    burst: int
    admitted: int
    delayed: int
    rejected: int
    available: int


class RateLimiter:
    """The state of one ``rate_limit(...)``; reach it as ``fn.rate_limit`` (or ``fn.limiter``).

    Thread safe and loop-agnostic; reads time through the ``buttress`` clock, so
    :func:`buttress.testing.testing_mode` makes its waits instant and recorded. Calling it
    decorates a function (every function it decorates shares its starts).
    """

    __slots__ = (
        "_admitted",
        "_delayed",
        "_lock",
        "_rejected",
        "_tat",
        "burst",
        "interval",
        "max_wait",
        "per",
        "rate",
        "tolerance",
    )

    def __init__(self, rate: float, per: float, burst: int, max_wait: float) -> None:
        self.rate = rate
        self.per = per
        self.burst = burst
        self.max_wait = max_wait
        #: Seconds between calls at the sustained rate.
        self.interval = per / rate
        #: How far ahead of its even spacing a call may start (the room for the burst).
        self.tolerance = (burst - 1) * self.interval
        self._lock = threading.Lock()
        self._tat = -math.inf  # no call yet: the first ``burst`` calls go at once
        self._admitted = 0
        self._delayed = 0
        self._rejected = 0

    def __repr__(self) -> str:
        return f"<RateLimiter {self.rate:g} per {self.per:g}s, burst {self.burst}>"

    def __call__(self, fn: Callable[P, T], /) -> RateLimitedFunction[P, T]:
        """Decorate ``fn``: its calls (or its streams) take starts from this limiter."""
        return wrap(  # type: ignore[no-any-return]
            fn,
            "rate_limit",
            sync=_sync_shell(self),
            async_=_async_shell(self),
            stream=_sync_stream_shell(self),
            astream=_async_stream_shell(self),
            attributes={"rate_limit": self, "limiter": self},
        )

    def stats(self) -> RateLimiterStats:
        """A frozen snapshot of the counts and of the calls available now."""
        now = _clock.monotonic()
        with self._lock:
            start = max(self._tat, now)
            room = now + self.tolerance - start
            available = 0 if room < 0 else min(self.burst, math.floor(room / self.interval) + 1)
            return RateLimiterStats(
                rate=self.rate,
                per=self.per,
                burst=self.burst,
                admitted=self._admitted,
                delayed=self._delayed,
                rejected=self._rejected,
                available=available,
            )

    # --- the engine -------------------------------------------------------------------

    def acquire(self, function: str) -> tuple[float, float]:
        """Reserve the earliest start for one call: ``(seconds to wait, reservation)``.

        ``(0.0, 0.0)`` means "start now". Raises :class:`RateLimitExceeded` instead of
        reserving when the wait would pass ``max_wait``.
        """
        now = _clock.monotonic()
        with self._lock:
            start = self._tat if self._tat > now else now
            wait = start - self.tolerance - now
            if wait <= 0.0:
                self._tat = start + self.interval
                self._admitted += 1
                return _GO
            accepted = wait <= self.max_wait
            if accepted:
                reserved = self._tat = start + self.interval
                self._delayed += 1
            else:
                self._rejected += 1
        if accepted:
            if events.active:
                events.emit(RateLimited(function=function, waited=wait, rejected=False))
            return wait, reserved
        if events.active:
            events.emit(RateLimited(function=function, waited=0.0, rejected=True))
        raise RateLimitExceeded(
            f"rate limit of {function}() ({self.rate:g} per {self.per:g}s, burst "
            f"{self.burst}): the next start is free in {wait:.3g}s, "
            + ("and wait=False" if self.max_wait == 0 else f"past max_wait={self.max_wait:g}s")
            + "; the call was not made",
            rate=self.rate,
            per=self.per,
            retry_after=wait,
            retry_at=now + wait,
            function=function,
        )

    def cancel(self, reserved: float) -> None:
        """A caller gave up waiting: return its start time if no one reserved after it.

        A start time with later reservations behind it stays unused, so a cancelled
        waiter can only make the limiter stricter, never let two calls share a start.
        """
        with self._lock:
            if self._tat == reserved:
                self._tat = reserved - self.interval


# --- the shells --------------------------------------------------------------------------
# Each admission is RateLimiter.acquire (the decision, which waits for nothing) and, when
# the start it reserved is later, one of the two waits below, which give the start back if
# the waiter is cancelled meanwhile. Calls, streams and any later form share them.


def _wait_turn(limiter: RateLimiter, wait: float, reserved: float) -> None:
    try:
        _clock.sleep(wait)
    except BaseException:
        limiter.cancel(reserved)
        raise


async def _await_turn(limiter: RateLimiter, wait: float, reserved: float) -> None:
    try:
        await _clock.async_sleep(wait)
    except BaseException:
        limiter.cancel(reserved)
        raise


def _sync_shell(limiter: RateLimiter) -> WrapperFactory:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        stack = stack_name(fn)
        acquire = limiter.acquire

        def rate_limit_wrapper(*args: Any, **kwargs: Any) -> Any:
            wait, reserved = acquire(stack.value)
            if wait:
                _wait_turn(limiter, wait, reserved)
            return fn(*args, **kwargs)

        return rate_limit_wrapper

    return build


def _async_shell(limiter: RateLimiter) -> WrapperFactory:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        stack = stack_name(fn)
        acquire = limiter.acquire

        async def rate_limit_wrapper(*args: Any, **kwargs: Any) -> Any:
            wait, reserved = acquire(stack.value)
            if wait:
                await _await_turn(limiter, wait, reserved)
            return await fn(*args, **kwargs)

        return rate_limit_wrapper

    return build


#: A stream's run holds nothing once started: one session serves them all.
_STARTED = Session()


def _sync_stream_shell(limiter: RateLimiter) -> WrapperFactory:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        stack = stack_name(fn)

        def open_run(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Session:
            wait, reserved = limiter.acquire(stack.value)
            if wait:
                _wait_turn(limiter, wait, reserved)
            return _STARTED

        return sync_stream_shell(open_run)(fn)

    return build


def _async_stream_shell(limiter: RateLimiter) -> WrapperFactory:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        stack = stack_name(fn)

        async def open_run(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Session:
            wait, reserved = limiter.acquire(stack.value)
            if wait:
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


def rate_limit(
    rate: float,
    per: float | timedelta = 1.0,
    *,
    burst: int | None = None,
    wait: bool = True,
    max_wait: float | timedelta | None = None,
) -> RateLimiter:
    """Start at most ``rate`` calls per ``per`` seconds; make the rest wait their turn.

    Calls are spaced ``per / rate`` seconds apart. After a quiet spell, ``burst`` calls
    may start back to back; the room refills at the sustained rate. Exactly: over any span
    of ``d`` seconds, at most ``burst + floor(d * rate / per)`` calls are scheduled to
    start. With the default burst of 1 no ``per``-second window (its end excluded) is
    given more than ``rate`` starts, which keeps you under a provider's "N per
    second/minute" quota however it counts; ``burst=rate`` behaves like a token bucket of
    ``rate`` tokens (aiolimiter's ``AsyncLimiter``), which admits up to ``2 * rate - 1``
    starts in one window. The bound is on scheduled starts: on a busy event loop a timer
    that fires late delays its call while the next one starts on time, so measured start
    times can crowd one extra call into a window. Leave the provider that much slack.

    Waiting callers start in the order they arrived: each reserves its start time on
    arrival and sleeps until it, once (``anyio.sleep`` for coroutine functions, so the
    event loop keeps running; ``time.sleep`` for plain ones). The limiter is shared by
    every thread and event loop that calls the function, and by every function decorated
    with the same decorator object.

    Args:
        rate: calls per ``per`` seconds; a positive number (``0.5`` per second is one call
            every two seconds).
        per: the period, in seconds or as a ``timedelta``.
        burst: calls that may start back to back after a quiet spell; at least 1 (the
            default).
        wait: ``False`` refuses a call that would have to wait, raising
            :class:`RateLimitExceeded`, instead of waiting.
        max_wait: the longest wait accepted, in seconds; a call that would wait longer is
            refused at once (and reserves nothing). ``None``: no bound.

    Raises:
        ConfigurationError: at decoration, for a setting that cannot work.
        RateLimitExceeded: at call time, for a refused call; its ``retry_after`` says when
            a start is free (``@retry`` honours it like an HTTP ``Retry-After``).

    Each wait and each refusal emits :class:`RateLimited`. Waits count only start times,
    not how long calls run (use ``@bulkhead`` to bound concurrency). A caller cancelled
    while waiting gives its start time back when nobody has queued behind it; otherwise
    that start stays unused (the limiter errs toward fewer calls). The wrapper carries
    ``fn.rate_limit`` (also ``fn.limiter``), a :class:`RateLimiter` with ``.stats()``;
    the decorator *is* that limiter, so one object applied to several functions gives
    them one shared quota.

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
    return RateLimiter(sustained, period, allowed_burst, limit)
