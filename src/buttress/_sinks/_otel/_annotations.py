"""What the other decorators did, written on the span that is current when they act.

:class:`Annotator` subscribes to :data:`buttress.events` while OpenTelemetry is enabled.
Events are emitted synchronously, in the thread or task of the decorated call, so
``trace.get_current_span()`` is the span of that call: ``@monitor``'s, or the user's own
(a decorator needs no ``@monitor`` above it to be seen in a trace). An event emitted where
no span is recording (a background refresh, no SDK installed) is dropped at once.

What each event becomes: attributes for a call's state that a trace query filters on
(``buttress.cache.result``, ``buttress.hedge.winner``...), span events for what happened
at one moment (each retry, each refusal, each timeout). Names follow OpenTelemetry's
semantic conventions where one exists (``error.type``, ``exception.message``) and are
in the ``buttress.*`` namespace otherwise; each span event carries ``buttress.function``,
the decorated function that acted (which may be below the span's own function). No
argument or result value is ever written: only types, counts, durations and names
chosen in code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry import trace

from buttress._events import (
    BulkheadRejected,
    BulkheadWaited,
    CacheAccess,
    CacheStoreFailed,
    CircuitRejected,
    CircuitStateChanged,
    Event,
    FallbackUsed,
    HedgeStarted,
    HedgeWon,
    MemoryGuardDecision,
    RateLimited,
    RetryBudgetExhausted,
    RetryGaveUp,
    RetryScheduled,
    Subscription,
    TimedOut,
    ValidationFailed,
    events,
)
from buttress._monitoring._summaries import type_name

from ._spans import error_attributes

__all__ = ["EVENT_KINDS", "Annotator"]

Span = trace.Span


def _retry_scheduled(span: Span, event: RetryScheduled) -> None:
    attributes: dict[str, Any] = {
        "buttress.function": event.function,
        "buttress.retry.attempt": event.attempt,
        "buttress.retry.delay": event.delay,
        "buttress.retry.elapsed": event.elapsed,
    }
    if event.error is not None:
        attributes.update(error_attributes(event.error))
    else:  # retry_on_result flagged the result: its type, never its value
        attributes["buttress.retry.result_type"] = type_name(event.result)
    span.add_event("buttress.retry", attributes)
    span.set_attribute("buttress.retry.retries", event.attempt)


def _retry_gave_up(span: Span, event: RetryGaveUp) -> None:
    attributes: dict[str, Any] = {
        "buttress.function": event.function,
        "buttress.retry.attempts": event.attempts,
        "buttress.retry.reason": event.reason,
        "buttress.retry.elapsed": event.elapsed,
    }
    if event.error is not None:
        attributes.update(error_attributes(event.error))
    span.add_event("buttress.retry.gave_up", attributes)


def _retry_budget(span: Span, event: RetryBudgetExhausted) -> None:
    span.add_event("buttress.retry_budget.exhausted", {"buttress.function": event.function})


def _cache_access(span: Span, event: CacheAccess) -> None:
    span.set_attribute("buttress.cache.result", event.result)
    if event.error is not None:  # stale_if_error: a stale value hid this failure
        span.add_event(
            "buttress.cache.stale_if_error",
            {"buttress.function": event.function, **error_attributes(event.error)},
        )


def _cache_store_failed(span: Span, event: CacheStoreFailed) -> None:
    span.add_event(
        "buttress.cache.store_failed",
        {
            "buttress.function": event.function,
            "buttress.cache.store": event.store,
            "buttress.cache.operation": event.operation,
            **error_attributes(event.error),
        },
    )


def _validation_failed(span: Span, event: ValidationFailed) -> None:
    arguments = sorted({str(getattr(problem, "argument", "?")) for problem in event.errors})
    span.add_event(
        "buttress.validation.failed",
        {
            "buttress.function": event.function,
            "buttress.validation.direction": event.direction,
            "buttress.validation.problems": len(event.errors),
            "buttress.validation.arguments": arguments,
        },
    )


def _memory_guard(span: Span, event: MemoryGuardDecision) -> None:
    span.set_attributes(
        {
            "buttress.memory_guard.action": event.action,
            "buttress.memory_guard.percent": event.percent,
        }
    )
    if event.action == "admitted":  # the every-call case: the attributes say enough
        return
    attributes: dict[str, Any] = {
        "buttress.function": event.function,
        "buttress.memory_guard.action": event.action,
        "buttress.memory_guard.used": event.used,
        "buttress.memory_guard.limit": event.limit,
        "buttress.memory_guard.percent": event.percent,
        "buttress.memory_guard.source": event.source,
        "buttress.memory_guard.requested": event.requested,
    }
    if event.reason is not None:
        attributes["buttress.memory_guard.reason"] = event.reason
    if event.waited:
        attributes["buttress.memory_guard.waited"] = event.waited
    if event.freed:
        attributes["buttress.memory_guard.freed"] = event.freed
    span.add_event("buttress.memory_guard", attributes)


def _circuit_rejected(span: Span, event: CircuitRejected) -> None:
    span.add_event(
        "buttress.circuit_breaker.rejected",
        {"buttress.function": event.function, "buttress.circuit_breaker.name": event.breaker},
    )


def _circuit_changed(span: Span, event: CircuitStateChanged) -> None:
    # Reported by the call whose outcome moved the breaker.
    span.add_event(
        "buttress.circuit_breaker.state_change",
        {
            "buttress.function": event.function,
            "buttress.circuit_breaker.name": event.breaker,
            "buttress.circuit_breaker.from": event.old,
            "buttress.circuit_breaker.to": event.new,
        },
    )


def _bulkhead_waited(span: Span, event: BulkheadWaited) -> None:
    span.set_attribute("buttress.bulkhead.wait", event.waited)
    span.add_event(
        "buttress.bulkhead.waited",
        {"buttress.function": event.function, "buttress.bulkhead.wait": event.waited},
    )


def _bulkhead_rejected(span: Span, event: BulkheadRejected) -> None:
    span.add_event(
        "buttress.bulkhead.rejected",
        {
            "buttress.function": event.function,
            "buttress.bulkhead.reason": event.reason,
            "buttress.bulkhead.wait": event.waited,
        },
    )


def _rate_limited(span: Span, event: RateLimited) -> None:
    if event.rejected:
        span.add_event("buttress.rate_limit.rejected", {"buttress.function": event.function})
        return
    span.set_attribute("buttress.rate_limit.wait", event.waited)
    span.add_event(
        "buttress.rate_limit.waited",
        {"buttress.function": event.function, "buttress.rate_limit.wait": event.waited},
    )


def _timed_out(span: Span, event: TimedOut) -> None:
    span.add_event(
        "buttress.timeout",
        {"buttress.function": event.function, "buttress.timeout.seconds": event.seconds},
    )


def _fallback_used(span: Span, event: FallbackUsed) -> None:
    span.set_attribute("buttress.fallback.used", True)
    span.add_event(
        "buttress.fallback", {"buttress.function": event.function, **error_attributes(event.error)}
    )


def _hedge_started(span: Span, event: HedgeStarted) -> None:
    span.add_event(
        "buttress.hedge.started",
        {"buttress.function": event.function, "buttress.hedge.attempt": event.attempt},
    )


def _hedge_won(span: Span, event: HedgeWon) -> None:
    span.set_attributes(
        {"buttress.hedge.winner": event.attempt, "buttress.hedge.attempts": event.attempts}
    )
    span.add_event(
        "buttress.hedge.won",
        {
            "buttress.function": event.function,
            "buttress.hedge.winner": event.attempt,
            "buttress.hedge.attempts": event.attempts,
        },
    )


_HANDLERS: dict[type[Event], Callable[[Span, Any], None]] = {
    RetryScheduled: _retry_scheduled,
    RetryGaveUp: _retry_gave_up,
    RetryBudgetExhausted: _retry_budget,
    CacheAccess: _cache_access,
    CacheStoreFailed: _cache_store_failed,
    ValidationFailed: _validation_failed,
    MemoryGuardDecision: _memory_guard,
    CircuitRejected: _circuit_rejected,
    CircuitStateChanged: _circuit_changed,
    BulkheadWaited: _bulkhead_waited,
    BulkheadRejected: _bulkhead_rejected,
    RateLimited: _rate_limited,
    TimedOut: _timed_out,
    FallbackUsed: _fallback_used,
    HedgeStarted: _hedge_started,
    HedgeWon: _hedge_won,
}

#: The events that annotate spans. Cache evictions do not: they concern the cache, not
#: the call that happened to make room.
EVENT_KINDS: tuple[type[Event], ...] = tuple(_HANDLERS)


class Annotator:
    """The events subscriber that writes them on the current span."""

    __slots__ = ("_subscription",)

    def __init__(self) -> None:
        self._subscription: Subscription[Event] | None = None

    def start(self) -> None:
        if self._subscription is None:
            self._subscription = events.subscribe(self.handle, EVENT_KINDS)

    def stop(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            subscription.cancel()

    @staticmethod
    def handle(event: Event) -> None:
        span = trace.get_current_span()
        if not span.is_recording():
            return
        handler = _HANDLERS.get(type(event))
        if handler is None:  # a subclass of a known event
            handler = next(
                (known for kind, known in _HANDLERS.items() if isinstance(event, kind)), None
            )
            if handler is None:
                return
        handler(span, event)
