"""The lock keeper: one thread per store renews every computation lock the store holds."""

from __future__ import annotations

import itertools
import threading
from typing import TYPE_CHECKING, Final, final

if TYPE_CHECKING:
    from ._store import RedisStore

__all__ = ["LockKeeper"]

_KEEPERS: Final = itertools.count(1)


@final
class LockKeeper:
    """Renews every computation lock one store holds, from one thread.

    A thread rather than a task per computation: it costs a computation nothing to
    register, and it keeps renewing while a coroutine blocks its event loop with CPU
    work (a model running in ``async def``), where a renewal task would starve and let
    another replica take over and compute the same key again. Started on demand; it
    stops after ``lock_ttl`` without locks to renew, or on ``store.close()``.
    """

    __slots__ = ("_closed", "_condition", "_held", "_store", "_thread")

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self._held: dict[str, str] = {}  # lock -> token
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def hold(self, lock: str, token: str) -> None:
        with self._condition:
            self._held[lock] = token
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run,
                    name=f"buttress-redis-watchdog-{next(_KEEPERS)}",
                    daemon=True,
                )
                self._thread.start()

    def token(self, lock: str) -> str | None:
        """The token of ``lock`` if this store holds it."""
        return self._held.get(lock)

    def drop(self, lock: str, token: str) -> bool:
        """Stop renewing ``lock``; whether it was still held (so still to be released)."""
        with self._condition:
            if self._held.get(lock) != token:
                return False
            del self._held[lock]
            return True

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        with self._condition:
            self._closed = False

    def _closing(self) -> bool:
        return self._closed

    def _run(self) -> None:
        store = self._store
        interval = store.lock_ttl / 3
        idle = 0.0
        with self._condition:
            try:
                while not self._condition.wait_for(self._closing, interval):
                    if not self._held:
                        idle += interval
                        if idle >= store.lock_ttl:
                            break
                        continue
                    idle = 0.0
                    locks = list(self._held.items())
                    self._condition.release()  # no lock held across the round trip
                    try:
                        kept = store.renew_all(locks)
                    finally:
                        self._condition.acquire()
                    for (lock, token), ours in zip(locks, kept, strict=True):
                        if not ours and self._held.get(lock) == token:
                            del self._held[lock]  # expired and maybe taken: not ours now
            finally:
                self._thread = None
