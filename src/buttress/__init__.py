"""buttress: resilience decorators for machine-learning inference, sync and async.

Everything public is importable from here. Names that need an optional dependency
(redis, prometheus-client) resolve lazily, so ``import buttress`` stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._errors import ButtressError as ButtressError
from ._errors import ConfigurationError as ConfigurationError
from ._errors import RetryError as RetryError
from ._events import Event as Event
from ._events import EventBus as EventBus
from ._events import Subscription as Subscription
from ._events import events as events
from ._retry import AttemptTimeoutError as AttemptTimeoutError
from ._retry import Jitter as Jitter
from ._retry import RetryGaveUp as RetryGaveUp
from ._retry import RetryScheduled as RetryScheduled
from ._retry import retry as retry

if TYPE_CHECKING:  # the lazily imported names, for type checkers
    pass

__all__ = [
    "AttemptTimeoutError",
    "ButtressError",
    "ConfigurationError",
    "Event",
    "EventBus",
    "Jitter",
    "RetryError",
    "RetryGaveUp",
    "RetryScheduled",
    "Subscription",
    "events",
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
