"""aiohttp helpers: serve ``/metrics`` and give every request's records a request id.

::

    from aiohttp import web
    from buttress.integrations.aiohttp import metrics_handler, metrics_middleware

    app = web.Application(middlewares=[metrics_middleware()])   # serves /metrics too
    # or, without the middleware:
    app.router.add_get("/metrics", metrics_handler())

The exposition is rendered in a worker thread, so a scrape never stalls the event loop.
With :func:`buttress.otel.enable` in effect, the middleware continues each request's trace
from its ``traceparent`` header in a server span (see :mod:`buttress.otel`).
Creating either helper calls :func:`buttress.metrics.enable` with the default registry
(unless you pass one, or enabled another before), so counting starts with the app.

``metrics_middleware(http_metrics=True)`` also counts every request and its duration in
``buttress_http_requests_total`` and ``buttress_http_request_duration_seconds``, by
method, route template and status class (opt-in; see the metrics page's "HTTP
requests").

With a ``web.RouteTableDef``, buttress decorators go *below* ``@routes.get(...)``, which
registers the function it is given. The middleware checks the app's routes at its first
request and gives a :class:`~buttress.StackingWarning` for each route whose handler has
buttress decorators above its route decorator, which never run; :func:`check_routes`
does the same check on demand (in a test, or in ``app.on_startup``).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Middleware

from buttress import metrics, otel
from buttress._monitoring import _http
from buttress._monitoring._http import http_metrics_option
from buttress._monitoring._logs import request_scope
from buttress._wrapping import warn_decorated_above

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from buttress._sinks._otel._http import ServerSpans

__all__ = ["check_routes", "metrics_handler", "metrics_middleware"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Request ids longer than this (from a client header) are cut: they go into every record.
_MAX_REQUEST_ID = 128


def metrics_handler(
    registry: CollectorRegistry | None = None,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler answering with the Prometheus exposition.

    Args:
        registry: the registry to render; by default the one buttress' metrics are
            enabled in (the default registry is enabled now if none is).

    The scraper's ``Accept`` header chooses between the text format and OpenMetrics.
    """
    if registry is None and metrics.current_registry() is None:
        metrics.enable()

    async def buttress_metrics(request: web.Request) -> web.Response:
        body, content_type = await metrics.render(request.headers.get("Accept"), registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    return buttress_metrics


def check_routes(app: web.Application) -> int:
    """Warn for every route whose handler has buttress decorators above its route decorator.

    ``@monitor`` written above ``@routes.get(...)`` (a ``web.RouteTableDef``) wraps a
    function aiohttp never calls: the route decorator registered the function below it.
    Each such route gets a :class:`~buttress.StackingWarning` at its handler's
    definition, naming the route and the decorators that never run. Handlers defined
    inside other functions cannot be found by name and are not checked.
    :func:`metrics_middleware` calls this at the app's first request. Returns how many
    routes were warned about.
    """
    methods: dict[tuple[int, str], list[str]] = {}  # GET and its HEAD: one route, one warning
    handlers: dict[int, object] = {}
    for route in app.router.routes():
        resource = route.resource
        path = resource.canonical if resource is not None else ""
        methods.setdefault((id(route.handler), path), []).append(route.method)
        handlers[id(route.handler)] = route.handler
    return sum(
        warn_decorated_above(
            f"{','.join(sorted(verbs))} {path}".strip(),
            handlers[key],
            "aiohttp",
            "@routes.get(...)",
        )
        for (key, path), verbs in methods.items()
    )


def metrics_middleware(
    *,
    path: str | None = "/metrics",
    registry: CollectorRegistry | None = None,
    request_id_header: str | None = "X-Request-ID",
    http_metrics: bool = False,
) -> Middleware:
    """An aiohttp middleware that serves ``path`` and binds a request id.

    Args:
        path: ``GET``/``HEAD`` requests for this path get the metrics (as
            :func:`metrics_handler`); ``None`` serves nothing.
        registry: as for :func:`metrics_handler`.
        request_id_header: every other request runs inside
            :func:`buttress.request_scope` with ``request_id`` taken from this header (a
            new one is made when absent), so ``@monitor`` records made while handling it
            carry it; the id is echoed in the response's header. ``None`` disables this.
        http_metrics: count every request (scrapes of ``path`` too) in
            ``buttress_http_requests_total`` and ``buttress_http_request_duration_seconds``,
            by ``method``, ``route`` (the route's template, ``unmatched`` when none
            matched) and ``status_class``. The duration runs from the request's arrival
            at this middleware until the handler returns: a stream the handler prepared
            and wrote is counted whole, while the body of a plain ``Response`` is written
            by aiohttp after that. An exception other than an ``HTTPException`` counts as
            ``5xx`` (a ``ConnectionResetError`` from writing to a client that left too,
            unless the handler catches it); a cancelled request is not counted.

    Raises:
        TypeError: ``http_metrics`` is not a bool.

    At its first request it checks the app's routes with :func:`check_routes`.

    While :func:`buttress.otel.enable` is in effect, every request that is not a scrape
    runs in a ``SERVER`` span continuing the trace named by its W3C ``traceparent``
    (through the configured propagator), or in the span OpenTelemetry's own aiohttp
    instrumentation made, when it runs in front: never in two.
    """
    counted = http_metrics_option(http_metrics)
    serve = metrics_handler(registry) if path is not None else None
    checked: list[web.Application] = []

    def scrape(request: web.Request) -> bool:
        return serve is not None and request.path == path and request.method in ("GET", "HEAD")

    async def handle(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not checked:  # once, at the first request: the routes are all added by then
            checked.append(request.app)
            check_routes(request.app)
        if serve is not None and scrape(request):
            return await serve(request)
        spans = otel.server_spans()  # None unless buttress.otel is enabled
        if request_id_header is None:
            if spans is None:
                return await handler(request)
            return await _traced(spans, request, handler, None)
        given = request.headers.get(request_id_header)
        request_id = given[:_MAX_REQUEST_ID] if given else uuid.uuid4().hex
        with request_scope(request_id=request_id):
            if spans is None:
                response = await handler(request)
            else:
                response = await _traced(spans, request, handler, request_id)
        if not response.prepared and request_id_header not in response.headers:
            response.headers[request_id_header] = request_id
        return response

    if not counted:
        return web.middleware(handle)

    def count(request: web.Request, status: int, started: float) -> None:
        route = _route(request) or (path if scrape(request) else None)
        _http.record_request(request.method, route, status, started)

    @web.middleware
    async def buttress_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = _http.start()
        try:
            response = await handle(request, handler)
        except web.HTTPException as answer:  # aiohttp's raised responses (404, redirects...)
            count(request, answer.status, started)
            raise
        except Exception:  # what the server answers: 500
            count(request, 500, started)
            raise
        # Cancelled (the client went away, the server stops): no answer, nothing counted.
        count(request, response.status, started)
        return response

    return buttress_middleware


def _route(request: web.Request) -> str | None:
    """The matched route's template (``/items/{id}``), or ``None`` (nothing matched)."""
    resource = getattr(request.match_info.route, "resource", None)
    return resource.canonical if resource is not None else None


async def _traced(
    spans: ServerSpans, request: web.Request, handler: Handler, request_id: str | None
) -> web.StreamResponse:
    """Handle the request in its server span (see :mod:`buttress.otel`)."""
    server = spans.start(
        request.method,
        request.path,
        request.headers,
        scheme=request.scheme,
        host=request.host,
        client=request.remote,
        request_id=request_id,
    )
    try:
        response = await handler(request)
    except web.HTTPException as answer:  # aiohttp's raised responses (404, redirects...)
        server.finish(answer.status, _route(request))
        raise
    except BaseException as exc:
        server.finish(None, _route(request), exc)
        raise
    server.finish(response.status, _route(request))
    return response
