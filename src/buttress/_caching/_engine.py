"""The cache engine: every decision for a call past a fresh hit, written once.

:meth:`Engine.plan` decides how one call is answered: serve a fresh or stale entry, join
another caller's computation (a flight) or lead one (or take it over from a cancelled
leader), refresh early (XFetch), coordinate with a store's cross-process flight, fall back
to an expired value on error, store the result. It is a generator that yields
:mod:`steps <._steps>` (``Read``, ``Wait``, ``Lead``, ``Compute``, ``Write``, ``Release``)
and is sent what carrying them out gave; the shells in :mod:`._shells` carry them out,
blocking a thread or awaiting, and decide nothing.

A plan returns its call's :data:`Answer`: ``(value, None)`` to return the value, or
``(None, error)`` to raise the error. Errors leave as values, never raised from the
generator: the function's own ``StopIteration`` would become a ``RuntimeError`` on its way
out of one.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Hashable
from typing import Any, TypeVar, cast, final

from buttress import _clock
from buttress._errors import CacheStoreError, UnkeyableArgumentError, is_fatal
from buttress._events import CacheAccess, events

from ._core import CacheCore, Result
from ._flight import ABANDONED, DONE, FAILED, FELL_BACK, BaseFlight, Outcome
from ._keys import CacheKey
from ._policy import ABSENT, EARLY, FRESH, STALE, Freshness
from ._steps import COMPUTE, Lead, Read, Release, Step, Wait, Write
from ._store import CacheEntry, Entry
from ._values import copy_arrays

__all__ = ["Answer", "Engine", "Plan"]

#: How a call ends: ``(value, None)`` returns the value, ``(None, error)`` raises the error.
Answer = tuple[Any, BaseException | None]
#: One call's plan: yields steps, is sent their replies, returns the call's answer.
Plan = Generator[Step, Any, Answer]
F = TypeVar("F", bound=BaseFlight)


@final
class Engine:
    """The decisions of one decorated function (its state is the :class:`CacheCore`)."""

    __slots__ = ("core", "counters", "lock", "name", "policy", "scope", "table")

    def __init__(self, core: CacheCore) -> None:
        self.core = core
        self.policy = core.policy
        self.table = core.table
        self.lock = core.lock
        self.counters = core.counters
        self.name = core.name
        self.scope = core.scope

    def plan(
        self,
        key: Hashable,
        entry: Entry | None,
        flights: dict[Hashable, F],
        new_flight: Callable[[Entry | None], F],
    ) -> Plan:
        """Decide how one call is answered, as steps for a shell to carry out.

        ``entry`` is what the shell found in the in-process table (with a store,
        ``None``: the store is read here). ``flights`` are the computations this caller
        may join (the table the threads share, or the running event loop's);
        ``new_flight(found)`` makes one of the same kind.

        Every way through ends in exactly one :meth:`CacheCore.note` (what each result
        means is told in :class:`~buttress.CacheStats`), except a store refusing the read
        (``CacheStoreError``).
        """
        core = self.core
        policy = self.policy
        table = self.table
        stored = None if table is not None else CacheKey(self.scope, key)
        while True:
            followed: F | None = None
            if stored is not None:
                if policy.single_flight:
                    followed = flights.get(key)
                if followed is not None:
                    # A computation of this key runs in this process: judge what its leader
                    # found instead of asking the store (a stampede costs it one read).
                    entry = followed.found
                else:
                    try:
                        entry, held = yield Read(stored, lead=policy.single_flight)
                    except BaseException as exc:
                        if is_fatal(exc):
                            # cancelled while the store was read: counted as what it was
                            # about to be, a join if this key is being computed here
                            core.note("join" if key in flights else "miss")
                            return None, exc
                        if not self.survives("get", exc):
                            return None, exc  # the cache could not be read: no result to note
                        entry = held = None
                    if held is not None:
                        # Nothing stored, and the store made this caller the one that
                        # computes it across processes (in the same round trip). Callers of
                        # this process join its flight; one that came while the store was
                        # read has a flight of its own, waiting for this value through the
                        # store: this caller computes all the same.
                        with self.lock:
                            led = None if key in flights else new_flight(None)
                            if led is not None:
                                flights[key] = led
                        return (
                            yield from self._compute(key, stored, None, ABSENT, flights, led, held)
                        )
            state = ABSENT if entry is None else policy.state(entry, _clock.monotonic())
            flight = own = waiter = None
            moved = False
            if state is not FRESH:
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
                        if state is FRESH:
                            pass
                        elif flight is None:
                            own = flights[key] = new_flight(entry)
                        elif (
                            state is not STALE
                            and state is not EARLY
                            and policy.single_flight
                            and not flight.mine()
                        ):
                            waiter = flight.waiter()
            if moved:
                continue
            if state is FRESH:
                assert entry is not None
                if table is not None:
                    table.touch(key)
                core.note("hit")
                return core.deliver(entry.value, entry.arrays), None
            if flight is not None:  # another caller is computing this key
                if state is STALE or state is EARLY:  # serve what we have while it refreshes
                    assert entry is not None
                    core.note("stale" if state is STALE else "hit")
                    return core.deliver(entry.value, entry.arrays), None
                if policy.single_flight:
                    if waiter is None:
                        core.note("join")
                        return None, RecursionError(
                            f"{self.name}() called itself with the arguments it is "
                            "computing: waiting for itself would never end"
                        )
                    try:
                        yield Wait(waiter)
                    except BaseException as exc:
                        return self.left(exc)
                    answer = self.joined(flight)
                    if answer is not None:
                        return answer
                    if table is not None:  # its leader was cancelled: decide again
                        entry = table.get(key)
                    continue
            # lead the flight just opened or, with single_flight=False, compute alongside
            return (yield from self._compute(key, stored, entry, state, flights, own))

    def joined(self, flight: BaseFlight) -> Answer | None:
        """The answer of a call that waited for ``flight`` (counted), or ``None`` when the
        flight was abandoned by its cancelled leader and the call must decide again."""
        state = flight.state
        if state is DONE:
            # note("join") and deliver(), written out: a stampede's thousands of waiters
            # all pass here at once when the computation ends, and the last one to be
            # answered waits for every call made here
            self.counters.joins += 1
            if events.active:
                events.emit(CacheAccess(function=self.name, result="join"))
            if flight.arrays and self.policy.copy_arrays:
                return copy_arrays(flight.value), None
            return flight.value, None
        if state is FAILED:
            self.core.note("join")
            return None, flight.failure()
        if state is FELL_BACK:
            self.core.note("stale", flight.error)
            return self.core.deliver(flight.value, flight.arrays), None
        return None  # ABANDONED

    def left(self, cancelled: BaseException) -> Answer:
        """The answer of a call cancelled while waiting for a flight: it counts as the join
        it was, and the flight goes on for the others."""
        self.core.note("join")
        return None, cancelled

    def _compute(
        self,
        key: Hashable,
        stored: CacheKey | None,
        entry: Entry | None,
        state: Freshness,
        flights: dict[Hashable, F],
        own: F | None,
        held: object = None,
    ) -> Plan:
        """Run the function and store its result; settle ``own`` flight if leading one.

        ``entry`` is what the lookup found, in ``state``: a failure may be answered with it,
        and a store's flight is offered it if it is servable (STALE or EARLY), to hand it
        back when another process is already refreshing it. ``held``: the store's flight,
        when reading the store already made this caller lead it.
        """
        core = self.core
        policy = self.policy
        result: Result = "miss"
        try:
            found = None
            current = entry if state is STALE or state is EARLY else None
            # single_flight=False: concurrent misses each compute, across processes too
            if held is None and stored is not None and policy.single_flight:
                try:
                    # with a store, what the shell found came from it: a CacheEntry
                    held, found = yield Lead(stored, cast("CacheEntry | None", current))
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
                    result = ("stale" if state is STALE else "hit") if found is current else "join"
                else:
                    if state is EARLY:
                        self.counters.refreshes += 1
                    generation = core.generation
                    start = _clock.monotonic()
                    value = yield COMPUTE
                    fresh, keep = core.new_entry(value, start, _clock.monotonic())
                    if not keep:
                        pass
                    elif stored is None:
                        core.put_local(key, fresh, generation)
                    elif generation == core.generation:
                        try:
                            yield Write(stored, cast("CacheEntry", fresh))  # a store's
                        except BaseException as exc:
                            if not self.survives("set", exc):
                                raise
            except BaseException as exc:
                if held is not None:
                    yield from self._release(held, exc)
                raise
            if held is not None:
                yield from self._release(held, None)
        except BaseException as exc:
            if is_fatal(exc):  # cancelled: wake the waiters, one of them computes instead
                self._settle(key, flights, own, ABANDONED)
                core.note(result)
                return None, exc
            self.counters.errors += 1
            now = _clock.monotonic()
            if entry is not None and policy.fresh(entry, now):
                # an early refresh failed while the entry is still fresh: it answers the call
                # as it would have without the refresh (a waiter, if any, joins it)
                self._settle(key, flights, own, DONE, entry.value, entry.arrays)
                core.note("hit", exc)
                return core.deliver(entry.value, entry.arrays), None
            if policy.can_fall_back(entry, now):
                assert entry is not None
                self._settle(key, flights, own, FELL_BACK, entry.value, entry.arrays, exc)
                core.note("stale", exc)
                return core.deliver(entry.value, entry.arrays), None
            self._settle(key, flights, own, FAILED, error=exc)
            core.note(result)
            return None, exc
        self._settle(key, flights, own, DONE, fresh.value, fresh.arrays)
        core.note(result)
        return core.deliver(fresh.value, fresh.arrays), None

    def _release(self, held: object, error: BaseException | None) -> Generator[Step, Any, None]:
        """Leave the store's flight; a failure to leave is survived unless it must not be."""
        try:
            yield Release(held, error)
        except BaseException as exc:
            if exc is not error and not self.survives("flight", exc):
                raise

    def _settle(
        self,
        key: Hashable,
        flights: dict[Hashable, F],
        own: F | None,
        outcome: Outcome,
        value: Any = None,
        arrays: bool = False,
        error: BaseException | None = None,
    ) -> None:
        if own is None:
            return
        with self.lock:
            if flights.get(key) is own:
                del flights[key]
            own.settle(outcome, value, arrays, error)

    def survives(self, operation: str, exc: BaseException) -> bool:
        """Whether the call goes on without the store after ``exc`` (counted and reported
        if so). A store fails closed by raising ``CacheStoreError``; an argument it cannot
        key and cancellation reach the caller too."""
        if not isinstance(exc, Exception) or isinstance(
            exc, (CacheStoreError, UnkeyableArgumentError)
        ):
            return False
        self.core.store_failed(operation, exc)
        return True
