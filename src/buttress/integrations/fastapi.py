"""FastAPI (and any ASGI framework) helpers: ``/metrics`` and request ids.

::

    from fastapi import FastAPI
    from buttress.integrations.fastapi import RequestContextMiddleware, add_metrics_route

    app = FastAPI()
    add_metrics_route(app)                        # GET /metrics, hidden from the schema
    app.add_middleware(RequestContextMiddleware)  # request_id in every @monitor record
    # or mount a bare ASGI app: app.mount("/metrics", metrics_app())

The exposition is rendered in a worker thread (anyio), so a scrape never stalls the
event loop, on asyncio and trio alike. With :func:`buttress.otel.enable` in effect,
``RequestContextMiddleware`` continues each request's trace from its ``traceparent``
header in a server span (see :mod:`buttress.otel`). Creating the route or app calls
:func:`buttress.metrics.enable` with the default registry (unless you pass one, or
enabled another before), so counting starts with the app.

``app.add_middleware(RequestContextMiddleware, http_metrics=True)`` also counts every
request and its duration in ``buttress_http_requests_total`` and
``buttress_http_request_duration_seconds``, by method, route template and status class
(opt-in; see the metrics page's "HTTP requests").

Buttress decorators go *below* ``@app.get(...)``: the route decorator registers the
function it is given. ``RequestContextMiddleware`` checks the app's routes when it
starts (or at its first request) and gives a :class:`~buttress.StackingWarning` for each
route whose function has buttress decorators above its route decorator, which never
run; :func:`check_routes` does the same check on demand (in a test, say).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

try:
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import Response
except ImportError as exc:  # pragma: no cover - the extra is installed in the tests
    raise ImportError(
        "buttress.integrations.fastapi needs FastAPI: pip install 'buttress[fastapi]'"
    ) from exc

from buttress import metrics, otel
from buttress._monitoring import _http
from buttress._monitoring._http import http_metrics_option
from buttress._monitoring._logs import request_scope
from buttress._wrapping import warn_decorated_above

if TYPE_CHECKING:
    from fastapi import APIRouter, FastAPI
    from prometheus_client.registry import CollectorRegistry

    from buttress._sinks._otel._http import ServerSpan, ServerSpans

__all__ = ["RequestContextMiddleware", "add_metrics_route", "check_routes", "metrics_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_MAX_REQUEST_ID = 128


def _prepare(registry: CollectorRegistry | None) -> None:
    if registry is None and metrics.current_registry() is None:
        metrics.enable()


def add_metrics_route(
    app: FastAPI | APIRouter,
    path: str = "/metrics",
    *,
    registry: CollectorRegistry | None = None,
) -> None:
    """Add ``GET path`` answering with the Prometheus exposition to a FastAPI app or router.

    Args:
        app: a ``FastAPI`` application or an ``APIRouter``.
        path: where to serve the metrics.
        registry: the registry to render; by default the one buttress' metrics are
            enabled in (the default registry is enabled now if none is).

    The route is left out of the OpenAPI schema. The scraper's ``Accept`` header chooses
    between the text format and OpenMetrics.
    """
    _prepare(registry)

    async def buttress_metrics(request: Request) -> Response:
        body, content_type = await metrics.render(request.headers.get("accept"), registry)
        return Response(content=body, headers={"Content-Type": content_type})

    app.add_api_route(
        path,
        buttress_metrics,
        methods=["GET"],
        include_in_schema=False,
        response_class=Response,
    )


def check_routes(app: object) -> int:
    """Warn for every route whose function has buttress decorators above its route decorator.

    ``@monitor`` written above ``@app.get(...)`` wraps a function FastAPI never calls:
    the route decorator registered the function below it. Each such route gets a
    :class:`~buttress.StackingWarning` at its function's definition, naming the route and
    the decorators that never run. Looks through included routers and mounted Starlette
    apps. Functions defined inside other functions (an app factory's) cannot be found by
    name and are not checked. :class:`RequestContextMiddleware` calls this as the app
    starts. Returns how many routes were warned about.

    Args:
        app: a ``FastAPI`` or Starlette application, or an ``APIRouter``.
    """
    return sum(
        warn_decorated_above(label, endpoint, "FastAPI", "@app.get(...)")
        for label, endpoint in _endpoints(getattr(app, "routes", ()), 0)
    )


def _endpoints(routes: Any, depth: int) -> Iterator[tuple[str, object]]:
    for route in routes:
        endpoint = getattr(route, "endpoint", None)
        path = getattr(route, "path", "")
        if endpoint is not None:
            methods = ",".join(sorted(getattr(route, "methods", None) or ()))
            yield f"{methods} {path}".strip(), endpoint
        inner = getattr(route, "routes", None)
        if inner and depth < 8:  # a mounted app or router: its routes too
            yield from _endpoints(inner, depth + 1)


def metrics_app(registry: CollectorRegistry | None = None) -> ASGIApp:
    """A bare ASGI application answering every ``GET`` with the Prometheus exposition.

    Mount it (``app.mount("/metrics", metrics_app())``; Starlette then redirects
    ``/metrics`` to ``/metrics/``, which Prometheus follows) or serve it on its own port
    with any ASGI server.

    Args:
        registry: as for :func:`add_metrics_route`.
    """
    _prepare(registry)

    async def buttress_metrics_app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # served on its own: nothing to set up
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            raise RuntimeError(f"buttress' metrics app serves HTTP only, not {scope['type']!r}")
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 405,
                    "headers": [(b"allow", b"GET, HEAD"), (b"content-length", b"0")],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        accept = next(
            (value.decode("latin-1") for key, value in scope["headers"] if key == b"accept"),
            None,
        )
        body, content_type = await metrics.render(accept, registry)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", content_type.encode("latin-1")),
                    (b"content-length", str(len(body)).encode("ascii")),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    return buttress_metrics_app


class RequestContextMiddleware:
    """ASGI middleware: each HTTP request runs inside :func:`buttress.request_scope`.

    ``request_id`` is taken from the request's header (a new one is made when absent)
    and echoed in the response, so every ``@monitor`` record made while handling the
    request carries it in its ``context``.

    While :func:`buttress.otel.enable` is in effect, each request also runs in a
    ``SERVER`` span continuing the trace named by its W3C ``traceparent`` (through the
    configured propagator), named ``"{method} {route}"``; or, when OpenTelemetry's own
    ASGI or FastAPI instrumentation runs in front and made a span already, in that one:
    never in two.

    When the app starts (its lifespan, or the first request when the server runs none),
    the middleware checks the app's routes with :func:`check_routes`: a route whose
    function has buttress decorators above the route decorator gets a
    :class:`~buttress.StackingWarning`.

    Args:
        app: the ASGI application to wrap (``app.add_middleware`` passes it).
        header: the request-id header, case-insensitive.
        http_metrics: count every HTTP request in ``buttress_http_requests_total`` and
            ``buttress_http_request_duration_seconds``, by ``method``, ``route`` (the
            matched route's template, ``unmatched`` when none matched) and
            ``status_class``; scrapes of ``/metrics`` are requests like the others. The
            duration runs from the request's arrival at this middleware to the end of
            its response (the last body message: a streaming response is counted
            whole). An exception escaping the app counts as ``5xx``, even after a
            streamed response began, except a ``ClientDisconnect``: a stream the client
            left counts under the status it began with. A request cancelled before its
            response ended is not counted. Creating the middleware with it enables the
            default registry when none is enabled yet, as :func:`add_metrics_route` does.

    Raises:
        TypeError: ``http_metrics`` is not a bool.
    """

    def __init__(
        self, app: ASGIApp, *, header: str = "X-Request-ID", http_metrics: bool = False
    ) -> None:
        self.app = app
        self.header = header.lower().encode("latin-1")
        self.checked = False
        self.http_metrics = http_metrics_option(http_metrics)
        if self.http_metrics:
            _prepare(None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.checked:  # once, as the app starts: routes are all registered by then
            self.checked = True
            check_routes(scope.get("app"))
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Read before anything else, so the duration covers this middleware's own work.
        started = _http.start() if self.http_metrics else None
        header = self.header
        given = next((value for key, value in scope["headers"] if key == header), b"")
        request_id = given.decode("latin-1")[:_MAX_REQUEST_ID] or uuid.uuid4().hex

        status: int | None = None
        counted = started is None  # True once the request is counted (or is not to be)

        def count(answer: int) -> None:
            nonlocal counted
            counted = True
            assert started is not None
            _http.record_request(scope.get("method", "GET"), _route(scope), answer, started)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                if not any(key.lower() == header for key, _ in headers):
                    headers.append((header, request_id.encode("latin-1")))
                    message["headers"] = headers
            await send(message)
            if not counted and status is not None and _last_message(kind, message):
                count(status)

        with request_scope(request_id=request_id):
            try:
                spans = otel.server_spans()  # None unless buttress.otel is enabled
                if spans is None:
                    await self.app(scope, receive, send_with_id)
                else:
                    server = _start_span(spans, scope, request_id)
                    try:
                        await self.app(scope, receive, send_with_id)
                    except BaseException as exc:
                        server.finish(status, _route(scope), exc)
                        raise
                    server.finish(status, _route(scope))
            except Exception as exc:
                if counted:
                    raise
                if isinstance(exc, ClientDisconnect) and status is not None:
                    count(status)  # the client left a stream begun: not the server's error
                else:
                    count(500)  # what the server answers (or it breaks the stream begun)
                raise
        if not counted:  # the client left mid-stream, or the app never answered (500)
            count(status if status is not None else 500)


def _last_message(kind: str, message: Message) -> bool:
    """Whether ``message`` ends the response (the ASGI body, or a path to send whole)."""
    if kind == "http.response.body":
        return not message.get("more_body", False)
    return kind == "http.response.pathsend"


def _start_span(spans: ServerSpans, scope: Scope, request_id: str) -> ServerSpan:
    """The request's server span (see :mod:`buttress.otel`), current from now on."""
    headers: dict[str, str] = {}
    for key, value in scope["headers"]:
        name = key.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[name] = f"{headers[name]},{text}" if name in headers else text
    client = scope.get("client")
    return spans.start(
        scope.get("method", "GET"),
        scope.get("path", "/"),
        headers,
        scheme=scope.get("scheme"),
        host=headers.get("host"),
        client=client[0] if client else None,
        request_id=request_id,
    )


def _route(scope: Scope) -> str | None:
    """The matched route's template (``/items/{item_id}``), once the router has run."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) else None
