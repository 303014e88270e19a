"""In-process aggregates: what ``@monitor`` and the event hook count, in plain Python.

The hot path of a monitored call only adds to a few integers and one histogram bucket of
its :class:`FunctionStats`, under that function's own small lock, which is never held
during I/O. Prometheus (:mod:`buttress.metrics`) and the DogStatsD sink read consistent
copies of these totals when they scrape or export, so prometheus-client's own locks are
never taken per call.

Counters fed by other decorators' events live in :class:`EventCounters`; it listens to
:data:`buttress.events` only while at least one metrics sink is enabled, so without
monitoring the event hook stays free (``events.active`` stays false).
"""

from __future__ import annotations

import bisect
import importlib.util
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from buttress import _registry
from buttress._errors import ConfigurationError
from buttress._events import (
    BatchCompleted,
    BatchDispatched,
    BatchRejected,
    BulkheadRejected,
    CacheAccess,
    CacheEviction,
    CacheStoreFailed,
    CircuitRejected,
    CircuitStateChanged,
    Event,
    FallbackUsed,
    HedgeStarted,
    MemoryGuardDecision,
    RateLimited,
    RetryBudgetExhausted,
    RetryGaveUp,
    RetryScheduled,
    SharedStateLost,
    SharedStateRestored,
    Subscription,
    TimedOut,
    ValidationFailed,
    events,
)
from buttress._tracing import TraceIds

from ._emitter import exporter

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "BATCH_WAIT_BUCKETS",
    "CALLS_FAMILY",
    "CIRCUIT_FAMILY",
    "DROPPED_FAMILY",
    "DURATION_BUCKETS",
    "DURATION_FAMILY",
    "FIRST_ITEM_FAMILY",
    "IN_FLIGHT_FAMILY",
    "ITEMS_FAMILY",
    "OUTCOMES",
    "OUTPUT_BUCKETS",
    "OUTPUT_FAMILY",
    "CallStats",
    "CounterFamily",
    "EventCounters",
    "Exemplar",
    "FunctionSnapshot",
    "FunctionStats",
    "GaugeFamily",
    "HistogramFamily",
    "HistogramSeries",
    "Observed",
    "counters",
    "duration_buckets",
    "function_stats",
    "hint_once",
    "set_duration_buckets",
    "snapshot",
    "static_labels",
    "use_labels",
]

#: Call outcomes, in the order of :attr:`FunctionStats.outcomes`.
OUTCOMES = ("ok", "error", "cancelled")
OK, ERROR, CANCELLED = 0, 1, 2

#: Upper bounds (seconds) of ``buttress_call_duration_seconds``: inference from 1 ms to 30 s.
DURATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)

#: Upper bounds of ``buttress_batch_size``: items per batch sent by ``@batch``.
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

#: Upper bounds (seconds) of ``buttress_batch_wait_seconds``: from half a millisecond (a
#: ``max_wait`` of a few ms is usual) to seconds (batches queued under max_concurrency).
BATCH_WAIT_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)

#: Default upper bounds of the ``track_output`` histogram: scores in [0, 1] finely, then
#: coarser steps for class indices, counts and other larger numbers.
OUTPUT_BUCKETS: tuple[float, ...] = (
    0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
    1000.0,
)

Labels = tuple[tuple[str, str], ...]

#: Name and help text of the families read from the per-function totals, for every sink
#: (Prometheus, OpenTelemetry) to spell alike.
CALLS_FAMILY = ("buttress_calls", "Finished calls of monitored functions, by outcome.")
DURATION_FAMILY = (
    "buttress_call_duration_seconds",
    "Duration of monitored calls (coroutines: from start to completion), in seconds.",
)
IN_FLIGHT_FAMILY = ("buttress_in_flight", "Calls of monitored functions running now.")
OUTPUT_FAMILY = ("buttress_output", "Values of track_output, the tracked outputs of a function.")
DROPPED_FAMILY = (
    "buttress_monitor_dropped",
    "Log records (and per-call samples) dropped because the exporter queue was full.",
)
CIRCUIT_FAMILY = ("buttress_circuit_state", "1 for the current state of each circuit breaker.")
ITEMS_FAMILY = ("buttress_stream_items", "Items delivered by monitored streams.")
FIRST_ITEM_FAMILY = (
    "buttress_stream_first_item_seconds",
    "Time from a monitored stream's start to its first item, in seconds.",
)

