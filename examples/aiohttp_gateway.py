"""An aiohttp inference gateway made resilient with buttress.

    python examples/aiohttp_gateway.py                 # in front of a toy embedding service
    python examples/aiohttp_gateway.py --port 8080 --upstream http://127.0.0.1:8081/v1/embeddings

    curl 'http://127.0.0.1:8080/embed?text=hello'
    curl -X POST http://127.0.0.1:8080/similarity -d '{"a": "a cat", "b": "a kitten"}'
    curl http://127.0.0.1:8080/metrics

What it shows:

- the upstream client's method carries one ``policy()``: single-flight cache, retry with
  Retry-After and a deadline, circuit breaker, bulkhead, attempt timeout, and output
  validation (a NaN vector is a failed attempt: retried, never cached). State that must
  outlive a request (the cache, the breaker) lives on this one long-lived object;
- a plain handler and the methods of a class-based view (``web.View``) decorated with
  ``@monitor``, ``@timeout`` and ``@validate_input`` like any coroutine function;
- a small middleware turning buttress's refusals into honest HTTP statuses (503 with
  Retry-After from an open breaker, 504, 422), and ``metrics_middleware()``, which serves
  ``/metrics`` and gives every request's monitor records a request id.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Annotated

import aiohttp
import numpy as np
from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import StringConstraints

from buttress import (
    ArraySpec,
    BulkheadFullError,
    CallTimeoutError,
    CircuitOpenError,
    InputValidationError,
    OutputValidationError,
    monitor,
    policy,
    timeout,
    validate_input,
)
from buttress.integrations.aiohttp import metrics_middleware

DIM = 384
Text = Annotated[str, StringConstraints(min_length=1, max_length=2048)]
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


CLIENT = web.AppKey("client", EmbeddingClient)


# A plain handler: decorated like any coroutine function.
@monitor("http.embed")
@timeout(3.0)
async def embed(request: web.Request) -> web.Response:
    text = valid_text(request.query.get("text", ""))
    vector = await request.app[CLIENT].embed(text)
    return web.json_response({"text": text, "embedding": vector.tolist()})


@validate_input
def valid_text(text: Text) -> str:
    """Refuses an empty or huge text with InputValidationError (answered 422)."""
    return text


class SimilarityView(web.View):
    """A class-based view: its methods take decorators too (they bind ``self`` as usual).

    A view lives for one request, so no cache or breaker belongs here: those sit on the
    long-lived client.
    """

    @monitor("http.similarity")
    @timeout(3.0)
    async def post(self) -> web.Response:
        body = await self.request.json()
        a, b = await self.pair(body.get("a"), body.get("b"))
        client = self.request.app[CLIENT]
        # Both at once; gather, not a task group, so that the first error reaches the
        # middleware as it is, not wrapped in an ExceptionGroup.
        vector_a, vector_b = await asyncio.gather(client.embed(a), client.embed(b))
        score = float(vector_a @ vector_b)
        return web.json_response({"a": a, "b": b, "cosine": round(score, 6)})

    @validate_input
    async def pair(self, a: Text, b: Text) -> tuple[str, str]:
        return a, b


@web.middleware
async def buttress_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """buttress's refusals as HTTP statuses a load balancer and a client understand."""
    try:
        return await handler(request)
    except InputValidationError as exc:
        return web.json_response({"error": str(exc)}, status=422)
    except CircuitOpenError as exc:
        retry_after = {"Retry-After": str(math.ceil(exc.retry_after or 1))}
        return web.json_response({"error": "upstream down"}, status=503, headers=retry_after)
    except BulkheadFullError:
        return web.json_response({"error": "too busy"}, status=503)
    except (CallTimeoutError, *TIMEOUTS):
        return web.json_response({"error": "upstream too slow"}, status=504)
    except (aiohttp.ClientError, OutputValidationError) as exc:
        return web.json_response({"error": f"upstream failed: {type(exc).__name__}"}, status=502)


def create_app(upstream: str) -> web.Application:
    """The gateway in front of the embedding service at ``upstream``."""

    async def client_context(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            app[CLIENT] = EmbeddingClient(session, upstream)
            yield

    # metrics_middleware first: /metrics, and a request id around everything else.
    app = web.Application(middlewares=[metrics_middleware(), buttress_errors])
    app.cleanup_ctx.append(client_context)
    app.router.add_get("/embed", embed)
    app.router.add_view("/similarity", SimilarityView)
    return app


async def serve(host: str, port: int, upstream: str | None) -> None:
    if upstream is None:
        from toy_embedding_service import toy_service  # next to this file

        async with toy_service(dim=DIM) as url:
            await serve(host, port, url)
        return
    runner = web.AppRunner(create_app(upstream), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        bound = runner.addresses[0][1]
        print(f"gateway on http://{host}:{bound} (upstream {upstream})", flush=True)
        from toy_embedding_service import until_interrupted  # next to this file

        await until_interrupted()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument(
        "--upstream",
        help="the embedding service, GET URL?text=...; by default a toy one is started",
    )
    args = parser.parse_args(argv)
    # @monitor logs failed calls at ERROR (and every call at INFO, if you want them).
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(args.host, args.port, args.upstream))
    except KeyboardInterrupt:
        pass
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
