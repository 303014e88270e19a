"""@timeout: cancel a coroutine that runs past its limit; the caller gets a TimeoutError.

Coroutine functions only. A running thread cannot be cancelled: a "timeout" on a plain
function could only stop waiting for it while it runs on, holding its connections,
memory and GPU, and finishing its side effects after the caller was told it failed.
Rather than pretend, ``@timeout`` refuses plain functions at decoration with a
``TypeError`` that says what to do instead.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar

import anyio

from buttress import _settings
from buttress._errors import CallTimeoutError
from buttress._events import TimedOut, events
from buttress._wrapping import WrapperFactory, function_name, wrap

__all__ = ["timeout"]

P = ParamSpec("P")
T = TypeVar("T")


#: Why @timeout refuses plain functions, and the way out.
_WHY = (
    "a running thread cannot be cancelled, only abandoned while it runs on. Make the "
    "function async, or, if abandoning it is acceptable, call it through an async wrapper "
    "with anyio.to_thread.run_sync(fn, abandon_on_cancel=True) and time that out"
)


def _async_shell(seconds: float) -> WrapperFactory:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        name = function_name(fn)

        async def timeout_wrapper(*args: Any, **kwargs: Any) -> Any:
            # move_on_after catches only its own cancellation: a cancellation from outside
            # (the caller's own scope, a task group) passes through unchanged.
            with anyio.move_on_after(seconds):
                return await fn(*args, **kwargs)
            if events.active:
                events.emit(TimedOut(function=name, seconds=seconds))
            raise CallTimeoutError(
                f"{name}() did not finish within {seconds:g}s and was cancelled",
                seconds=seconds,
                function=name,
            )

        return timeout_wrapper

    return build


def timeout(
    seconds: float | timedelta,
) -> Callable[[Callable[P, Coroutine[Any, Any, T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Cancel the call when it has run for ``seconds``; raise :class:`CallTimeoutError`.

    The coroutine is cancelled through anyio (a cancel scope, on asyncio and trio alike),
    so its ``finally`` blocks and ``async with`` exits run before the caller gets a
    :class:`CallTimeoutError`, which is a ``TimeoutError`` and a ``ButtressError``.
    Cancellation coming from outside is never turned into a timeout: it propagates as it
    is. A function that finishes just as the limit passes keeps its result.

    Placed outside ``@retry`` it bounds the whole call, retries and waits included;
    placed inside (next to the function) it bounds each attempt, and ``@retry`` retries
    the ``TimeoutError`` as it would any error (see ``attempt_timeout`` too).

    The limit is measured by the event loop's own clock, not the ``buttress`` clock:
    :func:`buttress.testing.testing_mode` does not speed it up.

    Args:
        seconds: the limit, in seconds or as a ``timedelta``; must be positive.

    Raises:
        ConfigurationError: at decoration, for a limit that is not a positive duration.
        TypeError: at decoration, for a plain (not ``async``) function: a thread cannot
            be cancelled. The message shows how to run it in a worker thread and abandon
            it, if that is truly acceptable.
        CallTimeoutError: at call time, when the limit passes first. Emits
            :class:`TimedOut`.
    """
    limit = _settings.seconds(seconds, "seconds", allow_zero=False)
    async_ = _async_shell(limit)

    def decorate(target: Callable[..., Any]) -> Any:
        return wrap(target, "timeout", sync=None, async_=async_, why=_WHY)

    return decorate