#: The last sampled call of a duration bucket: its span's ids, its duration and when it
#: ended (wall clock): Prometheus' exemplar of that bucket.
Exemplar = tuple[TraceIds, float, float]


@dataclass(frozen=True, slots=True)
class CallStats:
    """Totals of one monitored function since the process started.

    Attributes:
        calls: finished calls, whatever their outcome.
        ok: calls that returned.
        errors: calls that raised an exception.
        cancelled: calls that were cancelled (or interrupted by an exit).
        in_flight: calls running now.
        total_seconds: the sum of the finished calls' durations.
        items: items the function's streams delivered (0 for a function that is not a
            stream); each stream is one call.
    """

    calls: int
    ok: int
    errors: int
    cancelled: int
    in_flight: int
    total_seconds: float
    items: int = 0


class FunctionStats:
    """The running totals of every monitored function sharing one name and label set.

    Writers hold :attr:`lock` for a handful of integer updates; nothing else is ever done
    under it. Bucket counts are kept per bucket (not cumulative); the exposition adds them.
    """

    __slots__ = (
        "bounds",
        "buckets",
        "custom",
        "exemplars",
        "first_buckets",
        "first_total",
        "in_flight",
        "items",
        "labels",
        "lock",
        "name",
        "outcomes",
        "output_bounds",
        "output_buckets",
        "output_count",
        "output_sum",
        "total",
    )

    def __init__(
        self, name: str, labels: Labels, bounds: tuple[float, ...] | None = None
    ) -> None:
        self.name = name
        self.labels = labels
        self.lock = threading.Lock()
        self.in_flight = 0
        self.outcomes = [0, 0, 0]
        #: The duration histogram's upper bounds: the function's own (``custom``) or the
        #: process-wide default, which :func:`set_duration_buckets` may change.
        self.custom = bounds is not None
        self.bounds = bounds if bounds is not None else _duration_bounds
        # one slot per bound plus +Inf
        self.buckets = [0] * (len(self.bounds) + 1)
        # set by traced calls only (tracing on): see Exemplar
        self.exemplars: list[Exemplar | None] = [None] * len(self.buckets)
        self.total = 0.0
        self.output_bounds: tuple[float, ...] | None = None
        self.output_buckets: list[int] = []
        self.output_sum = 0.0
        self.output_count = 0
        self.items = 0
        # Time to first item of the streams, in ``bounds``; None: no stream yet.
        self.first_buckets: list[int] | None = None
        self.first_total = 0.0

    def track_streams(self) -> None:
        """Start the streams' time-to-first-item histogram (once)."""
        with self.lock:
            if self.first_buckets is None:
                self.first_buckets = [0] * (len(self.bounds) + 1)

    def track_output(self, bounds: tuple[float, ...]) -> None:
        """Start a ``track_output`` histogram with ``bounds`` (the first setting wins)."""
        with self.lock:
            if self.output_bounds is None:
                self.output_bounds = bounds
                self.output_buckets = [0] * (len(bounds) + 1)

    def stats(self) -> CallStats:
        with self.lock:
            ok, errors, cancelled = self.outcomes
            return CallStats(
                calls=ok + errors + cancelled,
                ok=ok,
                errors=errors,
                cancelled=cancelled,
                in_flight=self.in_flight,
                total_seconds=self.total,
                items=self.items,
            )

    def snapshot(self) -> FunctionSnapshot:
        with self.lock:
            return FunctionSnapshot(
                name=self.name,
                labels=self.labels,
                bounds=self.bounds,
                in_flight=self.in_flight,
                outcomes=tuple(self.outcomes),
                buckets=tuple(self.buckets),
                exemplars=tuple(self.exemplars),
                total=self.total,
                output_bounds=self.output_bounds,
                output_buckets=tuple(self.output_buckets),
                output_sum=self.output_sum,
                output_count=self.output_count,
                items=self.items,
                first_buckets=None if self.first_buckets is None else tuple(self.first_buckets),
                first_total=self.first_total,
            )

    def rebucket(self, bounds: tuple[float, ...]) -> None:
        """Use the default ``bounds`` from now on: the duration histograms start again."""
        with self.lock:
            if self.custom or bounds == self.bounds:
                return
            self.bounds = bounds
            self.buckets = [0] * (len(bounds) + 1)
            self.exemplars = [None] * len(self.buckets)
            self.total = 0.0
            if self.first_buckets is not None:
                self.first_buckets = [0] * len(self.buckets)
                self.first_total = 0.0

    def reset(self) -> None:
        """Zero every total except calls in flight (for tests)."""
        with self.lock:
            self.outcomes = [0, 0, 0]
            self.buckets = [0] * len(self.buckets)
            self.exemplars = [None] * len(self.buckets)
            self.total = 0.0
            self.items = 0
            if self.first_buckets is not None:
                self.first_buckets = [0] * len(self.first_buckets)
            self.first_total = 0.0
            self.output_buckets = [0] * len(self.output_buckets)
            self.output_sum = 0.0
            self.output_count = 0


