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
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

from buttress import _clock
from buttress._errors import public_type_name

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
    "EventLog",
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
    "event_log",
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

    def notable(self) -> bool:
        """Whether a rare event (a retry, a give-up, a breaker's transition, a fallback, a
        store failure) is wanted: by a subscriber, or by :data:`event_log` (the
        ``buttress.events`` logger enabled for WARNING, as it is by default).

        Sites of such events test this rather than :attr:`active`; frequent events (a
        cache hit) test :attr:`active` only, so that logging costs them nothing.
        """
        return self.active or (event_log.enabled and _events_logger.isEnabledFor(logging.WARNING))

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
        """Deliver ``event`` to every matching subscriber, in subscription order, then to
        :data:`event_log` when it logs events of its kind."""
        if type(event) in _LOGGED:
            try:
                event_log.handle(event)
            except Exception:
                logger.exception("buttress event log failed on %r", event)
        for subscription in self._subscriptions:
            if isinstance(event, subscription.kinds):
                try:
                    subscription.callback(event)
                except Exception:
                    logger.exception("buttress event subscriber %r failed", subscription.callback)


#: The process-wide bus every decorator reports to.
events = EventBus()


# --- the event log -------------------------------------------------------------------

_events_logger = logging.getLogger("buttress.events")


def _error_text(error: BaseException | None) -> str:
    return "" if error is None else f"{public_type_name(error)}: {error}"


def _retry_scheduled(event: RetryScheduled) -> tuple[int, str, tuple[Any, ...], dict[str, Any]]:
    cause = _error_text(event.error) or "its result was rejected"
    return (
        logging.INFO,
        "%s(): attempt %d failed (%s); retrying in %.3f s",
        (event.function, event.attempt, cause, event.delay),
        {"attempt": event.attempt, "delay": event.delay, "elapsed": event.elapsed},
    )


def _retry_gave_up(event: RetryGaveUp) -> tuple[int, str, tuple[Any, ...], dict[str, Any]]:
    cause = _error_text(event.error) or "the last result was still rejected"
    return (
        logging.WARNING,
        "%s(): gave up retrying after %d attempt(s) (%s): %s",
        (event.function, event.attempts, event.reason, cause),
        {"attempts": event.attempts, "reason": event.reason, "elapsed": event.elapsed},
    )


def _budget(event: RetryBudgetExhausted) -> tuple[int, str, tuple[Any, ...], dict[str, Any]]:
    return (
        logging.WARNING,
        "%s(): retry skipped: the retry budget is spent",
        (event.function,),
        {},
    )


def _circuit(event: CircuitStateChanged) -> tuple[int, str, tuple[Any, ...], dict[str, Any]]:
    level = logging.WARNING if event.new == "open" else logging.INFO
    return (
        level,
        "circuit breaker %r: %s -> %s (on a call of %s())",
        (event.breaker, event.old, event.new, event.function),
        {"breaker": event.breaker, "old": event.old, "new": event.new},
    )


def _fallback(event: FallbackUsed) -> tuple[int, str, tuple[Any, ...], dict[str, Any]]:
    return (
        logging.WARNING,
        "%s(): the fallback answered in place of %s",
        (event.function, _error_text(event.error)),
        {},
    )


def _store(event: CacheStoreFailed) -> tuple[int, str, tuple[Any, ...], dict[str, Any]]:
    return (
        logging.WARNING,
        "%s(): cache store %r failed on %s (%s); the call goes on without it",
        (event.function, event.store, event.operation, _error_text(event.error)),
        {"store": event.store, "operation": event.operation},
    )


def _shared_lost(event: SharedStateLost) -> tuple[int, str, tuple[Any, ...], dict[str, Any]]:
    return (
        logging.WARNING,
        "%s %r: the shared state at %s is unreachable (%s); this process decides alone "
        "until it answers again",
        (event.kind, event.name, event.address, _error_text(event.error)),
        {"kind": event.kind, "shared_name": event.name, "address": event.address},
    )


