"""Counters over a sliding time window, kept in buckets (for the breaker and retry budget).

The window is cut into ``buckets`` equal slices of time. Counts go into the slice that
holds "now"; a slice older than the window is emptied the next time the window is touched,
and its counts leave the running totals. Reading the totals therefore costs nothing, and
outcomes leave the window in steps of ``window / buckets`` seconds rather than one by one:
the price of constant memory whatever the call rate.

Not thread-safe by itself: its owner holds its own lock around every use.
"""

from __future__ import annotations

import math

__all__ = ["Window"]

_floor = math.floor
_NEVER = -(2**62)  # the slice number of an empty bucket: older than any real one


class Window:
    """``counters`` running totals over the last ``seconds`` seconds, in ``buckets`` slices."""

    __slots__ = (
        "_counts",
        "_epochs",
        "_slices_per_second",
        "buckets",
        "current",
        "head",
        "seconds",
        "totals",
    )

    def __init__(self, seconds: float, counters: int, buckets: int = 10) -> None:
        self.seconds = seconds
        self.buckets = buckets
        # Multiplying (rather than floor-dividing by the width) keeps a whole window a
        # whole number of slices in floating point: 1.0 // 0.1 is 9.0, 1.0 * 10.0 is 10.
        self._slices_per_second = buckets / seconds
        #: The running totals over the window, one per counter.
        self.totals = [0] * counters
        self._counts = [[0] * counters for _ in range(buckets)]
        # The slice number (time * slices per second, floored) each bucket holds.
        self._epochs = [_NEVER] * buckets
        #: The newest slice number seen; it changes whenever slices may have expired.
        self.head = _NEVER
        #: The counts of slice :attr:`head`.
        self.current = self._counts[0]

    def touch(self, now: float) -> None:
        """Move the window to ``now``: expire old slices, point :attr:`current` at now's.

        The caller then adds to :attr:`current` and :attr:`totals` by the same amounts.
        """
        epoch = _floor(now * self._slices_per_second)
        if epoch != self.head:
            self._advance(epoch)

    def bucket(self, now: float) -> list[int]:
        """:meth:`touch`, then the counts of the slice holding ``now``."""
        epoch = _floor(now * self._slices_per_second)
        if epoch != self.head:
            self._advance(epoch)
        return self.current

    def slice_of(self, now: float) -> int:
        """The number of the slice that holds ``now`` (for :meth:`add`)."""
        return _floor(now * self._slices_per_second)

    def add(self, epoch: int, counter: int, amount: int) -> None:
        """Add ``amount`` to ``counter`` in slice ``epoch``, moving the window up to it.

        Counts for a slice that has already left the window are dropped: they are older
        than the window, so they no longer count.
        """
        if epoch > self.head:
            self._advance(epoch)
        elif epoch <= self.head - self.buckets:
            return
        self._counts[epoch % self.buckets][counter] += amount
        self.totals[counter] += amount

    def clear(self) -> None:
        """Forget everything."""
        for counts in self._counts:
            for index in range(len(counts)):
                counts[index] = 0
        for index in range(len(self.totals)):
            self.totals[index] = 0
        self._epochs = [_NEVER] * self.buckets
        self.head = _NEVER

    def _advance(self, epoch: int) -> None:
        if epoch < self.head:  # a clock that went back (a test reset): start over
            self.clear()
        # Every slice in (epoch - buckets, epoch] that holds an older epoch is stale.
        start = max(self.head + 1, epoch - self.buckets + 1)
        totals = self.totals
        for slice_epoch in range(start, epoch + 1):
            index = slice_epoch % self.buckets
            if self._epochs[index] != slice_epoch:
                counts = self._counts[index]
                for counter, value in enumerate(counts):
                    if value:
                        totals[counter] -= value
                        counts[counter] = 0
                self._epochs[index] = slice_epoch
        self.head = epoch
        self.current = self._counts[epoch % self.buckets]
