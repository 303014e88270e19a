"""What ``fn.cache.stats()`` reports, and the counters behind it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

__all__ = ["CacheStats", "Counters"]


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of one cached function's counters (``fn.cache.stats()``).

    Every call that reads the cache counts exactly once, in ``hits``, ``misses``, ``joins``
    or ``stale``, and is reported as one ``CacheAccess`` event whose ``result`` names that
    same counter; so ``hits + misses + joins + stale`` is the number of such calls. A call
    is counted when its outcome is known: a waiter when its wait ends, a leader when its
    computation does, a call cancelled while a store is being read as what it was about to
    be (a join when another caller of this process computes the key, else a miss). Calls
    that end before the cache is read are not counted: arguments that do not fit the
    signature (passed on to the function as they are), an argument that cannot be keyed, a
    store refusing the read (``CacheStoreError``); nor are ``fn.cache.bypass()`` calls.

    Attributes:
        hits: calls answered from a fresh entry: also while another caller refreshes it
            early, or when another process does (a store's flight hands it back), and a
            call whose own early refresh failed while the entry was still fresh (its
            ``CacheAccess`` event carries that error).
        misses: calls that ran the function themselves: a single-flight leader (also a
            waiter that takes over from a cancelled leader, and a caller refreshing a
            fresh entry early) or, with ``single_flight=False``, any caller that found
            nothing fresh. Counted however the run ends (a value, an error the call
            raises, a cancellation), except a failed run answered by an entry, which
            counts in ``stale`` (or ``hits``, the entry still fresh). Also calls cancelled
            while a store was being read, with no computation of their key running here.
        joins: calls that waited for another caller's computation in this process and
            got its value or its error (or were cancelled while waiting, or while a store
            was being read), and leaders whose store reported, on entering its flight,
            that another process had just computed the value.
        stale: calls answered with an expired value on purpose: within
            ``stale_while_revalidate`` while another caller (in this process or, through
            a store's flight, in another) refreshes it, or within ``stale_if_error``
            because the computation the call ran or waited for raised (its
            ``CacheAccess`` event carries that error).
        errors: computations that raised, once per computation however many callers
            shared it (never cached; also those answered by ``stale_if_error``; not
            cancellations).
        evictions: entries dropped to respect ``maxsize`` or ``max_bytes`` (a result
            larger than ``max_bytes`` on its own counts as evicted at once).
        expirations: entries dropped because they were past their ttl and stale windows.
        store_errors: failures of a ``store=`` that the call survived.
        size: entries held now (``None`` when the store cannot tell cheaply).
        bytes: bytes held now, as counted for ``max_bytes`` (``None`` likewise).
        refreshes: early refreshes (XFetch, for a store with ``early_refresh_beta``):
            computations started while the entry was still fresh. Like ``errors`` they
            count computations, not calls: the call that ran one is already counted once
            above, in ``misses`` (or in ``hits`` if the refresh failed and the fresh entry
            answered it), so ``refreshes`` is never added to the calls. The caller that
            draws a refresh while another process is already refreshing computes nothing
            and is not counted here.

    The counters are plain integers bumped without a lock: exact within an event loop, and
    between threads on CPython with the GIL; a free-threaded interpreter may lose a few
    increments under heavy contention (the events are exact everywhere).
    """

    hits: int
    misses: int
    joins: int
    stale: int
    errors: int
    evictions: int
    expirations: int
    store_errors: int
    size: int | None
    bytes: int | None
    refreshes: int = 0

    @property
    def hit_ratio(self) -> float:
        """Share of calls served without computing (hits, joins and stale), 0 when idle."""
        served = self.hits + self.joins + self.stale
        total = served + self.misses
        return served / total if total else 0.0


@final
class Counters:
    """The live counters of one decorated function; :meth:`snapshot` freezes them."""

    # Plain attributes bumped without a lock, which the hit path cannot afford. CPython
    # with the GIL (3.10+) switches threads at calls and backward jumps, not inside
    # ``counters.hits += 1`` on a slot; a free-threaded build may lose a few increments.
    __slots__ = (
        "errors",
        "evictions",
        "expirations",
        "hits",
        "joins",
        "misses",
        "refreshes",
        "stale",
        "store_errors",
    )

    def __init__(self) -> None:
        self.hits = self.misses = self.joins = self.stale = self.errors = 0
        self.evictions = self.expirations = self.store_errors = self.refreshes = 0

    def snapshot(self, size: int | None, nbytes: int | None) -> CacheStats:
        return CacheStats(
            hits=self.hits,
            misses=self.misses,
            joins=self.joins,
            stale=self.stale,
            errors=self.errors,
            evictions=self.evictions,
            expirations=self.expirations,
            store_errors=self.store_errors,
            size=size,
            bytes=nbytes,
            refreshes=self.refreshes,
        )
