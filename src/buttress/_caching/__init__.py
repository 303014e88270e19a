"""@cache_result and its stores: keys, the in-process table, single-flight, the store protocol."""

from __future__ import annotations

from ._decorator import CachedFunction as CachedFunction
from ._decorator import CachedMethod as CachedMethod
from ._decorator import CacheHandle as CacheHandle
from ._decorator import CacheStats as CacheStats
from ._decorator import cache_result as cache_result
from ._keys import CacheKey as CacheKey
from ._keys import CacheScope as CacheScope
from ._local import LocalStore as LocalStore
from ._store import CacheEntry as CacheEntry
from ._store import CacheStore as CacheStore

__all__ = [
    "CacheEntry",
    "CacheHandle",
    "CacheKey",
    "CacheScope",
    "CacheStats",
    "CacheStore",
    "CachedFunction",
    "CachedMethod",
    "LocalStore",
    "cache_result",
]
