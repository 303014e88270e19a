"""What a cache store is: entries with their metadata, and the operations on them.

``@cache_result`` keeps its entries in a private in-process table by default. Through
``store=`` it uses a :class:`CacheStore` instead: :class:`~buttress.LocalStore` (one
in-process table shared by several functions, under one memory ceiling) or a store shared
between processes such as ``RedisStore``.

The decorator owns the decisions (freshness, stale windows, single-flight in the process,
freezing arrays); a store only keeps entries, for at least the retention it is given, and
may coordinate computations across processes through :meth:`CacheStore.aflight`.
"""

from __future__ import annotations

import abc
import math
from collections.abc import AsyncIterator, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from typing import Any, final

from ._keys import CacheKey, CacheScope

__all__ = ["CacheEntry", "CacheStore", "Entry"]


class Entry:
    """What the decorator needs of a cached result: one compact record per entry.

    The in-process table keeps these (four slots: the value, its monotonic expiry as a
    float, its size and whether it holds arrays); a store's entries are
    :class:`CacheEntry`, which adds when and how the value was computed.

    Attributes:
        value: the result, as callers receive it (numpy arrays in it are read-only).
        expires: a reading of buttress's monotonic clock: fresh while the clock is below
            (``inf`` without a ttl).
        size: bytes counted against ``max_bytes`` (numpy ``nbytes``, ``len`` of bytes/str).
        arrays: whether ``value`` holds numpy arrays (``copy_arrays`` copies only then).
    """

    __slots__ = ("arrays", "expires", "size", "value")

    def __init__(self, value: Any, expires: float, size: int = 0, arrays: bool = False) -> None:
        self.value = value
        self.expires = expires
        self.size = size
        self.arrays = arrays

    def __repr__(self) -> str:
        return f"Entry(value={self.value!r:.60}, expires={self.expires!r}, size={self.size!r})"


@final
class CacheEntry(Entry):
    """One cached result and what is known about it.

    Attributes:
        value: the result, as callers receive it (numpy arrays in it are read-only views).
        stored_at: when it was computed, as a reading of buttress's monotonic clock
            (``buttress._clock.monotonic()``, which ``buttress.testing`` can fake). A store
            shared between processes keeps a wall-clock stamp and converts on read:
            ``stored_at = monotonic() - (time.time() - stored_wall)``.
        ttl: seconds it stays fresh, or ``None`` for ever.
        duration: seconds the computation took (probabilistic early refresh weighs it).
        size: bytes counted against ``max_bytes`` (numpy ``nbytes``, ``len`` of bytes/str).
        arrays: whether ``value`` holds numpy arrays (``copy_arrays`` copies only then).
        expires: ``stored_at + ttl`` (``inf`` without a ttl): fresh while the clock is below.

    Entries are immutable by convention: stores and callers never change one in place.
    """

    __slots__ = ("duration", "stored_at", "ttl")

    def __init__(
        self,
        value: Any,
        *,
        stored_at: float,
        ttl: float | None,
        duration: float = 0.0,
        size: int = 0,
        arrays: bool = False,
    ) -> None:
        self.value = value
        self.expires = math.inf if ttl is None else stored_at + ttl
        self.size = size
        self.arrays = arrays
        self.stored_at = stored_at
        self.ttl = ttl
        self.duration = duration

    def __repr__(self) -> str:
        return (
            f"CacheEntry(value={self.value!r:.60}, stored_at={self.stored_at!r}, "
            f"ttl={self.ttl!r}, duration={self.duration!r}, size={self.size!r})"
        )


