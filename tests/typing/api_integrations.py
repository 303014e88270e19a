"""The web integrations as a user's code sees them: type-checked by mypy, never executed."""

from __future__ import annotations

from aiohttp import web
from fastapi import FastAPI
from typing_extensions import assert_type

import buttress
from buttress.integrations.aiohttp import metrics_handler, metrics_middleware
from buttress.integrations.fastapi import RequestContextMiddleware

# The middleware goes straight into an application's list (aiohttp's Middleware protocol).
app = web.Application(middlewares=[metrics_middleware()])
app.router.add_get("/metrics", metrics_handler())
counted = web.Application(middlewares=[metrics_middleware(http_metrics=True)])

# Starlette checks the middleware's keyword arguments against its __init__.
api = FastAPI()
api.add_middleware(RequestContextMiddleware, http_metrics=True, header="X-Request-ID")


class EmbeddingView(web.View):
    # Decorated view methods keep their types, so aiohttp accepts the view.
    @buttress.monitor("view.get")
    @buttress.timeout(2.0)
    async def get(self) -> web.Response:
        return web.json_response({})


@buttress.bulkhead(4)
async def handler(request: web.Request) -> web.Response:
    return web.json_response({})


app.router.add_view("/embed", EmbeddingView)
app.router.add_get("/hello", handler)


async def call(request: web.Request) -> None:
    assert_type(await handler(request), web.Response)
    assert_type(await EmbeddingView(request).get(), web.Response)
