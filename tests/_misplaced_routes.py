"""Routes decorated the wrong way round, at module level as apps are written.

``hello`` has ``@monitor`` above its route decorator (the mistake); ``fine`` has it below.
``tests/test_guardrails.py`` serves these apps and expects one warning, for ``hello``.
"""

from __future__ import annotations

from aiohttp import web
from fastapi import FastAPI

from buttress import monitor, retry
from buttress.integrations.aiohttp import metrics_middleware
from buttress.integrations.fastapi import RequestContextMiddleware

app = FastAPI()
app.add_middleware(RequestContextMiddleware)


@monitor("misplaced.hello")  # above the route decorator: never runs
@retry(max_retries=1)
@app.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "world"}


@app.get("/fine")
@monitor("misplaced.fine")
async def fine() -> dict[str, str]:
    return {"fine": "yes"}


routes = web.RouteTableDef()


@monitor("misplaced.aiohttp_hello")  # above the route decorator: never runs
@routes.get("/hello")
async def aiohttp_hello(request: web.Request) -> web.Response:
    return web.json_response({"hello": "world"})


@routes.get("/fine")
@monitor("misplaced.aiohttp_fine")
async def aiohttp_fine(request: web.Request) -> web.Response:
    return web.json_response({"fine": "yes"})


def aiohttp_app() -> web.Application:
    made = web.Application(middlewares=[metrics_middleware()])
    made.add_routes(routes)
    return made
