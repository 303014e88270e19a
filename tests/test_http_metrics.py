"""HTTP-level metrics from the integrations' middlewares (``http_metrics=True``).

A real uvicorn server with a FastAPI app and a real aiohttp server, both on 127.0.0.1,
scraped over HTTP and read with prometheus-client's text parser: requests by route
template, method and status class, with their durations; off unless asked for.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import anyio
import anyio.to_thread
import httpx
import pytest
from aiohttp import web
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import ClientDisconnect

from _monitor_support import fresh_monitoring
from _servers import UvicornThread, aiohttp_serving
from buttress import flush_monitoring, metrics
from buttress._monitoring._http import method_label, status_class
from buttress.integrations.aiohttp import metrics_middleware
from buttress.integrations.fastapi import RequestContextMiddleware, add_metrics_route
from test_monitor_statsd import receive, total

REQUESTS = "buttress_http_requests"
DURATION = "buttress_http_request_duration_seconds"
#: Seconds a streamed response takes at least: its duration must cover all of it.
STREAM_PAUSE = 0.1
STREAM_CHUNKS = 3

Series = dict[tuple[str, str, str], float]


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    with fresh_monitoring():
        yield


@pytest.fixture
def registry() -> CollectorRegistry:
    return metrics.enable(CollectorRegistry())


def http_families(text: str) -> dict[str, Series]:
    """Per sample name of the two HTTP families: the value of each (method, route,
    status_class); histogram buckets are left out."""
    found: dict[str, Series] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (REQUESTS, DURATION):
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") or sample.name.endswith("_created"):
                continue
            labels = sample.labels
            assert set(labels) == {"method", "route", "status_class"}, labels
            key = (labels["method"], labels["route"], labels["status_class"])
            found.setdefault(sample.name, {})[key] = sample.value
    return found


def without_scrapes(series: Series) -> Series:
    return {key: value for key, value in series.items() if key[1] != "/metrics"}


def check_durations(text: str) -> None:
    """One duration per request counted, and the stream's covers the whole stream."""
    families = http_families(text)
    assert families[f"{DURATION}_count"] == families[f"{REQUESTS}_total"]
    seconds = families[f"{DURATION}_sum"]
    assert seconds[("GET", "/stream", "2xx")] >= STREAM_CHUNKS * STREAM_PAUSE * 0.9
    assert seconds[("GET", "/items/{item_id}", "2xx")] < 30
    for family in text_string_to_metric_families(text):
        if family.name != DURATION:
            continue
        infinite = {
            (s.labels["method"], s.labels["route"], s.labels["status_class"]): s.value
            for s in family.samples
            if s.name.endswith("_bucket") and s.labels["le"] == "+Inf"
        }
        assert infinite == families[f"{REQUESTS}_total"]


def settle(scrape: Callable[[], str], expected: Series) -> str:
    """Scrape until the requests made are all counted (a response reaches the client a
    moment before its middleware counts it), for 10 s at most; the last exposition."""
    deadline = time.monotonic() + 10
    while True:
        text = scrape()
        counted = without_scrapes(http_families(text).get(f"{REQUESTS}_total", {}))
        if counted == expected or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


# --- FastAPI through uvicorn ------------------------------------------------------------


def http_client(url: str) -> httpx.Client:
    # A connection per request: uvicorn closes one whose app raised (the 500s here).
    return httpx.Client(base_url=url, timeout=30, headers={"Connection": "close"})


def fastapi_app(*, http_metrics: bool) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    @app.post("/items")
    async def create(name: str) -> dict[str, str]:
        return {"name": name}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("the handler fails")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for index in range(STREAM_CHUNKS):
                await anyio.sleep(STREAM_PAUSE)
                yield f"chunk {index}\n".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    add_metrics_route(app)
    if http_metrics:
        app.add_middleware(RequestContextMiddleware, http_metrics=True)
    else:
        app.add_middleware(RequestContextMiddleware)
    return app


