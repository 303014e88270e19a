"""The lock keeper: one thread per store keeps its computation locks alive, and lets go of
the locks it could not release.

A lock is taken with a short first lifetime (``RedisStore.first_lock_ttl``, twice the
store's ``timeout``): a lock taken by a command whose reply never came back (Redis hung,
the caller gave up, Redis ran the command later) belongs to nobody, and it must not make
other processes wait long. The keeper extends each lock it holds to ``lock_ttl`` a third
of the way through that first lifetime, then every third of ``lock_ttl``, as long as the
computation runs.

Locks the store may hold but could not release (Redis was down or hung when the
computation ended, or a lock command's reply was lost) are handed to :meth:`settle`; the
keeper releases them as soon as Redis answers again, so that no other process waits for a
lock whose owner is gone.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Final, Protocol, final

__all__ = ["KeptStore", "LockKeeper"]


class KeptStore(Protocol):
    """What the keeper needs of its store (``RedisStore``)."""

    @property
    def lock_ttl(self) -> float: ...

    @property
    def first_lock_ttl(self) -> float: ...

    @property
    def timeout(self) -> float: ...

    def renew_all(self, locks: list[tuple[str, str]]) -> list[bool] | None:
        """Extend ``(lock, token)`` pairs; whether each was still ours, ``None`` if Redis
        failed."""

    def release_all(self, locks: list[tuple[str, str]]) -> bool:
        """Release ``(entry name, token)`` pairs still ours; whether Redis answered."""

_KEEPERS: Final = itertools.count(1)

#: A lock the keeper could not release for this long (or twice ``lock_ttl``, if longer)
#: has expired by itself.
_GIVE_UP_AFTER: Final = 60.0


@final
class LockKeeper:
    """Renews every computation lock one store holds, and settles abandoned ones.

    A thread rather than a task per computation: it costs a computation nothing to
    register, and it keeps renewing while a coroutine blocks its event loop with CPU
    work (a model running in ``async def``), where a renewal task would starve and let
    another replica take over and compute the same key again. Started on demand; it
    stops after ``lock_ttl`` with nothing to do, or on ``store.close()``.
    """

    __slots__ = ("_closed", "_condition", "_held", "_pending", "_store", "_thread")

    def __init__(self, store: KeptStore) -> None:
        self._store = store
        # lock -> (token, entry name, when to renew it next)
        self._held: dict[str, tuple[str, str, float]] = {}
        # lock -> (token, entry name, when to try again, when to give up)
        self._pending: dict[str, tuple[str, str, float, float]] = {}
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def hold(self, name: str, lock: str, token: str) -> None:
        """Keep ``lock`` (just taken, with its first lifetime) alive until dropped."""
        due = time.monotonic() + self._store.first_lock_ttl / 3
        with self._condition:
            self._held[lock] = (token, name, due)
            self._start()
            self._condition.notify()

    def token(self, lock: str) -> str | None:
        """The token of ``lock`` if this store holds it."""
        held = self._held.get(lock)
        return None if held is None else held[0]

    def drop(self, lock: str, token: str) -> bool:
        """Stop renewing ``lock``; whether it was still held (so still to be released)."""
        with self._condition:
            held = self._held.get(lock)
            if held is None or held[0] != token:
                return False
            del self._held[lock]
            return True

    def settle(self, name: str, lock: str, token: str) -> None:
        """Release ``lock`` (if it is ``token``'s) once Redis answers again."""
        now = time.monotonic()
        with self._condition:
            self._held.pop(lock, None)
            give_up = now + max(_GIVE_UP_AFTER, 2 * self._store.lock_ttl)
            self._pending[lock] = (token, name, now, give_up)
            self._start()
            self._condition.notify()

    @property
    def pending(self) -> int:
        """How many locks wait to be released."""
        return len(self._pending)

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        with self._condition:
            self._closed = False

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"buttress-redis-watchdog-{next(_KEEPERS)}", daemon=True
            )
            self._thread.start()

    def _closing(self) -> bool:
        return self._closed

    def _run(self) -> None:
        store = self._store
        idle_since: float | None = None
        with self._condition:
            try:
                while not self._closed:
                    now = time.monotonic()
                    if not self._held and not self._pending:
                        idle_since = now if idle_since is None else idle_since
                        if now - idle_since >= store.lock_ttl:
                            break
                        self._condition.wait_for(self._closing, store.lock_ttl / 3)
                        continue
                    idle_since = None
                    due = [
                        (lock, token, name)
                        for lock, (token, name, when) in self._held.items()
                        if when <= now
                    ]
                    ready = [
                        (lock, token, name)
                        for lock, (token, name, when, _) in self._pending.items()
                        if when <= now
                    ]
                    if not due and not ready:
                        wake = min(
                            [when for _, _, when in self._held.values()]
                            + [when for _, _, when, _ in self._pending.values()]
                        )
                        self._condition.wait_for(self._closing, max(wake - now, 0.001))
                        continue
                    self._condition.release()  # no lock held across the round trips
                    try:
                        renewed = store.renew_all([(lock, token) for lock, token, _ in due])
                        released = store.release_all([(name, token) for _, token, name in ready])
                    finally:
                        self._condition.acquire()
                    self._after_renewal(due, renewed)
                    self._after_release(ready, released)
            finally:
                self._thread = None

    def _after_renewal(self, due: list[tuple[str, str, str]], renewed: list[bool] | None) -> None:
        store = self._store
        now = time.monotonic()
        for index, (lock, token, name) in enumerate(due):
            held = self._held.get(lock)
            if held is None or held[0] != token:
                continue  # dropped meanwhile
            if renewed is None:  # Redis failed: try again soon (it expires if it stays down)
                self._held[lock] = (token, name, now + min(store.timeout, store.lock_ttl / 3))
            elif renewed[index]:
                self._held[lock] = (token, name, now + store.lock_ttl / 3)
            else:
                del self._held[lock]  # expired and maybe taken: not ours now

    def _after_release(self, ready: list[tuple[str, str, str]], released: bool) -> None:
        now = time.monotonic()
        for lock, token, _ in ready:
            pending = self._pending.get(lock)
            if pending is None or pending[0] != token:
                continue
            if released or now >= pending[3]:
                del self._pending[lock]
            else:  # Redis still hangs: try again a little later
                self._pending[lock] = (token, pending[1], now + self._store.timeout, pending[3])