@dataclass(frozen=True, slots=True)
class FunctionSnapshot:
    """A consistent copy of one :class:`FunctionStats`, taken at scrape time."""

    name: str
    labels: Labels
    bounds: tuple[float, ...]
    in_flight: int
    outcomes: tuple[int, ...]
    buckets: tuple[int, ...]
    exemplars: tuple[Exemplar | None, ...]
    total: float
    output_bounds: tuple[float, ...] | None
    output_buckets: tuple[int, ...]
    output_sum: float
    output_count: int
    items: int = 0
    first_buckets: tuple[int, ...] | None = None
    first_total: float = 0.0


_functions: dict[tuple[str, Labels], FunctionStats] = {}
_functions_lock = threading.Lock()


def function_stats(
    name: str,
    labels: Mapping[str, str] | None = None,
    bounds: tuple[float, ...] | None = None,
) -> FunctionStats:
    """The shared totals for ``name`` and ``labels``, created on first use.

    Two decorated functions with the same name and labels share one set of totals, as
    they would share one Prometheus series anyway. ``bounds`` are the duration
    histogram's own upper bounds (``None``: the process-wide default); the first
    function of a name sets them, and another asking for others is refused.

    Raises:
        ConfigurationError: ``bounds`` differ from those of the series already there.
    """
    key = (name, tuple(sorted((labels or {}).items())))
    stats = _functions.get(key)
    if stats is None:
        with _functions_lock:
            stats = _functions.get(key)
            if stats is None:
                stats = _functions[key] = FunctionStats(*key, bounds)
    if bounds is not None and stats.bounds != bounds:
        raise ConfigurationError(
            f"duration_buckets: {name!r} already reports its durations in buckets "
            f"{list(stats.bounds)}, and one series has one set of buckets; give this "
            f"function the same buckets or another name"
        )
    return stats


#: How many live monitors declare each static label: the per-function families carry
#: every label some live monitor declares (see the Prometheus collector).
_label_users: dict[str, int] = {}


def use_labels(owner: object, names: Iterable[str]) -> None:
    """Count ``names`` as declared static labels while ``owner`` (a monitor) lives."""
    names = tuple(names)
    if not names:
        return
    with _functions_lock:
        for name in names:
            _label_users[name] = _label_users.get(name, 0) + 1
    weakref.finalize(owner, _release_labels, names)


def _release_labels(names: tuple[str, ...]) -> None:
    with _functions_lock:
        for name in names:
            left = _label_users.get(name, 0) - 1
            if left > 0:
                _label_users[name] = left
            else:
                _label_users.pop(name, None)


def static_labels() -> list[str]:
    """The names of the static labels the live monitors declare, sorted."""
    with _functions_lock:
        return sorted(_label_users)


