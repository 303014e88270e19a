"""@cache_result: a TTL cache with single-flight, for ``def`` and ``async def``.

The decisions live in plain code, once: :class:`_Policy` (is an entry fresh, stale but
servable, a fallback on error, or dead; is a result worth storing) and :class:`_Cache`
(one decorated function's keys, storage, counters and flights), whose engine
:meth:`_Cache.plan` decides everything past a fresh hit: serve stale, join a flight, lead
one or take it over, refresh early (XFetch), coordinate with a store's cross-process
flight, fall back on error, store. It is a generator that yields steps (read the store,
wait for this flight, run the function, write the store...) and is sent their results.
The shells at the bottom carry the steps out, blocking a thread or awaiting (the async one
shields leaving a store's flight from cancellation), and decide nothing. A hit on the
default in-process table never leaves the wrapper: one key (usually the ``args`` tuple
itself), one dict lookup, one clock read; in a coroutine function, joining a running
flight of a key with nothing stored is written out too.
"""

from __future__ import annotations

import logging
import math
import random
import threading
from collections.abc import Awaitable, Callable, Generator, Hashable
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
    cast,
    final,
    overload,
)

import anyio

from buttress import _clock, _settings
from buttress._errors import CacheStoreError, ConfigurationError, UnkeyableArgumentError, is_fatal
from buttress._events import CacheAccess, CacheEviction, CacheStoreFailed, events
from buttress._wrapping import function_module, function_name, wrap

from ._flight import (
    ABANDONED,
    DONE,
    FAILED,
    FELL_BACK,
    AsyncFlights,
    BaseFlight,
    Flight,
    ThreadFlight,
)
from ._keys import BindError, CacheKey, CacheScope, KeyBuilder
from ._local import LocalTable
from ._store import CacheEntry, CacheStore
from ._values import copy_arrays, freeze

if TYPE_CHECKING:
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

#: Store failures are logged at most once per this many seconds per function.
_LOG_INTERVAL: Final = 60.0

#: How long a coroutine may take to leave a store's flight (release a lock that other
#: processes wait on) once it is cancelled; past it, the store is counted as failed and a
#: lock left behind expires by itself (``RedisStore(lock_ttl=...)``).
_LEAVE_GRACE: Final = 5.0

Result = Literal["hit", "miss", "join", "stale"]

#: The steps the engine (:meth:`_Cache.plan`) asks a shell to carry out, each a tuple whose
#: first item says which, and what the shell sends back.
_GET: Final = 0  # (_GET, CacheKey): read the store -> the entry or None
_WAIT: Final = 1  # (_WAIT, event): wait for another caller's computation -> None
_CALL: Final = 2  # (_CALL,): run the function -> its result
_ENTER: Final = 3  # (_ENTER, CacheKey, current entry or None): enter the store's flight
#                    -> (manager, entry or None)
_SET: Final = 4  # (_SET, CacheKey, entry): write the store -> None
_EXIT: Final = 5  # (_EXIT, manager, error or None): leave the store's flight -> None
_CALL_STEP: Final = (_CALL,)

Step = tuple[Any, ...]
#: How a call ends: ``(value, None)`` returns the value, ``(None, error)`` raises the error.
Answer = tuple[Any, BaseException | None]
#: One call's plan: yields steps, returns its answer.
Plan = Generator[Step, Any, Answer]
F = TypeVar("F", bound=BaseFlight)


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

    Every call that reads the cache counts exactly once, in ``hits``, ``misses``, ``joins``
    or ``stale``, and is reported as one ``CacheAccess`` event whose ``result`` names that
    same counter; so ``hits + misses + joins + stale`` is the number of such calls. A call
    is counted when its outcome is known: a waiter when its wait ends, a leader when its
    computation does. Calls that end before the cache is read are not counted: arguments
    that do not fit the signature (passed on to the function as they are), an argument
    that cannot be keyed, a store refusing the read (``CacheStoreError``) or a cancellation
    during it; nor are ``fn.cache.bypass()`` calls.

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
            counts in ``stale`` (or ``hits``, the entry still fresh).
        joins: calls that waited for another caller's computation in this process and
            got its value or its error (or were cancelled while waiting), and leaders
            whose store reported, on entering its flight, that another process had just
            computed the value.
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


