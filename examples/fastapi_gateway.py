"""A FastAPI inference gateway made resilient with buttress, served by uvicorn.

    python examples/fastapi_gateway.py                 # in front of a toy embedding service
    python examples/fastapi_gateway.py --port 8000 --upstream http://127.0.0.1:8081/v1/embeddings

    curl 'http://127.0.0.1:8000/embed?text=hello'
    curl -X POST http://127.0.0.1:8000/embed/batch -H 'Content-Type: application/json' \\
         -d '{"texts": ["a cat", "a kitten"], "normalize": true}'
    curl http://127.0.0.1:8000/metrics        # and /docs for the schema

    # traces and metrics to an OpenTelemetry collector (OTLP over HTTP), too:
    python examples/fastapi_gateway.py --otlp http://127.0.0.1:4318

What it shows:

- decorators go *below* ``@app.get``/``@app.post``: FastAPI then registers the decorated
  function and reads its signature, which buttress preserves, so query parameters, body
  models and ``Depends`` work unchanged (and appear in /docs);
- the upstream client's method carries one ``policy()`` (single-flight cache, retry with
  Retry-After and a deadline, circuit breaker, bulkhead, attempt timeout, output
  validation), on one long-lived object reached through ``Depends``;
- exception handlers turning buttress's refusals into HTTP statuses (503 with Retry-After
  from an open breaker, 504, 502), ``add_metrics_route()`` for ``/metrics`` and
  ``RequestContextMiddleware`` for request ids in every monitor record;
- with ``--otlp URL``, OpenTelemetry (``buttress.otel``): a server span per request that
  continues the caller's ``traceparent``, a span per monitored call with its retries and
  cache result on it, and the metrics, all sent over OTLP/HTTP (needs
  ``pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Annotated, Any

import aiohttp
import numpy as np
import uvicorn
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from buttress import (
    ArraySpec,
    BulkheadFullError,
    CallTimeoutError,
    CircuitOpenError,
    OutputValidationError,
    bulkhead,
    monitor,
    otel,
    policy,
    timeout,
)
from buttress.integrations.fastapi import RequestContextMiddleware, add_metrics_route

DIM = 384
# Before Python 3.11, asyncio's timeout (which aiohttp raises) is not the builtin one.
TIMEOUTS = (TimeoutError, asyncio.TimeoutError)


class EmbeddingClient:
    """Calls the embedding service. One instance per app: its cache and breaker are shared
    by every request (methods are keyed on ``self`` too, which is always this object)."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    @policy(
        cache={"ttl": 300, "maxsize": 50_000},
        retry={
            "max_retries": 3,
            "base_delay": 0.05,
            "deadline": 2.0,  # give up before the caller does
            "exceptions": (aiohttp.ClientError, *TIMEOUTS, OutputValidationError),
        },
        circuit_breaker={"minimum_calls": 20, "window": 10, "open_for": 2},
        bulkhead={"max_concurrent": 32, "max_waiting": 128, "wait_timeout": 1.0},
        attempt_timeout=0.5,
        validate_output={"spec": ArraySpec(shape=(DIM,), dtype="float32", finite=True)},
    )
    async def embed(self, text: str) -> np.ndarray:
        async with self.session.get(self.url, params={"text": text}) as response:
            response.raise_for_status()  # a 503's Retry-After is honoured by @retry
            payload = await response.json()
        return np.asarray(payload["embedding"], dtype=np.float32)


def get_client(request: Request) -> EmbeddingClient:
    """The app's one client, for ``Depends``."""
    client: EmbeddingClient = request.app.state.client
    return client


Client = Annotated[EmbeddingClient, Depends(get_client)]


class Embedding(BaseModel):
    text: str
    embedding: list[float]


class BatchRequest(BaseModel):
    texts: list[Annotated[str, Field(min_length=1, max_length=2048)]] = Field(
        min_length=1, max_length=64
    )
    normalize: bool = True


class BatchResponse(BaseModel):
    embeddings: list[list[float]]