#: The default upper bounds of every duration histogram without buckets of its own.
_duration_bounds: tuple[float, ...] = DURATION_BUCKETS


def duration_buckets() -> tuple[float, ...]:
    """The process-wide default bounds of the duration histograms."""
    return _duration_bounds


def set_duration_buckets(bounds: tuple[float, ...]) -> None:
    """Make ``bounds`` the default; functions using the default start their histograms
    again in the new buckets (a histogram cannot be re-binned)."""
    global _duration_bounds
    with _functions_lock:
        _duration_bounds = bounds
        current = list(_functions.values())
    for stats in current:
        stats.rebucket(bounds)
    counters.rebucket(bounds)


def snapshot() -> list[FunctionSnapshot]:
    """Copies of every function's totals, sorted by name and labels."""
    with _functions_lock:
        current = sorted(_functions.items())
    return [stats.snapshot() for _, stats in current]


# --- counters fed by events ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CounterFamily:
    """One counter family: its Prometheus name (without ``_total``) and label names."""

    name: str
    documentation: str
    labels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HistogramFamily:
    """A histogram fed by events: its Prometheus name, label names and bucket bounds
    (``None``: the default duration buckets, which :func:`set_duration_buckets` sets)."""

    name: str
    documentation: str
    labels: tuple[str, ...]
    bounds: tuple[float, ...] | None


#: An event-fed histogram as read: its bounds, and per label values the count in each
#: bucket (not cumulative, ``+Inf`` last) followed by the sum of the values.
HistogramSeries = tuple[tuple[float, ...], dict[tuple[str, ...], tuple[float, ...]]]


@dataclass(frozen=True, slots=True)
class GaugeFamily:
    """A gauge fed by events: the last value an event reported, per label set."""

    name: str
    documentation: str
    labels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Observed:
    """One value observed in an event-fed histogram, queued for the exporter's sinks that
    record every value (an OpenTelemetry histogram cannot be read from totals)."""

    family: HistogramFamily
    labels: tuple[str, ...]
    value: float

    def export(self) -> None:
        """Nothing to log: only the metrics sinks look at it."""


RETRIES = CounterFamily("buttress_retries", "Retries scheduled by @retry.", ("function",))
RETRY_GIVE_UPS = CounterFamily(
    "buttress_retry_give_ups",
    "Calls on which @retry stopped retrying, by reason (attempts or deadline).",
    ("function", "reason"),
)
RETRY_BUDGET = CounterFamily(
    "buttress_retry_budget_exhausted",
    "Retries skipped because the retry budget was spent.",
    ("function",),
)
CACHE_REQUESTS = CounterFamily(
    "buttress_cache_requests",
    "@cache_result lookups by result (hit, miss, join, stale).",
    ("function", "result"),
)
CACHE_EVICTIONS = CounterFamily(
    "buttress_cache_evictions",
    "Cache entries evicted, by reason (size, bytes, expired).",
    ("function", "reason"),
)
CACHE_STORE_ERRORS = CounterFamily(
    "buttress_cache_store_errors",
    "Failed cache store operations.",
    ("function", "store", "operation"),
)
VALIDATION_FAILURES = CounterFamily(
    "buttress_validation_failures",
    "Values rejected by @validate_input or @validate_output, by direction.",
    ("function", "direction"),
)
MEMORY_GUARD = CounterFamily(
    "buttress_memory_guard",
    "@memory_guard decisions by action.",
    ("function", "action"),
)
CIRCUIT_TRANSITIONS = CounterFamily(
    "buttress_circuit_transitions",
    "Circuit breaker state changes.",
    ("breaker", "from", "to"),
)
CIRCUIT_REJECTIONS = CounterFamily(
    "buttress_circuit_rejections",
    "Calls refused by an open circuit breaker.",
    ("function", "breaker"),
)
BULKHEAD_REJECTIONS = CounterFamily(
    "buttress_bulkhead_rejections", "Calls refused by a full bulkhead.", ("function",)
)
RATE_LIMITED = CounterFamily(
    "buttress_rate_limited",
    "Calls a rate limiter delayed (waited) or refused (rejected).",
    ("function", "action"),
)
SHARED_STATE = CounterFamily(
    "buttress_shared_state_changes",
    "State shared through a FleetStore lost (Redis unreachable: local fallback) or "
    "restored, by kind and shared name.",
    ("kind", "name", "state"),
)
TIMEOUTS = CounterFamily("buttress_timeouts", "Calls cancelled by @timeout.", ("function",))
FALLBACKS = CounterFamily(
    "buttress_fallbacks", "Calls answered by @fallback after a failure.", ("function",)
)
HEDGES = CounterFamily("buttress_hedges", "Hedged attempts started by @hedge.", ("function",))
INPUT_ANOMALIES = CounterFamily(
    "buttress_input_anomalies",
    "Calls with anomalous inputs: NaN or infinite values (nan, inf), or rejected by "
    "validation (invalid).",
    ("function", "kind"),
)
OUTPUT_ANOMALIES = CounterFamily(
    "buttress_output_anomalies",
    "track_output values that were NaN or infinite, or that track_output failed to compute.",
    ("function", "kind"),
)

