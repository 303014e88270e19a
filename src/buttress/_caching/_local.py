"""The in-process store: an LRU table with an entry bound, a byte bound and timed purges.

Reads take no lock (one ``dict`` lookup, then a best-effort move to the recent end);
writes take a ``threading.Lock`` held for a few dictionary operations and never across an
``await``, so the table is shared safely by threads and by event loops in different threads.

One entry costs the table its key and one compact record (:class:`~._store.Entry`): the
LRU order is the ``OrderedDict``'s own, and expiry needs no object of its own either.
Expired entries do not pile up: entries kept for the same time past their expiry are
queued in the order they were written, which is the order they become useless in; a
queue's records are the key and the very float object of the entry's ``expires`` (two
slots of two deques), so a record of an entry replaced or evicted since is known by
identity and skipped. Every write first drops what the queues' fronts say is dead.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar, final

from buttress import _clock, _settings

from ._keys import CacheKey, CacheScope
from ._store import CacheEntry, CacheStore, Entry

__all__ = ["LocalStore", "LocalTable"]

#: (scope, reason, count) records gathered under the lock, reported after releasing it.
_Report = list[tuple[CacheScope, str, int]]

#: The queue of entries put with an explicit deadline (:meth:`LocalTable.put`).
_EXPLICIT = -1.0

E = TypeVar("E", bound=Entry)


@final
class LocalTable(Generic[E]):
    """The engine of the in-process store, keyed by any hashable.

    Args:
        maxsize: at most this many entries; the least recently used goes first.
        max_bytes: at most this many bytes of ``entry.size`` in total, or ``None``.
        scope_of: which function a key belongs to, for eviction reports.
    """

    __slots__ = (
        "_deadlines",
        "_queues",
        "_records",
        "_scope_of",
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
        self.data: OrderedDict[Hashable, E] = OrderedDict()
        self.lock = threading.Lock()
        self.nbytes = 0
        # seconds past expiry (or _EXPLICIT) -> (keys, marks) in the order written; a mark
        # is the entry's own ``expires`` float (or its explicit deadline), compared by
        # identity: a record whose mark is no longer the entry's is left over, and skipped
        self._queues: dict[float, tuple[deque[Hashable], deque[float]]] = {}
        self._records = 0
        # key -> deadline, for the entries put with an explicit one only
        self._deadlines: dict[Hashable, float] = {}

    def __len__(self) -> int:
        return len(self.data)

    def get(self, key: Hashable) -> E | None:
        """The entry, whatever its age, without touching recency."""
        return self.data.get(key)

    def live(self, key: Hashable, now: float) -> E | None:
        """The entry, if it is still within the explicit deadline it was put with."""
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

    def keep(self, key: Hashable, entry: E, after: float | None) -> None:
        """Store ``entry``, useless ``after`` seconds past its expiry (``None``: kept until
        evicted), then enforce the bounds. An entry larger than ``max_bytes`` alone is not
        stored."""
        reports: _Report = []
        with self.lock:
            self._purge(_clock.monotonic(), reports)
            self._remove(key)
            if self._admit(key, entry, reports):
                if after is not None and entry.expires != math.inf:
                    self._queue(after, key, entry.expires)
                self._enforce(reports)
        self._report(reports)

    def put(self, key: Hashable, entry: E, keep_until: float) -> None:
        """Store ``entry`` until ``keep_until`` (monotonic; ``inf`` for ever), whatever its
        expiry, then enforce the bounds (see :meth:`live`)."""
        reports: _Report = []
        with self.lock:
            self._purge(_clock.monotonic(), reports)
            self._remove(key)
            if self._admit(key, entry, reports):
                if keep_until != math.inf:
                    self._deadlines[key] = keep_until
                    self._queue(_EXPLICIT, key, keep_until)
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
                self._queues.clear()
                self._records = 0
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

    def _admit(self, key: Hashable, entry: E, reports: _Report) -> bool:
        if self.max_bytes is not None and entry.size > self.max_bytes:
            reports.append((self._scope_of(key), "bytes", 1))
            return False
        self.data[key] = entry
        self.nbytes += entry.size
        return True

    def _queue(self, after: float, key: Hashable, mark: float) -> None:
        queue = self._queues.get(after)
        if queue is None:
            queue = self._queues[after] = (deque(), deque())
        queue[0].append(key)
        queue[1].append(mark)
        self._records += 1

    def _remove(self, key: Hashable) -> bool:
        entry = self.data.pop(key, None)
        if entry is None:
            return False
        self.nbytes -= entry.size
        if self._deadlines:
            self._deadlines.pop(key, None)
        return True  # its queue record is skipped when it comes up

    def _mark(self, after: float, key: Hashable) -> float | None:
        """The mark the current entry of ``key`` was queued with, if any."""
        if after == _EXPLICIT:
            return self._deadlines.get(key)
        entry = self.data.get(key)
        return None if entry is None else entry.expires

    def _purge(self, now: float, reports: _Report) -> None:
        expired: dict[CacheScope, int] = {}
        for after, (keys, marks) in self._queues.items():
            while keys:
                key = keys[0]
                mark = marks[0]
                if self._mark(after, key) is mark:
                    if (mark if after == _EXPLICIT else mark + after) > now:
                        break  # written later, useless later: the rest of the queue too
                    self._remove(key)
                    scope = self._scope_of(key)
                    expired[scope] = expired.get(scope, 0) + 1
                keys.popleft()
                marks.popleft()
                self._records -= 1
        for scope, count in expired.items():
            reports.append((scope, "expired", count))
        if self._records > 2 * len(self.data) + 64:
            # records of replaced or evicted entries: keep only the current ones, in order
            self._records = 0
            for after, (keys, marks) in list(self._queues.items()):
                kept = [
                    (k, m) for k, m in zip(keys, marks, strict=True) if self._mark(after, k) is m
                ]
                if kept:
                    self._queues[after] = (deque(k for k, _ in kept), deque(m for _, m in kept))
                    self._records += len(kept)
                else:
                    del self._queues[after]

    def _enforce(self, reports: _Report) -> None:
        data = self.data
        while len(data) > self.maxsize:
            key = next(iter(data))
            self._remove(key)
            reports.append((self._scope_of(key), "size", 1))
        if self.max_bytes is not None:
            while self.nbytes > self.max_bytes and data:
                key = next(iter(data))
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
        self._table: LocalTable[CacheEntry] = LocalTable(
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
        pair = (key.scope, key.parts)
        if keep is None:
            self._table.keep(pair, entry, None)
        elif entry.ttl is not None:  # useless once past its stale windows
            self._table.keep(pair, entry, keep - entry.ttl)
        else:
            self._table.put(pair, entry, _clock.monotonic() + keep)

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

