"""The cross-process flight: which replica computes a key, and how the others wait.

A computation in progress holds ``<entry key>:lock`` (``SET NX PX lock_ttl`` with a
random token), renewed by the store's lock keeper while the computation runs and deleted
(if still ours) in the same round trip that stores the value.

The decisions are one plain generator (:func:`plan`) that speaks the package's step
vocabulary (:mod:`.._steps`): ``Lead`` (take the lock, reading the entry in the same round
trip), ``Wait`` (here: sleep so long), ``Read`` (the entry). Two drivers carry the steps
out, one blocking (:func:`run`), one awaiting (:func:`arun`). Waiting for another process
polls with jittered exponential backoff (2 ms doubling to 50 ms): a waiter costs a few
commands per second, never a busy loop, and needs no connection of its own, unlike a
pub/sub subscription per waiting key.
"""

from __future__ import annotations

import random
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Final

import anyio

from buttress import _clock
from buttress._caching._steps import Lead, Read, Step, Wait

if TYPE_CHECKING:
    from buttress._caching._keys import CacheKey
    from buttress._caching._store import CacheEntry

    from ._commands import AnyAsyncCommands, SyncCommands
    from ._store import RedisStore

__all__ = ["FlightPlan", "arun", "plan", "run"]

#: A waiter's first poll, its growth and its ceiling (real seconds).
_FIRST_POLL: Final = 0.002
_MAX_POLL: Final = 0.05
#: Two readings of one stored stamp differ by clock drift only; a newer entry by more.
_SAME_STAMP: Final = 1e-3

#: Yields steps; returns ``(entry to serve or None, whether this caller holds the lock)``.
FlightPlan = Generator[Step, Any, tuple["CacheEntry | None", bool]]


def plan(store: RedisStore, key: CacheKey, current: CacheEntry | None) -> FlightPlan:
    """The cross-process flight's decisions: returns ``(entry to serve, lock held)``.

    ``Lead`` is answered ``(taken, entry)``, the entry read in the same round trip when
    the lock was taken (``None`` otherwise: a waiter reads again once it has waited).

    Take the lock (reading the entry in the same round trip); holding it, serve a value
    that appeared meanwhile, or compute. When another process holds it: serve ``current``
    if there is one, else poll with backoff until a fresh value appears (serve it) or the
    lock is free (take it).
    """
    counters = store.counters
    lead = Lead(key, current)
    acquired, found = yield lead
    waited = False
    delay = _FIRST_POLL
    while True:
        if acquired:
            if found is not None and _newer(found, current):
                return found, True  # stored just before we took the lock
            if waited:
                counters.takeovers += 1  # and no value came: we compute
            return None, True
        if current is not None:
            return current, False  # someone is refreshing it: serve what we have
        if not waited:
            counters.waits += 1
            waited = True
        yield Wait(timeout=delay * (0.75 + random.random() / 2))
        delay = min(delay * 2, _MAX_POLL)
        found = yield Read(key)
        if found is not None and found.expires > _clock.monotonic():
            return found, False
        acquired, found = yield lead


def _newer(found: CacheEntry, current: CacheEntry | None) -> bool:
    if found.expires <= _clock.monotonic():
        return False
    return current is None or found.stored_at > current.stored_at + _SAME_STAMP


def run(
    steps: FlightPlan, store: RedisStore, ops: SyncCommands, name: str, lock: str, token: str
) -> tuple[CacheEntry | None, bool]:
    """Carry out a flight's steps on the sync client, blocking this thread."""
    connection = store.connection
    px = store.lock_px
    reply: Any = None
    try:
        while True:
            step = steps.send(reply)
            if isinstance(step, Wait):
                assert step.timeout is not None
                time.sleep(step.timeout)  # real time: the lock's expiry in Redis is real
                reply = None
            elif isinstance(step, Read):
                blob = connection.call("flight", ops.get, name)
                reply = store.read_quietly(step.key, name, blob)
            else:
                assert isinstance(step, Lead), step
                taken, blob = connection.call("flight", ops.acquire, lock, token, px, name)
                reply = taken, (store.read_quietly(step.key, name, blob) if taken else None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def arun(
    steps: FlightPlan, store: RedisStore, ops: AnyAsyncCommands, name: str, lock: str, token: str
) -> tuple[CacheEntry | None, bool]:
    """Carry out a flight's steps on an async client (or in worker threads)."""
    connection = store.connection
    px = store.lock_px
    reply: Any = None
    try:
        while True:
            step = steps.send(reply)
            if isinstance(step, Wait):
                assert step.timeout is not None
                await anyio.sleep(step.timeout)  # real time: the lock's expiry is real
                reply = None
            elif isinstance(step, Read):
                blob = await connection.acall("flight", ops.get, name)
                reply = store.read_quietly(step.key, name, blob)
            else:
                assert isinstance(step, Lead), step
                taken, blob = await connection.acall(
                    "flight", ops.acquire, lock, token, px, name
                )
                reply = taken, (store.read_quietly(step.key, name, blob) if taken else None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
