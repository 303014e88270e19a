"""The one clock every decorator reads and sleeps through.

Decorators call ``_clock.monotonic()``, ``_clock.sleep()`` and ``await _clock.async_sleep()``
through this module at call time (never ``from ._clock import sleep``), so that
:mod:`buttress.testing` can swap all three at once for a fake clock. The real ones are the
functions themselves, not wrappers around them: reading the clock on a hot path costs one
module attribute lookup and the call.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio

__all__ = ["Clock", "async_sleep", "install", "monotonic", "sleep"]


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
