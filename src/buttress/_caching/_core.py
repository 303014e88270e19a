"""One decorated function's cache: its keys, storage, counters and flights.

:class:`CacheCore` is what the engine (:mod:`._engine`), the shells (:mod:`._shells`) and
the handle (``fn.cache``, :mod:`._handle`) share: it builds keys, keeps entries in the
in-process table (or hands them to the store), counts and reports each call's result,
and invalidates. It decides nothing about a call; the engine does.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Hashable
from typing import Any, Literal, final

from buttress._errors import value_text
from buttress._events import CacheAccess, CacheEviction, CacheStoreFailed, events
from buttress._wrapping import function_module, function_name, stack_name

from ._flight import AsyncFlights, ThreadFlight
from ._keys import BindError, CacheKey, CacheScope, KeyBuilder
from ._local import LocalTable
from ._naming import shared_name
from ._policy import Policy
from ._stats import CacheStats, Counters
from ._store import CacheEntry, Entry
from ._values import copy_arrays, freeze

__all__ = ["CacheCore", "Result"]

#: How one call was answered; each call that reads the cache counts exactly one.
Result = Literal["hit", "miss", "join", "stale"]


@final
class CacheCore:
    """One decorated function: its keys, storage, counters and flights."""

    __slots__ = (
        "_after",
        "builder",
        "counters",
        "flights",
        "fn",
        "generation",
        "lock",
        "name",
        "policy",
        "scope",
        "single",
        "stack",
        "store",
        "table",
        "thread_flights",
    )

    def __init__(self, policy: Policy, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.name = function_name(fn)  # the cache's own: its keys' namespace
        self.stack = stack_name(fn)  # the name its events report: the stack's
        self.policy = policy
        self.builder = KeyBuilder(fn, self.name, policy.key)
        self.counters = Counters()
        self.store = policy.store
        if self.store is not None and self.store.shared_between_processes:
            function, module = shared_name(fn, policy.name)  # may refuse fn
        elif policy.name is not None:
            function, module = policy.name, ""
        else:
            function, module = self.name, function_module(fn)
        self.scope = CacheScope(function, self.builder.names, self._evicted, module=module)
        scope = self.scope
        self.table: LocalTable[Entry] | None = (
            LocalTable(policy.maxsize, policy.max_bytes, lambda _key: scope)
            if self.store is None
            else None
        )
        # The table's key of a call of one argument is that argument itself, not a tuple
        # of it (unless it is a tuple: those stay wrapped, so that no two calls share a
        # key): 48 bytes less per entry, and a cheaper hash; equal arguments still share
        # an entry. Only in the table: a store's keys stay the tuples that name them.
        self.single = (
            self.table is not None and self.builder.arity == 1 and not self.builder.tail
        )
        # guards thread flights and orders invalidation against storing; reentrant because
        # an event subscriber (run while it is held) may call fn.cache.clear()
        self.lock = threading.RLock()
        self.thread_flights: dict[Hashable, ThreadFlight] = {}
        self.flights = AsyncFlights(self.name)
        # bumped by invalidate() and clear(): a computation that started before must not
        # store what it read before the invalidation
        self.generation = 0
        # how long an entry of the table stays useful past its expiry (its stale windows)
        keep, ttl = policy.keep, policy.ttl
        self._after = None if keep is None or ttl is None else keep - ttl

    # --- keys ---------------------------------------------------------------------------

    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        """The local key of a call (raises BindError or UnkeyableArgumentError)."""
        builder = self.builder
        if not kwargs and len(args) == builder.arity:
            if self.single:
                first = args[0]
                if not isinstance(first, tuple):
                    try:
                        hash(first)
                    except TypeError:
                        return self.bind(args, kwargs)
                    return first  # type: ignore[no-any-return]
            key = args + builder.tail if builder.tail else args
            try:
                hash(key)
            except TypeError:
                return self.bind(args, kwargs)
            return key
        return self.bind(args, kwargs)

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        """The key of a call bound to the signature (what :meth:`key` gives it)."""
        key = self.builder.build(args, kwargs)
        if self.single:
            first = key[0]  # type: ignore[index]  # one parameter: a key of one part
            if not isinstance(first, tuple):
                return first  # type: ignore[no-any-return]
        return key

    def bound_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        """Like :meth:`key`, for the handle: a call that fits no signature is an error."""
        try:
            return self.key(args, kwargs)
        except BindError:
            raise TypeError(
                f"these arguments do not fit the signature of {self.name}(): "
                f"args={value_text(args)}, kwargs={value_text(kwargs)}"
            ) from None

    def store_key(self, key: Hashable) -> CacheKey:
        """The key as the store sees it."""
        return CacheKey(self.scope, key)

    # --- reporting ----------------------------------------------------------------------

    def note(self, result: Result, error: BaseException | None = None) -> None:
        """Count one call's result and report it (``error``: why a stale value was served).

        Called exactly once per call that read the cache; the shells count their own
        fresh hits the same way, inline.
        """
        counters = self.counters
        if result == "join":  # the commonest here: hits are mostly counted by the shells
            counters.joins += 1
        elif result == "miss":
            counters.misses += 1
        elif result == "hit":
            counters.hits += 1
        else:
            counters.stale += 1
        if events.active:
            events.emit(CacheAccess(function=self.stack.value, result=result, error=error))

    def _evicted(self, reason: str, count: int) -> None:
        if reason == "expired":
            self.counters.expirations += count
        else:
            self.counters.evictions += count
        if events.active:
            why: Literal["size", "bytes", "expired"] = (
                "expired" if reason == "expired" else "bytes" if reason == "bytes" else "size"
            )
            events.emit(CacheEviction(function=self.stack.value, reason=why, count=count))

    def store_failed(self, operation: str, exc: Exception) -> None:
        """A store failed and the call goes on without it: count and report.

        The report is the ``CacheStoreFailed`` event, which the ``buttress.events``
        logger writes (rate-limited): the one place an operator reads store outages.
        """
        self.counters.store_errors += 1
        if events.notable():
            store_name = getattr(self.store, "name", type(self.store).__name__)
            events.emit(
                CacheStoreFailed(
                    function=self.stack.value, store=store_name, operation=operation, error=exc
                )
            )

    # --- values -------------------------------------------------------------------------

    def deliver(self, value: Any, arrays: bool) -> Any:
        """What one caller receives: ``value``, or a private copy of its arrays."""
        if arrays and self.policy.copy_arrays:
            return copy_arrays(value)
        return value

    def new_entry(self, value: Any, start: float, end: float) -> tuple[Entry, bool]:
        """The entry for a fresh result, and whether it should be stored: for the
        in-process table a compact :class:`Entry`, for a store a :class:`CacheEntry`."""
        frozen, arrays, size = freeze(value)
        ttl = self.policy.ttl
        entry: Entry
        if self.table is not None:
            entry = Entry(frozen, math.inf if ttl is None else end + ttl, size, arrays)
        else:
            entry = CacheEntry(
                frozen, stored_at=end, ttl=ttl, duration=end - start, size=size, arrays=arrays
            )
        return entry, self.policy.storable(value)

    def put_local(self, key: Hashable, entry: Entry, generation: int) -> None:
        """Keep ``entry`` in the in-process table, unless an invalidation came since
        ``generation`` was read (the computation may have read what it invalidated)."""
        assert self.table is not None
        with self.lock:
            if generation == self.generation:
                self.table.keep(key, entry, self._after)

    # --- invalidation and statistics (the handle's operations) ---------------------------

    def invalidate(self, key: Hashable) -> bool | None:
        """Forget ``key`` in the in-process table; ``None`` when a store holds the entries
        (the caller then deletes ``store_key(key)`` through the store's sync or async
        interface). Either way, running computations will not store their result."""
        with self.lock:
            self.generation += 1
            if self.table is None:
                return None
            return self.table.delete(key)

    def clear(self) -> bool:
        """Empty the in-process table; ``False`` when a store holds the entries (the
        caller then clears ``scope`` in the store)."""
        with self.lock:
            self.generation += 1
            if self.table is None:
                return False
            self.table.clear()
            return True

    def stats(self) -> CacheStats:
        if self.table is not None:
            self.table.purge()
            return self.counters.snapshot(len(self.table), self.table.nbytes)
        assert self.store is not None
        usage = self.store.usage(self.scope)
        return self.counters.snapshot(*((None, None) if usage is None else usage))
