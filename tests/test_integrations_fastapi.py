"""FastAPI: decorated path operations keep their parameters (path, query, body models,
``Depends``) because buttress preserves the signature; proven through real requests to a
uvicorn server on 127.0.0.1."""

from __future__ import annotations

import inspect
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Annotated

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, Field

from _monitor_support import fresh_monitoring, parse, value
from _servers import UvicornThread
from buttress import (
    BulkheadFullError,
    CallTimeoutError,
    CircuitOpenError,
    bulkhead,
    cache_result,
    metrics,
    monitor,
    policy,
    retry,
    validate_output,
)
from buttress.integrations.fastapi import RequestContextMiddleware, add_metrics_route


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    with fresh_monitoring():
        yield


class Document(BaseModel):
    title: str
    body: str = Field(min_length=1)
    tags: list[str] = []


class Indexed(BaseModel):
    id: int
    words: int
    tags: list[str]
    model: str
    user: str | None


class Model:
    """A dependency: FastAPI builds it per request through ``Depends``."""

    def __init__(self, name: str) -> None:
        self.name = name


made: Counter[str] = Counter()


def get_model(model: Annotated[str, Query(pattern="^[a-z0-9-]+$")] = "small") -> Model:
    made[model] += 1
    return Model(model)


def build_app() -> tuple[FastAPI, Counter[str]]:
    calls: Counter[str] = Counter()
    gate = threading.Event()

    app = FastAPI()
    add_metrics_route(app)
    app.add_middleware(RequestContextMiddleware)

    @app.exception_handler(BulkheadFullError)
    @app.exception_handler(CircuitOpenError)
    async def overloaded(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": type(exc).__name__}, status_code=503)

    @app.exception_handler(CallTimeoutError)
    async def timed_out(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "timed out"}, status_code=504)

    # The decorators go below the route decorator: FastAPI registers the decorated
    # function and reads its (preserved) signature.
    @app.post("/documents/{doc_id}")
    @monitor("index_document")
    @retry(max_retries=2, base_delay=0.001, exceptions=ConnectionError)
    async def index_document(
        doc_id: int,
        document: Document,
        model: Annotated[Model, Depends(get_model)],
        limit: Annotated[int, Query(ge=1, le=100)] = 10,
        x_user: Annotated[str | None, Header()] = None,
    ) -> Indexed:
        calls["index"] += 1
        if calls["index"] == 1:
            raise ConnectionError("the index dropped the connection")  # retried
        return Indexed(
            id=doc_id,
            words=min(limit, len(document.body.split())),
            tags=document.tags,
            model=model.name,
            user=x_user,
        )

    @app.get("/similar")
    @cache_result(ttl=60, key=lambda q, k, model: (q, k, model.name))
    def similar(  # a plain def: FastAPI runs it in its thread pool
        q: Annotated[str, Query(min_length=2)],
        model: Annotated[Model, Depends(get_model)],
        k: int = 3,
    ) -> list[str]:
        calls["similar"] += 1
        return [f"{q}-{model.name}-{i}" for i in range(k)]

    @app.get("/score")
    @policy(monitor="score", timeout=0.5, bulkhead={"max_concurrent": 1})
    @validate_output(float)
    async def score(text: str, slow: bool = False) -> float:
        if slow:
            await anyio.sleep(10)
        return float(len(text))

    @app.get("/hold")
    @bulkhead(1)
    def hold() -> dict[str, bool]:
        calls["hold"] += 1
        gate.wait(10)
        return {"held": True}

    @app.get("/release")
    async def release() -> dict[str, bool]:
        gate.set()
        return {}

    return app, calls


@pytest.fixture
def served() -> Iterator[tuple[str, Counter[str]]]:
    """The app on a real uvicorn server, buttress's metrics in a registry of its own."""
    metrics.enable(CollectorRegistry())
    app, calls = build_app()
    made.clear()
    with UvicornThread(app) as url:
        yield url, calls


