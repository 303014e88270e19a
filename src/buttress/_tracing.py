"""The hook through which features open spans without knowing who makes them.

``@monitor`` opens one span per call (one per stream), and ``@hedge`` one per raced attempt, through
:data:`tracer`: ``None`` until :func:`buttress.otel.enable` installs its OpenTelemetry
implementation (which lives above the features, in the composition layer), and ``None``
again after :func:`buttress.otel.disable`. A feature reads it once per call::

    tracer = _tracing.tracer
    if tracer is not None:
        ...  # the traced path

so a process that never enables tracing pays one attribute read per call and imports no
tracing library. Everything else a span shows (retries, cache results, refusals, waits)
reaches it through :data:`buttress.events`: the OpenTelemetry sink annotates the span that
is current when a decorator reports.

The protocols say only what a feature may ask: start a span around some work, in the
current context (the span becomes current for the work, so what the work does nests
under it); end it with the work's outcome; learn the ids to correlate logs and metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, Protocol

__all__ = ["Attributes", "Span", "StreamSpan", "TraceIds", "Tracer", "install", "tracer"]

#: Span attributes as features give them: OpenTelemetry's primitive attribute values.
Attributes = Mapping[str, str | bool | int | float]

#: The span kinds a feature may ask for, by their OpenTelemetry names in lower case.
KINDS = frozenset({"internal", "server", "client", "producer", "consumer"})


class TraceIds(NamedTuple):
    """The ids of an ended span: for log records (``trace_id``, ``span_id``) and exemplars."""

    trace_id: int
    span_id: int
    #: the trace is sampled (recorded and exported): only then is it worth an exemplar
    sampled: bool

    @property
    def trace_hex(self) -> str:
        """The trace id as W3C Trace Context writes it: 32 lower-case hex digits."""
        return f"{self.trace_id:032x}"

    @property
    def span_hex(self) -> str:
        """The span id as 16 lower-case hex digits."""
        return f"{self.span_id:016x}"


class Span(Protocol):
    """A started span, current in the context it was started in until :meth:`end`."""

    def end(self, error: BaseException | None) -> TraceIds | None:
        """End the span with the work's outcome and restore the previous context.

        ``error`` is what the work raised (``None``: it returned); cancellation and exits
        (:func:`buttress._errors.is_fatal`) are not errors. Call it exactly once, in the
        same thread or task that started the span. Returns the span's ids, or ``None``
        when it has none (an invalid, non-recording span with no parent).
        """
        ...


class StreamSpan(Protocol):
    """A started span that is current only while its work runs: a stream's, between items.

    A stream's code runs in steps (one per item), in the context of whoever iterates it;
    between two steps that context belongs to the caller, whose own spans must not become
    children of the stream's. So the span is made current for each step
    (:meth:`attach`, then :meth:`detach` with its token, in the same thread or task) and
    ended once, when the stream ends.
    """

    def attach(self) -> object:
        """Make the span current in this thread or task; return the token to detach."""
        ...

    def detach(self, token: object) -> None:
        """Restore the context that :meth:`attach` replaced."""
        ...

    def end(self, error: BaseException | None, attributes: Attributes) -> TraceIds | None:
        """End the span with the stream's outcome (as :meth:`Span.end`) and ``attributes``."""
        ...


class Tracer(Protocol):
    """Starts spans for features."""

    def start(self, name: str, kind: str, attributes: Attributes) -> Span:
        """Start a span named ``name`` as a child of the current one, and make it current.

        ``kind`` is one of :data:`KINDS`. Must not raise for any input a feature can
        build at decoration time.
        """
        ...

    def open(self, name: str, kind: str, attributes: Attributes) -> StreamSpan:
        """Start a span as :meth:`start` does, a child of the current one, but not current."""
        ...


#: The installed tracer, or ``None`` (tracing off: the default).
tracer: Tracer | None = None


def install(new: Tracer | None) -> Tracer | None:
    """Install ``new`` (``None``: tracing off); return the tracer it replaces."""
    global tracer
    old, tracer = tracer, new
    return old
