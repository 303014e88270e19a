"""@batch: many concurrent single-item calls become one call of a batch function.

The decisions are :class:`._engine.Batcher`'s. Here are the shells, which only wait and
call. A caller of ``fn.one(item)`` submits its item and waits on an event of its own.
Each batch has a driver: for a coroutine function, a task started on the callers' event
loop (asyncio or trio); for a plain function, a thread. The driver sleeps until the batch
is full or ``max_wait`` is up, calls the function once with the items, and hands the
answer to the engine, which wakes each caller with its own result or error.

Why a task of its own rather than one of the callers: the batch must outlive any caller.
A caller cancelled after the batch was sent only stops waiting; were the call running in
its task, cancelling it would cancel everyone's batch. anyio has no way to start a task
outside a task group, so the driver is started with the running backend's own call
(``loop.create_task`` for asyncio, ``trio.lowlevel.spawn_system_task`` for trio), and it
catches everything but cancellation itself.

Batches never mix event loops: each loop's callers gather in batches of their own (the
function may hold loop-bound clients, such as an aiohttp session), and nothing is bound to
a loop before the first call. ``max_concurrency`` and ``max_queue`` hold for the whole
process, across loops and threads.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import threading
import types
import typing
from collections.abc import Callable, Coroutine, Hashable, Sequence
from datetime import timedelta
from typing import Any, Protocol, TypeVar, overload

import anyio
import numpy as np

from buttress import _clock, _settings
from buttress._declare import suggests_keywords
from buttress._errors import ConfigurationError, is_fatal
from buttress._signature import signature_of
from buttress._wrapping import (
    function_module,
    function_name,
    is_async_callable,
    stack_name,
    wrap,
)

from ._engine import DROPPED, OPEN, START, WAKE, Batch, Batcher, Slot

__all__ = ["AsyncBatchedFunction", "BatchedFunction", "batch"]

I = TypeVar("I")  # noqa: E741 - an item, as in the docs
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
A = TypeVar("A", bound="np.ndarray[Any, Any]")  # an array returned whole: rows alike

#: The tasks of running batches (asyncio keeps only weak references to its tasks).
_tasks: set[asyncio.Task[Any]] = set()


# --- where a batch runs ------------------------------------------------------------------


def _trio_token() -> Any:
    """The token of the running trio loop, or ``None`` outside ``trio.run``."""
    trio = sys.modules.get("trio")  # imported by whoever runs trio; never by us
    if trio is None:
        return None
    try:  # (trio.lowlevel.in_trio_run() is newer than the oldest trio anyio supports)
        return trio.lowlevel.current_trio_token()
    except RuntimeError:
        return None


def _home() -> Any:
    """The current event loop: a trio token under trio, else the asyncio loop."""
    token = _trio_token()
    return token if token is not None else asyncio.get_running_loop()


def _create_task(
    loop: asyncio.AbstractEventLoop,
    run: Callable[[Batch], Coroutine[Any, Any, None]],
    batch: Batch,
) -> None:
    # Inside (a copy of) the batch's context, so that the task runs in a copy of it.
    task = batch.context.copy().run(loop.create_task, run(batch))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def _spawn_task(run: Callable[[Batch], Coroutine[Any, Any, None]], batch: Batch) -> None:
    """Start ``run(batch)`` as a task of ``batch.home``, from any thread.

    Raises:
        RuntimeError: that event loop has finished (trio's ``RunFinishedError`` is one).
    """
    home = batch.home
    if isinstance(home, asyncio.AbstractEventLoop):
        try:
            here = asyncio.get_running_loop() is home
        except RuntimeError:
            here = False
        if here:
            _create_task(home, run, batch)
        else:  # a slot freed by a batch of another loop, on another thread
            home.call_soon_threadsafe(_create_task, home, run, batch)
        return
    trio = sys.modules["trio"]
    spawn = functools.partial(
        trio.lowlevel.spawn_system_task, run, batch, context=batch.context.copy()
    )
    if _trio_token() is home:
        spawn()
    else:
        home.run_sync_soon(spawn)


def _spawn_thread(run: Callable[[Batch], None], batch: Batch, name: str) -> None:
    # Not a daemon: a batch in flight is finished before the interpreter exits.
    threading.Thread(
        target=batch.context.copy().run, args=(run, batch), name=f"buttress-batch {name}"
    ).start()


# --- the shells --------------------------------------------------------------------------


def _async_one(batcher: Batcher, fn: Callable[..., Any]) -> Callable[[Any], Any]:
    submit, leave = batcher.submit, batcher.leave

    async def drive(batch: Batch) -> None:
        """The batch's own task: gather until full or max_wait, then send."""
        if batch.state == OPEN:  # not filled up before this task got to run
            with batch.timer:  # cancelled when the batch fills up, or every caller leaves
                await _clock.async_sleep(batcher.max_wait)
        items, started = batcher.due(batch)
        launch(started)
        if items is not None:
            await call(batch, items)

    async def start(batch: Batch) -> None:
        """A batch that waited for a slot under max_concurrency got one."""
        items, started = batcher.due(batch)
        launch(started)
        if items is not None:
            await call(batch, items)

    async def call(batch: Batch, items: list[Any]) -> None:
        try:
            result = await fn(items)
        except BaseException as exc:
            if is_fatal(exc):  # the task itself is cancelled: its loop is shutting down
                share(batch, None, batcher.cancelled(batch))
                raise
            share(batch, None, exc)
        else:
            share(batch, result, None)

    def share(batch: Batch, result: Any, error: BaseException | None) -> None:
        woken, started = batcher.finish(batch, result, error)
        for slot in woken:  # each on this loop: callers share their batch's loop
            slot.done.set()
        launch(started)

    def launch(batches: list[Batch]) -> None:
        while batches:
            queued = batches.pop()
            try:
                _spawn_task(start, queued)
            except RuntimeError:  # its loop has finished: its callers are gone
                batches += batcher.abandon(queued)

    async def one(item: Any) -> Any:
        done = anyio.Event()  # per call: nothing is bound to a loop in advance
        slot, action = submit(item, _home(), done, anyio.CancelScope)
        batch = slot.batch
        if action == START:
            _spawn_task(drive, batch)
        elif action == WAKE:
            batch.timer.cancel()
        try:
            await done.wait()
        except BaseException:
            if leave(slot) and batch.state == DROPPED:
                batch.timer.cancel()  # nothing left to send: end its driver now
            raise
        return _answer(slot)

    return one


def _sync_one(batcher: Batcher, fn: Callable[..., Any]) -> Callable[[Any], Any]:
    submit, leave = batcher.submit, batcher.leave
    name = batcher.function

    def drive(batch: Batch) -> None:
        """The batch's own thread: gather until full or max_wait, then send."""
        if _clock.current() is _clock.REAL:
            batch.timer.wait(batcher.max_wait)  # set when the batch fills up
        elif batch.state == OPEN:
            _clock.sleep(batcher.max_wait)  # a fake clock: recorded, instant
        items, started = batcher.due(batch)
        launch(started)
        if items is not None:
            call(batch, items)

    def start(batch: Batch) -> None:
        items, started = batcher.due(batch)
        launch(started)
        if items is not None:
            call(batch, items)

    def call(batch: Batch, items: list[Any]) -> None:
        try:
            result = fn(items)
        except BaseException as exc:
            if is_fatal(exc):
                share(batch, None, batcher.cancelled(batch))
                raise
            share(batch, None, exc)
        else:
            share(batch, result, None)

    def share(batch: Batch, result: Any, error: BaseException | None) -> None:
        woken, started = batcher.finish(batch, result, error)
        for slot in woken:
            slot.done.set()
        launch(started)

    def launch(batches: list[Batch]) -> None:
        for queued in batches:
            _spawn_thread(start, queued, name)

    def one(item: Any) -> Any:
        done = threading.Event()
        slot, action = submit(item, None, done, threading.Event)
        batch = slot.batch
        if action == START:
            try:
                _spawn_thread(drive, batch, name)
            except BaseException:  # no thread to be had: nobody would send this batch
                leave(slot)
                raise
        elif action == WAKE:
            batch.timer.set()
        _clock.blocking_wait(batcher, name, "batch", None)
        try:
            done.wait()
        except BaseException:  # KeyboardInterrupt while waiting
            if leave(slot) and batch.state == DROPPED:
                batch.timer.set()
            raise
        return _answer(slot)

    return one


def _answer(slot: Slot) -> Any:
    error = slot.error
    if error is None:
        return slot.value
    try:
        raise error
    finally:
        error = None  # no cycle through this frame


def _passthrough_sync(fn: Callable[..., Any]) -> Callable[..., Any]:
    def batch_wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return batch_wrapper


def _passthrough_async(fn: Callable[..., Any]) -> Callable[..., Any]:
    async def batch_wrapper(*args: Any, **kwargs: Any) -> Any:
        return await fn(*args, **kwargs)

    return batch_wrapper


# --- the single-item callable's metadata ----------------------------------------------------


def _check_signature(fn: Callable[..., Any], name: str) -> None:
    """Refuse at decoration a function that cannot be called with the list alone."""
    signature = signature_of(fn)
    if not signature.readable or signature.fits(([],), {}):
        return  # (no signature to read, as for some builtins: trust it)
    hint = ""
    if signature.names[:1] in (("self",), ("cls",)):
        hint = (
            "; for a method, decorate it per instance: "
            "self.embed_many = batch(...)(self._embed_many)"
        )
    parameters = ", ".join(str(parameter) for parameter in signature.parameters)
    raise TypeError(
        f"@batch needs a function called with one argument, the list of items; "
        f"{name}({parameters}) cannot be called that way{hint}"
    )


_SEQUENCES = (list, tuple, Sequence, typing.List, typing.Tuple)  # noqa: UP006 - old spellings


def _element(annotation: Any) -> Any:
    """``X`` of ``list[X]``/``Sequence[X]``/``tuple[X, ...]``, or ``Any``."""
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in _SEQUENCES and arguments:
        return arguments[0]
    return Any


def _without_exceptions(annotation: Any) -> Any:
    """``X | Exception`` as ``X``: an exception in a result is raised, not returned."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return annotation
    kept = [
        member
        for member in typing.get_args(annotation)
        # (Python 3.10 takes list[int] for a type, which issubclass then refuses.)
        if not (
            isinstance(member, type)
            and typing.get_origin(member) is None
            and issubclass(member, BaseException)
        )
    ]
    return functools.reduce(lambda a, b: a | b, kept) if kept else Any


def _describe_one(one: Callable[..., Any], fn: Callable[..., Any]) -> None:
    """Name ``one`` after the batch function; annotate it with the item and result types.

    ``embed_many(texts: list[str]) -> list[np.ndarray]`` gives ``one(item: str) ->
    np.ndarray`` (what ``@validate_input`` and FastAPI read); unreadable hints give none.
    """
    one.__name__ = "one"
    one.__qualname__ = f"{function_name(fn)}.one"
    one.__module__ = function_module(fn) or __name__
    one.__doc__ = f"One item for {function_name(fn)}(): batched with concurrent calls."
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # forward references that do not resolve, odd callables
        return
    names = signature_of(fn).names
    if not names:
        return
    first = names[0]
    annotations: dict[str, Any] = {}
    if first in hints:
        annotations["item"] = _element(hints[first])
    if "return" in hints:
        result = hints["return"]
        if typing.get_origin(result) in (Coroutine, typing.Awaitable):
            result = typing.get_args(result)[-1]
        annotations["return"] = _without_exceptions(_element(result))
    one.__annotations__ = annotations


# --- typing --------------------------------------------------------------------------------


class AsyncBatchedFunction(Protocol[I, R_co]):
    """A coroutine function decorated with ``@batch``.

    Called with a list, it runs the function at once on that list (nothing is gathered);
    ``await fn.one(item)`` is the batched single-item call; ``fn.batch`` (also
    ``fn.batcher``) the handle.
    """

    batch: Batcher
    batcher: Batcher

    def __call__(
        self, items: list[I], /
    ) -> Coroutine[Any, Any, Sequence[R_co | BaseException]]: ...

    def one(self, item: I, /) -> Coroutine[Any, Any, R_co]: ...


class BatchedFunction(Protocol[I, R_co]):
    """A plain function decorated with ``@batch``: ``fn.one(item)`` from many threads."""

    batch: Batcher
    batcher: Batcher

    def __call__(self, items: list[I], /) -> Sequence[R_co | BaseException]: ...

    def one(self, item: I, /) -> R_co: ...


class _Decorator(Protocol):
    @overload
    def __call__(
        self, fn: Callable[[list[I]], Coroutine[Any, Any, Sequence[R | BaseException]]], /
    ) -> AsyncBatchedFunction[I, R]: ...

    @overload
    def __call__(
        self, fn: Callable[[list[I]], Coroutine[Any, Any, A]], /
    ) -> AsyncBatchedFunction[I, A]: ...

    @overload
    def __call__(
        self, fn: Callable[[list[I]], Sequence[R | BaseException]], /
    ) -> BatchedFunction[I, R]: ...

    @overload
    def __call__(
        self, fn: Callable[[list[I]], A], /
    ) -> BatchedFunction[I, A]: ...


# --- the decorator -------------------------------------------------------------------------


@suggests_keywords
def batch(
    max_size: int = 64,
    max_wait: float | timedelta = 0.005,
    *,
    key: Callable[[Any], Hashable] | None = None,
    max_concurrency: int | None = None,
    max_queue: int | None = None,
) -> _Decorator:
    """Gather concurrent single-item calls into one call of a batch function.

    Decorate the function that takes a list of items and returns one result per item, in
    order (a list, a tuple, a numpy array whose rows are the results...). Callers then
    ask for one item at a time, from many tasks or threads at once, with ``fn.one(item)``:
    items are gathered until ``max_size`` of them are waiting or the first has waited
    ``max_wait`` seconds, whichever comes first; then the function is called once with
    them, and each caller gets its own result::

        @batch(max_size=64, max_wait=0.005)
        async def embed_many(texts: list[str]) -> list[np.ndarray]: ...

        vector = await embed_many.one("hello")

    Calling the decorated function itself, with a list, runs it at once on that list.

    A coroutine function is called in a task of its own on the callers' event loop
    (asyncio or trio; callers on different loops are never batched together), a plain
    function in a thread of its own; either runs in a copy of the context of the caller
    whose item opened the batch.

    Args:
        max_size: items per batch at most; a full batch is sent at once.
        max_wait: seconds (or a ``timedelta``) a batch gathers at most, counted from its
            first item. Read through the ``buttress`` clock: under
            :func:`buttress.testing.testing_mode` the wait is recorded and instant.
        key: ``key(item)`` returns what items must share to be batched together (a model
            name, a parameter set); items with different keys go in different batches.
            An error it raises is the caller's, before the item is queued.
        max_concurrency: batches in flight at once at most (``None``: no limit). Closed
            batches wait for a slot in the order they closed; their items wait with them.
        max_queue: items that may wait to be sent at most (gathering into a batch, or in
            batches waiting for a slot); one more is refused at once with
            :class:`BatchQueueFullError`. ``None``: no limit. At least ``max_size``.

    Results and errors:
        The function may return, in an item's place, an exception instance: that caller
        alone gets it raised. A call that raises fails every caller in its batch with
        that error (the same instance). A result that is not a sequence of exactly one
        answer per item fails them all with :class:`BatchResultError`.

    Cancellation:
        A caller cancelled (or, in a thread, interrupted) before its batch is sent takes
        its item out: the batch is sent without it, or not at all if it was the last.
        After the batch is sent, the caller only stops waiting; the batch runs on for the
        others. No batch is sent twice and none is lost: a batch is sent by its driver
        only, once, and its items never change after that.

    Composition:
        Decorators below ``@batch`` (``@retry``, ``@circuit_breaker``, ``@timeout``,
        ``@rate_limit``, ``@bulkhead``...) apply to each batch call: a retry re-sends the
        whole batch, a breaker counts batches. Put ``@cache_result`` on a function that
        calls ``fn.one(item)``: hits never reach a batch, and identical concurrent misses
        share one computation, so a batch never holds the same item twice. An exception
        returned for one item is that caller's: to retry those, put a ``@retry`` there too.

    Raises:
        ConfigurationError: at decoration, for a setting that cannot work.
        TypeError: at decoration, for a generator function, or a function that cannot be
            called with one argument (a method: decorate it per instance instead).
        BatchQueueFullError: from ``fn.one``, when ``max_queue`` items already wait.
            Emits :class:`BatchRejected`.
        BatchResultError: from ``fn.one``, when the batch's result cannot be shared out.

    Each batch sent emits :class:`BatchDispatched` (its size, how long its first item
    waited, what closed it) and :class:`BatchCompleted` when it answers; monitoring turns
    them into metrics. The wrapper carries ``fn.batch`` (also ``fn.batcher``, the same
    :class:`Batcher`) with ``.stats()`` (:class:`BatchStats`), and ``fn.one``.
    """
    size = _settings.positive_int(max_size, "max_size")
    wait = _settings.seconds(max_wait, "max_wait")
    if key is not None and not callable(key):
        raise ConfigurationError(f"key must be a callable of one item, got {key!r}")
    concurrency = None
    if max_concurrency is not None:
        concurrency = _settings.positive_int(max_concurrency, "max_concurrency")
    queue = None if max_queue is None else _settings.positive_int(max_queue, "max_queue")
    if queue is not None and queue < size:
        raise ConfigurationError(
            f"max_queue must be at least max_size ({size}), got {max_queue!r}: no batch could "
            "ever fill up"
        )

    def decorate(target: Callable[..., Any]) -> Any:
        inner = target
        if isinstance(target, classmethod):
            raise TypeError(
                "@batch cannot decorate a classmethod: the batch function is called with "
                "the list of items alone"
            )
        if isinstance(target, staticmethod):
            inner = target.__func__
        if callable(inner):
            _check_signature(inner, function_name(inner))
        batcher = Batcher(
            max_size=size, max_wait=wait, key=key, max_concurrency=concurrency, max_queue=queue
        )
        if callable(inner):
            batcher.name = stack_name(inner)
        shell = _async_one if is_async_callable(inner) else _sync_one
        one = shell(batcher, inner)
        _describe_one(one, inner)
        return wrap(
            target,
            "batch",
            sync=_passthrough_sync,
            async_=_passthrough_async,
            attributes={"batch": batcher, "batcher": batcher, "one": one},
        )

    return decorate
