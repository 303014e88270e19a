"""Trace context through the web integrations: real aiohttp and uvicorn servers on 127.0.0.1.

An incoming W3C ``traceparent`` is continued in a SERVER span (or OpenTelemetry's own
instrumentation's span is adopted: never two), @monitor's span nests under it, and an
instrumented client called from a monitored function carries the trace on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import aiohttp
import anyio
import anyio.lowlevel
import httpx
import pytest
from aiohttp import web
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from opentelemetry.instrumentation.aiohttp_client import create_trace_config
from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from _otel_support import Telemetry, attributes, parent_of, telemetry
from _servers import UvicornThread, aiohttp_serving
from buttress import monitor, otel
from buttress.integrations.aiohttp import metrics_middleware
from buttress.integrations.fastapi import RequestContextMiddleware

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"


@pytest.fixture
def spans() -> Iterator[Telemetry]:
    with telemetry(metrics=False) as recorded:
        yield recorded


def servers(spans: Telemetry) -> list[ReadableSpan]:
    return [span for span in spans.spans() if span.kind is SpanKind.SERVER]


# --- aiohttp ---------------------------------------------------------------------------------


def aiohttp_app() -> web.Application:
    @monitor("handler")
    async def item(request: web.Request) -> web.Response:
        if request.match_info["id"] == "boom":
            raise RuntimeError("handler bug")
        if request.match_info["id"] == "busy":
            return web.json_response({"error": "busy"}, status=503)
        return web.json_response({"id": request.match_info["id"]})

    # web.Application read at call time: OpenTelemetry's instrumentor replaces it
    app = web.Application(middlewares=[metrics_middleware()])
    app.router.add_get("/items/{id}", item)
    return app


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp_serving(app) as url, aiohttp.ClientSession(base_url=url) as session:
        yield session


@pytest.mark.asyncio
async def test_aiohttp_continues_the_callers_trace(spans: Telemetry) -> None:
    headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=abc", "User-Agent": "probe/1"}
    async with (
        serving(aiohttp_app()) as session,
        session.get("/items/42", headers=headers) as response,
    ):
        assert response.status == 200
        request_id = response.headers["X-Request-ID"]
    (server,) = servers(spans)
    assert server.name == "GET /items/{id}"
    assert server.context.trace_id == TRACE_ID
    assert server.parent is not None
    assert server.parent.span_id == PARENT_ID
    assert server.parent.is_remote
    assert server.context.trace_state.get("vendor") == "abc"
    found = attributes(server)
    assert found["http.request.method"] == "GET"
    assert found["url.path"] == "/items/42"
    assert found["url.scheme"] == "http"
    assert found["http.route"] == "/items/{id}"
    assert found["http.response.status_code"] == 200
    assert found["server.address"] == "127.0.0.1"
    assert isinstance(found["server.port"], int)
    assert found["user_agent.original"] == "probe/1"
    assert found["buttress.request_id"] == request_id
    assert server.status.status_code is StatusCode.UNSET
    handler = spans.one("handler")
    assert parent_of(handler) == server.context.span_id
    assert handler.context.trace_id == TRACE_ID


@pytest.mark.asyncio
async def test_aiohttp_without_traceparent_starts_a_trace(spans: Telemetry) -> None:
    async with serving(aiohttp_app()) as session:
        async with session.get("/items/1") as response:
            assert response.status == 200
        async with session.get("/nowhere") as response:
            assert response.status == 404
    first, missing = servers(spans)
    assert first.parent is None
    assert missing.name == "GET"  # no route matched
    assert attributes(missing)["http.response.status_code"] == 404
    assert missing.status.status_code is StatusCode.UNSET  # a 4xx is the client's error


@pytest.mark.asyncio
async def test_aiohttp_server_errors(spans: Telemetry) -> None:
    async with serving(aiohttp_app()) as session:
        async with session.get("/items/busy") as response:
            assert response.status == 503
        async with session.get("/items/boom") as response:
            assert response.status == 500
    busy, boom = servers(spans)
    assert busy.status.status_code is StatusCode.ERROR
    assert attributes(busy)["error.type"] == "503"
    assert boom.status.status_code is StatusCode.ERROR
    assert attributes(boom)["error.type"] == "RuntimeError"
    assert [e.name for e in boom.events] == ["exception"]


@pytest.mark.asyncio
async def test_aiohttp_adopts_the_span_of_opentelemetrys_own_instrumentation(
    spans: Telemetry,
) -> None:
    instrumentor = AioHttpServerInstrumentor()
    instrumentor.instrument(tracer_provider=spans.provider)  # its middleware goes first
    try:
        app = aiohttp_app()
    finally:
        instrumentor.uninstrument()
    async with (
        serving(app) as session,
        session.get("/items/7", headers={"traceparent": TRACEPARENT}) as response,
    ):
        assert response.status == 200
        request_id = response.headers["X-Request-ID"]
    (server,) = servers(spans)  # one server span, not two
    assert server.instrumentation_scope is not None
    assert server.instrumentation_scope.name != "buttress"
    assert server.context.trace_id == TRACE_ID
    assert attributes(server)["buttress.request_id"] == request_id
    assert parent_of(spans.one("handler")) == server.context.span_id


@pytest.mark.asyncio
async def test_aiohttp_scrapes_and_disabled_tracing_make_no_spans(spans: Telemetry) -> None:
    async with serving(aiohttp_app()) as session:
        async with session.get("/metrics") as response:
            assert response.status == 200
        assert servers(spans) == []
        otel.disable()
        async with session.get("/items/3", headers={"traceparent": TRACEPARENT}) as response:
            assert response.status == 200
    assert spans.spans() == []


@pytest.mark.asyncio
async def test_an_instrumented_client_called_in_a_monitored_call_carries_the_trace_on(
    spans: Telemetry,
) -> None:
    """Gateway -> @monitor'd function -> instrumented aiohttp client -> model server: one
    trace, each span the child of the one before."""
    async with aiohttp_serving(aiohttp_app()) as model_url:

        @monitor("predict")
        async def predict() -> int:
            trace_config = create_trace_config(tracer_provider=spans.provider)
            async with (
                aiohttp.ClientSession(trace_configs=[trace_config]) as client,
                client.get(f"{model_url}/items/9") as response,
            ):
                return response.status

        assert await predict() == 200
    (client,) = [s for s in spans.spans() if s.kind is SpanKind.CLIENT]
    (model_server,) = servers(spans)
    call = spans.one("predict")
    assert parent_of(client) == call.context.span_id
    assert parent_of(model_server) == client.context.span_id
    assert parent_of(spans.one("handler")) == model_server.context.span_id
    assert len({span.context.trace_id for span in spans.spans()}) == 1


# --- ASGI: FastAPI through uvicorn --------------------------------------------------------


def fastapi_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(RequestContextMiddleware)

    @app.get("/items/{item_id}")
    @monitor("endpoint")
    async def read(item_id: int) -> dict[str, int]:
        if item_id == 500:
            raise RuntimeError("endpoint bug")
        return {"item_id": item_id}

    @app.get("/busy")
    async def busy() -> JSONResponse:
        return JSONResponse({"error": "busy"}, status_code=503)

    return app


def test_fastapi_continues_the_callers_trace(spans: Telemetry) -> None:
    with UvicornThread(fastapi_app()) as url, httpx.Client(base_url=url) as client:
        response = client.get("/items/5", headers={"traceparent": TRACEPARENT})
        assert response.status_code == 200
        assert client.get("/busy").status_code == 503
    server, busy = servers(spans)
    assert server.name == "GET /items/{item_id}"
    assert server.context.trace_id == TRACE_ID
    assert server.parent is not None
    assert server.parent.span_id == PARENT_ID
    found = attributes(server)
    assert found["http.route"] == "/items/{item_id}"
    assert found["url.path"] == "/items/5"
    assert found["http.response.status_code"] == 200
    assert found["buttress.request_id"] == response.headers["X-Request-ID"]
    assert parent_of(spans.one("endpoint")) == server.context.span_id
    assert busy.status.status_code is StatusCode.ERROR
    assert busy.parent is None


def test_fastapi_records_an_unhandled_error(spans: Telemetry) -> None:
    with UvicornThread(fastapi_app()) as url, httpx.Client(base_url=url) as client:
        assert client.get("/items/500").status_code == 500
    (server,) = servers(spans)
    assert server.status.status_code is StatusCode.ERROR
    assert attributes(server)["error.type"] == "RuntimeError"
    endpoint = spans.one("endpoint")
    assert endpoint.status.status_code is StatusCode.ERROR
    assert parent_of(endpoint) == server.context.span_id


def test_fastapi_behind_opentelemetrys_asgi_middleware_makes_one_server_span(
    spans: Telemetry,
) -> None:
    app = OpenTelemetryMiddleware(fastapi_app(), tracer_provider=spans.provider)
    with UvicornThread(app) as url, httpx.Client(base_url=url) as client:
        response = client.get("/items/8", headers={"traceparent": TRACEPARENT})
        assert response.status_code == 200
    (server,) = servers(spans)
    assert server.instrumentation_scope is not None
    assert server.instrumentation_scope.name != "buttress"
    assert server.context.trace_id == TRACE_ID
    assert attributes(server)["buttress.request_id"] == response.headers["X-Request-ID"]
    assert parent_of(spans.one("endpoint")) == server.context.span_id


@pytest.mark.anyio
async def test_the_asgi_middleware_on_asyncio_and_trio(spans: Telemetry) -> None:
    """The middleware itself is anyio-clean: a Starlette stack served in-process."""
    transport = httpx.ASGITransport(app=fastapi_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        response = await client.get("/items/11", headers={"traceparent": TRACEPARENT})
        assert response.status_code == 200
        await anyio.lowlevel.checkpoint()
    (server,) = servers(spans)
    assert server.context.trace_id == TRACE_ID
    assert attributes(server)["server.address"] == "gateway"
    assert parent_of(spans.one("endpoint")) == server.context.span_id


def test_fastapi_disabled_makes_no_spans() -> None:
    with telemetry(metrics=False) as recorded:
        otel.disable()
        with UvicornThread(fastapi_app()) as url, httpx.Client(base_url=url) as client:
            assert client.get("/items/1", headers={"traceparent": TRACEPARENT}).status_code == 200
        assert recorded.spans() == []
