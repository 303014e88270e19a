"""buttress: resilience decorators for machine-learning inference, sync and async.

Everything public is importable from here. Names that need an optional dependency
(redis, prometheus-client) resolve lazily, so ``import buttress`` stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._errors import AttemptTimeoutError as AttemptTimeoutError
from ._errors import ButtressError as ButtressError
from ._errors import ConfigurationError as ConfigurationError
from ._errors import RetryError as RetryError
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
from ._monitoring import CallStats as CallStats
from ._monitoring import JsonFormatter as JsonFormatter
from ._monitoring import MonitorHandle as MonitorHandle
from ._monitoring import MonitoringStats as MonitoringStats
from ._monitoring import configure_monitoring as configure_monitoring
from ._monitoring import flush_monitoring as flush_monitoring
from ._monitoring import monitor as monitor
from ._monitoring import monitoring_stats as monitoring_stats
from ._monitoring import request_context as request_context
from ._monitoring import request_scope as request_scope
from ._retry import Jitter as Jitter
from ._retry import retry as retry

if TYPE_CHECKING:  # the lazily imported names, for type checkers
    pass

__all__ = [
    "AttemptTimeoutError",
    "BulkheadRejected",
    "ButtressError",
    "CacheAccess",
    "CacheEviction",
    "CacheStoreFailed",
    "CallStats",
    "CircuitRejected",
    "CircuitStateChanged",
    "ConfigurationError",
    "Event",
    "EventBus",
    "FallbackUsed",
    "HedgeStarted",
    "Jitter",
    "JsonFormatter",
    "MemoryGuardDecision",
    "MonitorHandle",
    "MonitoringStats",
    "RateLimited",
    "RetryBudgetExhausted",
    "RetryError",
    "RetryGaveUp",
    "RetryScheduled",
    "Subscription",
    "TimedOut",
    "ValidationFailed",
    "configure_monitoring",
    "events",
    "flush_monitoring",
    "monitor",
    "monitoring_stats",
    "request_context",
    "request_scope",
    "retry",
]

#: Public names whose module imports an optional dependency: name -> module.
_LAZY: dict[str, str] = {}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'buttress' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
