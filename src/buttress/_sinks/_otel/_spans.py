"""The tracer features open spans through: OpenTelemetry behind :mod:`buttress._tracing`.

``@monitor`` (one span per call) and ``@hedge`` (one per raced attempt) call
:meth:`OtelTracer.start` and, when the work is done, :meth:`CallSpan.end`; a monitored
stream's span comes from :meth:`OtelTracer.open` and is current only while the stream's
own code runs (each step), so the caller's spans between items are not its children. A started span
is attached to the current context (``contextvars``: the calling thread's, or the running
task's on asyncio and trio), so the user's own spans and the spans of instrumented
clients (aiohttp, httpx, redis) made while the function runs are its children.

How a span ends (it starts with ``buttress.outcome="ok"``, corrected when it is not):

- returned: status left ``UNSET``, as OpenTelemetry asks of instrumentation (``OK`` is
  for the application to set); ``buttress.outcome`` is ``"ok"``;
- raised: status ``ERROR`` with ``"Type: message"``, ``error.type`` (the exception's
  class by the path it is imported from: ``buttress.CallTimeoutError``, never a private
  module), and the exception recorded as an ``exception`` event
  (``exception.type``, ``exception.message``, ``exception.stacktrace``);
- cancelled (or interrupted by an exit): status ``UNSET``, ``buttress.outcome`` is
  ``"cancelled"``: a cancellation is the caller's decision, not a failure.
"""

from __future__ import annotations

import logging

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from buttress._errors import is_fatal, public_type_name
from buttress._tracing import Attributes, TraceIds

__all__ = [
    "CallSpan",
    "OtelTracer",
    "StepSpan",
    "current_ids",
    "end_span",
    "error_attributes",
]

logger = logging.getLogger("buttress.otel")

KINDS = {
    "internal": SpanKind.INTERNAL,
    "server": SpanKind.SERVER,
    "client": SpanKind.CLIENT,
    "producer": SpanKind.PRODUCER,
    "consumer": SpanKind.CONSUMER,
}


def error_attributes(error: BaseException) -> dict[str, str]:
    """``error.type`` and ``exception.message`` of ``error``, for events and spans."""
    return {"error.type": public_type_name(error), "exception.message": str(error)}


def end_span(span: trace.Span, error: BaseException | None, *, started_ok: bool = False) -> None:
    """Set the outcome of ``span`` from ``error`` (see the module docstring) and end it.

    ``started_ok``: the span was started with ``buttress.outcome="ok"`` already, which a
    call that returned leaves as it is (setting an attribute on a live span takes the
    SDK's lock: a microsecond saved per call).
    """
    if span.is_recording():
        if error is None:
            if not started_ok:
                span.set_attribute("buttress.outcome", "ok")
        elif is_fatal(error):
            span.set_attribute("buttress.outcome", "cancelled")
        else:
            kind = public_type_name(error)
            span.set_attributes({"buttress.outcome": "error", "error.type": kind})
            # exception.type written out: SDKs before 1.30 give the bare class name.
            span.record_exception(error, {"exception.type": kind}, escaped=True)
            span.set_status(Status(StatusCode.ERROR, f"{kind}: {error}"))
    span.end()


class CallSpan:
    """One started span, current until :meth:`end` (see :class:`buttress._tracing.Span`)."""

    __slots__ = ("span", "token")

    def __init__(self, span: trace.Span, token: object) -> None:
        self.span = span
        self.token = token

    def end(self, error: BaseException | None) -> TraceIds | None:
        span = self.span
        # Detaching first: whatever happens below, the caller's context is restored.
        context_api.detach(self.token)  # type: ignore[arg-type]
        try:
            end_span(span, error, started_ok=True)
        except Exception:  # a broken span processor must never break the user's call
            logger.exception("buttress.otel: ending the span of a call failed")
        return _ids(span)


def _ids(span: trace.Span) -> TraceIds | None:
    ids = span.get_span_context()
    if not ids.is_valid:
        return None
    return TraceIds(ids.trace_id, ids.span_id, ids.trace_flags.sampled)


class StepSpan:
    """A stream's span: current for each step only (see :class:`buttress._tracing.StreamSpan`)."""

    __slots__ = ("context", "span")

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        self.context = trace.set_span_in_context(span)

    def attach(self) -> object:
        return context_api.attach(self.context)

    def detach(self, token: object) -> None:
        context_api.detach(token)  # type: ignore[arg-type]

    def end(self, error: BaseException | None, attributes: Attributes) -> TraceIds | None:
        span = self.span
        try:
            if attributes and span.is_recording():
                span.set_attributes(attributes)
            end_span(span, error, started_ok=True)
        except Exception:  # a broken span processor must never break the user's stream
            logger.exception("buttress.otel: ending the span of a stream failed")
        return _ids(span)


class UntracedSteps:
    """The span of a stream whose span could not be started: it does nothing."""

    __slots__ = ()

    def attach(self) -> object:
        return None

    def detach(self, token: object) -> None:
        return None

    def end(self, error: BaseException | None, attributes: Attributes) -> None:
        return None


class OtelTracer:
    """:class:`buttress._tracing.Tracer` made of an OpenTelemetry tracer."""

    __slots__ = ("_started", "tracer")

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer
        # A feature's attributes (made once per decorated function) plus
        # buttress.outcome="ok", keyed by their id and holding them (so the id stays
        # theirs): bounded by the code, not by the calls.
        self._started: dict[int, tuple[Attributes, Attributes]] = {}

    def _with_outcome(self, attributes: Attributes) -> Attributes:
        known = self._started.get(id(attributes))
        if known is None or known[0] is not attributes:
            known = (attributes, {**attributes, "buttress.outcome": "ok"})
            self._started[id(attributes)] = known
        return known[1]

    def start(self, name: str, kind: str, attributes: Attributes) -> CallSpan | Untraced:
        try:
            span = self.tracer.start_span(
                name, kind=KINDS[kind], attributes=self._with_outcome(attributes)
            )
        except Exception:  # a broken sampler or processor must never break the user's call
            logger.exception("buttress.otel: starting the span of a call failed")
            return UNTRACED
        return CallSpan(span, context_api.attach(trace.set_span_in_context(span)))

    def open(self, name: str, kind: str, attributes: Attributes) -> StepSpan | UntracedSteps:
        try:
            span = self.tracer.start_span(
                name, kind=KINDS[kind], attributes=self._with_outcome(attributes)
            )
        except Exception:  # as in start()
            logger.exception("buttress.otel: starting the span of a stream failed")
            return UNTRACED_STEPS
        return StepSpan(span)


class Untraced:
    """The span of a call whose span could not be started: ending it does nothing."""

    __slots__ = ()

    def end(self, error: BaseException | None) -> None:
        return None


UNTRACED = Untraced()
UNTRACED_STEPS = UntracedSteps()


def current_ids() -> TraceIds | None:
    """The ids of the span current in this thread or task, or ``None``."""
    ids = trace.get_current_span().get_span_context()
    if not ids.is_valid:
        return None
    return TraceIds(ids.trace_id, ids.span_id, ids.trace_flags.sampled)
