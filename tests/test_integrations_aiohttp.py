"""aiohttp: buttress decorators on handlers and on methods of class-based views (web.View),
with the metrics handler and middleware, through a real server on 127.0.0.1."""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Iterator

import aiohttp
import anyio
import anyio.lowlevel
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry

from _monitor_support import capture, fresh_monitoring, parse, value
from _servers import aiohttp_serving
from buttress import (
    BulkheadFullError,
    CallTimeoutError,
    CircuitOpenError,
    InputValidationError,
    bulkhead,
    cache_result,
    circuit_breaker,
    flush_monitoring,
    metrics,
    monitor,
    retry,
    timeout,
    validate_input,
)
from buttress.integrations.aiohttp import metrics_handler, metrics_middleware

pytestmark = pytest.mark.asyncio


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    with fresh_monitoring():
        yield


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    metrics.enable(registry)
    return registry


@web.middleware
async def buttress_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What a gateway does with buttress's refusals: fast, honest HTTP statuses."""
    try:
        return await handler(request)
    except InputValidationError as exc:
        return web.json_response({"error": str(exc)}, status=422)
    except (BulkheadFullError, CircuitOpenError) as exc:
        return web.json_response({"error": type(exc).__name__}, status=503)
    except CallTimeoutError:
        return web.json_response({"error": "timed out"}, status=504)


class Model:
    """A stand-in model client shared by every request: its methods carry the decorators
    that need state across requests (a cache, a breaker), since a view lives one request."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.failures_left = 0

    @cache_result(ttl=60)
    @retry(max_retries=3, base_delay=0.001, exceptions=ConnectionError)
    @circuit_breaker(minimum_calls=100)
    async def embed(self, text: str) -> list[float]:
        self.calls[text] += 1
        if self.failures_left:
            self.failures_left -= 1
            raise ConnectionError("the model server dropped the connection")
        await anyio.lowlevel.checkpoint()
        return [float(len(text)), 1.0]


class Gate:
    """Lets a test hold a request inside its handler."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.release = anyio.Event()


MODEL = web.AppKey("model", Model)
GATE = web.AppKey("gate", Gate)


class EmbeddingView(web.View):
    """A class-based view whose methods are decorated like any other method."""

    @monitor("EmbeddingView.get")
    @timeout(2.0)
    async def get(self) -> web.Response:
        text = self.request.query.get("text", "")
        vector = await self.request.app[MODEL].embed(text)
        return web.json_response({"text": text, "embedding": vector})

    @monitor("EmbeddingView.post")
    @bulkhead(4)
    async def post(self) -> web.Response:
        body = await self.request.json()
        return web.json_response({"sum": await self.total(body["values"])})

    @validate_input(values=list[float])
    async def total(self, values: list[float]) -> float:
        return sum(values)


def build_app(*, middlewares: list[web.Middleware] | None = None) -> web.Application:
    gate = Gate()

    @monitor("hello")
    @timeout(1.0)
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": request.query.get("name", "world")})

    @bulkhead(1)
    async def exclusive(request: web.Request) -> web.Response:
        gate.entered.set()
        await gate.release.wait()
        return web.json_response({"done": True})

    async def let_go(request: web.Request) -> web.Response:
        gate.release.set()
        return web.json_response({})

    @timeout(0.05)
    async def slow(request: web.Request) -> web.Response:
        await anyio.sleep(5)
        raise AssertionError("never reached")

    app = web.Application(middlewares=[*(middlewares or []), buttress_errors])
    app[MODEL] = Model()
    app[GATE] = gate
    app.router.add_get("/hello", hello)
    app.router.add_get("/exclusive", exclusive)
    app.router.add_get("/let-go", let_go)
    app.router.add_get("/slow", slow)
    app.router.add_view("/embed", EmbeddingView)
    return app


async def json_get(session: aiohttp.ClientSession, url: str, **params: str) -> tuple[int, object]:
    async with session.get(url, params=params) as response:
        return response.status, await response.json()


