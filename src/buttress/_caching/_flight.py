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

import threading
from collections.abc import Hashable
from typing import Any, Final, final

import anyio
from anyio.lowlevel import RunVar

__all__ = ["ABANDONED", "DONE", "FAILED", "RUNNING", "AsyncFlights", "Flight", "ThreadFlight"]

RUNNING: Final = 0
DONE: Final = 1  # ``value`` holds the (frozen) result
FAILED: Final = 2  # ``error`` holds the exception every waiter raises
ABANDONED: Final = 3  # the computing caller was cancelled; a waiter takes over


class _Outcome:
    __slots__ = ("arrays", "error", "state", "value")

    def __init__(self) -> None:
        self.state = RUNNING
        self.value: Any = None
        self.arrays = False
        self.error: BaseException | None = None

    def _settle(self, state: int, value: Any, arrays: bool, error: BaseException | None) -> None:
        self.state = state
        self.value = value
        self.arrays = arrays
        self.error = error


@final
class Flight(_Outcome):
    """One computation in one event loop."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        super().__init__()
        self._event: anyio.Event | None = None

    async def wait(self) -> None:
        """Sleep until the flight settles. Cancelling a waiter touches nothing shared."""
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()

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

    __slots__ = ("_event",)

    def __init__(self) -> None:
        super().__init__()
        self._event: threading.Event | None = None

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

    __slots__ = ("_var",)

    def __init__(self, function: str) -> None:
        # A RunVar is no loop-bound primitive: it only names per-loop storage, which anyio
        # creates in each loop on first use and drops with the loop.
        self._var: RunVar[dict[Hashable, Flight]] = RunVar(f"buttress.cache_result:{function}")

    def table(self) -> dict[Hashable, Flight]:
        """This loop's table (made on first use). Only this loop's thread touches it."""
        table = self._var.get(None)
        if table is None:
            table = {}
            self._var.set(table)
        return table
