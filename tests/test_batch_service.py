"""@batch in front of a real aiohttp embedding service that accepts batches, and stacked
with the other decorators: cache in front; retry, breaker, timeout, rate limit beneath."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anyio
import numpy as np
import pytest
from aiohttp import web

from buttress import (
    BatchDispatched,
    CallTimeoutError,
    CircuitOpenError,
    RetryScheduled,
    batch,
    cache_result,
    circuit_breaker,
    events,
    rate_limit,
    retry,
    timeout,
)
from buttress._demo.upstream import Faults, Upstream, vector_for

DIM = 16


@dataclass
class Service:
    """An embedding service on 127.0.0.1: ``POST /embed {"texts": [...]}``.

    Each request costs ``overhead`` seconds plus ``per_item`` per text; the next
    ``fail`` requests are answered 503 with a Retry-After; a text starting with ``bad:``
    gets an error in its place instead of a vector.
    """

    overhead: float = 0.002
    per_item: float = 0.0001
    fail: int = 0
    url: str = ""
    requests: list[list[str]] = field(default_factory=list)

    async def embed(self, request: web.Request) -> web.Response:
        texts = (await request.json())["texts"]
        self.requests.append(texts)
        if self.fail:
            self.fail -= 1
            return web.json_response(
                {"error": "overloaded"}, status=503, headers={"Retry-After": "0.01"}
            )
        await anyio.sleep(self.overhead + self.per_item * len(texts))
        results = [
            {"error": f"cannot embed {text!r}"}
            if text.startswith("bad:")
            else {"embedding": vector_for(text, DIM).tolist()}
            for text in texts
        ]
        return web.json_response({"results": results})

    @property
    def texts(self) -> list[str]:
        return [text for request in self.requests for text in request]


@asynccontextmanager
async def serving(service: Service) -> AsyncIterator[Service]:
    app = web.Application()
    app.router.add_post("/embed", service.embed)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    service.url = f"http://127.0.0.1:{runner.addresses[0][1]}/embed"
    try:
        yield service
    finally:
        await runner.cleanup()


class EmbeddingRefused(ValueError):
    pass


def client(session: aiohttp.ClientSession, service: Service):  # type: ignore[no-untyped-def]
    """The batch function: one POST for a list of texts; an error in a text's place."""

    async def embed_many(texts: list[str]) -> list[np.ndarray | Exception]:
        async with session.post(service.url, json={"texts": texts}) as response:
            response.raise_for_status()
            payload = await response.json()
        return [
            np.asarray(result["embedding"], dtype=np.float32)
            if "embedding" in result
            else EmbeddingRefused(result["error"])
            for result in payload["results"]
        ]

    return embed_many


async def all_of(calls: dict[str, Any]) -> dict[str, Any]:
    results: dict[str, Any] = {}

    async def run(name: str) -> None:
        try:
            results[name] = await calls[name]()
        except Exception as exc:
            results[name] = exc

    async with anyio.create_task_group() as group:
        for name in calls:
            group.start_soon(run, name)
    return results


@pytest.mark.asyncio
async def test_concurrent_single_texts_become_few_requests() -> None:
    async with serving(Service()) as service, aiohttp.ClientSession() as session:
        embed = batch(max_size=32, max_wait=0.005)(client(session, service))
        texts = [f"text {i}" for i in range(200)] + ["bad:one"]
        results = await all_of({t: (lambda t=t: embed.one(t)) for t in texts})
    for text in texts[:-1]:
        np.testing.assert_array_equal(results[text], vector_for(text, DIM))
    assert isinstance(results["bad:one"], EmbeddingRefused)  # its own error, nobody else's
    assert len(service.requests) <= math.ceil(201 / 32) + 1
    assert max(len(r) for r in service.requests) == 32
    assert Counter(service.texts) == Counter(texts)  # each text sent once


@pytest.mark.asyncio
async def test_a_cache_in_front_keeps_hits_and_duplicates_out_of_batches() -> None:
    dispatched: list[BatchDispatched] = []
    async with serving(Service()) as service, aiohttp.ClientSession() as session:
        embed_many = batch(max_size=16, max_wait=0.005)(client(session, service))

        @cache_result(ttl=60)
        async def embed(text: str) -> np.ndarray:
            return await embed_many.one(text)

        # 30 callers for 6 distinct texts at once: identical concurrent items share one
        # slot (single-flight), so the one batch holds each text once.
        texts = [f"doc {i % 6}" for i in range(30)]
        with events.subscribe(dispatched.append, BatchDispatched):
            first = await all_of({f"{i}": (lambda t=t: embed(t)) for i, t in enumerate(texts)})
            # Then hits: they never reach a batch.
            again = await all_of({t: (lambda t=t: embed(t)) for t in set(texts)})
    assert sorted(service.texts) == sorted(set(texts))  # no duplicates, no second request
    assert [e.size for e in dispatched] == [6]
    for i, text in enumerate(texts):
        np.testing.assert_array_equal(first[f"{i}"], vector_for(text, DIM))
    stats = embed.cache.stats()
    assert (stats.misses, stats.joins, stats.hits) == (6, 24, 6)
    assert all(isinstance(vector, np.ndarray) for vector in again.values())


