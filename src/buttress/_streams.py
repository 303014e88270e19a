"""The one relay behind every decorated stream (generator and async-generator functions).

A stream's body runs when it is iterated, not when it is called, so a decorator cannot
act around the call the way it does for a function. Each decorator that supports streams
describes instead what it does around one *run* of a stream, as a :class:`Session`:
what it takes before the first item (a bulkhead slot, a rate-limit start, a breaker
ticket), what it sees of each item, how long each step may take, whether a failure
restarts the stream, and what it gives back when the stream ends. The two drivers here,
:func:`async_stream_shell` and :func:`sync_stream_shell`, are the only code that iterates
the decorated generator: they relay items to the caller (and values sent or errors thrown
into the wrapper to the generator), bound steps, restart, close the generator, and tell
the session how the stream ended, exactly once.

How a stream ends (:data:`Outcome`):

``"completed"``
    the generator returned.
``"failed"``
    it raised (before or after its first item), or a step ran past its limit.
``"cancelled"``
    a cancellation (or ``KeyboardInterrupt``/``SystemExit``) came through it.
``"abandoned"``
    the caller stopped iterating: ``aclose()``/``close()``, the garbage collector
    finalising an unfinished generator (``break`` out of ``async for``), or an error the
    caller threw in with ``athrow()`` coming back out.

The wrappers are generator functions of the same kind as the function they wrap
(``inspect.isasyncgenfunction`` tells the truth), so decorators stack on streams as they
stack on functions, and a session's admission runs at the first ``__anext__``, when the
stream's own body would start. Nothing is held before that: a stream that is created and
never iterated takes no slot.

No step is ever awaited inside a cancel scope that spans a ``yield``: a limit is a scope
around one step of the generator, entered and left before the item is relayed (yielding
inside a cancel scope would hand the scope to the caller's code).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, ClassVar, Literal

from . import _clock
from ._deadline import Deadline
from ._errors import is_fatal
from ._wrapping import WrapperFactory, function_name

__all__ = [
    "Holding",
    "Outcome",
    "Restart",
    "Session",
    "answer_items",
    "async_items",
    "async_stream_shell",
    "sync_items",
    "sync_stream_shell",
]

Outcome = Literal["completed", "failed", "cancelled", "abandoned"]


class Restart:
    """A session's answer to a failure: run the stream again after ``delay`` seconds.

    The next run calls the function with ``args`` and ``kwargs``, or relays ``source``
    (an iterable, or for an async stream an async iterable too) when one is given.
    """

    __slots__ = ("args", "delay", "kwargs", "source")

    def __init__(
        self,
        delay: float,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        source: Any = None,
    ) -> None:
        self.delay = delay
        self.args = args
        self.kwargs = kwargs if kwargs is not None else {}
        self.source = source


class Session:
    """One decorator's part in one run of a stream. The drivers call its hooks.

    The base class does nothing; a decorator overrides what it needs and sets the flags
    that tell the driver which hooks to call, so a stream pays per item only for the
    hooks some session uses.
    """

    __slots__ = ()

    #: :meth:`item` is called with each item before it reaches the caller.
    watches_items: ClassVar[bool] = False
    #: :meth:`limit` bounds each step; :meth:`expired` is the error for one that overran.
    limits_steps: ClassVar[bool] = False
    #: :meth:`failed` is asked about each failure, and may restart the stream.
    restarts: ClassVar[bool] = False

    def begin(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Start the stream: the generator (or an iterable relayed in its place)."""
        return fn(*args, **kwargs)

    def item(self, item: Any) -> None:
        """An item is about to reach the caller."""

    def limit(self) -> float | None:
        """Seconds the next step may take, or ``None``; at most 0 fails at once."""
        return None

    def expired(self) -> BaseException:
        """The error for a step that ran past :meth:`limit` (it was cancelled)."""
        raise NotImplementedError

    def failed(self, error: BaseException) -> Restart | None:
        """The stream raised ``error`` (not a cancellation): restart it, or ``None``."""
        return None

    def end(self, outcome: Outcome, error: BaseException | None) -> None:
        """The stream ended (once, whatever happened); give back what was taken."""


class Holding(Session):
    """A session that gives back what its admission took (a slot) when the stream ends.

    It keeps no state of its own, so one serves every run of a function.
    """

    __slots__ = ("release",)

    def __init__(self, release: Callable[[], object]) -> None:
        self.release = release

    def end(self, outcome: Outcome, error: BaseException | None) -> None:
        self.release()


async def async_items(source: Any) -> AsyncIterator[Any]:
    """Relay an iterable or async iterable as an async generator (a restart's ``source``)."""
    if hasattr(source, "__aiter__"):
        async for item in source:
            yield item
    else:
        for item in source:
            yield item


def sync_items(source: Iterable[Any]) -> Iterator[Any]:
    """Relay an iterable as a generator (a restart's ``source`` in a sync stream)."""
    yield from source


async def _awaited_items(answer: Awaitable[Any]) -> AsyncIterator[Any]:
    async for item in async_items(answer_items(await answer, asynchronous=True)):
        yield item