class _Counters:
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
            events.emit(CacheAccess(function=self.name, result=result, error=error))

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
        """What one caller receives: ``value``, or a private copy of its arrays."""
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

    # --- the engine: every decision past a fresh hit on the local table ------------------

    def plan(
        self,
        key: Hashable,
        entry: CacheEntry | None,
        flights: dict[Hashable, F],
        new_flight: Callable[[CacheEntry | None], F],
    ) -> Plan:
        """Decide how one call is answered, as steps for a shell to carry out.

        Yields steps (``_GET``, ``_WAIT``, ``_CALL``, ``_ENTER``, ``_SET``, ``_EXIT``; see
        their definitions) and is sent each step's result, or thrown the exception the step
        raised. Returns ``(value, None)`` or ``(None, error)``, which the shell returns or
        raises. Errors leave as values, never raised from here: the function's own
        ``StopIteration`` would become a ``RuntimeError`` on its way out of a generator.

        ``entry`` is what the shell found in the local table (with a store, ``None``: the
        store is read here). ``flights`` are the computations this caller may join (the
        table the threads share, or the running event loop's); ``new_flight(found)`` makes
        one of the same kind.

        Every way through ends in exactly one :meth:`note` (what each result means is
        told in :class:`CacheStats`), except a store refusing the read.
        """
        policy = self.policy
        table = self.table
        handle = None if table is not None else CacheKey(self.scope, key)
        while True:
            followed: F | None = None
            if handle is not None:
                if policy.single_flight:
                    followed = flights.get(key)
                if followed is not None:
                    # A computation of this key runs in this process: judge what its leader
                    # found instead of asking the store (a stampede costs it one read).
                    entry = followed.found
                else:
                    try:
                        entry = yield (_GET, handle)
                    except BaseException as exc:
                        if not self.survives("get", exc):
                            return None, exc  # the cache could not be read: no result to note
                        entry = None
            state = ABSENT if entry is None else policy.state(entry, _clock.monotonic())
            flight = own = waiter = None
            moved = False
            if state != FRESH:
                # Threads share their flights: finding one, opening one and registering as
                # its waiter happen under the lock that settling a flight takes too.
                with self.lock:
                    flight = flights.get(key)
                    if followed is not None and flight is not followed:
                        moved = True  # the flight followed ended meanwhile: look again
                    else:
                        if flight is None and table is not None:
                            entry = table.get(key)  # its leader may have stored it and left
                            state = policy.state(entry, _clock.monotonic())
                        if state == FRESH:
                            pass
                        elif flight is None:
                            own = flights[key] = new_flight(entry)
                        elif (
                            state != STALE
                            and state != EARLY
                            and policy.single_flight
                            and not flight.mine()
                        ):
                            waiter = flight.waiter()
            if moved:
                continue
            if state == FRESH:
                assert entry is not None
                if table is not None:
                    table.touch(key)
                self.note("hit")
                return self.deliver(entry.value, entry.arrays), None
            if flight is not None:  # another caller is computing this key
                if state in (STALE, EARLY):  # serve what we have while it refreshes
                    assert entry is not None
                    self.note("stale" if state == STALE else "hit")
                    return self.deliver(entry.value, entry.arrays), None
                if policy.single_flight:
                    if waiter is None:
                        self.note("join")
                        return None, RecursionError(
                            f"{self.name}() called itself with the arguments it is "
                            "computing: waiting for itself would never end"
                        )
                    try:
                        yield (_WAIT, waiter)
                    except BaseException as exc:
                        return self.left(exc)
                    answer = self.joined(flight)
                    if answer is not None:
                        return answer
                    if table is not None:  # its leader was cancelled: decide again
                        entry = table.get(key)
                    continue
            # lead the flight just opened or, with single_flight=False, compute alongside
            return (yield from self._compute(key, handle, entry, state, flights, own))

    def joined(self, flight: BaseFlight) -> Answer | None:
        """The answer of a call that waited for ``flight`` (counted), or ``None`` when the
        flight was abandoned by its cancelled leader and the call must decide again."""
        state = flight.state
        if state == DONE:
            # note("join") and deliver(), written out: a stampede's thousands of waiters
            # all pass here at once when the computation ends, and the last one to be
            # answered waits for every call made here
            self.counters.joins += 1
            if events.active:
                events.emit(CacheAccess(function=self.name, result="join"))
            if flight.arrays and self.policy.copy_arrays:
                return copy_arrays(flight.value), None
            return flight.value, None
        if state == FAILED:
            self.note("join")
            return None, flight.failure()
        if state == FELL_BACK:
            self.note("stale", flight.error)
            return self.deliver(flight.value, flight.arrays), None
        return None  # ABANDONED

    def left(self, cancelled: BaseException) -> Answer:
        """The answer of a call cancelled while waiting for a flight: it counts as the join
        it was, and the flight goes on for the others."""
        self.note("join")
        return None, cancelled

    def _compute(
        self,
        key: Hashable,
        handle: CacheKey | None,
        entry: CacheEntry | None,
        state: int,
        flights: dict[Hashable, F],
        own: F | None,
    ) -> Plan:
        """Run the function and store its result; settle ``own`` flight if leading one.

        ``entry`` is what the lookup found, in ``state``: a failure may be answered with it,
        and a store's flight is offered it if it is servable (STALE or EARLY), to hand it
        back when another process is already refreshing it.
        """
        policy = self.policy
        result: Result = "miss"
        try:
            manager = found = None
            current = entry if state in (STALE, EARLY) else None
            # single_flight=False: concurrent misses each compute, across processes too
            if handle is not None and policy.single_flight:
                try:
                    manager, found = yield (_ENTER, handle, current)
                except BaseException as exc:
                    if not self.survives("flight", exc):
                        raise
            try:
                if found is not None and (
                    found is current or policy.fresh(found, _clock.monotonic())
                ):
                    # another process is refreshing it (the store handed ours back), or
                    # has just computed it
                    fresh = found
                    result = ("stale" if state == STALE else "hit") if found is current else "join"
                else:
                    if state == EARLY:
                        self.counters.refreshes += 1
                    generation = self.generation
                    start = _clock.monotonic()
                    value = yield _CALL_STEP
                    fresh, keep = self.new_entry(value, start, _clock.monotonic())
                    if keep and handle is None:
                        self.put_local(key, fresh, generation)
                    elif keep and generation == self.generation:
                        try:
                            yield (_SET, handle, fresh)
                        except BaseException as exc:
                            if not self.survives("set", exc):
                                raise
            except BaseException as exc:
                if manager is not None:
                    yield from self._leave(manager, exc)
                raise
            if manager is not None:
                yield from self._leave(manager, None)
        except BaseException as exc:
            if is_fatal(exc):  # cancelled: wake the waiters, one of them computes instead
                self._settle(key, flights, own, ABANDONED)
                self.note(result)
                return None, exc
            self.counters.errors += 1
            now = _clock.monotonic()
            if entry is not None and policy.fresh(entry, now):
                # an early refresh failed while the entry is still fresh: it answers the call
                # as it would have without the refresh (a waiter, if any, joins it)
                self._settle(key, flights, own, DONE, entry.value, entry.arrays)
                self.note("hit", exc)
                return self.deliver(entry.value, entry.arrays), None
            if policy.can_fall_back(entry, now):
                assert entry is not None
                self._settle(key, flights, own, FELL_BACK, entry.value, entry.arrays, exc)
                self.note("stale", exc)
                return self.deliver(entry.value, entry.arrays), None
            self._settle(key, flights, own, FAILED, error=exc)
            self.note(result)
            return None, exc
        self._settle(key, flights, own, DONE, fresh.value, fresh.arrays)
        self.note(result)
        return self.deliver(fresh.value, fresh.arrays), None

    def _leave(self, manager: object, error: BaseException | None) -> Generator[Step, Any, None]:
        """Leave the store's flight; a failure to leave is survived unless it must not be."""
        try:
            yield (_EXIT, manager, error)
        except BaseException as exc:
            if exc is not error and not self.survives("flight", exc):
                raise

    def _settle(
        self,
        key: Hashable,
        flights: dict[Hashable, F],
        own: F | None,
        state: int,
        value: Any = None,
        arrays: bool = False,
        error: BaseException | None = None,
    ) -> None:
        if own is None:
            return
        with self.lock:
            if flights.get(key) is own:
                del flights[key]
            own.settle(state, value, arrays, error)

    def survives(self, operation: str, exc: BaseException) -> bool:
        """Whether the call goes on without the store after ``exc`` (counted and reported
        if so). A store fails closed by raising ``CacheStoreError``; an argument it cannot
        key and cancellation reach the caller too."""
        if not isinstance(exc, Exception) or isinstance(
            exc, (CacheStoreError, UnkeyableArgumentError)
        ):
            return False
        self.store_failed(operation, exc)
        return True

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


