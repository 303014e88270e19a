"""@cache_result: a TTL cache with single-flight, for ``def`` and ``async def``.

The decisions live in plain code: :class:`_Policy` (is an entry fresh, stale but servable,
a fallback on error, or dead; is a result worth storing) and :class:`_Cache` (one decorated
function's keys, storage, counters and flights). The shells at the bottom only look up,
wait and lock. A hit on the default in-process table never leaves the wrapper: one key
(usually the ``args`` tuple itself), one dict lookup, one clock read.
"""

from __future__ import annotations

import logging
import math
import random
import threading
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Final,
    Generic,
    Literal,
    ParamSpec,
    Protocol,
    TypeVar,
    final,
    overload,
)

from buttress import _clock, _settings
from buttress._errors import CacheStoreError, ConfigurationError, UnkeyableArgumentError, is_fatal
from buttress._events import CacheAccess, CacheEviction, CacheStoreFailed, events
from buttress._wrapping import function_module, function_name, wrap

from ._flight import ABANDONED, DONE, FAILED, AsyncFlights, Flight, ThreadFlight
from ._keys import BindError, CacheKey, CacheScope, KeyBuilder
from ._local import LocalTable
from ._store import CacheEntry, CacheStore
from ._values import copy_arrays, freeze

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager, AbstractContextManager

    from typing_extensions import Self

__all__ = ["CacheHandle", "CacheStats", "CachedFunction", "CachedMethod", "cache_result"]

P = ParamSpec("P")
P2 = ParamSpec("P2")
PH = ParamSpec("PH")
R = TypeVar("R")
R2 = TypeVar("R2")
R_co = TypeVar("R_co", covariant=True)
S = TypeVar("S")

logger = logging.getLogger("buttress.cache")

#: What an entry is worth now.
FRESH: Final = 0  # serve it
STALE: Final = 1  # expired, within stale_while_revalidate: serve it unless nobody refreshes
FALLBACK: Final = 2  # expired, within stale_if_error only: compute, serve it if that fails
ABSENT: Final = 3  # nothing usable
EARLY: Final = 4  # fresh, but this caller refreshes it early (XFetch); others serve it

#: What :meth:`_Cache._follow` returns when there is no flight, or when to look again.
_NO_FLIGHT: Final = object()
_RETRY: Final = object()

#: Store failures are logged at most once per this many seconds per function.
_LOG_INTERVAL: Final = 60.0