BATCHES = CounterFamily(
    "buttress_batches",
    "Batch calls made by @batch, by outcome (ok, error, cancelled).",
    ("function", "outcome"),
)
BATCH_ITEMS_FAILED = CounterFamily(
    "buttress_batch_item_errors",
    "Exceptions a @batch function returned in the place of single items.",
    ("function",),
)
BATCH_REJECTIONS = CounterFamily(
    "buttress_batch_rejections",
    "Items refused by @batch because max_queue items already waited.",
    ("function",),
)
BATCH_SIZE = HistogramFamily(
    "buttress_batch_size",
    "Items per batch sent by @batch.",
    ("function",),
    BATCH_SIZE_BUCKETS,
)
BATCH_WAIT = HistogramFamily(
    "buttress_batch_wait_seconds",
    "How long the first item of a @batch batch waited before the batch was sent, in seconds.",
    ("function",),
    BATCH_WAIT_BUCKETS,
)
HTTP_REQUESTS = CounterFamily(
    "buttress_http_requests",
    "HTTP requests answered, by method, route template and status class (the "
    "integrations' middlewares, with http_metrics=True).",
    ("method", "route", "status_class"),
)
HTTP_DURATION = HistogramFamily(
    "buttress_http_request_duration_seconds",
    "Duration of the HTTP requests counted in buttress_http_requests_total, from their "
    "arrival at the middleware to the end of the response, in seconds.",
    ("method", "route", "status_class"),
    None,  # the default duration buckets, as @monitor's
)
BATCHES_IN_FLIGHT = GaugeFamily(
    "buttress_batches_in_flight",
    "Batch calls of @batch running now.",
    ("function",),
)

#: Every counter family, in exposition order.
FAMILIES: tuple[CounterFamily, ...] = (
    RETRIES,
    RETRY_GIVE_UPS,
    RETRY_BUDGET,
    CACHE_REQUESTS,
    CACHE_EVICTIONS,
    CACHE_STORE_ERRORS,
    VALIDATION_FAILURES,
    MEMORY_GUARD,
    CIRCUIT_TRANSITIONS,
    CIRCUIT_REJECTIONS,
    BULKHEAD_REJECTIONS,
    RATE_LIMITED,
    SHARED_STATE,
    TIMEOUTS,
    FALLBACKS,
    HEDGES,
    INPUT_ANOMALIES,
    OUTPUT_ANOMALIES,
    BATCHES,
    BATCH_ITEMS_FAILED,
    BATCH_REJECTIONS,
    HTTP_REQUESTS,
)

#: Every histogram and gauge family fed by events, in exposition order.
HISTOGRAMS: tuple[HistogramFamily, ...] = (BATCH_SIZE, BATCH_WAIT, HTTP_DURATION)
GAUGES: tuple[GaugeFamily, ...] = (BATCHES_IN_FLIGHT,)