def _shared_restored(
    event: SharedStateRestored,
) -> tuple[int, str, tuple[Any, ...], dict[str, Any]]:
    return (
        logging.INFO,
        "%s %r: the shared state at %s answers again after %.1fs; the fleet decides again",
        (event.kind, event.name, event.address, event.lost_for),
        {"kind": event.kind, "shared_name": event.name, "address": event.address},
    )


_Formatter = Callable[[Any], tuple[int, str, tuple[Any, ...], dict[str, Any]]]
#: What the event log writes, per event class: its level, message and fields.
_LOGGED: dict[type[Event], _Formatter] = {
    RetryScheduled: _retry_scheduled,
    RetryGaveUp: _retry_gave_up,
    RetryBudgetExhausted: _budget,
    CircuitStateChanged: _circuit,
    FallbackUsed: _fallback,
    CacheStoreFailed: _store,
    SharedStateLost: _shared_lost,
    SharedStateRestored: _shared_restored,
}


class EventLog:
    """Writes the rare events an operator must see to the ``buttress.events`` logger.

    Retries (INFO), give-ups and a spent retry budget (WARNING), breaker transitions
    (WARNING when one opens, INFO when it half-opens or closes), fallbacks and cache store
    failures (WARNING), shared state lost (WARNING) and restored (INFO). Each record
    carries ``event`` (the class name), ``function``, ``error_type`` and ``error_message``
    when an error is involved, and the event's own
    facts. At most ``burst`` records per ``window`` seconds are written for one kind of
    event of one function (or one breaker); the rest are counted and the next record
    written says how many were left out (``suppressed``).

    The check runs in the caller's thread and costs one level check when the logger is
    disabled; the record is built and handled by ``defer`` (set by ``@monitor``'s
    exporter to its background thread; inline until then).
    """

    def __init__(self, burst: int = 5, window: float = 60.0) -> None:
        self.enabled = True
        self.burst = burst
        self.window = window
        #: hands a zero-argument callable to whoever builds records off the caller's path
        self.defer: Callable[[Callable[[], None]], None] = lambda make: make()
        self._lock = threading.Lock()
        #: per key: (window start, records written in it, records left out)
        self._windows: dict[tuple[Any, ...], list[float]] = {}

    def handle(self, event: Event) -> None:
        formatter = _LOGGED.get(type(event))
        if formatter is None or not self.enabled:
            return
        log = _events_logger
        level, text, args, fields = formatter(event)
        if not log.isEnabledFor(level):
            return
        key = (type(event), event.function, fields.get("breaker"), fields.get("shared_name"))
        now = _clock.monotonic()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window[0] >= self.window:
                suppressed = int(window[2]) if window is not None else 0
                self._windows[key] = [now, 1, 0]
            elif window[1] < self.burst:
                window[1] += 1
                suppressed, window[2] = int(window[2]), 0
            else:
                window[2] += 1
                return
        error = getattr(event, "error", None)
        extra: dict[str, Any] = {
            "event": type(event).__name__,
            "function": event.function,
            **fields,
        }
        if isinstance(error, BaseException):
            extra["error_type"] = public_type_name(error)
            extra["error_message"] = str(error)
        if suppressed:
            text += " (%d similar record(s) left out before this one)"
            args = (*args, suppressed)
            extra["suppressed"] = suppressed
        thread = threading.current_thread()
        stamp = time.time()

        def make() -> None:
            if log.isEnabledFor(level):
                record = log.makeRecord(log.name, level, "(buttress)", 0, text, args, None)
                record.__dict__.update(extra)
                # the record describes the event, not the moment a thread got to it
                record.created, record.msecs = stamp, (stamp - int(stamp)) * 1000
                record.thread, record.threadName = thread.ident, thread.name
                log.handle(record)

        self.defer(make)

    def reset(self) -> None:
        """Forget every window (for tests)."""
        with self._lock:
            self._windows.clear()


#: The process-wide event log (see :class:`EventLog`); ``enabled = False`` turns it off.
event_log = EventLog()
