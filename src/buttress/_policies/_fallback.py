"""@fallback: answer with a safe default when the call fails.

On a stream the answer replaces the stream only while no item has reached the caller:
its items (:func:`buttress._streams.answer_items`) are relayed in place of the failed
stream's. A failure after the first item propagates: an answer cannot be spliced into
items the caller already has.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from buttress import _settings
from buttress._declare import suggests_keywords
from buttress._errors import ConfigurationError, is_fatal
from buttress._events import FallbackUsed, events
from buttress._settings import ExceptionTypes
from buttress._streams import (
    Restart,
    Session,
    answer_items,
    async_stream_shell,
    sync_stream_shell,
)
from buttress._wrapping import WrapperFactory, stack_name, wrap

__all__ = ["fallback"]

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

_UNSET: Any = object()


class _Answer:
    """What to answer with instead of the error: plain decisions, no I/O."""

    __slots__ = ("exceptions", "factory", "value")

    def __init__(
        self,
        value: Any,
        factory: Callable[[Exception], Any] | None,
        exceptions: tuple[type[BaseException], ...],
    ) -> None:
        self.value = value
        self.factory = factory
        self.exceptions = exceptions

    def applies(self, exc: BaseException) -> bool:
        return isinstance(exc, self.exceptions) and not is_fatal(exc)

    def make(self, exc: BaseException, function: str) -> Any:
        """The replacement answer (possibly an awaitable, from an async factory)."""
        if events.notable():
            events.emit(FallbackUsed(function=function, error=exc))
        factory = self.factory
        # The factory is typed for Exception, what users catch; a non-fatal BaseException
        # reaches it only when they listed one in ``exceptions`` themselves.
        return self.value if factory is None else factory(exc)  # type: ignore[arg-type]


def _sync_shell(answer: _Answer) -> WrapperFactory:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        stack = stack_name(fn)

        def fallback_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except BaseException as exc:
                if not answer.applies(exc):
                    raise
                result = answer.make(exc, stack.value)
            if inspect.isawaitable(result):
                _close(result)
                raise TypeError(
                    f"@fallback: the factory of {stack.value}(), a plain function, returned an "
                    "awaitable; use a plain factory for a plain function"
                )
            return result

        return fallback_wrapper

    return build


def _close(awaitable: object) -> None:
    # Close an un-awaited coroutine so it does not warn "never awaited" on top.
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()


def _async_shell(answer: _Answer) -> WrapperFactory:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        stack = stack_name(fn)

        async def fallback_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except BaseException as exc:
                if not answer.applies(exc):
                    raise
                result = answer.make(exc, stack.value)
            # Outside the except block: the error is handled, so no traceback is kept
            # alive while an async factory runs.
            if inspect.isawaitable(result):
                return await result
            return result

        return fallback_wrapper

    return build


class _FallbackRun(Session):
    """One run of a stream under ``@fallback``: answered only before its first item."""

    __slots__ = ("answer", "asynchronous", "fresh", "name")

    watches_items = True
    restarts = True

    def __init__(self, answer: _Answer, name: str, asynchronous: bool) -> None:
        self.answer = answer
        self.name = name
        self.asynchronous = asynchronous
        self.fresh = True

    def item(self, item: Any) -> None:
        self.fresh = False

    def failed(self, error: BaseException) -> Restart | None:
        if not self.fresh or not self.answer.applies(error):
            return None
        self.fresh = False  # the answer's items are not answered again
        items = answer_items(self.answer.make(error, self.name), asynchronous=self.asynchronous)
        return Restart(0.0, source=items)


def _sync_stream_shell(answer: _Answer) -> WrapperFactory:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        stack = stack_name(fn)
        return sync_stream_shell(lambda args, kwargs: _FallbackRun(answer, stack.value, False))(fn)

    return build


def _async_stream_shell(answer: _Answer) -> WrapperFactory:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        stack = stack_name(fn)

        async def open_run(args: tuple[Any, ...], kwargs: dict[str, Any]) -> _FallbackRun:
            return _FallbackRun(answer, stack.value, True)

        return async_stream_shell(open_run)(fn)

    return build


class _SyncOrAsync(Protocol[R_co]):
    """Decorates a plain or a coroutine function; its result may also be the fallback's."""

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, T]], /
    ) -> Callable[P, Coroutine[Any, Any, T | R_co]]: ...

    @overload
    def __call__(self, fn: Callable[P, T], /) -> Callable[P, T | R_co]: ...


