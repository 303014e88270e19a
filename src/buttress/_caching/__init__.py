"""@cache_result and its stores: keys, the in-process table, single-flight, the store protocol.

Where to look:

* ``_decorator``: ``cache_result`` itself; ``_policy``: its compiled settings and what an
  entry is worth now; ``_stats``: ``CacheStats``;
* ``_shells``: the ``def`` and ``async def`` wrappers (the written-out hit path, and the
  drivers that carry out the engine's steps); ``_engine``: every decision past a fresh
  hit; ``_steps``: the steps engines and drivers speak in; ``_core``: one function's keys,
  storage, counters and flights; ``_flight``: single-flight within a process;
* ``_handle``: ``fn.cache`` and the decorated function's static types;
* ``_keys``: cache keys; ``_naming``: the names functions go by in a store shared between
  processes; ``_store``: the store protocol; ``_local``: the in-process table and
  ``LocalStore``; ``_values``: freezing results; ``_codec`` and ``_redis``: ``RedisStore``
  (over the shared connection of ``buttress._redis``).
"""

from __future__ import annotations

from ._decorator import cache_result as cache_result
from ._handle import CachedFunction as CachedFunction
from ._handle import CachedMethod as CachedMethod
from ._handle import CacheHandle as CacheHandle
from ._keys import CacheKey as CacheKey
from ._keys import CacheScope as CacheScope
from ._local import LocalStore as LocalStore
from ._stats import CacheStats as CacheStats
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
