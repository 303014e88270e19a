"""The in-process hook that decorators report what they do to.

Decorators emit typed, frozen event records (subclasses of :class:`Event`); monitoring,
metrics and users' own code subscribe. With no subscriber, emitting costs one attribute
read: decorators write ``if events.active: events.emit(SomeEvent(...))`` so that not even
the record is built.

Subscribers run synchronously, in the thread and task of the decorated call, so they
must be quick and must not block (queue the event and do I/O elsewhere, as
``@monitor`` does). A subscriber that raises is logged and skipped; it never breaks the
decorated call.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

__all__ = [
    "BatchCompleted",
    "BatchDispatched",
    "BatchRejected",
    "BulkheadRejected",
    "BulkheadWaited",
    "CacheAccess",
    "CacheEviction",
    "CacheStoreFailed",
    "CircuitRejected",
    "CircuitStateChanged",
    "Event",
    "EventBus",
    "FallbackUsed",
    "HedgeStarted",
    "HedgeWon",
    "MemoryGuardDecision",
    "RateLimited",
    "RetryBudgetExhausted",
    "RetryGaveUp",
    "RetryScheduled",
    "SharedStateLost",
    "SharedStateRestored",
    "Subscription",
    "TimedOut",
    "ValidationFailed",
    "events",
]

logger = logging.getLogger("buttress.events")

E = TypeVar("E", bound="Event")


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event: which decorated function it concerns (its qualified name)."""

    function: str


@dataclass(frozen=True, slots=True)
class RetryScheduled(Event):
    """An attempt failed and another will follow after ``delay`` seconds.

    This is also the record ``on_retry`` receives.

    Attributes:
        attempt: the number of the attempt that just failed, from 1.
        error: the exception it raised, or ``None`` when ``retry_on_result`` flagged
            its result.
        result: the flagged result (``None`` when it raised).
        delay: seconds about to be slept.
        elapsed: seconds since the first attempt started.
    """

    attempt: int
    error: BaseException | None
    result: Any
    delay: float
    elapsed: float


@dataclass(frozen=True, slots=True)
class RetryGaveUp(Event):
    """Retrying stopped: ``reason`` is ``"attempts"`` (all used), ``"deadline"``, or
    ``"budget"`` (the shared :class:`RetryBudget` was spent)."""

    attempts: int
    reason: Literal["attempts", "deadline", "budget"]
    error: BaseException | None
    result: Any
    elapsed: float


# --- caching -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheAccess(Event):
    """A lookup in ``@cache_result``: ``result`` says how it was answered.

    ``"hit"``: from the cache; ``"miss"``: computed by this caller; ``"join"``: waited
    for another caller's computation (single-flight); ``"stale"``: an expired value served
    on purpose (``stale_while_revalidate`` or ``stale_if_error``). ``error`` is set when a
    stale value was served because the refresh raised it (``stale_if_error``).
    """

    result: Literal["hit", "miss", "join", "stale"]
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class CacheEviction(Event):
    """Entries left a cache: ``reason`` is ``"size"``, ``"bytes"`` or ``"expired"``."""

    reason: Literal["size", "bytes", "expired"]
    count: int = 1


@dataclass(frozen=True, slots=True)
class CacheStoreFailed(Event):
    """A cache store (Redis) failed or answered garbage; ``operation`` says doing what."""

    store: str
    operation: str
    error: BaseException


# --- validation ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ValidationFailed(Event):
    """``@validate_input`` or ``@validate_output`` rejected a value.

    ``errors`` holds the package's per-problem records (argument, path, expected, found).
    """

    direction: Literal["input", "output"]
    errors: tuple[Any, ...]


# --- memory guard --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemoryGuardDecision(Event):
    """What ``@memory_guard`` did with one call.

    ``action``: ``"admitted"``, ``"rejected"``, ``"waited"`` (then admitted or rejected,
    after ``waited`` seconds), ``"collected"`` (``freed`` bytes) or ``"warned"``.
    ``used``, ``limit``, ``percent`` and ``source`` are the figures the decision rested on
    (the GPU's when ``reason`` is ``"gpu_max_percent"``); ``reason`` names the threshold
    crossed (``None`` when none was); ``requested`` is the bytes the call reserved.
    """

    action: Literal["admitted", "rejected", "waited", "collected", "warned"]
    used: int
    limit: int
    percent: float
    source: str
    waited: float = 0.0
    freed: int = 0
    reason: str | None = None
    requested: int = 0


# --- policies ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CircuitStateChanged(Event):
    """A breaker moved from ``old`` to ``new``: ``"closed"``, ``"open"`` or ``"half_open"``."""

    breaker: str
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class CircuitRejected(Event):
    """An open (or saturated half-open) breaker refused a call."""

    breaker: str


@dataclass(frozen=True, slots=True)
class BulkheadRejected(Event):
    """A bulkhead refused a call: no free slot and no room to wait (or the wait timed out).

    ``reason`` is ``"full"`` (refused at once) or ``"timeout"`` (refused after waiting
    ``waited`` seconds for a slot).
    """

    reason: Literal["full", "timeout"] = "full"
    waited: float = 0.0


@dataclass(frozen=True, slots=True)
class BulkheadWaited(Event):
    """A call waited ``waited`` seconds in a bulkhead's queue, then got a slot."""

    waited: float


