"""The in-process store: an LRU table with an entry bound, a byte bound and timed purges.

Reads take no lock (one ``dict`` lookup, then a best-effort move to the recent end);
writes take a ``threading.Lock`` held for a few dictionary operations and never across an
``await``, so the table is shared safely by threads and by event loops in different threads.

Expired entries do not pile up: each key with a finite retention sits in a heap ordered by
the time its entry becomes useless (past its ttl and stale windows), and every write first
drops what the heap says is dead.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import final

from buttress import _clock, _settings

from ._keys import CacheKey, CacheScope
from ._store import CacheEntry, CacheStore

__all__ = ["LocalStore", "LocalTable"]

#: (scope, reason, count) records gathered under the lock, reported after releasing it.
_Report = list[tuple[CacheScope, str, int]]


@final
class LocalTable:
    """The engine of the in-process store, keyed by any hashable.

    Args:
        maxsize: at most this many entries; the least recently used goes first.
        max_bytes: at most this many bytes of ``entry.size`` in total, or ``None``.
        scope_of: which function a key belongs to, for eviction reports.
    """

    __slots__ = (
        "_deadlines",
        "_heap",
        "_scope_of",
        "_sequence",
        "data",
        "lock",
        "max_bytes",
        "maxsize",
        "nbytes",
    )

    def __init__(
        self,
        maxsize: int,
        max_bytes: int | None,
        scope_of: Callable[[Hashable], CacheScope],
    ) -> None:
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self._scope_of = scope_of
        self.data: OrderedDict[Hashable, CacheEntry] = OrderedDict()
        self.lock = threading.Lock()
        self.nbytes = 0
        # key -> the time its entry becomes useless; only finite retentions are queued
        self._deadlines: dict[Hashable, float] = {}
        # (deadline, sequence, key): the sequence keeps keys from ever being compared
        self._heap: list[tuple[float, int, Hashable]] = []
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self.data)

    def get(self, key: Hashable) -> CacheEntry | None:
        """The entry, whatever its age, without touching recency."""
        return self.data.get(key)

    def live(self, key: Hashable, now: float) -> CacheEntry | None:
        """The entry, if it is still within the retention it was put with."""
        entry = self.data.get(key)
        if entry is None or self._deadlines.get(key, math.inf) <= now:
            return None
        return entry

    def touch(self, key: Hashable) -> None:
        """Mark ``key`` recently used (best effort: it may have just been evicted)."""
        try:
            self.data.move_to_end(key)
        except KeyError:
            pass

    def put(self, key: Hashable, entry: CacheEntry, keep_until: float) -> None:
        """Store ``entry`` until ``keep_until`` (monotonic; ``inf`` for ever), then enforce
        the bounds. An entry larger than ``max_bytes`` alone is not stored."""
        reports: _Report = []
        with self.lock:
            self._purge(_clock.monotonic(), reports)
            self._remove(key)
            if self.max_bytes is not None and entry.size > self.max_bytes:
                reports.append((self._scope_of(key), "bytes", 1))
            else:
                self.data[key] = entry
                self.nbytes += entry.size
                if keep_until != math.inf:
                    self._deadlines[key] = keep_until
                    heapq.heappush(self._heap, (keep_until, next(self._sequence), key))
                self._enforce(reports)
        self._report(reports)

    def delete(self, key: Hashable) -> bool:
        with self.lock:
            return self._remove(key)

    def clear(self, predicate: Callable[[Hashable], bool] | None = None) -> None:
        """Drop every entry, or those whose key satisfies ``predicate``."""
        with self.lock:
            if predicate is None:
                self.data.clear()
                self._deadlines.clear()
                self._heap.clear()
                self.nbytes = 0
            else:
                # list() copies in C, holding the GIL: hits in other threads move keys
                # (without the lock) and must not break this iteration
                for key in [k for k in list(self.data) if predicate(k)]:
                    self._remove(key)

    def purge(self) -> None:
        """Drop entries past their retention now."""
        reports: _Report = []
        with self.lock:
            self._purge(_clock.monotonic(), reports)
        self._report(reports)

    def usage(self, predicate: Callable[[Hashable], bool]) -> tuple[int, int]:
        with self.lock:
            entries = [e for k, e in list(self.data.items()) if predicate(k)]
        return len(entries), sum(e.size for e in entries)

    # --- under the lock -----------------------------------------------------------------

    def _remove(self, key: Hashable) -> bool:
        entry = self.data.pop(key, None)
        if entry is None:
            return False
        self.nbytes -= entry.size
        self._deadlines.pop(key, None)  # its heap record is skipped when it comes up
        return True

    def _purge(self, now: float, reports: _Report) -> None:
        heap = self._heap
        deadlines = self._deadlines
        expired: dict[CacheScope, int] = {}
        while heap and heap[0][0] <= now:
            deadline, _, key = heapq.heappop(heap)
            if deadlines.get(key) == deadline:
                self._remove(key)
                scope = self._scope_of(key)
                expired[scope] = expired.get(scope, 0) + 1
        for scope, count in expired.items():
            reports.append((scope, "expired", count))
        if len(heap) > 2 * len(deadlines) + 64:
            # records of replaced or evicted entries: rebuild from the live ones
            self._heap = [(d, next(self._sequence), k) for k, d in deadlines.items()]
            heapq.heapify(self._heap)

    def _enforce(self, reports: _Report) -> None:
        data = self.data
        while len(data) > self.maxsize:
            key, _ = next(iter(data.items()))
            self._remove(key)
            reports.append((self._scope_of(key), "size", 1))
        if self.max_bytes is not None:
            while self.nbytes > self.max_bytes and data:
                key, _ = next(iter(data.items()))
                self._remove(key)
                reports.append((self._scope_of(key), "bytes", 1))

    @staticmethod
    def _report(reports: _Report) -> None:
        # outside the lock: a subscriber may call back into the cache
        for scope, reason, count in reports:
            scope.report_eviction(reason, count)


def _scope_of_pair(key: Hashable) -> CacheScope:
    return key[0]  # type: ignore[index,no-any-return]  # LocalStore keys are (scope, parts)


@final
class LocalStore(CacheStore):
    """An in-process store that several cached functions can share.

    One table, one ``maxsize`` and one ``max_bytes`` for all the functions given this
    store (say, every embedding function of a service under one memory ceiling); each
    function's entries stay separate. Without ``store=``, each function gets a private
    table of its own, bounded by the decorator's ``maxsize`` and ``max_bytes``.

    Args:
        maxsize: at most this many entries in total; least recently used evicted first.
        max_bytes: at most this many bytes in total (``int`` or a size such as
            ``"512MiB"``), counting numpy ``nbytes`` and the length of bytes and str.

    Raises:
        ConfigurationError: for a bound that cannot work.
    """

    name = "local"

    def __init__(self, *, maxsize: int = 10_000, max_bytes: int | str | None = None) -> None:
        bytes_limit = None if max_bytes is None else _settings.byte_size(max_bytes, "max_bytes")
        self._table = LocalTable(
            _settings.positive_int(maxsize, "maxsize"), bytes_limit, _scope_of_pair
        )

    def __repr__(self) -> str:
        return f"LocalStore(maxsize={self._table.maxsize}, max_bytes={self._table.max_bytes})"

    def __len__(self) -> int:
        return len(self._table)

    def get(self, key: CacheKey) -> CacheEntry | None:
        pair = (key.scope, key.parts)
        entry = self._table.get(pair)
        if entry is not None:
            self._table.touch(pair)
        return entry

    def set(self, key: CacheKey, entry: CacheEntry, keep: float | None) -> None:
        until = math.inf if keep is None else _clock.monotonic() + keep
        self._table.put((key.scope, key.parts), entry, until)

    def delete(self, key: CacheKey) -> bool:
        return self._table.delete((key.scope, key.parts))

    def clear(self, scope: CacheScope) -> None:
        self._table.clear(lambda pair: pair[0] is scope)  # type: ignore[index]

    async def aget(self, key: CacheKey) -> CacheEntry | None:
        return self.get(key)

    async def aset(self, key: CacheKey, entry: CacheEntry, keep: float | None) -> None:
        self.set(key, entry, keep)

    async def adelete(self, key: CacheKey) -> bool:
        return self.delete(key)

    async def aclear(self, scope: CacheScope) -> None:
        self.clear(scope)

    def usage(self, scope: CacheScope) -> tuple[int, int]:
        self._table.purge()
        return self._table.usage(lambda pair: pair[0] is scope)  # type: ignore[index]