CIRCUIT_STATES = ("closed", "open", "half_open")

#: What an event handler yields: a counter to add to, a histogram to observe a value in,
#: or a gauge to set; with the label values and the amount, value or level.
Increment = tuple[CounterFamily | HistogramFamily | GaugeFamily, tuple[str, ...], float]


def _retry_scheduled(event: RetryScheduled) -> Iterator[Increment]:
    yield RETRIES, (event.function,), 1


def _retry_gave_up(event: RetryGaveUp) -> Iterator[Increment]:
    yield RETRY_GIVE_UPS, (event.function, event.reason), 1


def _retry_budget(event: RetryBudgetExhausted) -> Iterator[Increment]:
    yield RETRY_BUDGET, (event.function,), 1


def _cache_access(event: CacheAccess) -> Iterator[Increment]:
    yield CACHE_REQUESTS, (event.function, event.result), 1


def _cache_eviction(event: CacheEviction) -> Iterator[Increment]:
    yield CACHE_EVICTIONS, (event.function, event.reason), event.count


def _cache_store_failed(event: CacheStoreFailed) -> Iterator[Increment]:
    yield CACHE_STORE_ERRORS, (event.function, event.store, event.operation), 1


def _validation_failed(event: ValidationFailed) -> Iterator[Increment]:
    yield VALIDATION_FAILURES, (event.function, event.direction), 1
    if event.direction == "input":
        yield INPUT_ANOMALIES, (event.function, "invalid"), 1


def _memory_guard(event: MemoryGuardDecision) -> Iterator[Increment]:
    yield MEMORY_GUARD, (event.function, event.action), 1


def _circuit_changed(event: CircuitStateChanged) -> Iterator[Increment]:
    yield CIRCUIT_TRANSITIONS, (event.breaker, event.old, event.new), 1


def _circuit_rejected(event: CircuitRejected) -> Iterator[Increment]:
    yield CIRCUIT_REJECTIONS, (event.function, event.breaker), 1


def _bulkhead_rejected(event: BulkheadRejected) -> Iterator[Increment]:
    yield BULKHEAD_REJECTIONS, (event.function,), 1


def _rate_limited(event: RateLimited) -> Iterator[Increment]:
    yield RATE_LIMITED, (event.function, "rejected" if event.rejected else "waited"), 1


def _shared_lost(event: SharedStateLost) -> Iterator[Increment]:
    yield SHARED_STATE, (event.kind, event.name, "lost"), 1


def _shared_restored(event: SharedStateRestored) -> Iterator[Increment]:
    yield SHARED_STATE, (event.kind, event.name, "restored"), 1


def _timed_out(event: TimedOut) -> Iterator[Increment]:
    yield TIMEOUTS, (event.function,), 1


def _fallback_used(event: FallbackUsed) -> Iterator[Increment]:
    yield FALLBACKS, (event.function,), 1


def _hedge_started(event: HedgeStarted) -> Iterator[Increment]:
    yield HEDGES, (event.function,), 1


def _batch_dispatched(event: BatchDispatched) -> Iterator[Increment]:
    yield BATCH_SIZE, (event.function,), event.size
    yield BATCH_WAIT, (event.function,), event.waited
    yield BATCHES_IN_FLIGHT, (event.function,), event.in_flight


def _batch_completed(event: BatchCompleted) -> Iterator[Increment]:
    yield BATCHES, (event.function, event.outcome), 1
    if event.failed_items:
        yield BATCH_ITEMS_FAILED, (event.function,), event.failed_items
    yield BATCHES_IN_FLIGHT, (event.function,), event.in_flight


def _batch_rejected(event: BatchRejected) -> Iterator[Increment]:
    yield BATCH_REJECTIONS, (event.function,), 1