@pytest.mark.asyncio
async def test_retry_beneath_retries_the_batch_call_as_a_whole() -> None:
    retries: list[RetryScheduled] = []
    async with serving(Service(fail=1)) as service, aiohttp.ClientSession() as session:
        embed = batch(max_size=8, max_wait=0.005)(
            retry(max_retries=2, base_delay=0.01, exceptions=aiohttp.ClientResponseError)(
                client(session, service)
            )
        )
        texts = [f"t{i}" for i in range(8)]
        with events.subscribe(retries.append, RetryScheduled):
            results = await all_of({t: (lambda t=t: embed.one(t)) for t in texts})
    assert all(isinstance(results[t], np.ndarray) for t in texts)
    assert len(retries) == 1  # one retry for the batch, not one per text
    assert retries[0].delay == pytest.approx(0.01)  # the 503's Retry-After
    assert [sorted(r) for r in service.requests] == [sorted(texts)] * 2  # the same batch


@pytest.mark.asyncio
async def test_a_breaker_beneath_counts_batches_and_its_refusal_reaches_every_caller() -> None:
    async with serving(Service(fail=100)) as service, aiohttp.ClientSession() as session:
        breaker = circuit_breaker(
            name="batch-service-test", failure_ratio=0.5, minimum_calls=2, open_for=60
        )
        embed = batch(max_size=4, max_wait=0.002)(breaker(client(session, service)))
        for round_ in range(2):  # two failed batches of four: the breaker opens
            await all_of({f"{round_}-{i}": (lambda i=i: embed.one(f"x{i}")) for i in range(4)})
        results = await all_of({f"{i}": (lambda i=i: embed.one(f"y{i}")) for i in range(4)})
    assert len(service.requests) == 2
    assert all(isinstance(error, CircuitOpenError) for error in results.values())
    stats = embed.__wrapped__.breaker.stats()
    assert stats.state == "open"


@pytest.mark.asyncio
async def test_a_timeout_beneath_bounds_each_batch_call() -> None:
    async with serving(Service(overhead=5.0)) as service, aiohttp.ClientSession() as session:
        embed = batch(max_size=3, max_wait=0.002)(timeout(0.05)(client(session, service)))
        results = await all_of({t: (lambda t=t: embed.one(t)) for t in "abc"})
    assert all(isinstance(error, CallTimeoutError) for error in results.values())
    assert len({id(error) for error in results.values()}) == 1  # one batch, one timeout


@pytest.mark.asyncio
async def test_a_rate_limit_beneath_admits_batch_calls() -> None:
    async with serving(Service()) as service, aiohttp.ClientSession() as session:
        limited = rate_limit(1000, burst=1000)(client(session, service))
        embed = batch(max_size=10, max_wait=0.002)(limited)
        results = await all_of({f"{i}": (lambda i=i: embed.one(f"t{i}")) for i in range(50)})
    assert all(isinstance(vector, np.ndarray) for vector in results.values())
    # One start per batch call, not per text: the size of a batch could be its cost.
    assert limited.limiter.stats().admitted == len(service.requests) == 5


@pytest.mark.asyncio
async def test_against_the_demo_stand_in_with_request_and_vector_faults() -> None:
    faults = Faults(
        error_rate=0.3, retry_after=0.01, nan_rate=0.05, wrong_dim_rate=0.0, spike_rate=0.0,
        hang_rate=0.0, latency=(0.001, 0.003), dim=DIM,
    )  # fmt: skip
    async with Upstream(faults, seed=4) as upstream, aiohttp.ClientSession() as session:

        @batch(max_size=20, max_wait=0.005)
        @retry(max_retries=8, base_delay=0.01, exceptions=aiohttp.ClientResponseError)
        async def embed_many(texts: list[str]) -> list[np.ndarray | Exception]:
            async with session.post(upstream.url, json={"texts": texts}) as response:
                response.raise_for_status()
                payload = await response.json()
            vectors = [np.asarray(v, dtype=np.float32) for v in payload["embeddings"]]
            return [v if np.isfinite(v).all() else ValueError("NaN") for v in vectors]

        @retry(max_retries=8, base_delay=0.001, exceptions=ValueError)  # one text again
        async def embed(text: str) -> np.ndarray:
            return await embed_many.one(text)

        texts = [f"passage {i}" for i in range(100)]
        results = await all_of({t: (lambda t=t: embed(t)) for t in texts})
    for text in texts:
        np.testing.assert_allclose(results[text], vector_for(text, DIM), rtol=1e-6)
    assert upstream.requests < 100 / 2
    assert max(upstream.batch_sizes) <= 20
    assert upstream.served["unavailable"] > 0
    assert upstream.served["nan"] > 0


@pytest.mark.anyio
async def test_the_whole_stack_in_process_on_both_backends() -> None:
    """cache > batch > retry > breaker > rate limit > timeout > function, on asyncio and trio."""
    calls: list[list[str]] = []
    failures = [1]  # the first batch call fails once

    @cache_result(ttl=60)
    async def embed(text: str) -> str:
        return await embed_many.one(text)

    @batch(max_size=5, max_wait=0.005)
    @retry(max_retries=2, base_delay=0.001, exceptions=ConnectionError)
    @circuit_breaker(name="batch-stack-test", minimum_calls=50)
    @rate_limit(1000, burst=100)
    @timeout(5)
    async def embed_many(texts: list[str]) -> list[str]:
        calls.append(list(texts))
        if failures[0]:
            failures[0] -= 1
            raise ConnectionError("flaky")
        await anyio.sleep(0.001)
        return [text.upper() for text in texts]

    texts = [f"t{i % 8}" for i in range(40)]
    results = await all_of({f"{i}": (lambda t=t: embed(t)) for i, t in enumerate(texts)})
    assert results == {
        f"{i}": t.upper() for i, t in enumerate(texts)
    }
    sent = [text for call in calls[1:] for text in call]
    assert sorted(sent) == sorted(set(texts))  # 8 distinct texts, each sent once...
    assert calls.count(calls[0]) == 2  # ...after the failed first batch was retried as it was
    assert embed_many.batcher.stats().items == 8
