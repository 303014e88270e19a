"""buttress: resilience decorators for machine-learning inference, sync and async.

Everything public is importable from here. Names that need an optional dependency
(redis, prometheus-client) resolve lazily, so ``import buttress`` stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._caching import CachedFunction as CachedFunction
from ._caching import CachedMethod as CachedMethod
from ._caching import CacheEntry as CacheEntry
from ._caching import CacheHandle as CacheHandle
from ._caching import CacheKey as CacheKey
from ._caching import CacheScope as CacheScope
from ._caching import CacheStats as CacheStats
from ._caching import CacheStore as CacheStore
from ._caching import LocalStore as LocalStore
from ._caching import cache_result as cache_result
from ._errors import AttemptTimeoutError as AttemptTimeoutError
from ._errors import ButtressError as ButtressError
from ._errors import CacheStoreError as CacheStoreError
from ._errors import ConfigurationError as ConfigurationError
from ._errors import MemoryPressureError as MemoryPressureError
from ._errors import RedisStoreError as RedisStoreError
from ._errors import RefusedValueError as RefusedValueError
from ._errors import RetryError as RetryError
from ._errors import UnencodableResultError as UnencodableResultError
from ._errors import UnkeyableArgumentError as UnkeyableArgumentError
from ._events import BulkheadRejected as BulkheadRejected
from ._events import CacheAccess as CacheAccess
from ._events import CacheEviction as CacheEviction
from ._events import CacheStoreFailed as CacheStoreFailed
from ._events import CircuitRejected as CircuitRejected
from ._events import CircuitStateChanged as CircuitStateChanged
from ._events import Event as Event
from ._events import EventBus as EventBus
from ._events import FallbackUsed as FallbackUsed
from ._events import HedgeStarted as HedgeStarted
from ._events import MemoryGuardDecision as MemoryGuardDecision
from ._events import RateLimited as RateLimited
from ._events import RetryBudgetExhausted as RetryBudgetExhausted
from ._events import RetryGaveUp as RetryGaveUp
from ._events import RetryScheduled as RetryScheduled
from ._events import Subscription as Subscription
from ._events import TimedOut as TimedOut
from ._events import ValidationFailed as ValidationFailed
from ._events import events as events
from ._memory_guard import MemoryGuard as MemoryGuard
from ._memory_guard import MemoryGuarded as MemoryGuarded
from ._memory_guard import memory_guard as memory_guard
from ._memory_guard import memory_snapshot as memory_snapshot
from ._memory_probe import GpuProbe as GpuProbe
from ._memory_probe import MemoryProbe as MemoryProbe
from ._memory_probe import MemorySnapshot as MemorySnapshot
from ._retry import Jitter as Jitter
from ._retry import retry as retry

if TYPE_CHECKING:  # the lazily imported names, for type checkers
    from ._caching._redis import RedisStore as RedisStore
    from ._caching._redis import RedisStoreStats as RedisStoreStats

__all__ = [
    "AttemptTimeoutError",
    "BulkheadRejected",
    "ButtressError",
    "CacheAccess",
    "CacheEntry",
    "CacheEviction",
    "CacheHandle",
    "CacheKey",
    "CacheScope",
    "CacheStats",
    "CacheStore",
    "CacheStoreError",
    "CacheStoreFailed",
    "CachedFunction",
    "CachedMethod",
    "CircuitRejected",
    "CircuitStateChanged",
    "ConfigurationError",
    "Event",
    "EventBus",
    "FallbackUsed",
    "GpuProbe",
    "HedgeStarted",
    "Jitter",
    "LocalStore",
    "MemoryGuard",
    "MemoryGuardDecision",
    "MemoryGuarded",
    "MemoryPressureError",
    "MemoryProbe",
    "MemorySnapshot",
    "RateLimited",
    "RedisStore",
    "RedisStoreError",
    "RedisStoreStats",
    "RefusedValueError",
    "RetryBudgetExhausted",
    "RetryError",
    "RetryGaveUp",
    "RetryScheduled",
    "Subscription",
    "TimedOut",
    "UnencodableResultError",
    "UnkeyableArgumentError",
    "ValidationFailed",
    "cache_result",
    "events",
    "memory_guard",
    "memory_snapshot",
    "retry",
]

#: Public names whose module imports an optional dependency: name -> module.
_LAZY: dict[str, str] = {
    "RedisStore": "buttress._caching._redis",
    "RedisStoreStats": "buttress._caching._redis",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'buttress' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
