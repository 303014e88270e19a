"""/metrics served by a real aiohttp server on 127.0.0.1, parsed with prometheus-client."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import aiohttp
import prometheus_client
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from _monitor_support import Records, capture, fresh_monitoring, parse, value
from buttress import (
    CacheAccess,
    MemoryGuardDecision,
    events,
    flush_monitoring,
    metrics,
    monitor,
    retry,
)
from buttress.integrations.aiohttp import metrics_handler, metrics_middleware

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiohttp runs on asyncio only


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    with fresh_monitoring():
        yield


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    metrics.enable(registry)
    return registry


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Run ``app`` on a free port of 127.0.0.1; yield its base URL; stop it."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def inference_app(**middleware: object) -> web.Application:
    attempts = {"n": 0}

    @retry(max_retries=2, base_delay=0, jitter=None)
    async def call_model(text: str) -> list[float]:
        attempts["n"] += 1
        if attempts["n"] % 2:  # every other attempt fails once
            raise ConnectionError("model endpoint reset")
        return [float(len(text))]

    @monitor("predict")
    async def predict(text: str) -> list[float]:
        if events.active:
            events.emit(CacheAccess("predict", "miss"))
            events.emit(
                MemoryGuardDecision(
                    "predict", "admitted", used=1, limit=2, percent=50.0, source="test"
                )
            )
        return await call_model(text)

    async def handle(request: web.Request) -> web.Response:
        text = request.query.get("text", "")
        if text == "fail":
            raise web.HTTPBadRequest()
        return web.json_response(await predict(text))

    app = web.Application(
        middlewares=[metrics_middleware(**middleware)] if middleware else []  # type: ignore[arg-type]
    )
    app.router.add_get("/predict", handle)
    return app


async def test_metrics_handler_serves_parsable_metrics(registry: CollectorRegistry) -> None:
    app = inference_app()
    app.router.add_get("/metrics", metrics_handler())
    async with serving(app) as url, aiohttp.ClientSession() as client:
        for text in ("a", "bb", "ccc"):
            async with client.get(f"{url}/predict", params={"text": text}) as response:
                assert response.status == 200
        async with client.get(f"{url}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            body = await response.text()
    samples = parse(body)
    assert value(samples, "buttress_calls_total", function="predict", outcome="ok") == 3
    assert value(samples, "buttress_call_duration_seconds_count", function="predict") == 3
    assert value(samples, "buttress_in_flight", function="predict") == 0
    retries = sum(v for (name, _), v in samples.items() if name == "buttress_retries_total")
    assert retries == 3  # one failed attempt per request, retried
    assert value(samples, "buttress_cache_requests_total", function="predict", result="miss") == 3
    assert (
        value(samples, "buttress_memory_guard_total", function="predict", action="admitted") == 3
    )


async def test_middleware_serves_metrics_and_binds_request_ids(
    registry: CollectorRegistry,
) -> None:
    app = inference_app(path="/internal/metrics")
    with capture() as records:
        async with serving(app) as url, aiohttp.ClientSession() as client:
            async with client.get(
                f"{url}/predict", params={"text": "x"}, headers={"X-Request-ID": "req-42"}
            ) as response:
                assert response.headers["X-Request-ID"] == "req-42"
            async with client.get(f"{url}/predict", params={"text": "y"}) as response:
                generated = response.headers["X-Request-ID"]
            async with client.get(f"{url}/internal/metrics") as response:
                body = await response.text()
            async with client.post(f"{url}/internal/metrics") as response:
                assert response.status == 404  # only GET and HEAD are served; POST goes on
        assert await asyncio.to_thread(flush_monitoring)
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    contexts = [r.context for r in records.of("predict")]  # type: ignore[attr-defined]
    assert contexts == [{"request_id": "req-42"}, {"request_id": generated}]
    assert value(parse(body), "buttress_calls_total", function="predict", outcome="ok") == 2


async def test_middleware_without_request_ids_or_path(registry: CollectorRegistry) -> None:
    app = inference_app(path=None, request_id_header=None)
    with capture() as records:
        async with serving(app) as url, aiohttp.ClientSession() as client:
            async with client.get(f"{url}/predict", params={"text": "x"}) as response:
                assert "X-Request-ID" not in response.headers
            async with client.get(f"{url}/metrics") as response:
                assert response.status == 404
        assert await asyncio.to_thread(flush_monitoring)
    assert isinstance(records, Records)
    assert [r.context for r in records.of("predict")] == [None]  # type: ignore[attr-defined]


class SlowCollector(prometheus_client.registry.Collector):
    def collect(self) -> Iterator[prometheus_client.Metric]:
        time.sleep(1.0)  # a registry that takes long to render
        yield prometheus_client.core.GaugeMetricFamily("slow_thing", "slow", value=1)


async def test_a_slow_scrape_does_not_freeze_the_server(registry: CollectorRegistry) -> None:
    registry.register(SlowCollector())
    app = web.Application(middlewares=[metrics_middleware()])

    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="pong")

    app.router.add_get("/ping", ping)
    async with serving(app) as url, aiohttp.ClientSession() as client:

        async def scrape() -> str:
            async with client.get(f"{url}/metrics") as response:
                return await response.text()

        async def pings() -> list[float]:
            await asyncio.sleep(0.1)  # let the scrape start rendering
            latencies = []
            for _ in range(5):
                start = time.monotonic()
                async with client.get(f"{url}/ping") as response:
                    assert await response.text() == "pong"
                latencies.append(time.monotonic() - start)
            return latencies

        body, latencies = await asyncio.gather(scrape(), pings())
    assert value(parse(body), "slow_thing") == 1
    # rendered inline, the first ping would wait most of the 1 s render
    assert max(latencies) < 0.5


async def test_openmetrics_is_negotiated(registry: CollectorRegistry) -> None:
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry))
    async with serving(app) as url, aiohttp.ClientSession() as client, client.get(
        f"{url}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    ) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await response.text()).rstrip().endswith("# EOF")


async def test_the_handler_enables_the_default_registry() -> None:
    assert metrics.current_registry() is None
    metrics_handler()
    assert metrics.current_registry() is prometheus_client.REGISTRY