_HANDLERS: dict[type[Event], Callable[[Any], Iterator[Increment]]] = {
    RetryScheduled: _retry_scheduled,
    RetryGaveUp: _retry_gave_up,
    RetryBudgetExhausted: _retry_budget,
    CacheAccess: _cache_access,
    CacheEviction: _cache_eviction,
    CacheStoreFailed: _cache_store_failed,
    ValidationFailed: _validation_failed,
    MemoryGuardDecision: _memory_guard,
    CircuitStateChanged: _circuit_changed,
    CircuitRejected: _circuit_rejected,
    BulkheadRejected: _bulkhead_rejected,
    RateLimited: _rate_limited,
    SharedStateLost: _shared_lost,
    SharedStateRestored: _shared_restored,
    TimedOut: _timed_out,
    FallbackUsed: _fallback_used,
    HedgeStarted: _hedge_started,
    BatchDispatched: _batch_dispatched,
    BatchCompleted: _batch_completed,
    BatchRejected: _batch_rejected,
}

#: The event classes the metrics subscribe to.
EVENT_KINDS: tuple[type[Event], ...] = tuple(_HANDLERS)


class EventCounters:
    """Counters fed by events (and by ``@monitor``'s anomaly checks), under one lock.

    :meth:`acquire` and :meth:`release` count the metrics sinks that need the events; the
    subscription to :data:`buttress.events` exists only while that count is positive.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[CounterFamily, dict[tuple[str, ...], float]] = {}
        # Per label set: a count per bucket (not cumulative; the last one is +Inf), then
        # the sum of the values observed.
        self._histograms: dict[HistogramFamily, dict[tuple[str, ...], list[float]]] = {}
        #: the bounds in force of the families that follow the default duration buckets
        self._default_bounds: tuple[float, ...] | None = None
        self._gauges: dict[GaugeFamily, dict[tuple[str, ...], float]] = {}
        self._circuits: dict[str, str] = {}
        self._users = 0
        self._subscription: Subscription[Event] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def acquire(self) -> None:
        """One more sink needs event-driven counters: subscribe if nobody did yet."""
        with self._lock:
            self._users += 1
            if self._subscription is None:
                self._subscription = events.subscribe(self.handle, EVENT_KINDS)

    def release(self) -> None:
        """A sink is gone; the last one out unsubscribes, freeing the event hook."""
        with self._lock:
            self._users = max(0, self._users - 1)
            subscription = self._subscription if self._users == 0 else None
            if subscription is not None:
                self._subscription = None
        if subscription is not None:
            subscription.cancel()

    @property
    def listening(self) -> bool:
        return self._subscription is not None

    # -- counting ----------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        """The event subscriber: count what ``event`` reports."""
        handler = _HANDLERS.get(type(event))
        if handler is None:  # a subclass of a known event
            handler = next(
                (h for kind, h in _HANDLERS.items() if isinstance(event, kind)), None
            )
            if handler is None:
                return
        observed: list[Observed] = []
        wanted = exporter.wants_observations  # a sink records every value (OpenTelemetry)
        with self._lock:
            for family, labels, amount in handler(event):
                if isinstance(family, CounterFamily):
                    values = self._values.setdefault(family, {})
                    values[labels] = values.get(labels, 0) + amount
                elif isinstance(family, HistogramFamily):
                    self._observe(family, labels, amount)
                    if wanted:
                        observed.append(Observed(family, labels, amount))
                else:
                    self._gauges.setdefault(family, {})[labels] = amount
            if isinstance(event, CircuitStateChanged):
                self._circuits[event.breaker] = event.new
        for item in observed:  # queued outside the lock
            exporter.put(item)

    def add(self, family: CounterFamily, labels: tuple[str, ...], amount: float = 1) -> None:
        """Count directly (used for the anomalies ``@monitor`` sees itself)."""
        with self._lock:
            values = self._values.setdefault(family, {})
            values[labels] = values.get(labels, 0) + amount

    def add_observed(
        self,
        counter: CounterFamily,
        histogram: HistogramFamily,
        labels: tuple[str, ...],
        value: float,
    ) -> None:
        """Count one under ``labels`` and observe ``value`` in ``histogram``, at once (so a
        scrape never sees the count without the observation)."""
        with self._lock:
            values = self._values.setdefault(counter, {})
            values[labels] = values.get(labels, 0) + 1
            self._observe(histogram, labels, value)
        if exporter.wants_observations:
            exporter.put(Observed(histogram, labels, value))

    def _observe(self, family: HistogramFamily, labels: tuple[str, ...], value: float) -> None:
        # The lock is held.
        bounds = self._bounds(family)
        series = self._histograms.setdefault(family, {})
        counts = series.get(labels)
        if counts is None:
            counts = series[labels] = [0.0] * (len(bounds) + 2)
        counts[bisect.bisect_left(bounds, value)] += 1
        counts[-1] += value

    def _bounds(self, family: HistogramFamily) -> tuple[float, ...]:
        # The lock is held.
        if family.bounds is not None:
            return family.bounds
        if self._default_bounds is None:
            self._default_bounds = _duration_bounds
        return self._default_bounds

    def bounds(self, family: HistogramFamily) -> tuple[float, ...]:
        """The bounds ``family``'s values are counted in now."""
        with self._lock:
            return self._bounds(family)

    def rebucket(self, bounds: tuple[float, ...]) -> None:
        """New default duration buckets: the families that follow them start again."""
        with self._lock:
            if bounds == self._default_bounds:
                return
            self._default_bounds = bounds
            for family in list(self._histograms):
                if family.bounds is None:
                    del self._histograms[family]

    def values(self) -> dict[CounterFamily, dict[tuple[str, ...], float]]:
        """A copy of every counter, by family then label values."""
        with self._lock:
            return {family: dict(values) for family, values in self._values.items()}

    def histograms(self) -> dict[HistogramFamily, HistogramSeries]:
        """A copy of every event-fed histogram, with the bounds its counts are in."""
        with self._lock:
            return {
                family: (
                    self._bounds(family),
                    {labels: tuple(counts) for labels, counts in series.items()},
                )
                for family, series in self._histograms.items()
            }

    def gauges(self) -> dict[GaugeFamily, dict[tuple[str, ...], float]]:
        """A copy of every event-fed gauge, by family then label values."""
        with self._lock:
            return {family: dict(values) for family, values in self._gauges.items()}

    def circuits(self) -> dict[str, str]:
        """The current state of every breaker alive, and the last reported of any other.

        Breakers are read directly, so one that never changed state shows as closed
        rather than not at all.
        """
        with self._lock:
            states = dict(self._circuits)
        for breaker in _registry.breakers.live():
            states[breaker.name] = breaker.state
        return states

    def reset(self) -> None:
        """Forget every count (for tests); the subscription is left as it is."""
        with self._lock:
            self._values.clear()
            self._histograms.clear()
            self._default_bounds = None  # the default buckets as they are now, at next use
            self._gauges.clear()
            self._circuits.clear()


