"""@timeout: cancel a coroutine that runs past its limit; the caller gets a TimeoutError.

Coroutine functions, async-generator functions (streams) and ``async with`` blocks. A
running thread cannot be cancelled: a "timeout" on a plain function could only stop
waiting for it while it runs on, holding its connections, memory and GPU, and finishing
its side effects after the caller was told it failed. Rather than pretend, ``@timeout``
refuses plain functions and generators at decoration (and ``with timeout(...)``) with a
``TypeError`` that says what to do instead.

One :class:`Timeout` holds the limits; the call shell, the stream session and the block
all bound their waits with the one deadline of :mod:`buttress._deadline` (anyio's
cancel semantics on asyncio and trio alike) and report the same
:class:`CallTimeoutError` and :class:`TimedOut` event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import timedelta
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

import anyio

from buttress import _settings
from buttress._blocks import Entries, caller_name
from buttress._deadline import Deadline
from buttress._declare import suggests_keywords
from buttress._errors import CallTimeoutError, ConfigurationError, StreamTimeoutError
from buttress._events import TimedOut, events
from buttress._streams import Session, async_stream_shell
from buttress._wrapping import StackName, WrapperFactory, function_name, stack_name, wrap

__all__ = ["Timeout", "timeout"]

P = ParamSpec("P")
T = TypeVar("T")
AI = TypeVar("AI", bound=AsyncIterator[Any])


#: Why @timeout refuses plain functions, and the way out.
_WHY = (
    "a running thread cannot be cancelled, only abandoned while it runs on. Make the "
    "function async, or, if abandoning it is acceptable, call it through an async wrapper "
    "with anyio.to_thread.run_sync(fn, abandon_on_cancel=True) and time that out"
)
_WHY_STREAM = (
    "a running thread cannot be cancelled, only abandoned while it runs on. Make it an "
    "async generator (async def ... yield)"
)


def _async_shell(seconds: float) -> WrapperFactory:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        stack = stack_name(fn)

        async def timeout_wrapper(*args: Any, **kwargs: Any) -> Any:
            # The deadline swallows only its own cancellation: a cancellation from outside
            # (the caller's own scope, a task group) passes through unchanged.
            with Deadline(seconds):
                return await fn(*args, **kwargs)
            name = stack.value
            if events.active:
                events.emit(TimedOut(function=name, seconds=seconds))
            raise CallTimeoutError(
                f"{name}() did not finish within {seconds:g}s and was cancelled",
                seconds=seconds,
                function=name,
            )

        return timeout_wrapper

    return build


# --- streams -------------------------------------------------------------------------


class _StreamLimits(Session):
    """The limits of one run of a stream: to its first item, between items, in total.

    Each step (from asking for an item to getting it) is bounded by the nearest limit;
    the total deadline runs from the first ``__anext__`` and counts the caller's time
    between items too (a stream held open by a slow reader still ends on time: its next
    step fails at once).
    """

    __slots__ = ("deadline", "limits", "name", "phase", "seconds", "steps")

    limits_steps = True

    def __init__(self, limits: Timeout, name: StackName) -> None:
        self.limits = limits
        self.name = name
        total = limits.seconds
        self.deadline = None if total is None else anyio.current_time() + total
        self.steps = 0  # steps started; the items delivered are one fewer
        self.phase = ""
        self.seconds = 0.0

    def limit(self) -> float | None:
        limits = self.limits
        step = limits.first_item if self.steps == 0 else limits.idle
        self.steps += 1
        deadline = self.deadline
        if deadline is not None:
            left = deadline - anyio.current_time()
            if step is None or left < step:
                self.phase, self.seconds = "total", limits.seconds or 0.0
                return left
        if step is None:
            return None
        self.phase = "first_item" if self.steps == 1 else "idle"
        self.seconds = step
        return step

    def expired(self) -> BaseException:
        name, seconds, items = self.name.value, self.seconds, self.steps - 1
        if events.active:
            events.emit(TimedOut(function=name, seconds=seconds))
        if self.phase == "first_item":
            what = f"delivered no item within first_item={seconds:g}s"
        elif self.phase == "idle":
            what = f"delivered no item for idle={seconds:g}s after item {items}"
        else:
            what = f"did not end within {seconds:g}s (after {items} item(s))"
        return StreamTimeoutError(
            f"{name}() {what} and was cancelled",
            seconds=seconds,
            function=name,
            limit=self.phase,
            items=items,
        )


def _async_stream_shell(limits: Timeout) -> WrapperFactory:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        name = stack_name(fn)

        async def open_run(args: tuple[Any, ...], kwargs: dict[str, Any]) -> _StreamLimits:
            return _StreamLimits(limits, name)

        return async_stream_shell(open_run)(fn)

    return build


# --- the object behind the decorator and the block --------------------------------------


class Timeout:
    """The limits of one ``timeout(...)``: a decorator, and an ``async with`` block.

    ``@timeout(5)`` bounds each call of a coroutine function; on an async-generator
    function, ``seconds``, ``first_item`` and ``idle`` bound the stream. ``async with
    timeout(5):`` bounds a block. One object may decorate several functions and bound
    blocks in many tasks at once.

    Attributes:
        seconds: the limit of a call or block, and a stream's total deadline.
        first_item: a stream's limit from its start to its first item.
        idle: a stream's limit from asking for each next item to getting it.
    """

    __slots__ = ("_async", "_blocks", "_stream", "first_item", "idle", "seconds")

    def __init__(
        self, seconds: float | None, first_item: float | None, idle: float | None
    ) -> None:
        self.seconds = seconds
        self.first_item = first_item
        self.idle = idle
        self._async = None if seconds is None else _async_shell(seconds)
        self._stream = _async_stream_shell(self)
        self._blocks: Entries[tuple[Deadline, str]] = Entries()

    def __repr__(self) -> str:
        limits = [
            f"{name}={value:g}"
            for name, value in (
                ("seconds", self.seconds),
                ("first_item", self.first_item),
                ("idle", self.idle),
            )
            if value is not None
        ]
        return f"timeout({', '.join(limits)})"

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, T]], /
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...

    @overload
    def __call__(self, fn: Callable[P, AI], /) -> Callable[P, AI]: ...

    def __call__(self, fn: Callable[..., Any], /) -> Any:
        """Decorate a coroutine function or an async-generator function."""
        return wrap(
            fn,
            "timeout",
            sync=None,
            async_=self._async or self._refuse_call,
            astream=self._stream,
            why=_WHY,
            stream_why=_WHY_STREAM,
        )

    def _refuse_call(self, fn: Callable[..., Any]) -> Any:
        raise TypeError(
            f"@{self!r} cannot decorate {function_name(fn)}(), a coroutine function: "
            "first_item and idle bound the items of a stream (an async generator); give "
            "seconds= to bound a call"
        )

    # --- the block --------------------------------------------------------------------

    async def __aenter__(self) -> Timeout:
        seconds = self.seconds
        if seconds is None:
            raise TypeError(
                f"async with {self!r}: a block needs seconds=; first_item and idle bound "
                "the items of a stream"
            )
        scope = Deadline(seconds)
        scope.__enter__()
        self._blocks.push((scope, caller_name()))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        scope, name = self._blocks.pop()
        # The scope catches only its own cancellation; others pass through unchanged.
        if scope.__exit__(exc_type, exc, tb) and scope.expired:
            seconds = self.seconds or 0.0
            if events.active:
                events.emit(TimedOut(function=name, seconds=seconds))
            raise CallTimeoutError(
                f"a block in {name}() did not finish within {seconds:g}s and was cancelled",
                seconds=seconds,
                function=name,
            )

    def __enter__(self) -> None:
        raise TypeError(f"`with {self!r}` cannot bound a plain block: {_WHY_BLOCK}")

    def __exit__(self, *exc_info: object) -> None:  # pragma: no cover - never entered
        return None


_WHY_BLOCK = (
    "a running thread cannot be cancelled. Use `async with` in a coroutine, or run the "
    "blocking work with anyio.to_thread.run_sync and time that out"
)


@suggests_keywords
def timeout(
    seconds: float | timedelta | None = None,
    *,
    first_item: float | timedelta | None = None,
    idle: float | timedelta | None = None,
) -> Timeout:
    """Cancel a call, a stream or a block that runs past its limit; raise a TimeoutError.

    The coroutine is cancelled with anyio's semantics (on trio an anyio cancel scope, on
    asyncio a timer on the loop that waits for a shield entered inside the call), so its
    ``finally`` blocks and ``async with`` exits run before the caller gets a
    :class:`CallTimeoutError`, which is a ``TimeoutError`` and a ``ButtressError``.
    Cancellation coming from outside is never turned into a timeout: it propagates as it is.
    A function that finishes just as the limit passes keeps its result.

    Placed outside ``@retry`` it bounds the whole call, retries and waits included;
    placed inside (next to the function) it bounds each attempt, and ``@retry`` retries
    the ``TimeoutError`` as it would any error (see ``attempt_timeout`` too).

    On an async-generator function (a stream) there are three limits, each optional:
    ``first_item`` (from the first ``__anext__`` to the first item: connecting, the
    model's first token), ``idle`` (from asking for each next item to getting it: a
    stalled stream) and ``seconds`` (the total deadline from the first ``__anext__``,
    the caller's time between items included). The generator is cancelled where it
    waits and closed, and the caller gets :class:`StreamTimeoutError` (a
    :class:`CallTimeoutError`) in place of the next item, saying which ``limit`` passed
    and how many ``items`` had been delivered.

    ``async with timeout(5):`` bounds a block the same way. What it adds to anyio's
    ``fail_after``: the error is a :class:`CallTimeoutError` (so ``@fallback``,
    ``@retry`` and a gateway's error handler treat it as they treat a decorated call's),
    each timeout emits :class:`TimedOut` (``buttress_timeouts_total``, named after the
    function the block is in), the limit may be a ``timedelta``, and one object serves
    as a decorator and as a block in many tasks at once. ``with timeout(...)`` (sync)
    raises ``TypeError``.

    The limits are measured by the event loop's own clock, not the ``buttress`` clock:
    :func:`buttress.testing.testing_mode` does not speed them up.

    Args:
        seconds: the limit of a call or block, or a stream's total deadline; in seconds
            or as a ``timedelta``; must be positive.
        first_item: streams only: the limit to the first item.
        idle: streams only: the limit between items.

    Raises:
        ConfigurationError: at decoration, for a limit that is not a positive duration,
            or no limit at all.
        TypeError: at decoration, for a plain function or generator (a thread cannot be
            cancelled; the message shows how to run it in a worker thread and abandon it,
            if that is truly acceptable), or for a coroutine function without
            ``seconds``.
        CallTimeoutError: at call time, when the limit passes first
            (:class:`StreamTimeoutError` for a stream). Emits :class:`TimedOut`.
    """
    limits = (
        _settings.optional_seconds(seconds, "seconds", allow_zero=False),
        _settings.optional_seconds(first_item, "first_item", allow_zero=False),
        _settings.optional_seconds(idle, "idle", allow_zero=False),
    )
    if limits == (None, None, None):
        raise ConfigurationError(
            "timeout() needs a limit: seconds (a call, a block or a whole stream), "
            "first_item or idle (a stream)"
        )
    return Timeout(*limits)