def test_fastapi_counts_requests_by_route_template_method_and_status_class(
    registry: CollectorRegistry,
) -> None:
    app = fastapi_app(http_metrics=True)
    with UvicornThread(app) as url, http_client(url) as http:
        assert http.get("/metrics").status_code == 200  # a scrape is a request too
        statuses = [http.get(f"/items/{n}").status_code for n in (1, 2, 3)]
        statuses.append(http.get("/items/not-a-number").status_code)  # 422
        statuses.append(http.post("/items", params={"name": "x"}).status_code)
        statuses.append(http.post("/items").status_code)  # 422: no name
        statuses.append(http.get("/no/such/path").status_code)
        statuses.append(http.get("/other/missing").status_code)
        statuses.append(http.request("BREW", "/items/1").status_code)  # 405, method unknown
        statuses.append(http.get("/boom").status_code)
        statuses.append(http.get("/boom").status_code)
        streamed = http.get("/stream")
        statuses.append(streamed.status_code)
        assert streamed.text == "".join(f"chunk {i}\n" for i in range(STREAM_CHUNKS))
        assert statuses == [200, 200, 200, 422, 200, 422, 404, 404, 405, 500, 500, 200]
        expected = {
            ("GET", "/items/{item_id}", "2xx"): 3.0,
            ("GET", "/items/{item_id}", "4xx"): 1.0,
            ("POST", "/items", "2xx"): 1.0,
            ("POST", "/items", "4xx"): 1.0,
            ("GET", "unmatched", "4xx"): 2.0,
            ("_OTHER", "/items/{item_id}", "4xx"): 1.0,
            ("GET", "/boom", "5xx"): 2.0,
            ("GET", "/stream", "2xx"): 1.0,
        }
        text = settle(lambda: http.get("/metrics").text, expected)
        families = http_families(text)
        assert without_scrapes(families[f"{REQUESTS}_total"]) == expected
        check_durations(text)
        # The scrapes before this one, under their route.
        assert families[f"{REQUESTS}_total"][("GET", "/metrics", "2xx")] >= 1


def test_fastapi_counts_nothing_without_the_opt_in(registry: CollectorRegistry) -> None:
    app = fastapi_app(http_metrics=False)
    with UvicornThread(app) as url, http_client(url) as http:
        assert http.get("/items/1").status_code == 200
        assert http.get("/no/such/path").status_code == 404
        text = http.get("/metrics").text
    assert f"# TYPE {REQUESTS} counter" in text or f"# TYPE {REQUESTS}_total" in text
    assert http_families(text) == {}
    assert "buttress_http_requests_total{" not in text


def bucket_bounds(text: str) -> set[str]:
    return {
        sample.labels["le"]
        for family in text_string_to_metric_families(text)
        if family.name == DURATION
        for sample in family.samples
        if sample.name.endswith("_bucket")
    }


def test_the_default_duration_buckets_apply_to_http_durations(
    registry: CollectorRegistry,
) -> None:
    app = fastapi_app(http_metrics=True)
    before = metrics.duration_buckets()
    metrics.set_duration_buckets([0.05, 0.5])
    try:
        with UvicornThread(app) as url, http_client(url) as http:
            assert http.get("/items/1").status_code == 200
            item = ("GET", "/items/{item_id}", "2xx")
            first = settle(lambda: http.get("/metrics").text, {item: 1})
            assert bucket_bounds(first) == {"0.05", "0.5", "+Inf"}
            # New buckets: the histograms start again in them, as @monitor's do.
            metrics.set_duration_buckets([0.25])
            assert bucket_bounds(metrics.generate_latest(registry).decode()) == set()
            assert http.get("/items/2").status_code == 200
            again = settle(lambda: http.get("/metrics").text, {item: 2})
            assert bucket_bounds(again) == {"0.25", "+Inf"}
            counts = http_families(again)[f"{DURATION}_count"]
            assert counts[item] == 1  # the requests since the change
    finally:
        metrics.set_duration_buckets(before)