class CacheStore(abc.ABC):
    """Where ``@cache_result`` keeps entries when given ``store=``.

    Every operation has a sync form (used by plain functions) and an async form (used by
    coroutine functions; it must not block the event loop). Keys are :class:`CacheKey`:
    a store in this process may key on ``(key.scope, key.parts)``; a store shared between
    processes keys on ``key.scope.function``, ``key.digest()`` and a version of its own.

    Failures: any exception a store raises (other than cancellation) is survived by the
    decorator: it is counted in ``stats().store_errors``, reported as ``CacheStoreFailed``,
    logged at most once a minute, and the call goes on as a miss (``get``) or uncached
    (``set``). A store that wants the caller to see a failure raises
    :class:`~buttress.CacheStoreError`.

    Stores must be safe to use from several threads and event loops at once, and must not
    create event-loop-bound objects before they are used inside a loop.
    """

    #: A short name for events and logs (``"local"``, ``"redis"``).
    name: str = "store"

    #: Weight of probabilistic early refresh (XFetch) for entries of this store; ``0``
    #: disables it. The decorator makes the decision (see ``RedisStore``); a store that
    #: keeps the computation time (``entry.duration``) may offer it.
    early_refresh_beta: float = 0.0

    #: Whether other processes read this store's entries, so that a function is known to
    #: it by name rather than by identity (``RedisStore``). The decorator then makes sure
    #: that two different functions never share a name in it: see ``cache_result(name=)``.
    shared_between_processes: bool = False

    # --- sync -------------------------------------------------------------------------

    @abc.abstractmethod
    def get(self, key: CacheKey) -> CacheEntry | None:
        """The entry for ``key``, or ``None``. Fresh or not is the decorator's call:
        return entries kept past their ``ttl`` too (stale serving needs them)."""

    @abc.abstractmethod
    def set(self, key: CacheKey, entry: CacheEntry, keep: float | None) -> None:
        """Store ``entry``; keep it at least ``keep`` seconds (``None``: no limit).

        ``keep`` is ``entry.ttl`` plus the stale windows; past it the entry is useless, so
        a store with native expiry (Redis ``PX``) sets exactly that.
        """

    @abc.abstractmethod
    def delete(self, key: CacheKey) -> bool:
        """Drop the entry for ``key``; whether there was one."""

    @abc.abstractmethod
    def clear(self, scope: CacheScope) -> None:
        """Drop every entry of one decorated function."""

    # --- async ------------------------------------------------------------------------

    @abc.abstractmethod
    async def aget(self, key: CacheKey) -> CacheEntry | None:
        """Async :meth:`get`."""

    @abc.abstractmethod
    async def aset(self, key: CacheKey, entry: CacheEntry, keep: float | None) -> None:
        """Async :meth:`set`."""

    @abc.abstractmethod
    async def adelete(self, key: CacheKey) -> bool:
        """Async :meth:`delete`."""

    @abc.abstractmethod
    async def aclear(self, scope: CacheScope) -> None:
        """Async :meth:`clear`."""

    # --- optional ---------------------------------------------------------------------

    def get_or_lead(
        self, key: CacheKey
    ) -> tuple[CacheEntry | None, AbstractContextManager[Any] | None]:
        """Read the entry of ``key``; when there is none, a store that coordinates
        computations across processes may also take the lead of computing it, in the same
        operation (one round trip instead of two).

        Returns ``(entry, led)``: ``led`` is ``None``, or a flight the store already leads,
        which the decorator enters at once and computes inside, as in :meth:`flight` (it
        yields ``None``). The decorator calls this instead of :meth:`get` when it
        coordinates computations (``single_flight=True``). The default reads and leads
        nothing.
        """
        return self.get(key), None

    async def aget_or_lead(
        self, key: CacheKey
    ) -> tuple[CacheEntry | None, AbstractAsyncContextManager[Any] | None]:
        """Async :meth:`get_or_lead`."""
        return await self.aget(key), None

    @contextmanager
    def flight(
        self, key: CacheKey, current: CacheEntry | None = None
    ) -> Iterator[CacheEntry | None]:
        """Coordinate one computation of ``key`` beyond this process (sync form).

        The decorator enters this after a miss, in the one thread of this process that
        computes ``key`` (single-flight within the process comes first). Yield ``None`` to
        let it compute and :meth:`set` inside the block; or yield an entry that appeared
        meanwhile (computed by another process), which it then serves instead. A store
        shared between processes takes a lock here (``SET NX PX`` with renewal), waits
        for the holder's value when the lock is taken, and releases the lock on exit.

        ``current`` is an entry the caller could still serve: a fresh one due for early
        refresh, or one expired within ``stale_while_revalidate``. When another process is
        already computing the key, yield ``current`` itself: the caller serves it at once
        instead of waiting (that other process does the refresh).

        The default coordinates nothing: it yields ``None``.
        """
        yield None

    @asynccontextmanager
    async def aflight(
        self, key: CacheKey, current: CacheEntry | None = None
    ) -> AsyncIterator[CacheEntry | None]:
        """Async :meth:`flight`; must wait without blocking the event loop."""
        yield None

    def usage(self, scope: CacheScope) -> tuple[int, int] | None:
        """``(entries, bytes)`` held for one function, if cheaply known; else ``None``.

        Called by ``fn.cache.stats()``, which is synchronous: never do I/O here.
        """
        return None
