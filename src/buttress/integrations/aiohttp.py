"""aiohttp helpers: serve ``/metrics`` and give every request's records a request id.

::

    from aiohttp import web
    from buttress.integrations.aiohttp import metrics_handler, metrics_middleware

    app = web.Application(middlewares=[metrics_middleware()])   # serves /metrics too
    # or, without the middleware:
    app.router.add_get("/metrics", metrics_handler())

The exposition is rendered in a worker thread, so a scrape never stalls the event loop.
Creating either helper calls :func:`buttress.metrics.enable` with the default registry
(unless you pass one, or enabled another before), so counting starts with the app.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Middleware

from buttress import metrics
from buttress._monitoring._logs import request_scope

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

__all__ = ["metrics_handler", "metrics_middleware"]

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


def metrics_middleware(
    *,
    path: str | None = "/metrics",
    registry: CollectorRegistry | None = None,
    request_id_header: str | None = "X-Request-ID",
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
    """
    serve = metrics_handler(registry) if path is not None else None

    @web.middleware
    async def buttress_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if serve is not None and request.path == path and request.method in ("GET", "HEAD"):
            return await serve(request)
        if request_id_header is None:
            return await handler(request)
        given = request.headers.get(request_id_header)
        request_id = given[:_MAX_REQUEST_ID] if given else uuid.uuid4().hex
        with request_scope(request_id=request_id):
            response = await handler(request)
        if not response.prepared and request_id_header not in response.headers:
            response.headers[request_id_header] = request_id
        return response

    return buttress_middleware