def test_body_model_path_query_header_and_depends_all_reach_a_decorated_operation(
    served: tuple[str, Counter[str]],
) -> None:
    url, calls = served
    document = {"title": "t", "body": "one two three", "tags": ["x"]}
    with httpx.Client(base_url=url, timeout=10) as client:
        response = client.post(
            "/documents/7",
            params={"limit": 2, "model": "large"},
            json=document,
            headers={"X-User": "ann", "X-Request-ID": "r-1"},
        )
        assert response.status_code == 200, response.text
        assert response.json() == {
            "id": 7, "words": 2, "tags": ["x"], "model": "large", "user": "ann",
        }  # fmt: skip
        assert response.headers["X-Request-ID"] == "r-1"
        assert calls["index"] == 2  # one retry, inside the request
        assert made == {"large": 1}  # the dependency ran once, outside the retries

        # FastAPI validates every parameter before the decorated function runs.
        bad = [
            client.post("/documents/x", json=document),  # path: not an int
            client.post("/documents/7", params={"limit": 0}, json=document),  # query: ge=1
            client.post("/documents/7", params={"model": "NO!"}, json=document),  # Depends' query
            client.post("/documents/7", json={"title": "t", "body": ""}),  # body: min_length
        ]
        assert [r.status_code for r in bad] == [422] * 4
        assert calls["index"] == 2

        schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/documents/{doc_id}"]["post"]
    names = {(p["name"], p["in"]) for p in operation["parameters"]}
    expected = {("doc_id", "path"), ("limit", "query"), ("model", "query"), ("x-user", "header")}
    assert names == expected
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/Document"
    )
    assert "Indexed" in operation["responses"]["200"]["content"]["application/json"]["schema"][
        "$ref"
    ]


def test_a_cached_sync_operation_with_a_dependency(served: tuple[str, Counter[str]]) -> None:
    url, calls = served
    with httpx.Client(base_url=url, timeout=10) as client:
        first = client.get("/similar", params={"q": "cat", "k": 2})
        second = client.get("/similar", params={"q": "cat", "k": 2})
        other = client.get("/similar", params={"q": "cat", "k": 2, "model": "big"})
        short = client.get("/similar", params={"q": "c"})
    assert first.json() == second.json() == ["cat-small-0", "cat-small-1"]
    assert other.json() == ["cat-big-0", "cat-big-1"]
    assert short.status_code == 422
    assert calls["similar"] == 2  # the second request was a cache hit


def test_policy_and_bulkhead_refusals_become_http_statuses(
    served: tuple[str, Counter[str]],
) -> None:
    url, calls = served
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/score", params={"text": "abcd"}).json() == 4.0
        assert client.get("/score", params={"text": "ab", "slow": True}).status_code == 504

        held: list[int] = []
        holder = threading.Thread(target=lambda: held.append(client.get("/hold").status_code))
        holder.start()
        try:
            deadline = time.monotonic() + 10
            while calls["hold"] != 1:  # the first request holds the only slot
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert client.get("/hold").status_code == 503
        finally:
            client.get("/release")
            holder.join(10)
        assert held == [200]
        samples = parse(client.get("/metrics").content)
    assert value(samples, "buttress_calls_total", function="score", outcome="ok") == 1
    assert value(samples, "buttress_calls_total", function="score", outcome="error") == 1
    # Every layer of a stack reports the monitor's name; unmonitored, the qualified name.
    local = "build_app.<locals>."
    assert value(samples, "buttress_timeouts_total", function="score") == 1
    assert value(samples, "buttress_bulkhead_rejections_total", function=f"{local}hold") == 1


def test_the_signature_fastapi_reads_is_the_original() -> None:
    app, _ = build_app()
    for route in app.routes:
        endpoint = getattr(route, "endpoint", None)
        if endpoint is None or not hasattr(endpoint, "__wrapped__"):
            continue
        original = inspect.unwrap(endpoint)
        assert inspect.signature(endpoint) == inspect.signature(original)
        assert inspect.iscoroutinefunction(endpoint) == inspect.iscoroutinefunction(original)
