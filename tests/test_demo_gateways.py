"""The demo's gateways: the resilient one's policy, the event tally, both over real HTTP."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import numpy as np
import pytest

from buttress import (
    ArraySpec,
    AttemptTimeoutError,
    BatchDispatched,
    CacheAccess,
    CallTimeoutError,
    CircuitOpenError,
    CircuitStateChanged,
    ConfigurationError,
    Event,
    InputValidationError,
    RateLimited,
    RetryScheduled,
    TimedOut,
    ValidationFailed,
    events,
    monitoring_stats,
    policy,
)
from buttress._demo.gateways import (
    MAX_TEXT,
    RETRY_ON,
    EventTally,
    PlainGateway,
    ResilienceSettings,
    ResilientGateway,
    failure_status,
    resilience_policy,
)
from buttress._demo.upstream import Faults, Upstream, draw_call
from buttress._monitoring._emitter import exporter

FAST = {"latency": (0.0, 0.002), "spike_rate": 0.0, "hang_rate": 0.0}
#: A breaker that never opens, for tests about the other layers.
NO_BREAKER = {"breaker_minimum_calls": 1_000_000}


def faults(**changes: Any) -> Faults:
    values: dict[str, Any] = {"error_rate": 0.0, "nan_rate": 0.0, "wrong_dim_rate": 0.0, **FAST}
    values.update(changes)
    return Faults(**values)


@pytest.fixture(autouse=True)
def no_exporter_thread_left() -> Iterator[None]:
    """@monitor logs failures from a background thread; stop it if this test started it."""
    running = monitoring_stats().running
    yield
    if not running:
        assert exporter.stop(10.0)


def wrapper_chain(fn: Any) -> list[str]:
    names = []
    while fn is not None:
        names.append(fn.__code__.co_name)
        fn = getattr(fn, "__wrapped__", None)
    return names


def test_the_resilient_fetch_is_one_policy_in_the_canonical_order() -> None:
    gateway = ResilientGateway("http://127.0.0.1:9/x")
    assert gateway.layer_names == (
        "monitor", "validate", "cache", "batch", "retry", "circuit_breaker", "bulkhead",
        "memory_guard", "attempt_timeout", "validate_output",
    )  # fmt: skip
    # Per text, above the batching...
    assert wrapper_chain(gateway.fetch) == [
        "monitor_wrapper",
        "validate_input_wrapper",
        "cache_wrapper",
        "one",
    ]
    # ...and per upstream request, below it.
    assert wrapper_chain(gateway.batched) == [
        "batch_wrapper",
        "retry_wrapper",
        "circuit_breaker_wrapper",
        "bulkhead_wrapper",
        "memory_guard_wrapper",
        "timeout_wrapper",
        "validate_output_wrapper",
        "embed",
    ]
    assert repr(gateway.policy).startswith("policy(monitor(")
    # The handles of the layers reach the outermost wrappers.
    assert gateway.fetch.cache.stats().hits == 0  # type: ignore[attr-defined]
    assert gateway.batched.breaker.state == "closed"
    assert gateway.batched.cache is gateway.fetch.cache  # type: ignore[attr-defined]
    assert gateway.batched.batch.stats().max_size == gateway.settings.batch_size
    assert gateway.fetch.__qualname__ == "resilient.embed.one"


def test_settings_give_up_before_the_client_and_cache_for_the_run() -> None:
    settings = ResilienceSettings.for_client_timeout(2.0, duration=20.0)
    assert settings.deadline < 2.0
    assert settings.attempt_timeout < settings.deadline
    assert settings.max_delay <= settings.deadline
    assert settings.breaker_open_for < 2.0
    assert settings.cache_ttl == 20.0
    assert "cache(ttl=20.0" in repr(resilience_policy(settings))
    assert "batch(max_size=32, max_wait=0.005)" in repr(resilience_policy(settings))


def test_a_policy_that_cannot_work_is_refused_when_built() -> None:
    with pytest.raises(ConfigurationError, match="max_concurrent"):
        resilience_policy(ResilienceSettings(max_concurrent=0))


def test_event_tally_counts_its_own_function_only() -> None:
    tally = EventTally("mine.embed")
    others = EventTally("theirs.embed")
    tally.start()
    others.start()
    try:
        for function in ("mine.embed", "theirs.embed", "mine.embed"):
            events.emit(RetryScheduled(function, 1, None, None, 0.1, 0.0))
        for result in ("hit", "hit", "join", "miss", "stale"):
            events.emit(CacheAccess("mine.embed", result))  # type: ignore[arg-type]
        events.emit(CircuitStateChanged("mine.embed", "b", "closed", "open"))
        events.emit(CircuitStateChanged("mine.embed", "b", "open", "half_open"))
        events.emit(ValidationFailed("mine.embed", "output", ()))
        events.emit(ValidationFailed("mine.embed", "input", ()))
        events.emit(TimedOut("mine.embed", 0.3))
        events.emit(BatchDispatched("mine.embed", 3, 0.001, "full", 1))
        events.emit(BatchDispatched("mine.embed", 2, 0.005, "max_wait", 1))
        events.emit(RateLimited("mine.embed", 0.1, False))
        events.emit(RateLimited("mine.embed", 0.0, True))
        events.emit(RateLimited("mine.embed", 0.2, False))
    finally:
        tally.stop()
        others.stop()
    events.emit(RetryScheduled("mine.embed", 1, None, None, 0.1, 0.0))  # after stop()
    assert tally.counts() == {
        "retries": 2,
        "gave_up": 0,
        "cache_hits": 2,
        "cache_joins": 1,
        "cache_misses": 1,
        "cache_stale": 1,
        "breaker_openings": 1,
        "breaker_rejections": 0,
        "invalid_caught": 1,
        "invalid_input": 1,
        "bulkhead_rejections": 0,
        "memory_rejections": 0,
        "attempt_timeouts": 1,
        "batches": 2,
        "batched_texts": 5,
        "rate_waits": 2,
        "rate_refusals": 1,
    }
    assert tally.mean_batch == 2.5
    assert others.retries == 1


def test_failure_statuses() -> None:
    assert failure_status(AttemptTimeoutError("slow"))[0] == 504
    assert failure_status(CallTimeoutError("slow", function="f", seconds=0.3))[0] == 504
    assert failure_status(aiohttp.ServerDisconnectedError())[0] == 502
    assert failure_status(ValueError("NaN"))[0] == 502
    assert failure_status(ConfigurationError("shed"))[0] == 502  # a ValueError first
    open_error = CircuitOpenError(
        "open", breaker="b", state="open", retry_after=1.0, retry_at=None, function="f"
    )
    assert failure_status(open_error)[0] == 503
    assert failure_status(InputValidationError("f", ()))[0] == 422
    assert failure_status(RuntimeError("bug"))[0] == 500


@asynccontextmanager
async def resilient(
    upstream: Upstream, **options: Any
) -> AsyncIterator[tuple[aiohttp.ClientSession, ResilientGateway]]:
    """The upstream served, a client session, and a resilient gateway in front."""
    async with (
        upstream,
        aiohttp.ClientSession() as session,
        ResilientGateway(upstream.url, **options) as gateway,
    ):
        yield session, gateway


async def get(session: aiohttp.ClientSession, url: str, text: str) -> tuple[int, Any, Any]:
    async with session.get(url, params={"text": text}) as response:
        return response.status, await response.json(), response.headers.get("Retry-After")


@pytest.mark.asyncio
async def test_plain_gateway_passes_faults_through() -> None:
    async with aiohttp.ClientSession() as session:
        upstream = Upstream(faults(error_rate=1.0, retry_after=3))
        async with upstream, PlainGateway(upstream.url) as gateway:
            status, _, retry_after = await get(session, gateway.url, "a")
        assert (status, retry_after) == (503, "3")
        upstream = Upstream(faults(nan_rate=1.0))
        async with upstream, PlainGateway(upstream.url) as gateway:
            status, payload, _ = await get(session, gateway.url, "a")
            async with session.get(gateway.url) as response:
                assert response.status == 400
        assert status == 200
        assert any(math.isnan(v) for v in payload["embedding"])
        assert gateway.stats.requests == 2
        assert gateway.stats.upstream_calls == upstream.total == 1
        assert dict(gateway.stats.statuses) == {200: 1, 400: 1}


@pytest.mark.asyncio
async def test_resilient_gateway_retries_503s_as_the_upstream_asks() -> None:
    seed, retry_after = 4, 0.01
    upstream_faults = faults(error_rate=0.6, retry_after=retry_after)
    texts = [f"doc-{i}" for i in range(30)]
    settings = ResilienceSettings(deadline=5.0, max_retries=3, **NO_BREAKER)
    delays: list[float] = []
    async with Upstream(upstream_faults, seed=seed) as upstream, aiohttp.ClientSession() as session:
        gateway = ResilientGateway(upstream.url, settings=settings)
        subscription = events.subscribe(lambda event: delays.append(event.delay), RetryScheduled)
        with subscription:
            async with gateway:
                statuses = [(await get(session, gateway.url, text))[0] for text in texts]
    # Each text is asked once, so its attempts meet the faults of calls 0, 1, 2, ...
    expected = [
        200
        if any(
            draw_call(upstream_faults, seed, text, n).fault == "ok"
            for n in range(settings.max_retries + 1)
        )
        else 503
        for text in texts
    ]
    assert statuses == expected
    assert 200 in statuses
    assert 503 in statuses
    assert upstream.total == gateway.stats.upstream_calls == len(texts) + gateway.tally.retries
    assert gateway.tally.retries == len(delays) > 0
    assert set(delays) == {retry_after}  # the server's Retry-After, not the backoff
    assert gateway.tally.gave_up == statuses.count(503)
    assert gateway.tally.cache_misses == len(texts)


@pytest.mark.asyncio
async def test_a_hung_upstream_call_is_abandoned_and_retried() -> None:
    upstream_faults = faults(hang_rate=0.5, hang_seconds=30)
    settings = ResilienceSettings(deadline=10.0, attempt_timeout=0.2, max_retries=6, **NO_BREAKER)
    upstream = Upstream(upstream_faults, seed=1)
    with anyio.fail_after(30):
        async with (
            upstream,
            aiohttp.ClientSession() as session,
            ResilientGateway(upstream.url, settings=settings) as gateway,
        ):
            statuses = [(await get(session, gateway.url, f"t{i}"))[0] for i in range(8)]
            upstream.release()
    assert statuses == [200] * 8
    # Each hang became a timed-out attempt (the policy's attempt_timeout), then a retry.
    assert upstream.served["hang"] == gateway.tally.attempt_timeouts == gateway.tally.retries > 0


@pytest.mark.asyncio
async def test_invalid_vectors_are_caught_retried_and_never_cached() -> None:
    settings = ResilienceSettings(deadline=5.0, max_retries=6, base_delay=0.001, **NO_BREAKER)
    upstream_faults = faults(nan_rate=0.3, wrong_dim_rate=0.2)
    texts = [f"t{i}" for i in range(20)]
    upstream = Upstream(upstream_faults, seed=2)
    async with resilient(upstream, settings=settings) as (session, gateway):
        answers = [await get(session, gateway.url, text) for text in texts]
        calls_before = upstream.total
        again = [await get(session, gateway.url, text) for text in texts]
    for status, payload, _ in answers + again:
        assert status == 200
        assert len(payload["embedding"]) == 768
        assert all(math.isfinite(v) for v in payload["embedding"])
    invalid = upstream.served["nan"] + upstream.served["wrong_dim"]
    assert gateway.tally.invalid_caught == invalid > 0
    assert gateway.tally.retries == upstream.total - len(texts)
    # The second round came from the cache: valid vectors only were stored.
    assert upstream.total == calls_before
    assert gateway.tally.cache_hits == len(texts)


@pytest.mark.asyncio
async def test_a_stampede_on_a_cold_key_costs_one_upstream_call() -> None:
    upstream = Upstream(faults(latency=(0.05, 0.05)))
    statuses: list[int] = []
    async with resilient(upstream) as (session, gateway):

        async def one() -> None:
            statuses.append((await get(session, gateway.url, "trending"))[0])

        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(one)
    assert statuses == [200] * 20
    assert upstream.total == 1
    tally = gateway.tally
    assert tally.cache_misses == 1
    assert tally.cache_joins + tally.cache_hits == 19
    assert tally.cache_joins > 0


@pytest.mark.asyncio
async def test_input_validation_refuses_before_any_upstream_call() -> None:
    upstream = Upstream(faults())
    async with resilient(upstream) as (session, gateway):
        status, payload, _ = await get(session, gateway.url, "x" * (MAX_TEXT + 1))
    assert status == 422
    assert "invalid request" in payload["error"]
    assert upstream.total == 0
    assert gateway.tally.invalid_input == 1


@pytest.mark.asyncio
async def test_the_breaker_opens_in_an_outage_and_closes_after_it() -> None:
    settings = ResilienceSettings(
        deadline=0.5,
        attempt_timeout=0.2,
        breaker_window=0.5,
        breaker_minimum_calls=5,
        breaker_open_for=0.1,
    )
    upstream = Upstream(faults(outage_start=0.2, outage_length=0.6), seed=3)
    seen: list[Event] = []
    statuses: list[tuple[float, int]] = []
    async with resilient(upstream, settings=settings) as (session, gateway):
        breaker = gateway.batched.breaker
        with events.subscribe(seen.append), anyio.fail_after(30):
            origin = time.monotonic()
            upstream.begin(origin)
            # Distinct texts, so that every request needs the upstream; on until the
            # outage is over and the breaker has closed again.
            for i in itertools.count():
                status = (await get(session, gateway.url, f"t{i}"))[0]
                since = time.monotonic() - origin
                statuses.append((since, status))
                if since > 0.8 and status == 200 and breaker.state == "closed":
                    break
                await anyio.sleep(0.02)
    tally = gateway.tally
    assert all(status == 200 for since, status in statuses if since < 0.2)
    assert 503 in {status for _, status in statuses}
    assert tally.breaker_openings >= 1
    assert tally.breaker_rejections > 0
    # Refused attempts never reached the upstream; each request is a batch or a retry.
    assert upstream.total == gateway.stats.upstream_calls
    assert upstream.total == tally.batches + tally.retries - tally.breaker_rejections
    changes = [(e.old, e.new) for e in seen if isinstance(e, CircuitStateChanged)]
    assert changes[0] == ("closed", "open")
    assert changes[-1] == ("half_open", "closed")


@pytest.mark.asyncio
async def test_every_event_of_a_run_names_the_tallied_function() -> None:
    """The tally's filter is right: each decorator, the breaker included, names the
    decorated function (``<gateway>.embed``) in its events, so none is missed."""
    settings = ResilienceSettings(
        deadline=0.6, attempt_timeout=0.1, breaker_minimum_calls=5, breaker_open_for=0.1
    )
    upstream_faults = faults(
        error_rate=0.2,
        retry_after=0.01,
        nan_rate=0.1,
        hang_rate=0.05,
        hang_seconds=5,
        outage_start=0.3,
        outage_length=0.3,
    )
    seen: list[Event] = []
    upstream = Upstream(upstream_faults, seed=5)
    async with resilient(upstream, settings=settings, name="named") as (session, gateway):
        with events.subscribe(seen.append):
            upstream.begin()

            async def one(i: int) -> None:
                await anyio.sleep(i * 0.01)
                await get(session, gateway.url, f"t{i % 80}")

            async with anyio.create_task_group() as group:
                for i in range(120):
                    group.start_soon(one, i)
            upstream.release()
    kinds = {type(event).__name__ for event in seen}
    assert {"CacheAccess", "RetryScheduled", "ValidationFailed", "CircuitStateChanged"} <= kinds
    # The per-text layers name the single-text call, the per-request ones the batch function.
    assert {event.function for event in seen} == {"named.embed", "named.embed.one"}
    assert gateway.tally.function == "named.embed"
    breakers = {getattr(event, "breaker", None) for event in seen} - {None}
    assert breakers == {"named.embed"}
    counts = gateway.tally.counts()
    counted = sum(counts.values()) - counts["batched_texts"]  # a sum of sizes, not events
    tallied_kinds = (
        "RetryScheduled", "RetryGaveUp", "CacheAccess", "CircuitRejected", "ValidationFailed",
        "BulkheadRejected", "TimedOut", "BatchDispatched",
    )  # fmt: skip
    expected = sum(type(e).__name__ in tallied_kinds for e in seen) + sum(
        isinstance(e, CircuitStateChanged) and e.new == "open" for e in seen
    )
    assert counted == expected


@pytest.mark.asyncio
async def test_a_policy_of_ones_own_plugs_in_and_is_counted() -> None:
    custom = policy(
        retry={"max_retries": 6, "base_delay": 0.001, "exceptions": RETRY_ON},
        validate_output=ArraySpec(shape=(768,), dtype="float32", finite=True),
    )
    upstream_faults = faults(nan_rate=0.3, wrong_dim_rate=0.2)
    async with Upstream(upstream_faults, seed=2) as upstream, aiohttp.ClientSession() as session:
        gateway = ResilientGateway(upstream.url, policy=custom)
        async with gateway:
            answers = [await get(session, gateway.url, f"t{i}") for i in range(20)]
    assert gateway.layer_names == ("retry", "validate_output", "batch")
    for status, payload, _ in answers:
        if status == 200:
            assert np.isfinite(payload["embedding"]).all()
        else:
            assert status == 502
    invalid = upstream.served["nan"] + upstream.served["wrong_dim"]
    assert gateway.tally.invalid_caught == invalid > 0
    assert gateway.tally.retries == upstream.total - len(answers)


def test_two_resilient_gateways_are_told_apart() -> None:
    first = ResilientGateway("http://127.0.0.1:9/x", name="one")
    second = ResilientGateway("http://127.0.0.1:9/x", name="two")
    assert first.tally.function != second.tally.function
    assert first.fetch.__qualname__ == first.tally.function + ".one"
    assert first.batched.breaker is not second.batched.breaker
