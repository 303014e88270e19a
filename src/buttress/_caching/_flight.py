"""Single-flight: while one caller computes a key, the others wait for its outcome.

A flight is one computation of one key. Its outcome is a value, an error (given to every
waiter, never cached), an expired value standing in for an error (``stale_if_error``) or
*abandoned*: the computing caller was cancelled, and the waiters wake up to let one of them
compute instead. Nothing is created before it is needed: the event a flight's waiters sleep
on is made by the first waiter, inside the running loop.

Coroutine functions keep one flight table per event loop (an ``anyio`` ``RunVar``), so the
same decorated function works under ``asyncio.run`` twice, in threads that each run their
own loop, and on trio. Plain functions share one table between threads, guarded by the
function's lock.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import threading
import weakref
from collections.abc import Hashable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, final

import anyio
from anyio.lowlevel import RunVar

if TYPE_CHECKING:
    from ._store import Entry

__all__ = [
    "ABANDONED",
    "DONE",
    "FAILED",
    "FELL_BACK",
    "RUNNING",
    "AsyncFlights",
    "BaseFlight",
    "Flight",
    "Outcome",
    "ThreadFlight",
]

class Outcome(enum.Enum):
    """How a flight ended (or that it has not yet)."""

    RUNNING = "running"
    DONE = "done"  # ``value`` holds the (frozen) result
    FAILED = "failed"  # ``error`` holds the exception every waiter raises
    ABANDONED = "abandoned"  # the computing caller was cancelled; a waiter takes over
    FELL_BACK = "fell back"  # the computation raised ``error``; ``value`` is the expired
    #                          value served in its place (``stale_if_error``)


# Module-level names: a stampede's waiters each compare one, by identity.
RUNNING: Final = Outcome.RUNNING
DONE: Final = Outcome.DONE
FAILED: Final = Outcome.FAILED
ABANDONED: Final = Outcome.ABANDONED
FELL_BACK: Final = Outcome.FELL_BACK


class BaseFlight:
    """One computation of one key, and how it ended.

    :meth:`settle` records the outcome and wakes the waiters; subclasses say what a waiter
    sleeps on (:meth:`waiter`) and whether the current caller is the one computing
    (:meth:`mine`).
    """

    __slots__ = ("_event", "_traceback", "arrays", "error", "found", "state", "value")

    def __init__(self, found: Entry | None = None) -> None:
        #: What the computing caller found before it started (an entry of any age, or
        #: ``None``). Callers of this process that come while it computes judge this entry
        #: instead of asking a shared store again: served while fresh or within
        #: ``stale_while_revalidate``, waited for otherwise.
        self.found = found
        self.state: Outcome = RUNNING
        self.value: Any = None
        self.arrays = False
        self.error: BaseException | None = None
        self._traceback: TracebackType | None = None
        # an anyio.Event or a threading.Event, as the subclass makes it
        self._event: Any = None

    def waiter(self) -> Any:
        """What a waiter sleeps on (``anyio.Event`` or ``threading.Event``); its
        ``wait()`` returns once the flight settles."""
        raise NotImplementedError

    def mine(self) -> bool:
        """Whether the caller asking is the one computing (waiting would never end)."""
        return False

    def settle(
        self,
        state: Outcome,
        value: Any = None,
        arrays: bool = False,
        error: BaseException | None = None,
    ) -> None:
        """Record the outcome and wake every waiter."""
        self.state = state
        self.value = value
        self.arrays = arrays
        self.error = error
        if error is not None:
            self._traceback = error.__traceback__
        if self._event is not None:
            self._event.set()

    def failure(self) -> BaseException:
        """The error to raise in a waiter, carrying the computation's own traceback.

        Every raise of one exception object prepends the raising frame to its traceback;
        restoring the original first keeps thousands of waiters from growing it without end
        (``asyncio.Future.result`` does the same).
        """
        assert self.error is not None
        return self.error.with_traceback(self._traceback)


@final
class Flight(BaseFlight):
    """One computation in one event loop."""

    __slots__ = ()

    def waiter(self) -> anyio.Event:
        """The event that is set when the flight settles (made by the first waiter, in
        its loop). Cancelling a waiter touches nothing shared."""
        if self._event is None:
            self._event = anyio.Event()
        return self._event  # type: ignore[no-any-return]


@final
class ThreadFlight(BaseFlight):
    """One computation by one thread; the others block on a ``threading.Event``.

    Both :meth:`waiter` and :meth:`settle` are called with the owner's lock held, so a
    waiter that registers after the outcome is known cannot miss it.
    """

    __slots__ = ("owner",)

    def __init__(self, found: Entry | None = None) -> None:
        super().__init__(found)
        #: the computing thread: if it asks for its own key, waiting would never end
        self.owner = threading.get_ident()

    def waiter(self) -> threading.Event:
        if self._event is None:
            self._event = threading.Event()
        return self._event  # type: ignore[no-any-return]

    def mine(self) -> bool:
        return self.owner == threading.get_ident()


#: Numbers the per-function flight tables (see AsyncFlights).
_TABLES: Final = itertools.count()


@final
class AsyncFlights:
    """The flights of one decorated coroutine function, one table per running event loop."""

    __slots__ = ("_by_loop", "_last", "_lock", "_var")

    def __init__(self, function: str) -> None:
        # A RunVar is no loop-bound primitive: it only names per-loop storage, which anyio
        # creates in each loop on first use and drops with the loop. anyio before 4.10
        # keys that storage on the name alone, so the name is unique to this table: two
        # functions of one qualified name (closures of one factory) never share flights.
        self._var: RunVar[dict[Hashable, Flight]] = RunVar(
            f"buttress.cache_result:{function}:{next(_TABLES)}"
        )
        # The same for asyncio, keyed on the loop itself: a stampede's thousands of waiters
        # each look their table up, and this costs a fifth of the RunVar lookup.
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, Flight]]
        self._by_loop = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        # The last asyncio loop and its table: a stampede's waiters all ask from one loop,
        # and calling a weak reference is cheaper than a WeakKeyDictionary lookup (which
        # makes one each time). Replaced as a whole tuple, so threads running other loops
        # only ever read a consistent pair; it holds the last table (empty once its flights
        # are over) until another loop asks.
        self._last: tuple[weakref.ref[asyncio.AbstractEventLoop], dict[Hashable, Flight]] | None
        self._last = None

    def table(self) -> dict[Hashable, Flight]:
        """This loop's table (made on first use). Only this loop's thread touches it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # trio
            loop = None
        # Inside an asyncio task, asyncio runs this code; otherwise (trio, also as a guest
        # of an asyncio loop) anyio's RunVar finds the loop that does.
        if loop is not None and asyncio.current_task(loop) is not None:
            last = self._last
            if last is not None and last[0]() is loop:
                return last[1]
            table = self._by_loop.get(loop)
            if table is None:
                with self._lock:  # loops in other threads may add theirs meanwhile
                    table = self._by_loop.setdefault(loop, {})
            self._last = (weakref.ref(loop), table)
            return table
        table = self._var.get(None)
        if table is None:
            table = {}
            self._var.set(table)
        return table
