"""The one clock every decorator reads and sleeps through.

Decorators call ``_clock.monotonic()``, ``_clock.sleep()`` and ``await _clock.async_sleep()``
through this module at call time (never ``from ._clock import sleep``), so that
:mod:`buttress.testing` can swap all three at once for a fake clock. The real ones are the
functions themselves, not wrappers around them: reading the clock on a hot path costs one
module attribute lookup and the call.

Every wait of a decorator's ``def`` form (retry backoff, memory-guard wait, bulkhead and
rate-limit waits, a cache follower's or a batch item's wait) first passes
:func:`blocking_wait`, which warns once per function when the thread it is about to block
runs an event loop. The check runs only when a wait is about to happen, never on a call
that does not wait.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio

from ._errors import BlockingCallWarning, warn

__all__ = [
    "Clock",
    "async_sleep",
    "blocking_wait",
    "install",
    "monotonic",
    "running_loop",
    "sleep",
    "sync_sleep",
]


class Clock(Protocol):
    """What a clock provides: monotonic seconds, and sleeping for sync and async code."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    def async_sleep(self, seconds: float) -> Awaitable[None]: ...


monotonic: Callable[[], float] = time.monotonic
sleep: Callable[[float], None] = time.sleep
async_sleep: Callable[[float], Awaitable[None]] = anyio.sleep


class _RealClock:
    """The wall of real time: ``time.monotonic``, ``time.sleep`` and ``anyio.sleep``."""

    monotonic = staticmethod(time.monotonic)
    sleep = staticmethod(time.sleep)
    async_sleep = staticmethod(anyio.sleep)


REAL: Clock = _RealClock()
_installed: Clock = REAL


def current() -> Clock:
    """The clock in use now."""
    return _installed


def install(clock: Clock) -> Clock:
    """Make ``clock`` the one all decorators use; return the clock it replaces."""
    global monotonic, sleep, async_sleep, _installed
    previous = _installed
    _installed = clock
    monotonic = clock.monotonic
    sleep = clock.sleep
    async_sleep = clock.async_sleep
    return previous


# --- waiting on a thread ------------------------------------------------------------------


def running_loop() -> str | None:
    """``"asyncio"`` or ``"trio"`` when this thread is running that event loop, else ``None``.

    A worker thread (``anyio.to_thread``, ``asyncio.to_thread``) runs none, even while
    the loop that started it runs on another thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return "asyncio"
    trio = sys.modules.get("trio")  # imported by whoever runs trio; never by us
    if trio is not None:
        try:
            trio.lowlevel.current_trio_token()
        except RuntimeError:
            return None
        return "trio"
    return None


#: The (decorator engine, function) pairs already warned about blocking an event loop.
#: Keyed by the engine too, so two functions of one name in two modules are each warned.
_warned: set[tuple[int, str]] = set()
_warned_lock = threading.Lock()


def blocking_wait(owner: object, function: str, decorator: str, seconds: float | None) -> None:
    """Warn (once per function) when a wait of ``decorator``'s ``def`` form would block a loop.

    Called just before a plain function's wrapper waits on its thread (``time.sleep``, a
    ``threading`` event) for up to ``seconds`` (``None``: no limit); ``owner`` is the
    decorator's engine, which with ``function`` tells one decorated function from another.
    When this thread runs an event loop, that wait stops the whole loop: every other task
    stalls with it. The :class:`~buttress.BlockingCallWarning` names the coroutine form,
    whose wrapper waits with the loop free.
    """
    key = (id(owner), function)
    if key in _warned:
        return
    loop = running_loop()
    if loop is None:
        return
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    bound = "with no limit" if seconds is None else f"up to {seconds:g}s"
    short = function.rpartition(".")[2]
    warn(
        f"{function}() is a plain function, and @{decorator} is about to wait ({bound}) on "
        f"the thread that runs the {loop} event loop: nothing else on the loop runs until "
        f"the wait ends. Define it as a coroutine function (async def {short}(...)), whose "
        f"@{decorator} waits with the loop free, or call it in a worker thread "
        f"(await anyio.to_thread.run_sync(...)). Given once per function.",
        BlockingCallWarning,
    )


def sync_sleep(seconds: float, owner: object, function: str, decorator: str) -> None:
    """Sleep this thread for ``decorator``'s ``def`` form, through the current clock.

    A positive wait is first checked by :func:`blocking_wait`.
    """
    if seconds > 0:
        blocking_wait(owner, function, decorator, seconds)
    sleep(seconds)
