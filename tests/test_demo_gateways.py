"""The demo's gateways: the layer stack, the event tally, and both gateways over real HTTP."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import aiohttp
import anyio
import numpy as np
import pytest

from buttress import (
    AttemptTimeoutError,
    CacheAccess,
    CircuitStateChanged,
    ConfigurationError,
    RetryScheduled,
    ValidationFailed,
    events,
    retry,
)
from buttress._demo.gateways import (
    LAYER_ORDER,
    RETRY_ON,
    EventTally,
    Layer,
    PlainGateway,
    ResilienceSettings,
    ResilientGateway,
    build_resilient_fetch,
    failure_status,
    resilience_layers,
)
from buttress._demo.upstream import Faults, Upstream, draw_call

FAST = {"latency": (0.0, 0.002), "spike_rate": 0.0, "hang_rate": 0.0}


def faults(**changes: Any) -> Faults:
    values: dict[str, Any] = {"error_rate": 0.0, "nan_rate": 0.0, "wrong_dim_rate": 0.0, **FAST}
    values.update(changes)
    return Faults(**values)


def recording(name: str, log: list[str]) -> Layer:
    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        async def wrapper(*args: Any) -> Any:
            log.append(name)
            return await fn(*args)

        return wrapper

    return Layer(name, decorator)


@pytest.mark.asyncio
async def test_layers_compose_outermost_first() -> None:
    log: list[str] = []

    async def fetch(text: str) -> Any:
        log.append("fetch")
        return np.zeros(2, dtype=np.float32)

    names = ["monitor", "cache_result", "retry", "memory_guard", "validate_output"]
    composed = build_resilient_fetch(fetch, [recording(name, log) for name in names])
    await composed("a")
    assert log == [*names, "fetch"]


@pytest.mark.parametrize(
    "names",
    [["retry", "cache_result"], ["retry", "retry"], ["validate_output", "monitor"], ["cache"]],
)
def test_layers_out_of_the_canonical_order_are_refused(names: list[str]) -> None:
    async def fetch(text: str) -> Any:
        raise AssertionError("never called")

    with pytest.raises(ValueError, match=r"canonical order|unknown layer"):
        build_resilient_fetch(fetch, [recording(name, []) for name in names])


def test_default_layers_follow_the_canonical_order() -> None:
    layers = resilience_layers(ResilienceSettings())
    assert [layer.name for layer in layers] == ["retry"]
    assert all(layer.name in LAYER_ORDER for layer in layers)


def test_settings_give_up_before_the_client() -> None:
    settings = ResilienceSettings.for_client_timeout(2.0)
    assert settings.deadline < 2.0
    assert settings.attempt_timeout < settings.deadline
    assert settings.max_delay <= settings.deadline


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
        "bulkhead_rejections": 0,
        "memory_rejections": 0,
    }
    assert others.retries == 1


def test_failure_statuses() -> None:
    assert failure_status(AttemptTimeoutError("slow"))[0] == 504
    assert failure_status(aiohttp.ServerDisconnectedError())[0] == 502
    assert failure_status(ValueError("NaN"))[0] == 502
    assert failure_status(ConfigurationError("shed"))[0] == 502  # a ValueError first
    assert failure_status(RuntimeError("bug"))[0] == 500


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
    settings = ResilienceSettings(deadline=5.0, max_retries=3)
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


@pytest.mark.asyncio
async def test_a_hung_upstream_call_is_abandoned_and_retried() -> None:
    upstream_faults = faults(hang_rate=0.5, hang_seconds=30)
    settings = ResilienceSettings(deadline=10.0, attempt_timeout=0.2, max_retries=6)
    upstream = Upstream(upstream_faults, seed=1)
    with anyio.fail_after(20):
        async with (
            upstream,
            aiohttp.ClientSession() as session,
            ResilientGateway(upstream.url, settings=settings) as gateway,
        ):
            statuses = [(await get(session, gateway.url, f"t{i}"))[0] for i in range(8)]
            upstream.release()
    assert statuses == [200] * 8
    assert upstream.served["hang"] == gateway.tally.retries > 0


@pytest.mark.asyncio
async def test_a_new_layer_plugs_in_and_is_counted() -> None:
    """What adding validate_output will look like: one Layer, counted from its events."""

    def check_vector(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        async def wrapper(text: str) -> Any:
            vector = await fn(text)
            if vector.shape != (768,) or not np.isfinite(vector).all():
                events.emit(ValidationFailed(wrapper.__qualname__, "output", ()))
                raise ValueError("invalid vector")
            return vector

        return wrapper

    settings = ResilienceSettings(deadline=5.0, max_retries=6)
    layers = [
        Layer("retry", retry(max_retries=6, base_delay=0.001, exceptions=(*RETRY_ON, ValueError))),
        Layer("validate_output", check_vector),
    ]
    upstream_faults = faults(nan_rate=0.3, wrong_dim_rate=0.2)
    async with Upstream(upstream_faults, seed=2) as upstream, aiohttp.ClientSession() as session:
        gateway = ResilientGateway(upstream.url, layers=layers, settings=settings)
        async with gateway:
            answers = [await get(session, gateway.url, f"t{i}") for i in range(20)]
    assert gateway.layer_names == ("retry", "validate_output")
    for status, payload, _ in answers:
        if status == 200:
            assert len(payload["embedding"]) == 768
            assert all(math.isfinite(v) for v in payload["embedding"])
        else:
            assert status == 502
    invalid = upstream.served["nan"] + upstream.served["wrong_dim"]
    assert gateway.tally.invalid_caught == invalid > 0
    assert gateway.tally.retries == upstream.total - len(answers)


def test_two_resilient_gateways_are_told_apart() -> None:
    first = ResilientGateway("http://127.0.0.1:9/x", name="one")
    second = ResilientGateway("http://127.0.0.1:9/x", name="two")
    assert first.tally.function != second.tally.function
    assert first.fetch.__qualname__ == first.tally.function


def test_resilient_gateway_refuses_misordered_layers() -> None:
    with pytest.raises(ValueError, match="canonical order"):
        ResilientGateway(
            "http://127.0.0.1:9/x",
            layers=[recording("memory_guard", []), recording("monitor", [])],
        )
