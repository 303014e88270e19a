"""OpenTelemetry for buttress: a span per monitored call, what every decorator did, metrics,
and trace ids in the logs. Off until :func:`enable`; needs only ``opentelemetry-api``.

Importing this module imports no OpenTelemetry package (nor does ``import buttress``);
:func:`enable` does. Until it is called, ``@monitor`` pays one attribute read per call
for tracing and the event hook stays free. Once enabled:

- **traces**: every ``@monitor`` call runs in a span (``SpanKind.INTERNAL`` unless
  ``@monitor(span_kind=...)`` says otherwise), named after the function, current while it
  runs, so the spans of your code and of instrumented clients (aiohttp, httpx, redis) nest
  under it. The other decorators annotate the span current when they act, ``@monitor``'s
  or your own: retries as span events, the cache result as an attribute, breaker,
  bulkhead and rate-limit refusals and waits, timeouts, fallbacks, hedges, memory-guard
  decisions. Each attempt of a raced ``@hedge`` call gets a child span. The aiohttp
  middleware and the ASGI ``RequestContextMiddleware`` continue the caller's trace from
  its ``traceparent`` header in a server span (or adopt the one OpenTelemetry's own
  instrumentation made). ``@monitor`` log records carry ``trace_id`` and ``span_id``, and
  ``buttress_call_duration_seconds`` carries the trace id as an exemplar in the
  OpenMetrics exposition.
- **metrics**: the families of :mod:`buttress.metrics` through an OpenTelemetry ``Meter``
  (same names, attributes and histogram buckets), for pipelines that speak OTLP.

For your own log records, :class:`LogCorrelationFilter` (stdlib ``logging``) and
:func:`add_correlation_ids` (a structlog processor) add the request id and the current
trace and span ids.

Example::

    from opentelemetry.sdk.trace import TracerProvider
    from buttress import otel

    provider = TracerProvider()          # with the exporters of your choice
    otel.enable(tracer_provider=provider)
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Mapping, MutableMapping
from importlib import metadata
from typing import TYPE_CHECKING, Any

from buttress import _tracing
from buttress._errors import ConfigurationError
from buttress._monitoring._logs import request_context
from buttress._tracing import TraceIds

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from ._sinks._otel._annotations import Annotator
    from ._sinks._otel._http import ServerSpans
    from ._sinks._otel._metrics import OtelMetrics

__all__ = [
    "LogCorrelationFilter",
    "add_correlation_ids",
    "disable",
    "enable",
    "is_enabled",
]

#: The instrumentation scope of every span and instrument buttress makes.
SCOPE = "buttress"

_lock = threading.Lock()


class _State:
    """What :func:`enable` switched on."""

    def __init__(self) -> None:
        self.annotator: Annotator | None = None
        self.metrics: OtelMetrics | None = None
        self.server: ServerSpans | None = None


_state = _State()


def _version() -> str:
    try:
        return metadata.version("buttress")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a bare checkout
        return ""


def enable(
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    *,
    traces: bool = True,
    metrics: bool = True,
) -> None:
    """Turn OpenTelemetry on: spans, span annotations, metrics (see the module docstring).

    Args:
        tracer_provider: where the spans go; the global one
            (``opentelemetry.trace.set_tracer_provider``) by default, looked up at each
            span, so it may be set after this call.
        meter_provider: where the metrics go; the global one by default.
        traces: make and annotate spans (``False``: metrics only).
        metrics: report buttress' metric families through a ``Meter`` (``False``: traces
            only).

    Enabling again replaces the previous setup (with the new providers). Without an SDK
    installed, the API's no-op providers make every span non-recording: calls then pay
    for a no-op span and nothing is exported.

    Raises:
        ImportError: ``opentelemetry-api`` is not installed (``pip install
            'buttress[otel]'``).
        ConfigurationError: a provider is not one, or both ``traces`` and ``metrics``
            are off.
    """
    try:
        from opentelemetry import metrics as metrics_api
        from opentelemetry import trace
    except ImportError as exc:  # pragma: no cover - the extra is installed in the tests
        raise ImportError(
            "buttress.otel needs opentelemetry-api: pip install 'buttress[otel]'"
        ) from exc
    if not traces and not metrics:
        raise ConfigurationError(
            "enable(): traces and metrics are both False; call disable() to turn "
            "OpenTelemetry off"
        )
    if tracer_provider is not None and not callable(getattr(tracer_provider, "get_tracer", None)):
        raise ConfigurationError(
            f"tracer_provider must be an opentelemetry TracerProvider, got {tracer_provider!r}"
        )
    if meter_provider is not None and not callable(getattr(meter_provider, "get_meter", None)):
        raise ConfigurationError(
            f"meter_provider must be an opentelemetry MeterProvider, got {meter_provider!r}"
        )
    from ._sinks._otel._annotations import Annotator
    from ._sinks._otel._http import ServerSpans
    from ._sinks._otel._metrics import OtelMetrics
    from ._sinks._otel._spans import OtelTracer

    version = _version()
    with _lock:
        _stop()
        if metrics:
            meter = metrics_api.get_meter(SCOPE, version, meter_provider=meter_provider)
            _state.metrics = OtelMetrics(meter)
            _state.metrics.start()
        if traces:
            tracer = trace.get_tracer(SCOPE, version, tracer_provider=tracer_provider)
            _state.server = ServerSpans(tracer)
            _state.annotator = Annotator()
            _state.annotator.start()
            _tracing.install(OtelTracer(tracer))


def disable() -> None:
    """Turn OpenTelemetry off: no more spans, annotations or metrics from buttress.

    Spans already started end normally. Instruments cannot be removed from a meter:
    they stop observing, so flush your meter provider (``force_flush()``) before
    disabling if its last collection matters. Disabling when not enabled does nothing.
    """
    with _lock:
        _stop()


def _stop() -> None:
    _tracing.install(None)
    annotator, _state.annotator = _state.annotator, None
    if annotator is not None:
        annotator.stop()
    _state.server = None
    sink, _state.metrics = _state.metrics, None
    if sink is not None:
        sink.stop()


def is_enabled() -> bool:
    """Whether :func:`enable` is in effect (traces, metrics or both)."""
    return _state.metrics is not None or _state.server is not None


def server_spans() -> ServerSpans | None:
    """For the integrations: the server-span maker while traces are on, else ``None``."""
    return _state.server


# --- log correlation ------------------------------------------------------------------


def _current_ids() -> TraceIds | None:
    # Nothing to read when nobody imported OpenTelemetry: no span can exist. Looking in
    # sys.modules keeps the filter from importing it.
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return TraceIds(context.trace_id, context.span_id, context.trace_flags.sampled)


def _request_id(context: object = None) -> Any:
    if not isinstance(context, Mapping):
        context = request_context.get()
    return context.get("request_id") if context else None


class LogCorrelationFilter(logging.Filter):
    """Put ``request_id``, ``trace_id`` and ``span_id`` on every log record it passes.

    ``request_id`` comes from :data:`buttress.request_context` (the aiohttp and ASGI
    middlewares set it per request); ``trace_id`` (32 hex digits) and ``span_id`` (16)
    from the OpenTelemetry span current where the record is made. Each is ``None`` when
    unknown, so a format string such as ``"%(message)s [trace=%(trace_id)s]"`` always
    works. A field the record already has is left alone: ``@monitor`` records carry the
    ids of their call's span, and their ``request_id`` is taken from their ``context``.

    Attach it to a handler (``handler.addFilter(LogCorrelationFilter())``): a filter on a
    logger sees only the records made on that very logger. It reads the context of the
    thread or task that runs the handler: with a ``QueueHandler``, attach it to the
    ``QueueHandler``. It works whether or not :func:`enable` was called, and never
    imports OpenTelemetry (without it, the trace fields are ``None``).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        if "request_id" not in fields:
            fields["request_id"] = _request_id(fields.get("context"))
        if "trace_id" not in fields or "span_id" not in fields:
            ids = _current_ids()
            fields.setdefault("trace_id", ids.trace_hex if ids is not None else None)
            fields.setdefault("span_id", ids.span_hex if ids is not None else None)
        return True


def add_correlation_ids(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor: ``request_id``, ``trace_id`` and ``span_id``, when known.

    Put it before the renderer::

        structlog.configure(processors=[
            buttress.otel.add_correlation_ids,
            structlog.processors.JSONRenderer(),
        ])

    Keys already in the event are kept; unknown ones are left out.
    """
    if "request_id" not in event_dict:
        request_id = _request_id()
        if request_id is not None:
            event_dict["request_id"] = request_id
    ids = _current_ids()
    if ids is not None:
        event_dict.setdefault("trace_id", ids.trace_hex)
        event_dict.setdefault("span_id", ids.span_hex)
    return event_dict
