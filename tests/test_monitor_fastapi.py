"""FastAPI: the /metrics route, the bare ASGI app and the request-id middleware.

Through httpx's ASGI transport on asyncio and trio, and once through a real uvicorn
server on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio.to_thread
import httpx
import prometheus_client
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from _monitor_support import Records, capture, fresh_monitoring, parse, value
from _servers import UvicornThread
from buttress import flush_monitoring, metrics, monitor
from buttress.integrations.fastapi import (
    RequestContextMiddleware,
    add_metrics_route,
    metrics_app,
)


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    with fresh_monitoring():
        yield


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    metrics.enable(registry)
    return registry


@pytest.fixture
def records() -> Iterator[Records]:
    with capture() as handler:
        yield handler


def build_app() -> FastAPI:
    @monitor("rank")
    async def rank(query: str) -> list[str]:
        return sorted(query)

    @monitor("tokenize")
    def tokenize(text: str) -> list[str]:
        return text.split()

    app = FastAPI()

    @app.get("/rank")
    async def rank_endpoint(q: str) -> list[str]:
        return await rank(q)

    @app.get("/tokens")
    def tokens_endpoint(text: str) -> list[str]:  # runs in FastAPI's thread pool
        return tokenize(text)

    add_metrics_route(app)
    app.mount("/raw-metrics", metrics_app())
    app.add_middleware(RequestContextMiddleware)
    return app


@pytest.mark.anyio
async def test_route_app_and_middleware_over_asgi(
    registry: CollectorRegistry, records: Records
) -> None:
    app = build_app()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/rank", params={"q": "cab"}, headers={"X-Request-ID": "r1"})
        assert response.json() == ["a", "b", "c"]
        assert response.headers["x-request-id"] == "r1"
        response = await client.get("/tokens", params={"text": "a b"})
        generated = response.headers["x-request-id"]
        assert len(generated) == 32

        scraped = await client.get("/metrics")
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        mounted = await client.get("/raw-metrics", follow_redirects=True)
        assert mounted.status_code == 200
        head = await client.head("/raw-metrics/")
        assert head.status_code == 200
        assert head.content == b""
        assert int(head.headers["content-length"]) > 0
        refused = await client.post("/raw-metrics/")
        assert refused.status_code == 405
        schema = (await client.get("/openapi.json")).json()
    assert "/metrics" not in schema["paths"]

    for body in (scraped.text, mounted.text):
        samples = parse(body)
        assert value(samples, "buttress_calls_total", function="rank", outcome="ok") == 1
        assert value(samples, "buttress_calls_total", function="tokenize", outcome="ok") == 1
    assert await anyio.to_thread.run_sync(flush_monitoring)
    assert [r.context for r in records.of("rank")] == [{"request_id": "r1"}]  # type: ignore[attr-defined]
    assert [r.context for r in records.of("tokenize")] == [{"request_id": generated}]  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_openmetrics_over_asgi(registry: CollectorRegistry) -> None:
    app = FastAPI()
    add_metrics_route(app, "/m", registry=registry)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get(
            "/m", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def test_helpers_enable_the_default_registry() -> None:
    assert metrics.current_registry() is None
    metrics_app()
    assert metrics.current_registry() is prometheus_client.REGISTRY


def test_real_uvicorn_server(registry: CollectorRegistry, records: Records) -> None:
    app = build_app()
    with UvicornThread(app) as url, httpx.Client(base_url=url) as client:
        for query in ("b", "ab", "cab"):
            response = client.get("/rank", params={"q": query}, headers={"X-Request-ID": query})
            assert response.status_code == 200
        body = client.get("/metrics").text
        mounted = client.get("/raw-metrics/").text
    samples = parse(body)
    assert value(samples, "buttress_calls_total", function="rank", outcome="ok") == 3
    assert value(samples, "buttress_call_duration_seconds_count", function="rank") == 3
    assert value(parse(mounted), "buttress_calls_total", function="rank", outcome="ok") == 3
    assert flush_monitoring()
    assert [r.context for r in records.of("rank")] == [  # type: ignore[attr-defined]
        {"request_id": "b"},
        {"request_id": "ab"},
        {"request_id": "cab"},
    ]


def test_bare_metrics_app_on_uvicorn_with_lifespan(registry: CollectorRegistry) -> None:
    @monitor("job")
    def job() -> None:
        pass

    job()
    with UvicornThread(metrics_app(registry)) as url, httpx.Client(base_url=url) as client:
        response = client.get("/anything")
    assert response.status_code == 200
    assert value(parse(response.text), "buttress_calls_total", function="job", outcome="ok") == 1
