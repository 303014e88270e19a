"""Server spans for the web integrations: W3C trace context in, one span per request.

The aiohttp middleware and the ASGI ``RequestContextMiddleware`` call
:meth:`ServerSpans.start` for each request while OpenTelemetry is enabled:

- when a span is already current, it was made by OpenTelemetry's own instrumentation
  in front of ours (``opentelemetry-instrumentation-asgi``/``-fastapi``,
  ``-aiohttp-server``): it is reused as it is (only the request id is added to it), and
  no second server span is made;
- otherwise the incoming headers go through the configured propagator
  (``opentelemetry.propagate``: W3C ``traceparent``/``tracestate`` and baggage unless
  the application chose others) and a ``SERVER`` span starts as a child of the remote
  parent they name (a root when there is none), current while the request is handled.

The span follows OpenTelemetry's HTTP server conventions: named ``"{method} {route}"``
(``"{method}"`` while the route is unknown), with ``http.request.method``, ``url.path``,
``url.scheme``, ``http.route``, ``http.response.status_code``, ``server.address``,
``client.address`` and ``user_agent.original``; a 5xx answer or an exception sets status
``ERROR`` and ``error.type``. The query string is never recorded (it may hold data).
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import context as context_api
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ._spans import end_span

__all__ = ["ServerSpan", "ServerSpans"]

#: Methods the HTTP conventions know; any other is recorded as ``_OTHER``.
_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


def _address(host: str) -> tuple[str, int | None]:
    """``("example.com", 8000)`` from a ``Host`` header, IPv6 brackets removed."""
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and (":" not in name or name.endswith("]")):
        return name.strip("[]"), int(port)
    return host.strip("[]"), None


class ServerSpan:
    """One request's server span (or the adopted one); :meth:`finish` once handled."""

    __slots__ = ("method", "span", "token")

    def __init__(self, span: trace.Span, token: object | None, method: str) -> None:
        self.span = span
        #: the context token when this span was started here; ``None`` when adopted
        self.token = token
        self.method = method

    @property
    def owned(self) -> bool:
        """Whether buttress started this span (``False``: another instrumentation's)."""
        return self.token is not None

    def finish(
        self, status: int | None, route: str | None, error: BaseException | None = None
    ) -> None:
        """Record the answer (status code, matched route) or the error; end the span."""
        token = self.token
        if token is None:  # adopted: its maker records the answer and ends it
            return
        self.token = None
        context_api.detach(token)  # type: ignore[arg-type]
        span = self.span
        if span.is_recording():
            if route:
                span.update_name(f"{self.method} {route}" if self.method != "_OTHER" else "HTTP")
                span.set_attribute("http.route", route)
            if status is not None:
                span.set_attribute("http.response.status_code", status)
                if status >= 500 and error is None:
                    span.set_attribute("error.type", str(status))
                    span.set_status(Status(StatusCode.ERROR))
        end_span(span, error)


class ServerSpans:
    """Starts server spans with one OpenTelemetry tracer."""

    __slots__ = ("tracer",)

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    def start(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        *,
        scheme: str | None = None,
        host: str | None = None,
        client: str | None = None,
        request_id: str | None = None,
    ) -> ServerSpan:
        """Start (or adopt) the server span of a request and make it current.

        Args:
            method: the HTTP method.
            path: the request's path (without the query string).
            headers: the request's headers, a mapping with lower-case keys or a
                case-insensitive one (the propagator reads ``traceparent`` from it).
            scheme: ``"http"`` or ``"https"``.
            host: the ``Host`` header (``server.address`` and ``server.port``).
            client: the peer's address (``client.address``).
            request_id: the request id the middleware bound (``buttress.request_id``).
        """
        known = method.upper()
        if known not in _METHODS:
            known = "_OTHER"
        current = trace.get_current_span()
        if current.get_span_context().is_valid:
            if request_id is not None and current.is_recording():
                current.set_attribute("buttress.request_id", request_id)
            return ServerSpan(current, None, known)
        attributes: dict[str, str | int] = {"http.request.method": known, "url.path": path}
        if known == "_OTHER":
            attributes["http.request.method_original"] = method
        if scheme:
            attributes["url.scheme"] = scheme
        if host:
            address, port = _address(host)
            attributes["server.address"] = address
            if port is not None:
                attributes["server.port"] = port
        if client:
            attributes["client.address"] = client
        agent = headers.get("user-agent")
        if agent:
            attributes["user_agent.original"] = agent
        if request_id is not None:
            attributes["buttress.request_id"] = request_id
        parent = propagate.extract(headers)
        span = self.tracer.start_span(
            known if known != "_OTHER" else "HTTP",
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
        )
        token = context_api.attach(trace.set_span_in_context(span, parent))
        return ServerSpan(span, token, known)