#: The process-wide event-driven counters.
counters = EventCounters()

_hint_logger = logging.getLogger("buttress.metrics")
#: Cleared once the first monitored call has been checked for a forgotten sink.
hint_pending = True


def hint_once() -> None:
    """The first monitored call of the process: say so if its totals reach no sink.

    With prometheus-client installed and no metrics sink enabled (Prometheus, DogStatsD
    or OpenTelemetry), ``@monitor`` counts calls that nobody can see: most likely
    ``metrics.enable()`` (or an integration's ``/metrics`` helper) was forgotten. One
    record, at WARNING on ``buttress.metrics``, then never again.
    """
    global hint_pending
    hint_pending = False
    if counters.listening or importlib.util.find_spec("prometheus_client") is None:
        return
    _hint_logger.warning(
        "@monitor is counting calls, but no metrics sink is enabled, so no metric is "
        "exposed: call buttress.metrics.enable() at start-up (or add /metrics with "
        "buttress.integrations' helpers, which enable it), or "
        "buttress.metrics.enable_dogstatsd() / buttress.otel.enable(). "
        "This hint is logged once."
    )


def reset() -> None:
    """Zero every aggregate (for tests)."""
    with _functions_lock:
        current = list(_functions.values())
    for stats in current:
        stats.reset()
    counters.reset()