def create_app(upstream: str | None = None) -> FastAPI:
    """The gateway in front of the embedding service at ``upstream`` (a toy one if None)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            url = upstream
            if url is None:
                from toy_embedding_service import toy_service  # next to this file

                url = await stack.enter_async_context(toy_service(dim=DIM))
            timeout = aiohttp.ClientTimeout(total=10)
            session = await stack.enter_async_context(aiohttp.ClientSession(timeout=timeout))
            app.state.client = EmbeddingClient(session, url)
            yield

    app = FastAPI(title="embedding gateway", lifespan=lifespan)
    add_metrics_route(app)
    app.add_middleware(RequestContextMiddleware)

    @app.exception_handler(CircuitOpenError)
    async def upstream_down(request: Request, exc: CircuitOpenError) -> JSONResponse:
        retry_after = str(math.ceil(exc.retry_after or 1))
        return JSONResponse(
            {"error": "upstream down"}, status_code=503, headers={"Retry-After": retry_after}
        )

    @app.exception_handler(BulkheadFullError)
    async def too_busy(request: Request, exc: BulkheadFullError) -> JSONResponse:
        return JSONResponse({"error": "too busy"}, status_code=503)

    @app.exception_handler(CallTimeoutError)
    @app.exception_handler(TimeoutError)
    async def too_slow(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "upstream too slow"}, status_code=504)

    @app.exception_handler(aiohttp.ClientError)
    @app.exception_handler(OutputValidationError)
    async def upstream_failed(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"upstream failed: {type(exc).__name__}"}, status_code=502)

    # Below the route decorator: FastAPI reads the decorated function's signature.
    @app.get("/embed")
    @monitor("http.embed")
    async def embed(
        text: Annotated[str, Query(min_length=1, max_length=2048)], client: Client
    ) -> Embedding:
        vector = await client.embed(text)
        return Embedding(text=text, embedding=vector.tolist())

    @app.post("/embed/batch")
    @monitor("http.embed_batch")
    @bulkhead(8, max_waiting=32)  # at most 8 batches at once; more wait, then 503
    @timeout(5.0)
    async def embed_batch(body: BatchRequest, client: Client) -> BatchResponse:
        # gather, not a task group: the first error reaches the exception handlers as it
        # is, not wrapped in an ExceptionGroup. Repeated texts share one upstream call.
        vectors = await asyncio.gather(*(client.embed(text) for text in body.texts))
        matrix = np.stack(vectors)
        if body.normalize:
            matrix = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
        return BatchResponse(embeddings=matrix.tolist())

    return app


def export_otlp(endpoint: str, service: str = "embedding-gateway") -> tuple[Any, Any]:
    """Send buttress' traces and metrics over OTLP/HTTP to ``endpoint`` (a collector's base
    URL, such as ``http://127.0.0.1:4318``); return the SDK's tracer and meter providers.

    The SDK and the exporter are the application's choice: buttress needs only the API.
    """
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    base = endpoint.rstrip("/")
    resource = Resource.create({"service.name": service})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(f"{base}/v1/traces")))
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(f"{base}/v1/metrics"))
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    otel.enable(tracer_provider, meter_provider)
    return tracer_provider, meter_provider


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--upstream",
        help="the embedding service, GET URL?text=...; by default a toy one is started",
    )
    parser.add_argument(
        "--otlp",
        metavar="URL",
        help="send traces and metrics to this OTLP/HTTP endpoint (http://host:4318)",
    )
    args = parser.parse_args(argv)
    # @monitor logs failed calls at ERROR (and every call at INFO, if you want them).
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    providers = None
    if args.otlp:
        from opentelemetry import metrics, trace

        providers = export_otlp(args.otlp)
        # Global too: the application's own spans and instrumented clients use them.
        trace.set_tracer_provider(providers[0])
        metrics.set_meter_provider(providers[1])
    try:
        uvicorn.run(create_app(args.upstream), host=args.host, port=args.port, log_level="info")
    finally:
        if providers is not None:  # send what is still buffered
            for provider in providers:
                provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