async def test_decorated_function_handlers_are_still_coroutine_handlers() -> None:
    app = build_app()  # aiohttp would warn (an error here) about a non-coroutine handler
    async with aiohttp_serving(app) as url, aiohttp.ClientSession() as session:
        assert await json_get(session, f"{url}/hello", name="ann") == (200, {"hello": "ann"})
        assert (await json_get(session, f"{url}/slow"))[0] == 504
    for route in app.router.routes():
        handler = route.handler
        if not isinstance(handler, type):
            assert inspect.iscoroutinefunction(handler), route


async def test_a_bulkhead_on_a_handler_sheds_the_call_it_has_no_room_for() -> None:
    app = build_app()
    async with aiohttp_serving(app) as url, aiohttp.ClientSession() as session:
        async with anyio.create_task_group() as group:
            first: list[int] = []

            async def hold() -> None:
                first.append((await json_get(session, f"{url}/exclusive"))[0])

            group.start_soon(hold)
            with anyio.fail_after(10):
                await app[GATE].entered.wait()
            assert _running(app, "/exclusive") == 1
            assert (await json_get(session, f"{url}/exclusive"))[0] == 503
            assert (await json_get(session, f"{url}/let-go"))[0] == 200
        assert first == [200]


def _running(app: web.Application, path: str) -> int:
    """Calls holding a slot of the bulkhead on the handler of ``path``."""
    for route in app.router.routes():
        if route.resource is not None and route.resource.canonical == path:
            return int(route.handler.bulkhead.stats().running)  # type: ignore[union-attr]
    raise LookupError(path)


async def test_class_based_view_methods_carry_decorators() -> None:
    app = build_app()
    model = app[MODEL]
    model.failures_left = 2
    async with aiohttp_serving(app) as url, aiohttp.ClientSession() as session:
        for _ in range(3):
            status, payload = await json_get(session, f"{url}/embed", text="abc")
            assert (status, payload) == (200, {"text": "abc", "embedding": [3.0, 1.0]})
        async with session.post(f"{url}/embed", json={"values": [1, 2.5]}) as response:
            assert (response.status, await response.json()) == (200, {"sum": 3.5})
        async with session.post(f"{url}/embed", json={"values": ["x"]}) as response:
            assert response.status == 422
    # Two dropped connections retried, then one computation served three requests.
    assert model.calls == {"abc": 3}
    assert Model.embed.cache.stats().hits == 2
    assert EmbeddingView.get.monitor.stats().ok == 3  # type: ignore[attr-defined]
    assert EmbeddingView.post.monitor.stats().calls == 2  # type: ignore[attr-defined]
    assert EmbeddingView.post.monitor.stats().errors == 1  # type: ignore[attr-defined]
    assert inspect.iscoroutinefunction(EmbeddingView.get)


async def test_metrics_middleware_and_handler_with_decorated_views(
    registry: CollectorRegistry,
) -> None:
    app = build_app(middlewares=[metrics_middleware(registry=registry)])
    app.router.add_get("/prometheus", metrics_handler(registry))
    with capture() as records:
        async with aiohttp_serving(app) as url, aiohttp.ClientSession() as session:
            for text in ("a", "bb", "a"):
                headers = {"X-Request-ID": f"req-{text}"}
                async with session.get(f"{url}/embed", params={"text": text}, headers=headers) as r:
                    assert r.status == 200
                    assert r.headers["X-Request-ID"] == f"req-{text}"
            async with session.get(f"{url}/metrics") as response:
                served = await response.text()
            async with session.get(f"{url}/prometheus") as response:
                handled = await response.text()
        await anyio.to_thread.run_sync(flush_monitoring)
    for text in (served, handled):
        samples = parse(text)
        labels = {"function": "EmbeddingView.get", "outcome": "ok"}
        assert value(samples, "buttress_calls_total", **labels) == 3
        labels = {"function": "Model.embed", "result": "hit"}
        assert value(samples, "buttress_cache_requests_total", **labels) == 1  # "a" again
    contexts = [record.context for record in records.of("EmbeddingView.get")]  # type: ignore[attr-defined]
    assert [context["request_id"] for context in contexts] == ["req-a", "req-bb", "req-a"]