@overload
def fallback(  # type: ignore[overload-overlap]
    fn: Callable[P, Coroutine[Any, Any, T]], /
) -> Callable[P, Coroutine[Any, Any, T | None]]: ...


@overload
def fallback(fn: Callable[P, T], /) -> Callable[P, T | None]: ...  # type: ignore[overload-overlap]


@overload
def fallback(
    value: R,
    /,
    *,
    exceptions: ExceptionTypes = (Exception,),
) -> _SyncOrAsync[R]: ...


@overload
def fallback(  # type: ignore[overload-overlap]
    *,
    factory: Callable[[Exception], Coroutine[Any, Any, R]],
    exceptions: ExceptionTypes = (Exception,),
) -> Callable[[Callable[P, Coroutine[Any, Any, T]]], Callable[P, Coroutine[Any, Any, T | R]]]: ...


@overload
def fallback(
    *,
    factory: Callable[[Exception], R],
    exceptions: ExceptionTypes = (Exception,),
) -> _SyncOrAsync[R]: ...


@overload
def fallback(
    *,
    exceptions: ExceptionTypes = (Exception,),
) -> _SyncOrAsync[None]: ...


@suggests_keywords
def fallback(
    value: Any = _UNSET,
    /,
    *,
    exceptions: ExceptionTypes = (Exception,),
    factory: Callable[[Exception], Any] | None = None,
) -> Any:
    """Return a safe default instead of raising, when the call fails with ``exceptions``.

    Use it outermost but for monitoring and validation (see the stacking order): it turns
    what retries, breakers, bulkheads, rate limits and timeouts finally give up on into an
    answer the caller can serve (an empty ranking, a cached embedding, a "degraded" flag).

    Args:
        value: the answer to return (``None`` when neither it nor ``factory`` is given).
            The same object is returned every time: use ``factory`` for a fresh mutable
            default.
        exceptions: the error types to replace; others propagate. Cancellation,
            ``KeyboardInterrupt`` and ``SystemExit`` always propagate, even with
            ``(BaseException,)``.
        factory: called with the error to build the answer instead of ``value``. For a
            coroutine function it may be ``async`` (its result is awaited).

    Raises:
        ConfigurationError: at decoration, when both ``value`` and ``factory`` are given,
            ``factory`` is not callable, or ``exceptions`` is not exception types.

    Each replacement emits :class:`FallbackUsed` with the error. Works on ``def`` and
    ``async def``; usable bare (``@fallback`` answers ``None``).

    On a stream (a generator or async-generator function) the answer replaces the
    stream when it fails before its first item: its items are yielded instead. The
    answer is read as items: ``None`` is none (so ``@fallback`` ends the stream
    quietly), a ``str`` or ``bytes`` is one item, and an iterable (or, for an async
    stream, an async iterable) gives its own. A failure after the first item
    propagates: an answer cannot be spliced into items the caller already has.
    """
    if callable(value) and factory is None and exceptions == (Exception,):
        # Bare use: @fallback applied straight to a function. (A callable *value* is
        # still possible: pass it with exceptions=... or through factory=lambda _: value.)
        return fallback()(value)
    if value is not _UNSET and factory is not None:
        raise ConfigurationError("give fallback either a value or a factory, not both")
    if factory is not None and not callable(factory):
        raise ConfigurationError(f"factory must be callable, got {factory!r}")
    answer = _Answer(
        None if value is _UNSET else value,
        factory,
        _settings.exception_types(exceptions, "exceptions"),
    )
    sync, async_ = _sync_shell(answer), _async_shell(answer)
    stream, astream = _sync_stream_shell(answer), _async_stream_shell(answer)

    def decorate(target: Callable[..., Any]) -> Any:
        return wrap(target, "fallback", sync=sync, async_=async_, stream=stream, astream=astream)

    return decorate
