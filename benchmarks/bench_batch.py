"""@batch: 10,000 concurrent single-text calls to an embedding service, unbatched vs batched.

The stand-in embedding service runs in a process of its own on 127.0.0.1 (this file, run
as ``python bench_batch.py serve OVERHEAD PER_ITEM WORKERS``). Its cost is a model
server's: a fixed overhead per request (HTTP, queueing, a GPU launch) plus a small cost
per text, with a few requests served at once (its workers). Each call of the client asks
for one text; the rows differ only in how calls become requests:

- unbatched: one request per call (the bare row);
- ``buttress.batch``: calls gathered into requests of up to ``MAX_SIZE`` texts, at most
  ``MAX_WAIT`` seconds of gathering, ``CONCURRENCY`` requests in flight;
- async-batcher (PyPI), with the same three settings, where installed.

Two tables. The burst: every call starts at once; the figure is the wall time until the
last answers (median of several runs), with the requests the service counted, the
throughput, and the p50 latency of a call. The trickle: calls one after another, each
alone in its batch, so batching can only add latency: the figure is a call's p50
latency, and ``added ms`` is what batching adds to the unbatched p50 (the ``MAX_WAIT`` of
gathering, at most, plus scheduling). Targets: requests at most 1.1 x ceil(calls /
MAX_SIZE), throughput at least 5x unbatched, added p50 at most MAX_WAIT + 1 ms.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

import buttress
from _harness import Comparison, median_of, optional_peer

OVERHEAD = 0.002  # seconds per request
PER_ITEM = 0.00002  # seconds per text
WORKERS = 4  # requests the service works on at once
MAX_SIZE = 64
MAX_WAIT = 0.005
CONCURRENCY = 8  # batch requests in flight
CONNECTIONS = 100  # the client's connection pool (aiohttp's default)


# --- the stand-in service (in its own process) ---------------------------------------------


def serve(overhead: float, per_item: float, workers: int) -> None:
    """Serve ``POST /embed {"texts": [...]}`` on a free port; print the port; run forever."""

    async def main() -> None:
        gate = asyncio.Semaphore(workers)
        counts = {"requests": 0, "texts": 0}

        async def embed(request: web.Request) -> web.Response:
            texts = (await request.json())["texts"]
            counts["requests"] += 1
            counts["texts"] += len(texts)
            async with gate:
                await asyncio.sleep(overhead + per_item * len(texts))
            return web.json_response({"embeddings": [[float(len(t)), 1.0] for t in texts]})

        async def stats(request: web.Request) -> web.Response:
            return web.json_response(counts)

        async def reset(request: web.Request) -> web.Response:
            counts.update(requests=0, texts=0)
            return web.json_response(counts)

        app = web.Application()
        app.router.add_post("/embed", embed)
        app.router.add_get("/stats", stats)
        app.router.add_post("/reset", reset)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


class Service:
    """The stand-in in a subprocess; ``with Service() as base_url:``."""

    def __enter__(self) -> str:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "serve", str(OVERHEAD), str(PER_ITEM), str(WORKERS)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        port = int(self.process.stdout.readline())
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc_info: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


# --- the clients ---------------------------------------------------------------------------

Embed = Callable[[str], Awaitable[list[float]]]


async def post(session: aiohttp.ClientSession, url: str, texts: list[str]) -> list[list[float]]:
    async with session.post(url, json={"texts": texts}) as response:
        response.raise_for_status()
        return (await response.json())["embeddings"]  # type: ignore[no-any-return]


async def unbatched(session: aiohttp.ClientSession, url: str) -> tuple[Embed, Any]:
    async def embed(text: str) -> list[float]:
        return (await post(session, url, [text]))[0]

    return embed, None


async def with_buttress(session: aiohttp.ClientSession, url: str) -> tuple[Embed, Any]:
    @buttress.batch(max_size=MAX_SIZE, max_wait=MAX_WAIT, max_concurrency=CONCURRENCY)
    async def embed_many(texts: list[str]) -> list[list[float]]:
        return await post(session, url, texts)

    return embed_many.one, None


async def with_async_batcher(session: aiohttp.ClientSession, url: str) -> tuple[Embed, Any]:
    from async_batcher.batcher import AsyncBatcher

    class Embedder(AsyncBatcher[str, list[float]]):  # type: ignore[misc]
        async def process_batch(self, batch: list[str]) -> list[list[float]]:
            return await post(session, url, batch)

    embedder = Embedder(
        max_batch_size=MAX_SIZE, max_queue_time=MAX_WAIT, concurrency=CONCURRENCY
    )
    return embedder.process, embedder


CLIENTS: dict[str, Callable[[aiohttp.ClientSession, str], Awaitable[tuple[Embed, Any]]]] = {
    "unbatched": unbatched,
    "buttress": with_buttress,
    "async-batcher": with_async_batcher,
}


async def run(base: str, client: str, calls: int, burst: bool) -> dict[str, float]:
    """``calls`` calls at once (``burst``) or one after another; times and counts."""
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:
        await session.post(f"{base}/reset")
        embed, batcher = await CLIENTS[client](session, f"{base}/embed")
        await embed("warm up")  # a connection, and the batcher's own start
        await session.post(f"{base}/reset")
        latencies: list[float] = []

        async def call(text: str) -> None:
            started = time.perf_counter()
            await embed(text)
            latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        if burst:
            await asyncio.gather(*(call(f"text {i}") for i in range(calls)))
        else:
            for i in range(calls):
                await call(f"text {i}")
        wall = time.perf_counter() - started
        if batcher is not None:
            await batcher.stop()
        async with session.get(f"{base}/stats") as response:
            counts = await response.json()
    assert len(latencies) == calls
    return {
        "wall": wall,
        "requests": counts["requests"],
        "texts": counts["texts"],
        "p50": statistics.median(latencies),
        "p99": sorted(latencies)[max(0, math.ceil(0.99 * calls) - 1)],
    }


# --- the tables ---------------------------------------------------------------------------


def collect(quick: bool) -> list[Comparison]:
    calls = 300 if quick else 10_000
    trickle = 20 if quick else 300
    rounds = 1 if quick else 3
    clients = ["unbatched", "buttress"]
    if optional_peer("async_batcher", "async-batcher") is not None:
        clients.append("async-batcher")
    kinds = {"unbatched": "bare", "buttress": "ours", "async-batcher": "peer"}
    names = {
        "unbatched": "unbatched: one request per call",
        "buttress": "buttress.batch",
        "async-batcher": "async-batcher",
    }
    target = math.ceil(calls / MAX_SIZE)

    burst = Comparison(
        f"batching: {calls:,} concurrent single-text calls",
        unit="s wall",
        mode="ratio",
        note=(
            f"A stand-in service on 127.0.0.1 in its own process: {OVERHEAD * 1000:g} ms per "
            f"request + {PER_ITEM * 1e6:g} us per text, {WORKERS} requests at a time. "
            f"Batches of up to {MAX_SIZE} texts, {MAX_WAIT * 1000:g} ms of gathering, "
            f"{CONCURRENCY} requests in flight; {CONNECTIONS} connections. Median of "
            f"{rounds} run(s). Targets: requests <= 1.1 x {target} = {1.1 * target:.0f}; "
            "throughput >= 5x unbatched."
        ),
    )
    light = Comparison(
        f"batching: {trickle} calls one after another (each alone in its batch)",
        unit="ms p50",
        mode="ratio",
        note=(
            "What batching adds to a call when nothing else arrives: the p50 latency of a "
            f"call, and its excess over the unbatched p50. Target: added <= "
            f"{MAX_WAIT * 1000:g} ms (max_wait) + 1 ms."
        ),
    )
    with Service() as base:
        measured: dict[str, list[dict[str, float]]] = {client: [] for client in clients}
        for _ in range(rounds):  # interleaved, so that a disturbance spreads over every row
            for client in clients:
                measured[client].append(asyncio.run(run(base, client, calls, burst=True)))
        alone = {client: asyncio.run(run(base, client, trickle, burst=False)) for client in clients}
    bare_wall = statistics.median(r["wall"] for r in measured["unbatched"])
    bare_p50 = statistics.median(r["p50"] for r in measured["unbatched"])
    for client in clients:
        runs = measured[client]
        wall = median_of(r["wall"] for r in runs)
        p50 = statistics.median(r["p50"] for r in runs)
        burst.add(
            names[client],
            wall,
            kinds[client],
            extra={
                "requests": int(statistics.median(r["requests"] for r in runs)),
                "calls/s": round(calls / wall),
                "x throughput": round(bare_wall / wall, 1),
                "p50 ms": round(p50 * 1000, 1),
                "p50 added ms": round((p50 - bare_p50) * 1000, 1),
                "p99 ms": round(statistics.median(r["p99"] for r in runs) * 1000, 1),
            },
        )
    light_bare = alone["unbatched"]["p50"]
    for client in clients:
        p50 = alone[client]["p50"]
        light.add(
            names[client],
            p50 * 1000,
            kinds[client],
            extra={
                "added ms": round((p50 - light_bare) * 1000, 2),
                "requests": int(alone[client]["requests"]),
            },
        )
    return [burst, light]


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "serve":
        serve(float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
    else:  # pragma: no cover - run through benchmarks/run.py
        for table in collect(quick="--quick" in sys.argv):
            print(table.markdown())
