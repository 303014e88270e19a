"""A toy embedding service that misbehaves a little, to try the other examples against.

    python examples/toy_embedding_service.py --port 8081 --error-rate 0.2

Serves ``GET /v1/embeddings?text=...`` on 127.0.0.1, answering ``{"embedding": [...]}``:
a unit vector of ``--dim`` numbers that depends only on the text; and batches, ``POST
/v1/embeddings`` with ``{"texts": [...]}``, answering ``{"embeddings": [[...], ...]}`` in
the texts' order. Now and then it answers 503 with a ``Retry-After`` header, answers
slowly (both per request), or returns a vector with a NaN in it (per vector), as real
model servers do under load. ``GET /v1/stats`` says how many calls it served.

The gateway and batch examples start one in the background (:func:`toy_service`) when
they are given no ``--upstream``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import numpy as np
from aiohttp import web

DIM = 384


def vector_for(text: str, dim: int = DIM) -> list[float]:
    """The embedding of ``text``: a unit vector seeded by the text, so always the same."""
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
    vector = np.random.default_rng(seed).standard_normal(dim)
    return [float(v) for v in vector / np.linalg.norm(vector)]


def make_app(
    *,
    dim: int = DIM,
    error_rate: float = 0.1,
    nan_rate: float = 0.02,
    slow_rate: float = 0.05,
    slow_seconds: float = 0.5,
    retry_after: float = 0.1,
    seed: int = 0,
) -> web.Application:
    """The service as an aiohttp application; the rates are probabilities per call."""
    rng = random.Random(seed)
    served: Counter[str] = Counter()

    async def embeddings(request: web.Request) -> web.Response:
        text = request.query.get("text", "")
        if not text:
            return web.json_response({"error": "missing ?text="}, status=400)
        roll = rng.random()
        if roll < error_rate:
            served["unavailable"] += 1
            headers = {"Retry-After": f"{retry_after:g}"}
            return web.json_response({"error": "overloaded"}, status=503, headers=headers)
        vector = vector_for(text, dim)
        if roll < error_rate + nan_rate:
            served["nan"] += 1
            vector[0] = float("nan")
        elif roll < error_rate + nan_rate + slow_rate:
            served["slow"] += 1
            await asyncio.sleep(slow_seconds)
        else:
            served["ok"] += 1
        # allow_nan: a NaN goes out as the bare token NaN, which Python's json reads back.
        return web.json_response({"embedding": vector, "model": "toy"})

    async def batch(request: web.Request) -> web.Response:
        try:
            texts = (await request.json())["texts"]
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": 'expected {"texts": [...]}'}, status=400)
        if not isinstance(texts, list) or not texts or not all(
            isinstance(text, str) and text for text in texts
        ):
            return web.json_response({"error": "texts: non-empty strings"}, status=400)
        served["requests"] += 1
        roll = rng.random()
        if roll < error_rate:
            served["unavailable"] += 1
            headers = {"Retry-After": f"{retry_after:g}"}
            return web.json_response({"error": "overloaded"}, status=503, headers=headers)
        if roll < error_rate + slow_rate:
            served["slow"] += 1
            await asyncio.sleep(slow_seconds)
        vectors = []
        for text in texts:
            vector = vector_for(text, dim)
            if rng.random() < nan_rate:
                served["nan"] += 1
                vector[0] = float("nan")
            else:
                served["ok"] += 1
            vectors.append(vector)
        return web.json_response({"embeddings": vectors, "model": "toy"})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(dict(served))

    app = web.Application()
    app.router.add_get("/v1/embeddings", embeddings)
    app.router.add_post("/v1/embeddings", batch)
    app.router.add_get("/v1/stats", stats)
    return app


@asynccontextmanager
async def toy_service(port: int = 0, **options: float) -> AsyncIterator[str]:
    """Serve the toy service on 127.0.0.1 for the ``async with`` block; yield its URL."""
    runner = web.AppRunner(make_app(**options), access_log=None)  # type: ignore[arg-type]
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1/embeddings"
    finally:
        await runner.cleanup()


async def until_interrupted() -> None:
    """Wait for Ctrl-C (SIGINT) inside the event loop, so the servers close cleanly.

    Before Python 3.11, ``asyncio.run`` let a SIGINT raise ``KeyboardInterrupt`` wherever
    the loop happened to be, which can leave aiohttp's cleanup hanging; handling the
    signal in the loop makes every version stop the same way.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, stop.set)
    except (NotImplementedError, RuntimeError):  # Windows: KeyboardInterrupt as usual
        await asyncio.Event().wait()
    try:
        await stop.wait()
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument("--error-rate", type=float, default=0.1, help="503 + Retry-After")
    parser.add_argument("--nan-rate", type=float, default=0.02, help="a NaN in the vector")
    parser.add_argument("--slow-rate", type=float, default=0.05, help="answer after 0.5 s")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    async def serve() -> None:
        async with toy_service(
            args.port,
            dim=args.dim,
            error_rate=args.error_rate,
            nan_rate=args.nan_rate,
            slow_rate=args.slow_rate,
            seed=args.seed,
        ) as url:
            print(f"toy embedding service on {url}", flush=True)
            await until_interrupted()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