@dataclass(frozen=True, slots=True)
class RateLimited(Event):
    """A rate limiter made a call wait ``waited`` seconds, or refused it (``rejected``)."""

    waited: float
    rejected: bool


@dataclass(frozen=True, slots=True)
class TimedOut(Event):
    """``@timeout`` cancelled a call after ``seconds``."""

    seconds: float


@dataclass(frozen=True, slots=True)
class FallbackUsed(Event):
    """``@fallback`` answered in place of a failed call."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class HedgeStarted(Event):
    """``@hedge`` started attempt number ``attempt`` (2 for the first hedge)."""

    attempt: int


@dataclass(frozen=True, slots=True)
class HedgeWon(Event):
    """A hedged call was answered by attempt number ``attempt`` (1: the first one) of
    the ``attempts`` it started; the others were cancelled. Emitted only for calls that
    started at least one hedge."""

    attempt: int
    attempts: int


@dataclass(frozen=True, slots=True)
class RetryBudgetExhausted(Event):
    """A retry was skipped because its :class:`RetryBudget` was spent."""


# --- batching ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchDispatched(Event):
    """``@batch`` sent a batch: the batch function is being called with ``size`` items.

    ``waited`` is how long its first item waited, from joining to this moment (the
    gathering, plus any wait for a free slot under ``max_concurrency``); ``trigger`` says
    what closed the batch: ``"full"`` (``max_size`` items) or ``"max_wait"`` (the time
    was up). ``in_flight`` counts the batches in flight, this one included. Items whose
    callers left before this moment are not counted in ``size``: they were never sent.
    """

    size: int
    waited: float
    trigger: Literal["full", "max_wait"]
    in_flight: int


@dataclass(frozen=True, slots=True)
class BatchCompleted(Event):
    """A batch call ended after ``seconds``: ``outcome`` ``"ok"`` (results shared out;
    ``failed_items`` of them were exceptions returned for single items), ``"error"`` (the
    call raised, or its result could not be shared out: every caller got the error) or
    ``"cancelled"``. ``in_flight`` counts the batches still in flight."""

    size: int
    seconds: float
    outcome: Literal["ok", "error", "cancelled"]
    failed_items: int
    in_flight: int


@dataclass(frozen=True, slots=True)
class BatchRejected(Event):
    """``@batch`` refused an item (:class:`~buttress.BatchQueueFullError`): ``queued``
    items already waited to be sent."""

    queued: int


# --- shared state --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SharedStateLost(Event):
    """State shared through a :class:`~buttress.FleetStore` became unreachable: this
    process now decides alone (a rate limit on its local share) until Redis answers
    again. ``kind`` is what is shared (``"rate_limit"``...), ``name`` its shared name,
    ``address`` where Redis was, ``error`` what failed. Emitted once per outage and name.
    """

    kind: str
    name: str
    address: str
    error: BaseException


@dataclass(frozen=True, slots=True)
class SharedStateRestored(Event):
    """Redis answered again for a shared ``kind`` and ``name``: the shared state decides
    once more, ``lost_for`` seconds after :class:`SharedStateLost`."""

    kind: str
    name: str
    address: str
    lost_for: float


class Subscription(Generic[E]):
    """A live subscription; ``cancel()`` it, or use it as a context manager."""

    __slots__ = ("_bus", "callback", "kinds")

    def __init__(
        self, bus: EventBus, callback: Callable[[E], object], kinds: tuple[type[E], ...]
    ) -> None:
        self._bus = bus
        self.callback = callback
        self.kinds = kinds

    def cancel(self) -> None:
        """Stop receiving events. Cancelling twice is harmless."""
        self._bus._remove(self)

    def __enter__(self) -> Subscription[E]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()


class EventBus:
    """Fan-out of events to subscribers; thread-safe, copy-on-write."""

    __slots__ = ("_lock", "_subscriptions", "active")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: tuple[Subscription[Event], ...] = ()
        #: True while anyone listens; decorators test it before building an event.
        self.active = False

    def subscribe(
        self,
        callback: Callable[[E], object],
        kinds: type[E] | tuple[type[E], ...] = Event,  # type: ignore[assignment]
    ) -> Subscription[E]:
        """Call ``callback(event)`` for every event that is an instance of ``kinds``.

        Returns a :class:`Subscription`; cancel it (or leave its ``with`` block) to stop.
        """
        wanted = kinds if isinstance(kinds, tuple) else (kinds,)
        subscription: Subscription[E] = Subscription(self, callback, wanted)
        with self._lock:
            self._subscriptions = (*self._subscriptions, subscription)  # type: ignore[arg-type]
            self.active = True
        return subscription

    def _remove(self, subscription: Subscription[E]) -> None:
        with self._lock:
            self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)
            self.active = bool(self._subscriptions)

    def emit(self, event: Event) -> None:
        """Deliver ``event`` to every matching subscriber, in subscription order."""
        for subscription in self._subscriptions:
            if isinstance(event, subscription.kinds):
                try:
                    subscription.callback(event)
                except Exception:
                    logger.exception("buttress event subscriber %r failed", subscription.callback)


#: The process-wide bus every decorator reports to.
events = EventBus()
