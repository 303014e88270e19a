"""What ``RedisStore.stats()`` reports, and the counters behind it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

__all__ = ["Counters", "RedisStoreStats"]


@dataclass(frozen=True, slots=True)
class RedisStoreStats:
    """A snapshot of one :class:`RedisStore`'s counters (``store.stats()``).

    Attributes:
        local_hits: reads answered by the in-process layer (``local_ttl``).
        reads: values read from Redis (hits there; absent keys not counted).
        writes: values written to Redis.
        refused: values read from Redis and refused (bad signature, garbage, a pickle
            payload where the safe codec is in use); each was treated as a miss.
        failures: Redis operations that failed (down, slower than ``timeout``, an error
            reply), not counting those skipped while Redis was marked down.
        skipped: operations not attempted because Redis failed less than a second ago.
        waits: computations this process left to another process holding the lock.
        takeovers: locks taken after waiting, because the holder finished without
            storing a value, failed, or died and its lock expired.
    """

    local_hits: int
    reads: int
    writes: int
    refused: int
    failures: int
    skipped: int
    waits: int
    takeovers: int


@final
class Counters:
    """The live counters of one store; :meth:`snapshot` freezes them."""

    # Bumped without a lock, like the decorator's: a lost increment under thread
    # contention is affordable, a lock on every read is not.
    __slots__ = ("local_hits", "reads", "refused", "takeovers", "waits", "writes")

    def __init__(self) -> None:
        self.local_hits = self.reads = self.writes = self.refused = 0
        self.waits = self.takeovers = 0

    def snapshot(self, failures: int, skipped: int) -> RedisStoreStats:
        """The counters, with the connection's ``failures`` and ``skipped``."""
        return RedisStoreStats(
            local_hits=self.local_hits,
            reads=self.reads,
            writes=self.writes,
            refused=self.refused,
            failures=failures,
            skipped=skipped,
            waits=self.waits,
            takeovers=self.takeovers,
        )