async def _aenter_flight(
    store: CacheStore, key: CacheKey, current: CacheEntry | None
) -> tuple[tuple[Any, anyio.CancelScope], CacheEntry | None]:
    """Enter ``store.aflight(key, current)`` inside a cancel scope that spans the flight.

    Returns what the engine's ``_ENTER`` step expects: something to leave by (the manager
    and the scope, for :func:`_aleave_flight`) and the entry the flight found.
    """
    # The scope is opened before the flight and closed after it, so that scopes a store
    # opens inside its flight (a task group renewing its lock) stay nested in it.
    scope = anyio.CancelScope()
    scope.__enter__()
    try:
        manager = store.aflight(key, current)
        found = await manager.__aenter__()
    except BaseException as exc:
        scope.__exit__(type(exc), exc, exc.__traceback__)  # not cancelled: swallows nothing
        raise
    return (manager, scope), found


async def _aleave_flight(held: tuple[Any, anyio.CancelScope], error: BaseException | None) -> None:
    """Leave a store's flight entered by :func:`_aenter_flight`, shielded.

    Leaving releases what the flight holds (a lock other processes wait on for up to its
    lifetime), also when the call was cancelled: within a cancelled scope (trio, anyio)
    every await raises at once, so the store could not release it. The flight's scope is
    shielded from the caller's cancellation for at most ``_LEAVE_GRACE`` seconds; past
    that the leave is cut short and reported as the store's ``TimeoutError``.
    """
    manager, scope = held
    scope.shield = True
    scope.deadline = anyio.current_time() + _LEAVE_GRACE
    try:
        await manager.__aexit__(*_exc_info(error))
    except BaseException as exc:
        if scope.__exit__(type(exc), exc, exc.__traceback__):
            pass  # the grace ran out: our own cancellation, caught
        elif not (
            scope.cancel_called and is_fatal(exc) and error is not None and is_fatal(error)
        ):
            raise
        # else the grace ran out too, but anyio on asyncio does not swallow the scope's
        # own cancellation once the task was cancelled inside it (it cannot tell it from
        # a native Task.cancel()): dropped, since the call raises its own cancellation
    else:
        scope.__exit__(None, None, None)
        if not scope.cancel_called:
            return
    raise TimeoutError(
            f"leaving the cache store's flight took longer than {_LEAVE_GRACE:g}s"
        )


