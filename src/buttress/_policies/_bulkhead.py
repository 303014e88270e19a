"""@bulkhead: at most N calls at once; a bounded, fair queue; the rest refused at once.

One :class:`Bulkhead` counts the running calls and queues the waiting ones under a
``threading.Lock``, so its limit holds for the whole process: for every thread and every
event loop that calls the function (``asyncio.run`` twice, threads that each run a loop,
trio). It holds no loop-bound state. A finishing call hands its slot straight to the
longest waiter (first come, first served; no barging, no thundering herd) and wakes only
that one: with ``anyio.Event.set`` on the waiter's own loop, through the loop's
thread-safe entry point when the two are on different threads, or a ``threading.Event``
for a plain function.

The same :class:`Bulkhead` is the decorator (``gpu = bulkhead(2)``, then ``@gpu``), a
block (``async with gpu:`` / ``with gpu:``), and holds a decorated stream's slot from its
first item asked for to its end, however it ends (see :mod:`buttress._streams`).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any, Concatenate, Literal, ParamSpec, Protocol, TypeVar, overload

import anyio

from buttress import _clock, _settings
from buttress._blocks import caller_name
from buttress._declare import suggests_keywords
from buttress._errors import BulkheadFullError
from buttress._events import BulkheadRejected, BulkheadWaited, events
from buttress._streams import Holding, async_stream_shell, sync_stream_shell
from buttress._wrapping import WrapperFactory, stack_name, wrap

__all__ = ["Bulkhead", "BulkheadFunction", "BulkheadStats", "bulkhead"]

P = ParamSpec("P")
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
T2 = TypeVar("T2")
S = TypeVar("S")
P2 = ParamSpec("P2")


@dataclass(frozen=True, slots=True)
class BulkheadStats:
    """A snapshot of one bulkhead.

    Attributes:
        max_concurrent: slots.
        max_waiting: callers that may wait for a slot.
        running: calls holding a slot now.
        waiting: callers waiting for a slot now.
        admitted: calls admitted since creation (at once or after waiting).
        rejected: calls refused since creation (no room to wait, or the wait timed out).
    """

    max_concurrent: int
    max_waiting: int
    running: int
    waiting: int
    admitted: int
    rejected: int


class _Waiter:
    """One caller waiting for a slot; ``wake`` is called once it has been granted one."""

    __slots__ = ("claimed", "granted")

    def __init__(self) -> None:
        self.granted = False  # a slot was handed to this waiter
        self.claimed = False  # ...and the waiter has taken charge of releasing it

    def wake(self) -> None:
        raise NotImplementedError


class _ThreadWaiter(_Waiter):
    __slots__ = ("event",)

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def wake(self) -> None:
        self.event.set()


def _threadsafe_scheduler() -> Callable[[Callable[[], object]], object]:
    """How to run a callback on the current event loop from any thread."""
    trio = sys.modules.get("trio")  # imported by whoever runs trio; never by us
    if trio is not None:
        try:  # (trio.lowlevel.in_trio_run() is newer than the oldest trio anyio supports)
            return trio.lowlevel.current_trio_token().run_sync_soon  # type: ignore[no-any-return]
        except RuntimeError:  # not inside trio.run: asyncio runs this task
            pass
    return asyncio.get_running_loop().call_soon_threadsafe


class _TaskWaiter(_Waiter):
    __slots__ = ("event", "schedule", "thread")

    def __init__(self) -> None:
        super().__init__()
        # Created per wait, in the waiter's own task: never bound to another loop.
        self.event = anyio.Event()
        self.thread = threading.get_ident()
        self.schedule = _threadsafe_scheduler()

    def wake(self) -> None:
        if threading.get_ident() == self.thread:
            self.event.set()
        else:  # the slot was freed on another thread: set the event on the waiter's loop
            self.schedule(self.event.set)


class Bulkhead:
    """The slots and the queue of one ``bulkhead(...)``; reach it as ``fn.bulkhead``.

    Thread safe and loop-agnostic. :meth:`stats` returns a snapshot. Calling it decorates
    a function (every function it decorates shares its slots); ``async with`` (or
    ``with``) holds a slot for a block. The other methods are what the wrappers call.
    """

    __slots__ = (
        "_admitted",
        "_lock",
        "_rejected",
        "_running",
        "_waiters",
        "max_concurrent",
        "max_waiting",
        "wait_timeout",
    )

    def __init__(self, max_concurrent: int, max_waiting: int, wait_timeout: float | None) -> None:
        self.max_concurrent = max_concurrent
        self.max_waiting = max_waiting
        self.wait_timeout = wait_timeout
        self._lock = threading.Lock()
        self._running = 0
        self._waiters: deque[_Waiter] = deque()
        self._admitted = 0
        self._rejected = 0

    def __repr__(self) -> str:
        return (
            f"<Bulkhead {self._running}/{self.max_concurrent} running, "
            f"{len(self._waiters)}/{self.max_waiting} waiting>"
        )

    def __call__(self, fn: Callable[P, T], /) -> BulkheadFunction[P, T]:
        """Decorate ``fn``: its calls (or its streams' lives) take slots of this bulkhead."""
        return wrap(  # type: ignore[no-any-return]
            fn,
            "bulkhead",
            sync=_sync_shell(self),
            async_=_async_shell(self),
            stream=_sync_stream_shell(self),
            astream=_async_stream_shell(self),
            attributes={"bulkhead": self},
        )

    # --- the block --------------------------------------------------------------------

    def __enter__(self) -> Bulkhead:
        name = caller_name()
        waiter = self.enter(name, _ThreadWaiter)
        if waiter is not None:
            _wait_sync(self, waiter, name)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.leave()

    async def __aenter__(self) -> Bulkhead:
        name = caller_name()
        waiter = self.enter(name, _TaskWaiter)
        if waiter is not None:
            await _wait_async(self, waiter, name)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.leave()

    def stats(self) -> BulkheadStats:
        """A frozen snapshot of the counts."""
        with self._lock:
            return BulkheadStats(
                max_concurrent=self.max_concurrent,
                max_waiting=self.max_waiting,
                running=self._running,
                waiting=len(self._waiters),
                admitted=self._admitted,
                rejected=self._rejected,
            )

    # --- the engine -------------------------------------------------------------------

    def enter(self, function: str, waiter: Callable[[], _Waiter]) -> _Waiter | None:
        """Take a slot (``None``), or join the queue (a waiter, made by ``waiter()``).

        Raises :class:`BulkheadFullError` when there is neither a slot nor room to wait.
        """
        with self._lock:
            # A free slot goes to a newcomer only when nobody is queued before it.
            if self._running < self.max_concurrent and not self._waiters:
                self._running += 1
                self._admitted += 1
                return None
            if len(self._waiters) < self.max_waiting:
                queued = waiter()
                self._waiters.append(queued)
                return queued
            self._rejected += 1
        raise self._refusal(function, "full", 0.0)

    def leave(self) -> None:
        """Give a slot back: to the longest waiter if there is one."""
        while True:
            with self._lock:
                if not self._waiters:
                    self._running -= 1
                    return
                waiter = self._waiters.popleft()
                waiter.granted = True
                self._admitted += 1
            try:
                waiter.wake()
                return
            except RuntimeError:
                # The waiter's event loop has finished (it can no longer run the task);
                # unless the waiter took charge of the slot first, pass it on.
                with self._lock:
                    if waiter.claimed:
                        return
                    waiter.claimed = True

    def abandon(self, waiter: _Waiter) -> bool:
        """A waiter stops waiting (cancelled, timed out). True: it holds a slot after all.

        A waiter that holds a slot must run its call or :meth:`leave`.
        """
        with self._lock:
            if waiter.granted:
                waiter.claimed = True
                return True
            self._waiters.remove(waiter)
            return False

    def timed_out(self, function: str, waiter: _Waiter, started: float) -> None:
        """The wait timed out: return if a slot arrived meanwhile, else raise."""
        if self.abandon(waiter):
            self.waited(function, started)
            return
        with self._lock:
            self._rejected += 1
        raise self._refusal(function, "timeout", _clock.monotonic() - started)

    @staticmethod
    def waited(function: str, started: float) -> None:
        """A queued call got its slot: report how long it waited."""
        if events.active:
            events.emit(BulkheadWaited(function=function, waited=_clock.monotonic() - started))

    def _refusal(
        self, function: str, reason: Literal["full", "timeout"], waited: float
    ) -> BulkheadFullError:
        if events.active:
            events.emit(BulkheadRejected(function=function, reason=reason, waited=waited))
        if reason == "full":
            message = (
                f"bulkhead of {function}(): all {self.max_concurrent} slot(s) are busy and "
                f"{self.max_waiting} caller(s) already wait; the call was not made"
            )
        else:
            message = (
                f"bulkhead of {function}(): no slot of {self.max_concurrent} came free "
                f"within wait_timeout={self.wait_timeout:g}s; the call was not made"
            )
        return BulkheadFullError(
            message,
            max_concurrent=self.max_concurrent,
            max_waiting=self.max_waiting,
            reason=reason,
            waited=waited,
            function=function,
        )


# --- the shells --------------------------------------------------------------------------


def _wait_sync(bulkhead: Bulkhead, waiter: _Waiter, name: str) -> None:
    """Wait on a thread for the slot ``waiter`` queued for; refused on timeout."""
    assert isinstance(waiter, _ThreadWaiter)
    _clock.blocking_wait(bulkhead, name, "bulkhead", bulkhead.wait_timeout)
    started = _clock.monotonic()
    try:
        granted = waiter.event.wait(bulkhead.wait_timeout)
    except BaseException:  # KeyboardInterrupt while waiting: give up the place
        if bulkhead.abandon(waiter):
            bulkhead.leave()
        raise
    if granted:
        bulkhead.waited(name, started)
    else:
        bulkhead.timed_out(name, waiter, started)


async def _wait_async(bulkhead: Bulkhead, waiter: _Waiter, name: str) -> None:
    """Wait in a task for the slot ``waiter`` queued for; refused on timeout."""
    assert isinstance(waiter, _TaskWaiter)
    limit = bulkhead.wait_timeout
    started = _clock.monotonic()
    try:
        if limit is None:
            await waiter.event.wait()
        else:
            with anyio.move_on_after(limit):
                await waiter.event.wait()
    except BaseException:  # cancelled while waiting: give up the place, or the slot
        if bulkhead.abandon(waiter):
            bulkhead.leave()
        raise
    if waiter.granted:
        bulkhead.waited(name, started)
    else:
        bulkhead.timed_out(name, waiter, started)


def _sync_shell(bulkhead: Bulkhead) -> WrapperFactory:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        stack = stack_name(fn)
        enter, leave = bulkhead.enter, bulkhead.leave

        def bulkhead_wrapper(*args: Any, **kwargs: Any) -> Any:
            waiter = enter(stack.value, _ThreadWaiter)
            if waiter is not None:
                _wait_sync(bulkhead, waiter, stack.value)
            try:
                return fn(*args, **kwargs)
            finally:
                leave()

        return bulkhead_wrapper

    return build


def _async_shell(bulkhead: Bulkhead) -> WrapperFactory:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        stack = stack_name(fn)
        enter, leave = bulkhead.enter, bulkhead.leave

        async def bulkhead_wrapper(*args: Any, **kwargs: Any) -> Any:
            waiter = enter(stack.value, _TaskWaiter)
            if waiter is not None:
                await _wait_async(bulkhead, waiter, stack.value)
            try:
                return await fn(*args, **kwargs)
            finally:
                leave()

        return bulkhead_wrapper

    return build


# A stream holds its slot from its first item asked for to its end, however it ends.


def _sync_stream_shell(bulkhead: Bulkhead) -> WrapperFactory:
    held = Holding(bulkhead.leave)

    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        stack = stack_name(fn)

        def open_run(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Holding:
            waiter = bulkhead.enter(stack.value, _ThreadWaiter)
            if waiter is not None:
                _wait_sync(bulkhead, waiter, stack.value)
            return held

        return sync_stream_shell(open_run)(fn)

    return build


def _async_stream_shell(bulkhead: Bulkhead) -> WrapperFactory:
    held = Holding(bulkhead.leave)

    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        stack = stack_name(fn)

        async def open_run(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Holding:
            waiter = bulkhead.enter(stack.value, _TaskWaiter)
            if waiter is not None:
                await _wait_async(bulkhead, waiter, stack.value)
            return held

        return async_stream_shell(open_run)(fn)

    return build


class BulkheadFunction(Protocol[P, T_co]):
    """A function decorated with ``@bulkhead``: callable as before, plus ``.bulkhead``."""

    bulkhead: Bulkhead

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T_co: ...

    # Decorated methods bind like functions: the instance fills the first parameter.
    @overload
    def __get__(
        self, instance: None, owner: type[Any] | None = None
    ) -> BulkheadFunction[P, T_co]: ...

    @overload
    def __get__(
        self: BulkheadFunction[Concatenate[S, P2], T2], instance: S, owner: type[Any] | None = None
    ) -> BulkheadFunction[P2, T2]: ...


@suggests_keywords
def bulkhead(
    max_concurrent: int,
    *,
    max_waiting: int = 0,
    wait_timeout: float | timedelta | None = None,
) -> Bulkhead:
    """Run at most ``max_concurrent`` calls at once; queue a few more; refuse the rest.

    Keeps one slow dependency from taking every worker, connection or GPU slot: when
    all slots are busy, up to ``max_waiting`` callers wait in a first-come, first-served
    queue and the rest get :class:`BulkheadFullError` at once, which a load balancer can
    turn into a fast 503 instead of a pile of timeouts.

    The limit is process-wide: it holds across threads and event loops (several
    ``asyncio.run``, threads with loops of their own, trio), because the slots are counted
    under a ``threading.Lock`` and no primitive is tied to one loop. A finished call hands
    its slot to the longest waiter and wakes only that one. Waiting never blocks an event
    loop (coroutine callers wait on an ``anyio.Event``); a plain function's caller waits
    on a ``threading.Event``.

    Args:
        max_concurrent: calls that may run at once.
        max_waiting: callers that may wait for a slot (0: never wait).
        wait_timeout: seconds (or a ``timedelta``) a caller waits before it is refused;
            ``None`` waits as long as it takes. Measured with the event loop's clock (or
            the thread's), not the ``buttress`` clock.

    Raises:
        ConfigurationError: at decoration, for a setting that cannot work.
        BulkheadFullError: at call time, when the call is refused (``reason`` is
            ``"full"`` or ``"timeout"``). Emits :class:`BulkheadRejected`; a call that
            waited for its slot emits :class:`BulkheadWaited`.

    A caller cancelled while waiting leaves the queue (or passes on a slot granted to it
    in that instant); a call cancelled while running frees its slot. The wrapper carries
    ``fn.bulkhead`` (:class:`Bulkhead`) with ``.stats()``. The decorator *is* that
    :class:`Bulkhead`: one object applied to several functions gives them one shared set
    of slots (``gpu = bulkhead(2)``, then ``@gpu`` on each function that uses the GPU),
    and ``async with gpu:`` (or ``with gpu:`` in a thread) holds one of the same slots
    for a block of code, refused or queued as a call is (events and errors are named
    after the function the block is in).

    On a stream (a generator or async-generator function) the slot is taken when the
    stream is first iterated and held until it ends: completed, failed, cancelled,
    closed by the caller (``aclose()``), or finalised by the garbage collector after the
    caller stopped iterating. A stream that is never iterated takes no slot.
    """
    return Bulkhead(
        _settings.positive_int(max_concurrent, "max_concurrent"),
        _settings.non_negative_int(max_waiting, "max_waiting"),
        _settings.optional_seconds(wait_timeout, "wait_timeout", allow_zero=False),
    )
