"""Helpers for your own test suite: instant, recorded sleeps and a clock you move by hand.

Every buttress decorator reads time and sleeps through one clock. Inside
:func:`testing_mode` that clock is a :class:`FakeClock`: sleeps return at once and are
recorded, so a test can assert the exact backoff schedule, and TTLs expire when the test
says so rather than after real seconds::

    from buttress.testing import testing_mode

    def test_backoff_schedule():
        with testing_mode() as clock:
            with pytest.raises(ConnectionError):
                fetch()
        assert clock.sleeps == [0.1, 0.2, 0.4]

With pytest, the ``buttress_clock`` fixture does the same for one test (it is registered
automatically when buttress is installed).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import anyio.lowlevel

from . import _clock
from ._settings import seconds

__all__ = ["FakeClock", "testing_mode"]


class FakeClock:
    """A monotonic clock that moves only when told to.

    Args:
        start: the reading before anything moves it.
        auto_advance: when true (the default), each sleep moves the clock forward by its
            duration, as if the sleep had really happened; when false, sleeps are recorded
            and return at once but time stands still until :meth:`advance` is called.

    Sleeps never wait: the sync sleep returns at once, the async one only passes a
    checkpoint (so it stays a point where the task can be cancelled or others can run).
    Every requested duration is appended to :attr:`sleeps`, in order. Safe to use from
    several threads.
    """

    def __init__(self, start: float = 0.0, *, auto_advance: bool = True) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        self.auto_advance = auto_advance
        #: Every duration a sleep asked for, in seconds, in order.
        self.sleeps: list[float] = []

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r}, sleeps={len(self.sleeps)})"

    def monotonic(self) -> float:
        """The current fake reading, in seconds."""
        return self._now

    def advance(self, by: float | timedelta) -> float:
        """Move the clock forward; return the new reading."""
        step = seconds(by, "by")
        with self._lock:
            self._now += step
            return self._now

    def sleep(self, seconds: float) -> None:
        """Record a sync sleep and return at once."""
        self._record(seconds)

    async def async_sleep(self, seconds: float) -> None:
        """Record an async sleep and pass one checkpoint instead of waiting."""
        self._record(seconds)
        await anyio.lowlevel.checkpoint()

    def _record(self, duration: float) -> None:
        with self._lock:
            self.sleeps.append(duration)
            if self.auto_advance and duration > 0:
                self._now += duration


@contextmanager
def testing_mode(clock: FakeClock | None = None) -> Iterator[FakeClock]:
    """Run the block with a fake clock in place of real time; restore the previous clock.

    Yields the :class:`FakeClock` in use (a new one unless ``clock`` is given). Nesting
    works: the inner block's clock is replaced by the outer one when it exits.
    """
    fake = clock if clock is not None else FakeClock()
    previous = _clock.install(fake)
    try:
        yield fake
    finally:
        _clock.install(previous)


# Users import testing_mode into their test modules; its name must not make pytest
# collect it as a test.
testing_mode.__test__ = False  # type: ignore[attr-defined]
