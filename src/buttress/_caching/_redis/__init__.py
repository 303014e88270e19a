"""RedisStore: the cache shared by every replica through Redis (see :mod:`._store`)."""

from __future__ import annotations

from ._stats import RedisStoreStats as RedisStoreStats
from ._store import RedisStore as RedisStore

__all__ = ["RedisStore", "RedisStoreStats"]
