"""Single-flight: while one caller computes a key, the others wait for its outcome.

A flight is one computation of one key. Its outcome is a value, an error (given to every
waiter, never cached) or *abandoned*: the computing caller was cancelled, and the waiters
wake up to let one of them compute instead. Nothing is created before it is needed: the
event a flight's waiters sleep on is made by the first waiter, inside the running loop.

Coroutine functions keep one flight table per event loop (an ``anyio`` ``RunVar``), so the
same decorated function works under ``asyncio.run`` twice, in threads that each run their
own loop, and on trio. Plain functions share one table between threads, guarded by the
function's ``threading.Lock``.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Hashable
from types import TracebackType
from typing import Any, Final, final

import anyio
from anyio.lowlevel import RunVar

__all__ = ["ABANDONED", "DONE", "FAILED", "RUNNING", "AsyncFlights", "Flight", "ThreadFlight"]

RUNNING: Final = 0
DONE: Final = 1  # ``value`` holds the (frozen) result
FAILED: Final = 2  # ``error`` holds the exception every waiter raises
ABANDONED: Final = 3  # the computing caller was cancelled; a waiter takes over


class _Outcome:
    __slots__ = ("_traceback", "arrays", "error", "serving", "serving_stale", "state", "value")

    def __init__(self, serving: Any = None, serving_stale: bool = False) -> None:
        #: An entry (``CacheEntry``) other callers get at once while this flight refreshes
        #: it (expired within ``stale_while_revalidate``, or due for early refresh), or
        #: ``None``: they wait for the outcome.
        self.serving = serving
        self.serving_stale = serving_stale
        self.state = RUNNING
        self.value: Any = None
        self.arrays = False
        self.error: BaseException | None = None
        self._traceback: TracebackType | None = None

    def _settle(self, state: int, value: Any, arrays: bool, error: BaseException | None) -> None:
        self.state = state
        self.value = value
        self.arrays = arrays
        self.error = error
        if error is not None:
            self._traceback = error.__traceback__

    def failure(self) -> BaseException:
        """The error to raise in a waiter, carrying the computation's own traceback.

        Every raise of one exception object prepends the raising frame to its traceback;
        restoring the original first keeps thousands of waiters from growing it without end
        (``asyncio.Future.result`` does the same).
        """
        assert self.error is not None
        return self.error.with_traceback(self._traceback)


@final
class Flight(_Outcome):
    """One computation in one event loop."""

    __slots__ = ("_event",)

    def __init__(self, serving: Any = None, serving_stale: bool = False) -> None:
        super().__init__(serving, serving_stale)
        self._event: anyio.Event | None = None

    def waiter(self) -> anyio.Event:
        """The event that is set when the flight settles (made by the first waiter, in
        its loop). Cancelling a waiter touches nothing shared."""
        if self._event is None:
            self._event = anyio.Event()
        return self._event

    def settle(
        self,
        state: int,
        value: Any = None,
        arrays: bool = False,
        error: BaseException | None = None,
    ) -> None:
        self._settle(state, value, arrays, error)
        if self._event is not None:
            self._event.set()


@final
class ThreadFlight(_Outcome):
    """One computation by one thread; the others block on a ``threading.Event``.

    Both :meth:`waiter` and :meth:`settle` are called with the owner's lock held, so a
    waiter that registers after the outcome is known cannot miss it.
    """

    __slots__ = ("_event", "owner")

    def __init__(self, serving: Any = None, serving_stale: bool = False) -> None:
        super().__init__(serving, serving_stale)
        self._event: threading.Event | None = None
        #: the computing thread: if it asks for its own key, waiting would never end
        self.owner = threading.get_ident()

    def waiter(self) -> threading.Event:
        if self._event is None:
            self._event = threading.Event()
        return self._event

    def settle(
        self,
        state: int,
        value: Any = None,
        arrays: bool = False,
        error: BaseException | None = None,
    ) -> None:
        self._settle(state, value, arrays, error)
        if self._event is not None:
            self._event.set()


@final
class AsyncFlights:
    """The flights of one decorated coroutine function, one table per running event loop."""

    __slots__ = ("_by_loop", "_lock", "_var")

    def __init__(self, function: str) -> None:
        # A RunVar is no loop-bound primitive: it only names per-loop storage, which anyio
        # creates in each loop on first use and drops with the loop.
        self._var: RunVar[dict[Hashable, Flight]] = RunVar(f"buttress.cache_result:{function}")
        # The same for asyncio, keyed on the loop itself: a stampede's thousands of waiters
        # each look their table up, and this costs a fifth of the RunVar lookup.
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, Flight]]
        self._by_loop = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def table(self) -> dict[Hashable, Flight]:
        """This loop's table (made on first use). Only this loop's thread touches it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # trio
            loop = None
        # Inside an asyncio task, asyncio runs this code; otherwise (trio, also as a guest
        # of an asyncio loop) anyio's RunVar finds the loop that does.
        if loop is not None and asyncio.current_task(loop) is not None:
            table = self._by_loop.get(loop)
            if table is None:
                with self._lock:  # loops in other threads may add theirs meanwhile
                    table = self._by_loop.setdefault(loop, {})
            return table
        table = self._var.get(None)
        if table is None:
            table = {}
            self._var.set(table)
        return table
