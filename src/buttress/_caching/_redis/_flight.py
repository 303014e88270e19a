"""The cross-process flight: which replica computes a key, and how the others wait.

A computation in progress holds ``<entry>:lock`` (``SET NX PX`` with a random token):
first for a short lifetime, extended by the store's lock keeper while the computation
runs, deleted (if still ours) in the same round trip that stores the value. Usually the
lock is taken by the read that found nothing (``RedisStore.get_or_lead``); this flight is
for the rest: another process holds the lock, or an expired entry is refreshed.

The decisions are one plain generator (:func:`plan`) in the package's step vocabulary
(:mod:`buttress._caching._steps`): ``Lead`` (take the lock, reading the entry in the same
round trip), ``Wait`` (for the holder's wake-up), ``Read`` (the entry). Two drivers carry
the steps out, one blocking (:func:`run`), one awaiting (:func:`arun`).

Waiting does not poll: a waiter flags that it waits, and blocks on ``<entry>:done`` with
``BLMOVE`` until the holder pushes its token there (when it stores the value or lets go),
or until the lock would expire, whichever comes first; a ``GET`` pipelined behind the
``BLMOVE`` reads the entry the moment it returns. Each block
lasts at most half the client's socket timeout, so that it never looks like a hung
server. Polling with backoff (2 ms doubling to 50 ms) is the fallback: for a server
without ``BLMOVE`` (before Redis 6.2), and for waiters beyond half the connection pool
(each blocked waiter holds a connection).
"""

from __future__ import annotations

import random
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio

from buttress import _clock
from buttress._caching._steps import Lead, Read, Step, Wait

from ._stats import Counters

if TYPE_CHECKING:
    from buttress._caching._keys import CacheKey
    from buttress._caching._store import CacheEntry

__all__ = ["HOLDER", "FlightPlan", "FlightStore", "arun", "plan", "run"]

#: A waiter's first poll, its growth and its ceiling (real seconds), when it polls.
_FIRST_POLL: Final = 0.002
_MAX_POLL: Final = 0.05
#: Two readings of one stored stamp differ by clock drift only; a newer entry by more.
_SAME_STAMP: Final = 1e-3
#: The shortest block on the wake-up list (``BLMOVE`` takes 0 as "for ever").
_SHORTEST_BLOCK: Final = 0.001

#: What a blocking ``Wait`` waits on: the holder's wake-up.
HOLDER: Final = "holder"

#: Yields steps; returns ``(entry to serve or None, whether this caller holds the lock)``.
FlightPlan = Generator[Step, Any, tuple["CacheEntry | None", bool]]


class FlightStore(Protocol):
    """What the flight needs of its store (``RedisStore``): its counters, and the Redis
    operations its steps are carried out with."""

    @property
    def counters(self) -> Counters: ...

    def wait_limit(self) -> float | None: ...

    def acquire(self, key: CacheKey, name: str, token: str) -> tuple[bool, Any, float]: ...

    async def aacquire(
        self, key: CacheKey, name: str, token: str
    ) -> tuple[bool, Any, float]: ...

    def block(self, key: CacheKey, name: str, seconds: float) -> CacheEntry | None: ...

    async def ablock(self, key: CacheKey, name: str, seconds: float) -> CacheEntry | None: ...

    def read_for_flight(self, key: CacheKey, name: str) -> CacheEntry | None: ...

    async def aread_for_flight(self, key: CacheKey, name: str) -> CacheEntry | None: ...


def plan(store: FlightStore, key: CacheKey, current: CacheEntry | None) -> FlightPlan:
    """The cross-process flight's decisions: returns ``(entry to serve, lock held)``.

    Holding the lock, serve a value stored just before, or compute. When another process
    holds it: serve ``current`` if there is one (that process refreshes it) or a fresh
    value already there, else wait for the holder and look again, until a fresh value
    appears (serve it) or the lock is free (take it).

    ``Lead`` is answered ``(taken, entry, seconds the holder's lock has left)``: the entry
    read in the same round trip, and 0 when the lock was taken. A ``Wait`` on the
    ``HOLDER`` is answered with the entry, read the moment the wait ended (in the same
    round trip).
    """
    counters = store.counters
    lead = Lead(key, current)
    taken, found, left = yield lead
    waited = False
    delay = _FIRST_POLL
    while True:
        if taken:
            if found is not None and _newer(found, current):
                return found, True  # stored just before we took the lock
            if waited:
                counters.takeovers += 1  # and no value came: we compute
            return None, True
        if current is not None:
            return current, False  # someone is refreshing it: serve what we have
        if found is not None and found.expires > _clock.monotonic():
            return found, False  # stored, and someone refreshes it already
        if not waited:
            counters.waits += 1
            waited = True
        limit = store.wait_limit()
        if limit is not None:  # until the holder wakes us, or its lock would expire
            found = yield Wait(HOLDER, max(_SHORTEST_BLOCK, min(limit, left)))
        else:
            yield Wait(timeout=delay * (0.75 + random.random() / 2))
            delay = min(delay * 2, _MAX_POLL)
            found, _ = yield Read(key)
        if found is not None and found.expires > _clock.monotonic():
            return found, False
        taken, found, left = yield lead


def _newer(found: CacheEntry, current: CacheEntry | None) -> bool:
    if found.expires <= _clock.monotonic():
        return False
    return current is None or found.stored_at > current.stored_at + _SAME_STAMP


def run(
    steps: FlightPlan, store: FlightStore, key: CacheKey, name: str, token: str
) -> tuple[Any, bool]:
    """Carry out a flight's steps on the sync client, blocking this thread."""
    reply: Any = None
    try:
        while True:
            step = steps.send(reply)
            if isinstance(step, Wait):
                assert step.timeout is not None
                # Waiting for another process's computation: on a thread that runs an
                # event loop, the loop stops with it (warned once, as every sync wait is).
                _clock.blocking_wait(key.scope, key.scope.function, "cache_result", step.timeout)
                if step.on is HOLDER:
                    reply = store.block(key, name, step.timeout)
                else:
                    time.sleep(step.timeout)  # real time: the lock's expiry in Redis is real
                    reply = None
            elif isinstance(step, Read):
                reply = store.read_for_flight(step.key, name), None
            else:
                assert isinstance(step, Lead), step
                reply = store.acquire(step.key, name, token)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def arun(
    steps: FlightPlan, store: FlightStore, key: CacheKey, name: str, token: str
) -> tuple[Any, bool]:
    """Carry out a flight's steps from a coroutine (asyncio client, or worker threads)."""
    reply: Any = None
    try:
        while True:
            step = steps.send(reply)
            if isinstance(step, Wait):
                assert step.timeout is not None
                if step.on is HOLDER:
                    reply = await store.ablock(key, name, step.timeout)
                else:
                    await anyio.sleep(step.timeout)  # real time: the lock's expiry is real
                    reply = None
            elif isinstance(step, Read):
                reply = await store.aread_for_flight(step.key, name), None
            else:
                assert isinstance(step, Lead), step
                reply = await store.aacquire(step.key, name, token)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