def refresh_early(now: float, expires: float, duration: float, beta: float, draw: float) -> bool:
    """XFetch (Vattani, Chierichetti and Lowenstein, VLDB 2015): refresh a fresh entry now?

    True when ``now - duration * beta * ln(u) >= expires`` with ``u = 1 - draw`` uniform
    in ``(0, 1]``: the probability, ``exp(-(expires - now) / (duration * beta))``, rises
    as expiry nears, and faster for a value that takes long to compute, so one caller
    among many refreshes it shortly before it expires and nobody waits for it.
    """
    if duration <= 0.0:
        return False
    return now - duration * beta * math.log(1.0 - draw) >= expires


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of one cached function's counters (``fn.cache.stats()``).

    Attributes:
        hits: calls answered from the cache.
        misses: calls that ran the function (the single-flight leaders).
        joins: calls that waited for another caller's computation instead.
        stale: calls answered with an expired value on purpose
            (``stale_while_revalidate``, or ``stale_if_error`` after a failed refresh).
        errors: computations that raised (never cached; also those masked by
            ``stale_if_error``).
        evictions: entries dropped to respect ``maxsize`` or ``max_bytes`` (a result
            larger than ``max_bytes`` on its own counts as evicted at once).
        expirations: entries dropped because they were past their ttl and stale windows.
        store_errors: failures of a ``store=`` that the call survived.
        size: entries held now (``None`` when the store cannot tell cheaply).
        bytes: bytes held now, as counted for ``max_bytes`` (``None`` likewise).
        refreshes: misses that were probabilistic early refreshes of a value still fresh
            (a store's ``early_refresh_beta``); they are counted in ``misses`` too.
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


class _Counters:
    # Plain attributes bumped without a lock: exact within one event loop; under heavy
    # thread contention a few increments may be lost, which a counter can afford and a
    # lock on the hit path cannot.
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


@final
class _Policy:
    """The compiled settings of one ``@cache_result``: decisions only, no I/O, no waiting."""

    __slots__ = (
        "cache_none",
        "copy_arrays",
        "early_refresh_beta",
        "keep",
        "key",
        "max_bytes",
        "maxsize",
        "single_flight",
        "stale_if_error",
        "stale_while_revalidate",
        "store",
        "ttl",
    )

    def __init__(
        self,
        *,
        ttl: float | timedelta | None,
        maxsize: int,
        max_bytes: int | str | None,
        key: Callable[..., Hashable] | None,
        single_flight: bool,
        cache_none: bool,
        store: CacheStore | None,
        copy_arrays: bool,
        stale_while_revalidate: float | timedelta,
        stale_if_error: float | timedelta,
    ) -> None:
        self.ttl = _settings.optional_seconds(ttl, "ttl")
        self.maxsize = _settings.positive_int(maxsize, "maxsize")
        self.max_bytes = (
            None if max_bytes is None else _settings.byte_size(max_bytes, "max_bytes")
        )
        if self.max_bytes == 0:
            raise ConfigurationError("max_bytes must be positive (or None for no byte bound)")
        if key is not None and not callable(key):
            raise ConfigurationError(f"key must be a callable building the key, got {key!r}")
        self.key = key
        if store is not None and not isinstance(store, CacheStore):
            raise ConfigurationError(
                f"store must be a buttress CacheStore (LocalStore, RedisStore), got {store!r}"
            )
        if store is not None and max_bytes is not None:
            raise ConfigurationError(
                "max_bytes bounds the default in-process table; with store=, give the "
                "store its own bounds (LocalStore(max_bytes=...))"
            )
        self.store = store
        # XFetch weight: only entries of a store that offers it are refreshed early
        self.early_refresh_beta = 0.0 if store is None else float(store.early_refresh_beta)
        self.single_flight = bool(single_flight)
        self.cache_none = bool(cache_none)
        self.copy_arrays = bool(copy_arrays)
        self.stale_while_revalidate = _settings.seconds(
            stale_while_revalidate, "stale_while_revalidate"
        )
        self.stale_if_error = _settings.seconds(stale_if_error, "stale_if_error")
        if self.ttl is None and (self.stale_while_revalidate or self.stale_if_error):
            raise ConfigurationError(
                "stale_while_revalidate and stale_if_error need a ttl: with ttl=None "
                "entries never expire, so they are never stale"
            )
        # how long an entry stays useful: fresh, then servable while stale
        self.keep: float | None = (
            None
            if self.ttl is None
            else self.ttl + max(self.stale_while_revalidate, self.stale_if_error)
        )

    def state(self, entry: CacheEntry | None, now: float) -> int:
        if entry is None:
            return ABSENT
        if now < entry.expires:
            beta = self.early_refresh_beta
            if beta and refresh_early(now, entry.expires, entry.duration, beta, random.random()):
                return EARLY
            return FRESH
        late = now - entry.expires
        if late < self.stale_while_revalidate:
            return STALE
        if late < self.stale_if_error:
            return FALLBACK
        return ABSENT

    @staticmethod
    def fresh(entry: CacheEntry, now: float) -> bool:
        return now < entry.expires

    def can_fall_back(self, entry: CacheEntry | None, now: float) -> bool:
        """Whether a failed computation may be answered with ``entry`` instead."""
        return entry is not None and now - entry.expires < self.stale_if_error

    def storable(self, value: object) -> bool:
        return (value is not None or self.cache_none) and self.keep != 0


@final
class _Cache:
    """One decorated function: its keys, storage, counters and flights."""

    __slots__ = (
        "_last_log",
        "builder",
        "counters",
        "flights",
        "fn",
        "generation",
        "lock",
        "name",
        "policy",
        "scope",
        "store",
        "table",
        "thread_flights",
    )

    def __init__(self, policy: _Policy, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.name = function_name(fn)
        self.policy = policy
        self.builder = KeyBuilder(fn, self.name, policy.key)
        self.counters = _Counters()
        self.scope = CacheScope(
            self.name, self.builder.names, self._evicted, module=function_module(fn)
        )
        self.store = policy.store
        scope = self.scope
        self.table: LocalTable | None = (
            LocalTable(policy.maxsize, policy.max_bytes, lambda _key: scope)
            if self.store is None
            else None
        )
        # guards thread flights and orders invalidation against storing; reentrant because
        # an event subscriber (run while it is held) may call fn.cache.clear()
        self.lock = threading.RLock()
        self.thread_flights: dict[Hashable, ThreadFlight] = {}
        self.flights = AsyncFlights(self.name)
        # bumped by invalidate() and clear(): a computation that started before must not
        # store what it read before the invalidation
        self.generation = 0
        self._last_log = -math.inf

    # --- keys ---------------------------------------------------------------------------

    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        """The local key of a call (raises BindError or UnkeyableArgumentError)."""
        builder = self.builder
        if not kwargs and len(args) == builder.arity:
            key = args + builder.tail if builder.tail else args
            try:
                hash(key)
            except TypeError:
                return builder.build(args, kwargs)
            return key
        return builder.build(args, kwargs)

    def bound_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        """Like :meth:`key`, for the handle: a call that fits no signature is an error."""
        try:
            return self.key(args, kwargs)
        except BindError:
            raise TypeError(
                f"these arguments do not fit the signature of {self.name}(): "
                f"args={args!r:.200}, kwargs={kwargs!r:.200}"
            ) from None

    # --- reporting ----------------------------------------------------------------------

    def note(self, result: Literal["hit", "miss", "join", "stale"]) -> None:
        counters = self.counters
        if result == "hit":
            counters.hits += 1
        elif result == "miss":
            counters.misses += 1
        elif result == "join":
            counters.joins += 1
        else:
            counters.stale += 1
        if events.active:
            events.emit(CacheAccess(function=self.name, result=result))

    def _evicted(self, reason: str, count: int) -> None:
        if reason == "expired":
            self.counters.expirations += count
        else:
            self.counters.evictions += count
        if events.active:
            why: Literal["size", "bytes", "expired"] = (
                "expired" if reason == "expired" else "bytes" if reason == "bytes" else "size"
            )
            events.emit(CacheEviction(function=self.name, reason=why, count=count))

    def store_failed(self, operation: str, exc: Exception) -> None:
        """A store failed and the call goes on without it: count, report, log (rarely)."""
        self.counters.store_errors += 1
        store_name = getattr(self.store, "name", type(self.store).__name__)
        if events.active:
            events.emit(
                CacheStoreFailed(
                    function=self.name, store=store_name, operation=operation, error=exc
                )
            )
        now = _clock.monotonic()
        if now - self._last_log >= _LOG_INTERVAL:
            self._last_log = now
            logger.warning(
                "cache store %r failed on %s for %s(); the call goes on uncached "
                "(further failures are counted in fn.cache.stats() and logged at most "
                "every %gs): %r",
                store_name,
                operation,
                self.name,
                _LOG_INTERVAL,
                exc,
            )

    # --- values -------------------------------------------------------------------------

    def deliver(self, value: Any, arrays: bool) -> Any:
        if arrays and self.policy.copy_arrays:
            return copy_arrays(value)
        return value

    def new_entry(self, value: Any, start: float, end: float) -> tuple[CacheEntry, bool]:
        """The entry for a fresh result, and whether it should be stored."""
        frozen, arrays, size = freeze(value)
        entry = CacheEntry(
            frozen,
            stored_at=end,
            ttl=self.policy.ttl,
            duration=end - start,
            size=size,
            arrays=arrays,
        )
        return entry, self.policy.storable(value)

    def put_local(self, key: Hashable, entry: CacheEntry, generation: int) -> None:
        assert self.table is not None
        keep = self.policy.keep
        until = math.inf if keep is None else entry.stored_at + keep
        with self.lock:
            if generation == self.generation:
                self.table.put(key, entry, until)

    def invalidate_local(self, key: Hashable) -> bool:
        assert self.table is not None
        with self.lock:
            self.generation += 1
            return self.table.delete(key)

    def clear_local(self) -> None:
        assert self.table is not None
        with self.lock:
            self.generation += 1
            self.table.clear()

    def fall_back(self, entry: CacheEntry | None, exc: BaseException) -> bool:
        """After a failed computation: may ``entry`` be served instead? (counts it)."""
        now = _clock.monotonic()
        if entry is not None and self.policy.fresh(entry, now):
            # an early refresh failed while the value is still fresh: serve it as a hit
            self.counters.hits += 1
            if events.active:
                events.emit(CacheAccess(function=self.name, result="hit", error=exc))
            return True
        if not self.policy.can_fall_back(entry, now):
            return False
        self.counters.stale += 1
        if events.active:
            events.emit(CacheAccess(function=self.name, result="stale", error=exc))
        return True

    # --- the async slow path ------------------------------------------------------------

    async def aresolve(self, key: Hashable, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Everything but a fresh hit on the local table: stores, stale, flights, misses."""
        policy = self.policy
        table = self.table
        handle = None if table is not None else CacheKey(self.scope, key)
        while True:
            if table is not None:
                entry = table.get(key)
            else:
                assert handle is not None
                flight = self.flights.table().get(key)
                if flight is not None and policy.single_flight:
                    # follow this process's flight without a round trip to the store
                    if flight.serving is not None:
                        serving: CacheEntry = flight.serving
                        self.note("stale" if flight.serving_stale else "hit")
                        return self.deliver(serving.value, serving.arrays)
                    self.note("join")
                    await flight.waiter().wait()
                    if flight.state == ABANDONED:
                        continue
                    if flight.state == FAILED:
                        raise flight.failure()
                    return self.deliver(flight.value, flight.arrays)
                entry = await self._aget(handle)
            state = policy.state(entry, _clock.monotonic())
            if state == FRESH:
                assert entry is not None
                if table is not None:
                    table.touch(key)
                self.note("hit")
                return self.deliver(entry.value, entry.arrays)
            flights = self.flights.table()
            flight = flights.get(key)
            if flight is not None:
                if state in (STALE, EARLY):  # someone is refreshing it: serve it
                    assert entry is not None
                    self.note("stale" if state == STALE else "hit")
                    return self.deliver(entry.value, entry.arrays)
                if policy.single_flight:
                    self.note("join")
                    await flight.waiter().wait()
                    if flight.state == ABANDONED:
                        continue  # its leader was cancelled: look again, maybe lead
                    if flight.state == FAILED:
                        raise flight.failure()
                    return self.deliver(flight.value, flight.arrays)
            own: Flight | None = None
            if flight is None:
                if state in (STALE, EARLY):
                    own = flights[key] = Flight(entry, state == STALE)
                else:
                    own = flights[key] = Flight()
            try:
                value, arrays = await self._acompute(key, handle, args, kwargs, entry, state)
            except BaseException as exc:
                if own is not None and flights.get(key) is own:
                    del flights[key]
                if is_fatal(exc):
                    if own is not None:
                        own.settle(ABANDONED)  # wake the waiters: one of them computes
                    raise
                self.counters.errors += 1
                if self.fall_back(entry, exc):
                    assert entry is not None
                    if own is not None:
                        own.settle(DONE, entry.value, entry.arrays)
                    return self.deliver(entry.value, entry.arrays)
                if own is not None:
                    own.settle(FAILED, error=exc)
                raise
            if own is not None:
                if flights.get(key) is own:
                    del flights[key]
                own.settle(DONE, value, arrays)
            return self.deliver(value, arrays)

    async def _acompute(
        self,
        key: Hashable,
        handle: CacheKey | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        entry: CacheEntry | None,
        state: int,
    ) -> tuple[Any, bool]:
        """Run the function (the leader does this) and store the result.

        ``entry`` is what the lookup found, in ``state``: a STALE or EARLY entry is offered
        to the store's flight, which hands it back when another process is refreshing.
        """
        if handle is None:
            generation = self.generation
            self.note("miss")
            start = _clock.monotonic()
            value = await self.fn(*args, **kwargs)
            entry, keep = self.new_entry(value, start, _clock.monotonic())
            if keep:
                self.put_local(key, entry, generation)
            return entry.value, entry.arrays
        assert self.store is not None
        current = entry if state in (STALE, EARLY) else None
        flight = _StoreFlight(self, handle)
        # single_flight=False: concurrent misses each compute, across processes too
        found = await flight.aenter(current) if self.policy.single_flight else None
        try:
            if found is not None and found is current:
                self.note("stale" if state == STALE else "hit")  # refreshed elsewhere
                value, arrays = found.value, found.arrays
            elif found is not None and self.policy.fresh(found, _clock.monotonic()):
                self.note("join")  # another process computed it meanwhile
                value, arrays = found.value, found.arrays
            else:
                generation = self.generation
                self.note("miss")
                if state == EARLY:
                    self.counters.refreshes += 1
                start = _clock.monotonic()
                result = await self.fn(*args, **kwargs)
                entry, keep = self.new_entry(result, start, _clock.monotonic())
                if keep and generation == self.generation:
                    await self._aset(handle, entry)
                value, arrays = entry.value, entry.arrays
        except BaseException as exc:
            await flight.aexit(exc)
            raise
        await flight.aexit(None)
        return value, arrays

    async def _aget(self, handle: CacheKey) -> CacheEntry | None:
        assert self.store is not None
        try:
            return await self.store.aget(handle)
        except (CacheStoreError, UnkeyableArgumentError):
            raise
        except Exception as exc:
            self.store_failed("get", exc)
            return None

    async def _aset(self, handle: CacheKey, entry: CacheEntry) -> None:
        assert self.store is not None
        try:
            await self.store.aset(handle, entry, self.policy.keep)
        except (CacheStoreError, UnkeyableArgumentError):
            raise
        except Exception as exc:
            self.store_failed("set", exc)

    # --- the sync slow path -------------------------------------------------------------

    def resolve(self, key: Hashable, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The sync twin of :meth:`aresolve`: threads coalesce on a ``threading.Event``."""
        policy = self.policy
        table = self.table
        handle = None if table is not None else CacheKey(self.scope, key)
        while True:
            if table is not None:
                entry = table.get(key)
            else:
                assert handle is not None
                followed = self._follow(key)
                if followed is _RETRY:
                    continue
                if followed is not _NO_FLIGHT:
                    return followed
                entry = self._get(handle)
            state = policy.state(entry, _clock.monotonic())
            waiter = None
            flight: ThreadFlight | None = None
            own: ThreadFlight | None = None
            if state != FRESH:
                with self.lock:
                    flight = self.thread_flights.get(key)
                    if flight is None and table is not None:
                        # a leader may have stored its result and left since our lookup
                        entry = table.get(key)
                        state = policy.state(entry, _clock.monotonic())
                    if state == FRESH:
                        pass
                    elif flight is None:
                        own = self.thread_flights[key] = (
                            ThreadFlight(entry, state == STALE)
                            if state in (STALE, EARLY)
                            else ThreadFlight()
                        )
                    elif state != STALE and state != EARLY and policy.single_flight:
                        if flight.owner == threading.get_ident():
                            raise RecursionError(
                                f"{self.name}() called itself with the arguments it is "
                                "computing: waiting for itself would never end"
                            )
                        waiter = flight.waiter()
            if state == FRESH:
                assert entry is not None
                if table is not None:
                    table.touch(key)
                self.note("hit")
                return self.deliver(entry.value, entry.arrays)
            if own is None and state in (STALE, EARLY):  # someone refreshes it
                assert entry is not None
                self.note("stale" if state == STALE else "hit")
                return self.deliver(entry.value, entry.arrays)
            if waiter is not None:
                self.note("join")
                waiter.wait()
                assert flight is not None
                if flight.state == ABANDONED:
                    continue
                if flight.state == FAILED:
                    raise flight.failure()
                return self.deliver(flight.value, flight.arrays)
            try:
                value, arrays = self._compute(key, handle, args, kwargs, entry, state)
            except BaseException as exc:
                if is_fatal(exc):
                    self._settle(key, own, ABANDONED)  # wake the waiters: one computes
                    raise
                self.counters.errors += 1
                if self.fall_back(entry, exc):
                    assert entry is not None
                    self._settle(key, own, DONE, entry.value, entry.arrays)
                    return self.deliver(entry.value, entry.arrays)
                self._settle(key, own, FAILED, error=exc)
                raise
            self._settle(key, own, DONE, value, arrays)
            return self.deliver(value, arrays)

    def _follow(self, key: Hashable) -> Any:
        """Follow a flight of this process before asking the store (sync): its result,
        ``_RETRY`` (its leader was cancelled), or ``_NO_FLIGHT``."""
        if not self.policy.single_flight:
            return _NO_FLIGHT
        with self.lock:
            flight = self.thread_flights.get(key)
            if flight is None:
                return _NO_FLIGHT
            serving = flight.serving
            if serving is None:
                if flight.owner == threading.get_ident():
                    raise RecursionError(
                        f"{self.name}() called itself with the arguments it is "
                        "computing: waiting for itself would never end"
                    )
                waiter = flight.waiter()
        if serving is not None:
            self.note("stale" if flight.serving_stale else "hit")
            return self.deliver(serving.value, serving.arrays)
        self.note("join")
        waiter.wait()
        if flight.state == ABANDONED:
            return _RETRY
        if flight.state == FAILED:
            raise flight.failure()
        return self.deliver(flight.value, flight.arrays)

    def _settle(
        self,
        key: Hashable,
        own: ThreadFlight | None,
        state: int,
        value: Any = None,
        arrays: bool = False,
        error: BaseException | None = None,
    ) -> None:
        if own is None:
            return
        with self.lock:
            if self.thread_flights.get(key) is own:
                del self.thread_flights[key]
            own.settle(state, value, arrays, error)

    def _compute(
        self,
        key: Hashable,
        handle: CacheKey | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        entry: CacheEntry | None,
        state: int,
    ) -> tuple[Any, bool]:
        if handle is None:
            generation = self.generation
            self.note("miss")
            start = _clock.monotonic()
            value = self.fn(*args, **kwargs)
            entry, keep = self.new_entry(value, start, _clock.monotonic())
            if keep:
                self.put_local(key, entry, generation)
            return entry.value, entry.arrays
        assert self.store is not None
        current = entry if state in (STALE, EARLY) else None
        flight = _StoreFlight(self, handle)
        found = flight.enter(current) if self.policy.single_flight else None
        try:
            if found is not None and found is current:
                self.note("stale" if state == STALE else "hit")
                value, arrays = found.value, found.arrays
            elif found is not None and self.policy.fresh(found, _clock.monotonic()):
                self.note("join")
                value, arrays = found.value, found.arrays
            else:
                generation = self.generation
                self.note("miss")
                if state == EARLY:
                    self.counters.refreshes += 1
                start = _clock.monotonic()
                result = self.fn(*args, **kwargs)
                entry, keep = self.new_entry(result, start, _clock.monotonic())
                if keep and generation == self.generation:
                    self._set(handle, entry)
                value, arrays = entry.value, entry.arrays
        except BaseException as exc:
            flight.exit(exc)
            raise
        flight.exit(None)
        return value, arrays

    def _get(self, handle: CacheKey) -> CacheEntry | None:
        assert self.store is not None
        try:
            return self.store.get(handle)
        except (CacheStoreError, UnkeyableArgumentError):
            raise
        except Exception as exc:
            self.store_failed("get", exc)
            return None

    def _set(self, handle: CacheKey, entry: CacheEntry) -> None:
        assert self.store is not None
        try:
            self.store.set(handle, entry, self.policy.keep)
        except (CacheStoreError, UnkeyableArgumentError):
            raise
        except Exception as exc:
            self.store_failed("set", exc)

    # --- the handle's operations ----------------------------------------------------------

    def stats(self) -> CacheStats:
        counters = self.counters
        size: int | None
        nbytes: int | None
        if self.table is not None:
            self.table.purge()
            size, nbytes = len(self.table), self.table.nbytes
        else:
            assert self.store is not None
            usage = self.store.usage(self.scope)
            size, nbytes = (None, None) if usage is None else usage
        return CacheStats(
            hits=counters.hits,
            misses=counters.misses,
            joins=counters.joins,
            stale=counters.stale,
            errors=counters.errors,
            evictions=counters.evictions,
            expirations=counters.expirations,
            store_errors=counters.store_errors,
            size=size,
            bytes=nbytes,
            refreshes=counters.refreshes,
        )


class _StoreFlight:
    """Enter and leave a store's cross-process flight, surviving the store's failures."""

    __slots__ = ("_cache", "_handle", "_manager")

    def __init__(self, cache: _Cache, handle: CacheKey) -> None:
        self._cache = cache
        self._handle = handle
        self._manager: Any = None

    def enter(self, current: CacheEntry | None) -> CacheEntry | None:
        assert self._cache.store is not None
        manager: AbstractContextManager[CacheEntry | None] = self._cache.store.flight(
            self._handle, current
        )
        try:
            found = manager.__enter__()
        except (CacheStoreError, UnkeyableArgumentError):
            raise
        except Exception as exc:
            self._cache.store_failed("flight", exc)
            return None
        self._manager = manager
        return found

    def exit(self, exc: BaseException | None) -> None:
        if self._manager is None:
            return
        try:
            self._manager.__exit__(*_exc_info(exc))
        except Exception as failure:
            self._exit_failed(failure, exc)

    async def aenter(self, current: CacheEntry | None) -> CacheEntry | None:
        assert self._cache.store is not None
        manager: AbstractAsyncContextManager[CacheEntry | None] = self._cache.store.aflight(
            self._handle, current
        )
        try:
            found = await manager.__aenter__()
        except (CacheStoreError, UnkeyableArgumentError):
            raise
        except Exception as exc:
            self._cache.store_failed("flight", exc)
            return None
        self._manager = manager
        return found

    async def aexit(self, exc: BaseException | None) -> None:
        if self._manager is None:
            return
        try:
            await self._manager.__aexit__(*_exc_info(exc))
        except Exception as failure:
            self._exit_failed(failure, exc)

    def _exit_failed(self, failure: Exception, exc: BaseException | None) -> None:
        if failure is exc:
            return  # the body's own error passed through: the caller re-raises it
        if isinstance(failure, (CacheStoreError, UnkeyableArgumentError)):
            raise failure
        self._cache.store_failed("flight", failure)


def _exc_info(
    exc: BaseException | None,
) -> tuple[type[BaseException] | None, BaseException | None, TracebackType | None]:
    if exc is None:
        return None, None, None
    return type(exc), exc, exc.__traceback__


# --- the handle ---------------------------------------------------------------------------


@final
class CacheHandle(Generic[P, R_co]):
    """What ``fn.cache`` offers: statistics, invalidation and a way around the cache.

    For a method, reach it through the class or an instance (``Model.predict.cache`` or
    ``model.predict.cache``) and pass ``self`` explicitly: ``invalidate(model, x)``.
    """

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: _Cache | None = None

    def _bind(self, cache: _Cache) -> None:
        self._cache = cache

    @property
    def _core(self) -> _Cache:
        if self._cache is None:  # pragma: no cover - bound as soon as the wrapper exists
            raise RuntimeError("this cache handle is not attached to a function")
        return self._cache

    def __repr__(self) -> str:
        cache = self._cache
        return "<CacheHandle (unbound)>" if cache is None else f"<CacheHandle of {cache.name}>"

    @property
    def function(self) -> str:
        """The cached function's qualified name."""
        return self._core.name

    def stats(self) -> CacheStats:
        """A frozen snapshot of the counters and of the current size."""
        return self._core.stats()

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Drop the entry these arguments map to; return whether there was one.

        The key is built exactly as for a call (defaults applied; ``key=`` if given). A
        computation of any key already running when this is called will not store its
        result (it may have read what the invalidation is about). With a remote store from
        async code, use :meth:`ainvalidate`.

        Raises:
            TypeError: the arguments do not fit the function's signature.
            UnkeyableArgumentError: an argument cannot be keyed.
        """
        cache = self._core
        key = cache.bound_key(args, kwargs)
        if cache.table is not None:
            return cache.invalidate_local(key)
        assert cache.store is not None
        with cache.lock:
            cache.generation += 1
        return cache.store.delete(CacheKey(cache.scope, key))

    async def ainvalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """:meth:`invalidate` through the store's async interface."""
        cache = self._core
        key = cache.bound_key(args, kwargs)
        if cache.table is not None:
            return cache.invalidate_local(key)
        assert cache.store is not None
        with cache.lock:
            cache.generation += 1
        return await cache.store.adelete(CacheKey(cache.scope, key))

    def clear(self) -> None:
        """Drop every entry of this function (counters are kept)."""
        cache = self._core
        if cache.table is not None:
            cache.clear_local()
            return
        assert cache.store is not None
        with cache.lock:
            cache.generation += 1
        cache.store.clear(cache.scope)

    async def aclear(self) -> None:
        """:meth:`clear` through the store's async interface."""
        cache = self._core
        if cache.table is not None:
            cache.clear_local()
            return
        assert cache.store is not None
        with cache.lock:
            cache.generation += 1
        await cache.store.aclear(cache.scope)

    def bypass(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        """Call the function itself for this one call: no lookup, nothing stored.

        For a coroutine function this returns the coroutine to await, as a call would.
        """
        return self._core.fn(*args, **kwargs)  # type: ignore[no-any-return]


class CachedFunction(Protocol[P, R_co]):
    """A function decorated with ``@cache_result``: the same call, plus ``.cache``.

    Looked up on an instance, a decorated method is a :class:`CachedMethod`: called
    without ``self``, while its ``.cache`` still takes ``self`` first.
    """

    @property
    def cache(self) -> CacheHandle[P, R_co]: ...

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None, /) -> Self: ...

    @overload
    def __get__(
        self: CachedFunction[Concatenate[S, P2], R2],
        instance: S,
        owner: type[Any] | None = None,
        /,
    ) -> CachedMethod[P2, R2, Concatenate[S, P2]]: ...


class CachedMethod(Protocol[P, R_co, PH]):
    """A decorated method looked up on an instance (``model.predict``)."""

    @property
    def cache(self) -> CacheHandle[PH, R_co]: ...

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...


# --- the shells ---------------------------------------------------------------------------


def _sync_shell(policy: _Policy, handle: CacheHandle[Any, Any]) -> Callable[..., Any]:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        cache = _Cache(policy, fn)
        handle._bind(cache)
        builder = cache.builder
        arity, tail, bind = builder.arity, builder.tail, builder.build
        resolve = cache.resolve
        counters = cache.counters
        name = cache.name
        copying = policy.copy_arrays
        table = cache.table

        if table is None:

            def cache_wrapper_store(*args: Any, **kwargs: Any) -> Any:
                try:
                    key = cache.key(args, kwargs)
                except BindError:
                    return fn(*args, **kwargs)  # let the function say what is wrong
                return resolve(key, args, kwargs)

            return cache_wrapper_store

        lookup = table.data.get
        touch = table.data.move_to_end

        def cache_wrapper(*args: Any, **kwargs: Any) -> Any:
            if kwargs or len(args) != arity:
                try:
                    key: Hashable = bind(args, kwargs)
                except BindError:
                    return fn(*args, **kwargs)
            else:
                key = args + tail if tail else args
            try:
                entry = lookup(key)
            except TypeError:  # something unhashable: make it canonical
                key = bind(args, kwargs)
                entry = lookup(key)
            if entry is not None and entry.expires > _clock.monotonic():
                try:
                    touch(key)
                except KeyError:  # evicted by another thread just now
                    pass
                counters.hits += 1
                if events.active:
                    events.emit(CacheAccess(function=name, result="hit"))
                if copying and entry.arrays:
                    return copy_arrays(entry.value)
                return entry.value
            return resolve(key, args, kwargs)

        return cache_wrapper

    return build


def _async_shell(policy: _Policy, handle: CacheHandle[Any, Any]) -> Callable[..., Any]:
    def build(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        cache = _Cache(policy, fn)
        handle._bind(cache)
        builder = cache.builder
        arity, tail, bind = builder.arity, builder.tail, builder.build
        resolve = cache.aresolve
        counters = cache.counters
        name = cache.name
        copying = policy.copy_arrays
        table = cache.table

        if table is None:

            async def cache_wrapper_store(*args: Any, **kwargs: Any) -> Any:
                try:
                    key = cache.key(args, kwargs)
                except BindError:
                    return await fn(*args, **kwargs)
                return await resolve(key, args, kwargs)

            return cache_wrapper_store

        lookup = table.data.get
        touch = table.data.move_to_end
        flights = cache.flights.table
        joining = policy.single_flight

        async def cache_wrapper(*args: Any, **kwargs: Any) -> Any:
            # The hit path, written out: building the key and finding a fresh entry cost
            # about as much as the await itself. Joining a flight on a cold key is written
            # out too, so that a stampede's thousands of waiters each cost little.
            if kwargs or len(args) != arity:
                try:
                    key: Hashable = bind(args, kwargs)
                except BindError:
                    return await fn(*args, **kwargs)
            else:
                key = args + tail if tail else args
            try:
                entry = lookup(key)
            except TypeError:
                key = bind(args, kwargs)
                entry = lookup(key)
            if entry is not None and entry.expires > _clock.monotonic():
                try:
                    touch(key)
                except KeyError:
                    pass
                counters.hits += 1
                if events.active:
                    events.emit(CacheAccess(function=name, result="hit"))
                if copying and entry.arrays:
                    return copy_arrays(entry.value)
                return entry.value
            if entry is None and joining:
                flight = flights().get(key)
                if flight is not None:
                    counters.joins += 1
                    if events.active:
                        events.emit(CacheAccess(function=name, result="join"))
                    await flight.waiter().wait()
                    if flight.state == DONE:
                        if copying and flight.arrays:
                            return copy_arrays(flight.value)
                        return flight.value
                    if flight.state == FAILED:
                        raise flight.failure()
                    # abandoned by its cancelled leader: the full path decides who leads
            return await resolve(key, args, kwargs)

        return cache_wrapper

    return build


# --- the decorator ------------------------------------------------------------------------


@overload
def cache_result(fn: Callable[P, R], /) -> CachedFunction[P, R]: ...


@overload
def cache_result(
    *,
    ttl: float | timedelta | None = 60.0,
    maxsize: int = 10_000,
    max_bytes: int | str | None = None,
    key: Callable[..., Hashable] | None = None,
    single_flight: bool = True,
    cache_none: bool = True,
    store: CacheStore | None = None,
    copy_arrays: bool = False,
    stale_while_revalidate: float | timedelta = 0,
    stale_if_error: float | timedelta = 0,
) -> Callable[[Callable[P, R]], CachedFunction[P, R]]: ...


def cache_result(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    ttl: float | timedelta | None = 60.0,
    maxsize: int = 10_000,
    max_bytes: int | str | None = None,
    key: Callable[..., Hashable] | None = None,
    single_flight: bool = True,
    cache_none: bool = True,
    store: CacheStore | None = None,
    copy_arrays: bool = False,
    stale_while_revalidate: float | timedelta = 0,
    stale_if_error: float | timedelta = 0,
) -> Any:
    """Remember results by arguments for ``ttl`` seconds; compute each key once at a time.

    Arguments are bound to the signature with defaults applied, so ``f(1, b=2)``,
    ``f(1, 2)`` and ``f(b=2, a=1)`` share an entry. Hashable arguments are keyed as they
    are (by ``==``, so ``1``, ``1.0`` and ``True`` are equal, as in ``functools.lru_cache``);
    lists, dicts, sets and tuples by structure; numpy arrays by dtype, shape and a digest
    of their bytes; pydantic models and dataclasses by class and fields. ``self`` is an
    argument like any other: a plain object is keyed by identity, so each instance has its
    own entries (and the cache holds a reference to it until they leave).

    While a key is being computed, other callers of that key wait for that computation
    (coroutines on an ``anyio`` event, threads on a ``threading`` event) and get its result
    or its error. Errors are never cached. If the computing caller is cancelled, one of the
    waiters computes instead; a cancelled waiter disturbs nobody.

    Args:
        ttl: seconds (or a ``timedelta``) an entry stays fresh; ``None``: no expiry;
            ``0``: nothing is kept, concurrent identical calls still share one computation.
        maxsize: at most this many entries; the least recently used is evicted first.
        max_bytes: at most this many bytes (``int`` or ``"512MiB"``), counting numpy
            ``nbytes`` and the length of ``bytes``/``str`` results (through tuples, lists
            and dicts); a result larger than this on its own is returned but not kept.
        key: ``key(*args, **kwargs)`` returns the key in place of the built one (anything
            hashable or canonicalisable as above).
        single_flight: ``False`` lets concurrent misses of one key each compute.
        cache_none: ``False`` does not keep ``None`` results.
        store: a :class:`CacheStore` to keep entries in (``LocalStore`` shared by several
            functions, ``RedisStore`` shared by processes); bounds are then the store's.
        copy_arrays: return private writable copies of cached numpy arrays instead of
            shared read-only views.
        stale_while_revalidate: for this long after expiry, a caller gets the expired value
            at once while the first caller to find it expired refreshes it (and gets the
            new value).
        stale_if_error: for this long after expiry, a refresh that fails is answered with
            the expired value instead of the error (counted in ``stale``, the error
            reported on the ``CacheAccess`` event).

    Raises:
        ConfigurationError: at decoration, for a setting that cannot work.
        TypeError: at decoration, for a generator function.
        UnkeyableArgumentError: at call time (a ``TypeError``), for an argument that
            cannot be keyed; it names the argument and points at ``key=``.

    The wrapper carries ``fn.cache`` (:class:`CacheHandle`): ``stats()``,
    ``invalidate(*args, **kwargs)``, ``clear()``, their async forms ``ainvalidate`` and
    ``aclear``, and ``bypass(*args, **kwargs)`` to call the function itself once.
    """
    policy = _Policy(
        ttl=ttl,
        maxsize=maxsize,
        max_bytes=max_bytes,
        key=key,
        single_flight=single_flight,
        cache_none=cache_none,
        store=store,
        copy_arrays=copy_arrays,
        stale_while_revalidate=stale_while_revalidate,
        stale_if_error=stale_if_error,
    )

    def decorate(target: Callable[..., Any]) -> Any:
        handle: CacheHandle[Any, Any] = CacheHandle()
        return wrap(
            target,
            "cache_result",
            sync=_sync_shell(policy, handle),
            async_=_async_shell(policy, handle),
            attributes={"cache": handle},
        )

    return decorate if fn is None else decorate(fn)