def answer_items(answer: Any, *, asynchronous: bool) -> Any:
    """The items a stream yields in place of a replacement answer (a fallback, a default).

    ``None`` is no item; a ``str`` or ``bytes`` is one item (a message, not its
    characters); an iterable (or, for an async stream, an async iterable) gives its
    items; an awaitable (an async factory's answer, async streams only) is awaited first.

    Raises:
        TypeError: for anything else, or an awaitable in a plain stream.
    """
    if answer is None:
        return ()
    if isinstance(answer, (str, bytes)):
        return (answer,)
    if asynchronous:
        if inspect.isawaitable(answer):
            return _awaited_items(answer)
        if hasattr(answer, "__aiter__"):
            return answer
    if hasattr(answer, "__iter__"):
        return answer
    close = getattr(answer, "close", None)
    if inspect.iscoroutine(answer) and callable(close):
        close()  # not awaited: no "never awaited" warning on top of the error
    raise TypeError(
        "a stream's replacement answer must be its items (an iterable"
        + (", an async iterable" if asynchronous else "")
        + f", a str or None), got {type(answer).__name__}"
    )


def _outcome(error: BaseException, thrown: BaseException | None) -> Outcome:
    if error is thrown:  # the caller's own error, thrown in and not handled
        return "abandoned"
    return "cancelled" if is_fatal(error) else "failed"


def async_stream_shell(open_session: Callable[..., Any]) -> WrapperFactory:
    """Wrap async-generator functions; ``await open_session(args, kwargs)`` admits a run.

    ``open_session`` takes what the run needs (it may wait, or raise to refuse the run)
    and returns the :class:`Session`; from then on the session's :meth:`Session.end` runs
    exactly once, however the stream ends.
    """

    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        async def stream_wrapper(*args: Any, **kwargs: Any) -> Any:
            session: Session = await open_session(args, kwargs)
            outcome: Outcome = "abandoned"
            error: BaseException | None = None
            thrown: BaseException | None = None
            source: Any = None
            try:
                source = session.begin(fn, args, kwargs)
                if not hasattr(source, "asend"):
                    source = async_items(source)
                watch = session.item if session.watches_items else None
                limited = session.limits_steps
                restarts = session.restarts
                step, value = source.asend, None
                while True:
                    try:
                        if limited and (limit := session.limit()) is not None:
                            if limit <= 0:
                                raise session.expired()
                            # The one place a step is bounded. Every bounded step pays for
                            # a scope, even one whose item is ready: starting the step by
                            # hand and entering the scope only if it suspends would nest
                            # the scope inside any the generator entered meanwhile, which
                            # trio (and anyio) refuse.
                            with Deadline(limit) as scope:
                                item = await step(value)
                            if scope.expired:
                                raise session.expired()
                        else:
                            item = await step(value)
                    except StopAsyncIteration:
                        outcome = "completed"
                        return
                    except BaseException as exc:
                        if not restarts or exc is thrown or is_fatal(exc):
                            raise
                        restart = session.failed(exc)
                        if restart is None:
                            raise
                    else:
                        if watch is not None:
                            watch(item)
                        try:
                            value = yield item
                        except GeneratorExit:
                            raise
                        except BaseException as exc:  # athrow(): the generator gets it
                            step, value, thrown = source.athrow, exc, exc
                        else:
                            step, thrown = source.asend, None
                        continue
                    # A restart, outside the except block: no error is kept alive while
                    # the session's delay is slept.
                    await source.aclose()
                    source = None
                    if restart.delay:
                        await _clock.async_sleep(restart.delay)
                    if restart.source is not None:
                        source = async_items(restart.source)
                    else:
                        source = fn(*restart.args, **restart.kwargs)
                    step, value, thrown = source.asend, None, None
            except GeneratorExit:
                raise
            except BaseException as exc:
                outcome, error = _outcome(exc, thrown), exc
                raise
            finally:
                try:
                    if source is not None:
                        await source.aclose()
                finally:
                    session.end(outcome, error if outcome != "abandoned" else None)

        return stream_wrapper

    return build


def sync_stream_shell(open_session: Callable[..., Session]) -> WrapperFactory:
    """Wrap generator functions; ``open_session(args, kwargs)`` admits a run.

    As :func:`async_stream_shell`, for plain generators: waits sleep the thread, and no
    step is bounded (a running thread cannot be cancelled).
    """

    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        def stream_wrapper(*args: Any, **kwargs: Any) -> Any:
            session = open_session(args, kwargs)
            outcome: Outcome = "abandoned"
            error: BaseException | None = None
            thrown: BaseException | None = None
            source: Any = None
            try:
                source = session.begin(fn, args, kwargs)
                if not hasattr(source, "send"):
                    source = sync_items(source)
                watch = session.item if session.watches_items else None
                restarts = session.restarts
                step, value = source.send, None
                while True:
                    try:
                        item = step(value)
                    except StopIteration:
                        outcome = "completed"
                        return
                    except BaseException as exc:
                        if not restarts or exc is thrown or is_fatal(exc):
                            raise
                        restart = session.failed(exc)
                        if restart is None:
                            raise
                    else:
                        if watch is not None:
                            watch(item)
                        try:
                            value = yield item
                        except GeneratorExit:
                            raise
                        except BaseException as exc:  # throw(): the generator gets it
                            step, value, thrown = source.throw, exc, exc
                        else:
                            step, thrown = source.send, None
                        continue
                    source.close()
                    source = None
                    if restart.delay:  # a retry's backoff between runs
                        _clock.sync_sleep(restart.delay, fn, function_name(fn), "retry")
                    if restart.source is not None:
                        source = sync_items(restart.source)
                    else:
                        source = fn(*restart.args, **restart.kwargs)
                    step, value, thrown = source.send, None, None
            except GeneratorExit:
                raise
            except BaseException as exc:
                outcome, error = _outcome(exc, thrown), exc
                raise
            finally:
                try:
                    if source is not None:
                        source.close()
                finally:
                    session.end(outcome, error if outcome != "abandoned" else None)

        return stream_wrapper

    return build