async def broken_streams(scope: Any, receive: Any, send: Any) -> None:
    """A bare ASGI app whose streams fail after their start: the client left, or a bug."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"first part", "more_body": True})
    if scope["path"] == "/left":
        raise ClientDisconnect
    raise RuntimeError("the stream fails")


def test_fastapi_streams_that_fail_after_their_start(registry: CollectorRegistry) -> None:
    app = RequestContextMiddleware(broken_streams, http_metrics=True)
    with UvicornThread(app) as url, http_client(url) as http:
        for path in ("/left", "/broken", "/broken"):
            with pytest.raises(httpx.HTTPError):  # uvicorn cuts the response short
                http.get(path).read()
    counted = http_families(metrics.generate_latest(registry).decode())[f"{REQUESTS}_total"]
    # No route: a bare app. A bug is the server's error; a client that left is not.
    assert counted == {("GET", "unmatched", "2xx"): 1.0, ("GET", "unmatched", "5xx"): 2.0}


def test_the_middleware_enables_metrics_and_checks_its_option() -> None:
    assert metrics.current_registry() is None

    async def app(scope: object, receive: object, send: object) -> None: ...

    with pytest.raises(TypeError, match="http_metrics must be True or False"):
        RequestContextMiddleware(app, http_metrics="yes")  # type: ignore[arg-type]
    RequestContextMiddleware(app)
    assert metrics.current_registry() is None  # off: nothing to enable
    RequestContextMiddleware(app, http_metrics=True)
    assert metrics.current_registry() is not None


# --- aiohttp --------------------------------------------------------------------------


def aiohttp_app(*, http_metrics: bool) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/items/{item_id}")
    async def item(request: web.Request) -> web.Response:
        raw = request.match_info["item_id"]
        if not raw.isdigit():
            raise web.HTTPBadRequest(text="item_id must be a number")
        return web.json_response({"item": int(raw)})

    @routes.post("/items")
    async def create(request: web.Request) -> web.Response:
        return web.json_response({"made": True}, status=201)

    @routes.get("/boom")
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("the handler fails")

    @routes.get("/stream")
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for index in range(STREAM_CHUNKS):
            await anyio.sleep(STREAM_PAUSE)
            await response.write(f"chunk {index}\n".encode())
        await response.write_eof()
        return response

    app = web.Application(middlewares=[metrics_middleware(http_metrics=http_metrics)])
    app.add_routes(routes)
    return app


async def statuses_of(
    session: aiohttp.ClientSession, url: str, requests: list[tuple[str, str]]
) -> list[int]:
    found = []
    for method, path in requests:
        async with session.request(method, f"{url}{path}") as response:
            await response.read()
            found.append(response.status)
    return found


@pytest.mark.asyncio
async def test_aiohttp_counts_requests_by_route_template_method_and_status_class(
    registry: CollectorRegistry,
) -> None:
    app = aiohttp_app(http_metrics=True)
    async with aiohttp_serving(app) as url, aiohttp.ClientSession() as session:
        statuses = await statuses_of(
            session,
            url,
            [
                ("GET", "/items/1"),
                ("GET", "/items/2"),
                ("GET", "/items/x"),  # 400, raised by the handler
                ("POST", "/items"),
                ("GET", "/no/such/path"),
                ("PROPFIND", "/items/1"),  # 405 from the router: no route matched
                ("GET", "/boom"),
                ("GET", "/stream"),
                ("GET", "/metrics"),
            ],
        )
        assert statuses == [200, 200, 400, 201, 404, 405, 500, 200, 200]
        async with session.get(f"{url}/metrics") as response:
            text = await response.text()
    families = http_families(text)
    assert families[f"{REQUESTS}_total"] == {
        ("GET", "/items/{item_id}", "2xx"): 2.0,
        ("GET", "/items/{item_id}", "4xx"): 1.0,
        ("POST", "/items", "2xx"): 1.0,
        ("GET", "unmatched", "4xx"): 1.0,
        ("_OTHER", "unmatched", "4xx"): 1.0,
        ("GET", "/boom", "5xx"): 1.0,
        ("GET", "/stream", "2xx"): 1.0,
        ("GET", "/metrics", "2xx"): 1.0,  # the earlier scrape, served by the middleware
    }
    check_durations(text)


@pytest.mark.asyncio
async def test_aiohttp_counts_nothing_without_the_opt_in(registry: CollectorRegistry) -> None:
    app = aiohttp_app(http_metrics=False)
    async with aiohttp_serving(app) as url, aiohttp.ClientSession() as session:
        assert await statuses_of(session, url, [("GET", "/items/1"), ("GET", "/nope")]) == [
            200,
            404,
        ]
        async with session.get(f"{url}/metrics") as response:
            text = await response.text()
    assert http_families(text) == {}


@pytest.mark.asyncio
async def test_the_http_families_reach_dogstatsd(registry: CollectorRegistry) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    try:
        metrics.enable_dogstatsd(port=listener.getsockname()[1])
        app = aiohttp_app(http_metrics=True)
        async with aiohttp_serving(app) as url, aiohttp.ClientSession() as session:
            requests = [("GET", "/items/1"), ("GET", "/items/2"), ("GET", "/boom")]
            assert await statuses_of(session, url, requests) == [200, 200, 500]
        assert flush_monitoring()
        lines = await anyio.to_thread.run_sync(receive, listener)
    finally:
        metrics.disable_dogstatsd()
        listener.close()
    # Tags keep letters, digits and -:./ (buttress' tag()): the braces become "_".
    route = "route:/items/_item_id_"
    assert total(lines, "buttress.http_requests", "method:GET", route, "status_class:2xx") == 2
    assert total(lines, "buttress.http_requests", "status_class:5xx", "route:/boom") == 1
    count = "buttress.http_request_duration_seconds.count"
    assert total(lines, count, "method:GET", route, "status_class:2xx") == 2


def test_aiohttp_middleware_checks_its_option() -> None:
    with pytest.raises(TypeError, match="http_metrics must be True or False"):
        metrics_middleware(http_metrics=1)  # type: ignore[arg-type]


def test_label_values_are_bounded() -> None:
    assert [method_label(m) for m in ("GET", "PATCH", "get", "BREW", "")] == [
        "GET",
        "PATCH",
        "_OTHER",
        "_OTHER",
        "_OTHER",
    ]
    assert [status_class(s) for s in (100, 204, 308, 499, 503, 599, 600, 42)] == [
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "5xx",
        "other",
        "other",
    ]
