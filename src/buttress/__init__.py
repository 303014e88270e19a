"""buttress: resilience decorators for machine-learning inference, sync and async.

Everything public is importable from here. Names that need an optional dependency
(redis, prometheus-client, opentelemetry) resolve lazily or live in submodules
(``buttress.metrics``, ``buttress.otel``), so ``import buttress`` stays light.

Architecture
============

The code is in three layers. A module imports from its own layer and the layers below,
never from one above, and there is no import cycle, not even one dodged by an import
inside a function (a module that needs an optional package, such as the Prometheus
collector, may be imported inside the function that needs it). ``tests/test_architecture.py``
checks this on every run, from the source, and imports every module first, alone, in a
fresh interpreter.

core
    What every decorator builds on, and no decorator: ``_clock`` (the one clock),
    ``_errors``, ``_settings`` (settings normalised and checked), ``_events`` (the event
    bus), ``_wrapping`` (sync or async, honest wrappers), ``_declare`` (a decorator built
    from the one declaration of its settings), ``_signature`` (a function's signature,
    read once), ``_registry`` (live objects one part reads without importing the part
    that made them: every circuit breaker), ``_tracing`` (the hook ``@monitor`` and
    ``@hedge`` open spans through, ``None`` until OpenTelemetry is enabled),
    ``_streams`` (the one relay behind every decorated stream: each decorator says what
    it does around one run of a generator, as a session) and ``_blocks`` (what a
    decorator's engine needs to serve as a context manager: a name for the block, and
    each entry's state kept by the frame that entered it) and ``_deadline`` (the one
    deadline the async layers bound their waits with: anyio's cancel semantics, kept
    natively on asyncio).

features
    One decorator or one family each: ``_retry``; ``_caching/``; ``_validation/``;
    ``_memory_guard`` with ``_memory_probe``; ``_monitoring/``; ``_policies/`` (circuit
    breaker, bulkhead, rate limit, timeout, fallback, hedge, retry budget); ``_batching/``
    (``@batch``); and ``_redis/``, the Redis connection that features keeping fleet-wide
    state in Redis share (clients of any topology, timeouts, failures, scripts). A feature
    imports the core, and another feature only along a dependency listed below. Features
    report what they do through events; monitoring counts them, and reads the live
    breakers' states from the registry: it imports no other feature.

composition
    What puts features together or in front of users: ``_policy`` (``policy()``, the
    canonical stack), ``metrics`` and its sinks (``_sinks/``: the Prometheus collector,
    the DogStatsD sink, the OpenTelemetry sink), ``otel`` (which switches the
    OpenTelemetry sink on and installs its tracer in ``_tracing``), ``integrations/``
    (aiohttp, FastAPI), ``_demo/`` and ``__main__``, ``testing`` and
    ``_pytest_plugin``, and this module. Any of them may import any feature; no feature
    imports them.

The dependencies between features, each one way:

- retry -> policies: ``@retry(budget=...)`` takes a ``RetryBudget`` (``_policies._budget``).
- caching -> redis: ``RedisStore`` runs over the shared Redis connection (``_redis``).
- policies -> redis: shared rate limits, breakers and budgets keep their state in a
  ``FleetStore`` (``_redis``).
- policies -> caching: shared rate limits and breakers are named as a shared cache names
  functions (``_caching._naming``).

A new module gets its layer in ``tests/test_architecture.py`` (which fails until it has
one) and here; a new dependency between features is listed in both places too.

Each decorator has an *engine*, the object its settings are compiled into, which makes
every decision as plain code (``_Retrier``, ``CircuitBreaker``, ``Bulkhead``...), and two
thin *shells*, ``_sync_shell(engine)`` and ``_async_shell(engine)``, each a
``WrapperFactory`` whose wrapper (``retry_wrapper``) only calls, waits or locks; ``_wrapping.wrap``
picks one; a decorator that supports streams adds two stream shells, built on
``_streams``. A decorator with state hangs its handle on the wrapper under its keyword in
``policy()`` (``fn.cache``, ``fn.circuit_breaker``, ``fn.rate_limit``...), typed by a
protocol (``CachedFunction``, ``BreakerFunction``...). A decorator used bare and called
declares its settings once, as the parameters of one constructor (see ``_declare``).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._batching import AsyncBatchedFunction as AsyncBatchedFunction
from ._batching import BatchedFunction as BatchedFunction
from ._batching import Batcher as Batcher
from ._batching import BatchStats as BatchStats
from ._batching import batch as batch
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
from ._errors import BatchQueueFullError as BatchQueueFullError
from ._errors import BatchResultError as BatchResultError
from ._errors import BlockingCallWarning as BlockingCallWarning
from ._errors import BulkheadFullError as BulkheadFullError
from ._errors import ButtressError as ButtressError
from ._errors import ButtressWarning as ButtressWarning
from ._errors import CacheStoreError as CacheStoreError
from ._errors import CallTimeoutError as CallTimeoutError
from ._errors import CircuitOpenError as CircuitOpenError
from ._errors import ConfigurationError as ConfigurationError
from ._errors import DataValidationError as DataValidationError
from ._errors import InputValidationError as InputValidationError
from ._errors import MemoryPressureError as MemoryPressureError
from ._errors import OutputValidationError as OutputValidationError
from ._errors import RateLimitCostError as RateLimitCostError
from ._errors import RateLimitExceeded as RateLimitExceeded
from ._errors import RedisStoreError as RedisStoreError
from ._errors import RefusedValueError as RefusedValueError
from ._errors import RejectedError as RejectedError
from ._errors import RetryError as RetryError
from ._errors import SharedSettingsError as SharedSettingsError
from ._errors import SharedStateError as SharedStateError
from ._errors import StackingWarning as StackingWarning
from ._errors import StreamTimeoutError as StreamTimeoutError
from ._errors import UnencodableResultError as UnencodableResultError
from ._errors import UnkeyableArgumentError as UnkeyableArgumentError
from ._errors import ValidationProblem as ValidationProblem
from ._events import BatchCompleted as BatchCompleted
from ._events import BatchDispatched as BatchDispatched
from ._events import BatchRejected as BatchRejected
from ._events import BulkheadRejected as BulkheadRejected
from ._events import BulkheadWaited as BulkheadWaited
from ._events import CacheAccess as CacheAccess
from ._events import CacheEviction as CacheEviction
from ._events import CacheStoreFailed as CacheStoreFailed
from ._events import CircuitRejected as CircuitRejected
from ._events import CircuitStateChanged as CircuitStateChanged
from ._events import Event as Event
from ._events import EventBus as EventBus
from ._events import FallbackUsed as FallbackUsed
from ._events import HedgeStarted as HedgeStarted
from ._events import HedgeWon as HedgeWon
from ._events import MemoryGuardDecision as MemoryGuardDecision
from ._events import RateLimited as RateLimited
from ._events import RetryBudgetExhausted as RetryBudgetExhausted
from ._events import RetryGaveUp as RetryGaveUp
from ._events import RetryScheduled as RetryScheduled
from ._events import SharedStateLost as SharedStateLost
from ._events import SharedStateRestored as SharedStateRestored
from ._events import Subscription as Subscription
from ._events import TimedOut as TimedOut
from ._events import ValidationFailed as ValidationFailed
from ._events import events as events
from ._memory_guard import MemoryAdmission as MemoryAdmission
from ._memory_guard import MemoryGuard as MemoryGuard
from ._memory_guard import MemoryGuarded as MemoryGuarded
from ._memory_guard import memory_guard as memory_guard
from ._memory_guard import memory_snapshot as memory_snapshot
from ._memory_probe import GpuProbe as GpuProbe
from ._memory_probe import MemoryProbe as MemoryProbe
from ._memory_probe import MemorySnapshot as MemorySnapshot
from ._monitoring import CallStats as CallStats
from ._monitoring import JsonFormatter as JsonFormatter
from ._monitoring import MonitoredFunction as MonitoredFunction
from ._monitoring import MonitorHandle as MonitorHandle
from ._monitoring import MonitoringStats as MonitoringStats
from ._monitoring import configure_monitoring as configure_monitoring
from ._monitoring import flush_monitoring as flush_monitoring
from ._monitoring import monitor as monitor
from ._monitoring import monitoring_stats as monitoring_stats
from ._monitoring import request_context as request_context
from ._monitoring import request_scope as request_scope
from ._policies import BreakerFunction as BreakerFunction
from ._policies import BreakerState as BreakerState
from ._policies import BreakerStats as BreakerStats
from ._policies import Bulkhead as Bulkhead
from ._policies import BulkheadFunction as BulkheadFunction
from ._policies import BulkheadStats as BulkheadStats
from ._policies import CircuitBreaker as CircuitBreaker
from ._policies import HedgedFunction as HedgedFunction
from ._policies import Hedger as Hedger
from ._policies import HedgeStats as HedgeStats
from ._policies import RateLimitedFunction as RateLimitedFunction
from ._policies import RateLimiter as RateLimiter
from ._policies import RateLimiterStats as RateLimiterStats
from ._policies import RetryBudget as RetryBudget
from ._policies import RetryBudgetStats as RetryBudgetStats
from ._policies import Timeout as Timeout
from ._policies import bulkhead as bulkhead
from ._policies import circuit_breaker as circuit_breaker
from ._policies import fallback as fallback
from ._policies import hedge as hedge
from ._policies import rate_limit as rate_limit
from ._policies import timeout as timeout
from ._policy import Policy as Policy
from ._policy import PolicyFunction as PolicyFunction
from ._policy import PolicyMethod as PolicyMethod
from ._policy import policy as policy
from ._retry import Attempt as Attempt
from ._retry import Jitter as Jitter
from ._retry import Retrying as Retrying
from ._retry import StreamResume as StreamResume
from ._retry import retry as retry
from ._retry import retrying as retrying
from ._validation import ArraySpec as ArraySpec
from ._validation import Keys as Keys
from ._validation import validate_input as validate_input
from ._validation import validate_output as validate_output

if TYPE_CHECKING:  # the lazily imported names, for type checkers
    from ._caching._redis import RedisStore as RedisStore
    from ._caching._redis import RedisStoreStats as RedisStoreStats
    from ._redis import FleetStore as FleetStore

__all__ = [
    "ArraySpec",
    "AsyncBatchedFunction",
    "Attempt",
    "AttemptTimeoutError",
    "BatchCompleted",
    "BatchDispatched",
    "BatchQueueFullError",
    "BatchRejected",
    "BatchResultError",
    "BatchStats",
    "BatchedFunction",
    "Batcher",
    "BlockingCallWarning",
    "BreakerFunction",
    "BreakerState",
    "BreakerStats",
    "Bulkhead",
    "BulkheadFullError",
    "BulkheadFunction",
    "BulkheadRejected",
    "BulkheadStats",
    "BulkheadWaited",
    "ButtressError",
    "ButtressWarning",
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
    "CallStats",
    "CallTimeoutError",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitRejected",
    "CircuitStateChanged",
    "ConfigurationError",
    "DataValidationError",
    "Event",
    "EventBus",
    "FallbackUsed",
    "FleetStore",
    "GpuProbe",
    "HedgeStarted",
    "HedgeStats",
    "HedgeWon",
    "HedgedFunction",
    "Hedger",
    "InputValidationError",
    "Jitter",
    "JsonFormatter",
    "Keys",
    "LocalStore",
    "MemoryAdmission",
    "MemoryGuard",
    "MemoryGuardDecision",
    "MemoryGuarded",
    "MemoryPressureError",
    "MemoryProbe",
    "MemorySnapshot",
    "MonitorHandle",
    "MonitoredFunction",
    "MonitoringStats",
    "OutputValidationError",
    "Policy",
    "PolicyFunction",
    "PolicyMethod",
    "RateLimitCostError",
    "RateLimitExceeded",
    "RateLimited",
    "RateLimitedFunction",
    "RateLimiter",
    "RateLimiterStats",
    "RedisStore",
    "RedisStoreError",
    "RedisStoreStats",
    "RefusedValueError",
    "RejectedError",
    "RetryBudget",
    "RetryBudgetExhausted",
    "RetryBudgetStats",
    "RetryError",
    "RetryGaveUp",
    "RetryScheduled",
    "Retrying",
    "SharedSettingsError",
    "SharedStateError",
    "SharedStateLost",
    "SharedStateRestored",
    "StackingWarning",
    "StreamResume",
    "StreamTimeoutError",
    "Subscription",
    "TimedOut",
    "Timeout",
    "UnencodableResultError",
    "UnkeyableArgumentError",
    "ValidationFailed",
    "ValidationProblem",
    "batch",
    "bulkhead",
    "cache_result",
    "circuit_breaker",
    "configure_monitoring",
    "events",
    "fallback",
    "flush_monitoring",
    "hedge",
    "memory_guard",
    "memory_snapshot",
    "monitor",
    "monitoring_stats",
    "policy",
    "rate_limit",
    "request_context",
    "request_scope",
    "retry",
    "retrying",
    "timeout",
    "validate_input",
    "validate_output",
]

#: Public names whose module imports an optional dependency: name -> module.
_LAZY: dict[str, str] = {
    "FleetStore": "buttress._redis",
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