def _sync_shell(policy: _Policy, handle: CacheHandle[Any, Any]) -> Callable[..., Any]:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        cache = _Cache(policy, fn)
        handle._bind(cache)
        builder = cache.builder
        arity, tail, bind = builder.arity, builder.tail, builder.build
        plan, flights = cache.plan, cache.thread_flights
        store = cast("CacheStore", cache.store)  # the engine asks for it only when there is one
        keep = policy.keep
        counters = cache.counters
        name = cache.name
        copying = policy.copy_arrays
        table = cache.table

        def resolve(
            key: Hashable, entry: CacheEntry | None, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            """Carry out the engine's steps for one call, blocking this thread."""
            steps = plan(key, entry, flights, ThreadFlight)
            reply: Any = None
            failure: BaseException | None = None
            while True:
                try:
                    step = steps.send(reply) if failure is None else steps.throw(failure)
                except StopIteration as end:
                    value, error = end.value
                    break
                reply = failure = None
                try:
                    op = step[0]
                    if op == _CALL:
                        reply = fn(*args, **kwargs)
                    elif op == _WAIT:
                        step[1].wait()
                    elif op == _GET:
                        reply = store.get(step[1])
                    elif op == _SET:
                        store.set(step[1], step[2], keep)
                    elif op == _ENTER:
                        manager = store.flight(step[1], step[2])
                        reply = (manager, manager.__enter__())
                    else:
                        step[1].__exit__(*_exc_info(step[2]))
                except BaseException as exc:
                    failure = exc
            if error is None:
                return value
            try:
                raise error
            finally:
                error = None  # no cycle through this frame's locals

        if table is None:

            def cache_wrapper_store(*args: Any, **kwargs: Any) -> Any:
                try:
                    key = cache.key(args, kwargs)
                except BindError:
                    return fn(*args, **kwargs)  # let the function say what is wrong
                return resolve(key, None, args, kwargs)

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
            return resolve(key, entry, args, kwargs)

        return cache_wrapper

    return build


def _async_shell(policy: _Policy, handle: CacheHandle[Any, Any]) -> Callable[..., Any]:
    def build(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        cache = _Cache(policy, fn)
        handle._bind(cache)
        builder = cache.builder
        arity, tail, bind = builder.arity, builder.tail, builder.build
        plan, flights = cache.plan, cache.flights.table
        store = cast("CacheStore", cache.store)  # the engine asks for it only when there is one
        keep = policy.keep
        counters = cache.counters
        name = cache.name
        copying = policy.copy_arrays
        table = cache.table

        async def resolve(
            key: Hashable, entry: CacheEntry | None, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            """Carry out the engine's steps for one call, waiting without blocking the loop.

            Cancelled during a step, the cancellation goes to the engine like any error
            (it settles what it holds) and comes back out of here unchanged; leaving a
            store's flight is shielded from it (:func:`_aleave_flight`).
            """
            steps = plan(key, entry, flights(), Flight)
            reply: Any = None
            failure: BaseException | None = None
            while True:
                try:
                    step = steps.send(reply) if failure is None else steps.throw(failure)
                except StopIteration as end:
                    value, error = end.value
                    break
                reply = failure = None
                try:
                    op = step[0]
                    if op == _CALL:
                        reply = await fn(*args, **kwargs)
                    elif op == _WAIT:
                        await step[1].wait()
                    elif op == _GET:
                        reply = await store.aget(step[1])
                    elif op == _SET:
                        await store.aset(step[1], step[2], keep)
                    elif op == _ENTER:
                        reply = await _aenter_flight(store, step[1], step[2])
                    else:
                        await _aleave_flight(step[1], step[2])
                except BaseException as exc:
                    failure = exc
            if error is None:
                return value
            try:
                raise error
            finally:
                error = None  # no cycle through this frame's locals

        if table is None:

            async def cache_wrapper_store(*args: Any, **kwargs: Any) -> Any:
                try:
                    key = cache.key(args, kwargs)
                except BindError:
                    return await fn(*args, **kwargs)
                return await resolve(key, None, args, kwargs)

            return cache_wrapper_store

        lookup = table.data.get
        touch = table.data.move_to_end
        joining = policy.single_flight
        joined, left = cache.joined, cache.left

        async def cache_wrapper(*args: Any, **kwargs: Any) -> Any:
            # The hit path, written out: building the key and finding a fresh entry cost
            # about as much as the await itself.
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
                # A stampede's path, written out like the hit: for a key with nothing stored
                # and a flight running in this loop, plan() would decide to join (a flight of
                # this loop is never this caller's own), and each of thousands of waiters
                # would pay for a generator. What the wait brought is the engine's to say.
                flight = flights().get(key)
                if flight is not None:
                    answer: Answer | None
                    try:
                        await flight.waiter().wait()
                    except BaseException as exc:
                        answer = left(exc)
                    else:
                        answer = joined(flight)
                    if answer is not None:
                        if answer[1] is None:
                            return answer[0]
                        raise answer[1]
                    entry = lookup(key)  # abandoned by its cancelled leader: decide again
            return await resolve(key, entry, args, kwargs)

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
