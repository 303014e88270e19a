"""Settings declared once, handles named after their decorators, a policy's handles typed.

The public API as a user's type checker sees it: type-checked by mypy --strict, never
executed. Lines ending in ``type: ignore[...]`` must be rejected (strict mode fails on an
ignore that is not needed).
"""

from __future__ import annotations

from datetime import timedelta

from typing_extensions import assert_type

from buttress import (
    ArraySpec,
    BreakerState,
    BulkheadStats,
    CacheStats,
    CallStats,
    CircuitBreaker,
    MemoryGuard,
    MonitorHandle,
    Policy,
    RateLimiter,
    RateLimiterStats,
    cache_result,
    circuit_breaker,
    memory_guard,
    monitor,
    policy,
    rate_limit,
    retry,
    validate_input,
    validate_output,
)

# --- bare and called forms, typed from the one declaration of each decorator's settings --


@retry
def bare_retry(x: int, *, label: str = "") -> str:
    return f"{x}{label}"


@retry(max_retries=5, base_delay=timedelta(milliseconds=10), jitter=None)
async def called_retry(x: int) -> float:
    return float(x)


@memory_guard
def bare_guard(batch: list[float]) -> float:
    return sum(batch)


@memory_guard(max_percent=90, reserve="512MiB", action="wait")
async def called_guard(batch: list[float]) -> float:
    return sum(batch)


@monitor
def bare_monitor(text: str) -> int:
    return len(text)


@monitor("ranker", log_level="DEBUG", labels={"model": "bm25"})
async def named_monitor(query: str, k: int = 10) -> list[str]:
    return [query] * k


@validate_input
def bare_input(x: int) -> int:
    return x


@validate_input(on_error="default", default=0, x=int)
def called_input(x: int) -> int:
    return x


@validate_output
def bare_output(x: int) -> int:
    return x


@validate_output(ArraySpec(shape=(3,)), on_error="raise")
def called_output(x: int) -> list[float]:
    return [0.0] * 3


@validate_output(int)  # a class is a spec, not the function to decorate
def spec_is_a_class(x: str) -> int:
    return len(x)


async def declared_forms_keep_types() -> None:
    assert_type(bare_retry(1, label="a"), str)
    assert_type(await called_retry(1), float)
    assert_type(bare_guard([1.0]), float)
    assert_type(await called_guard([1.0]), float)
    assert_type(bare_monitor("a"), int)
    assert_type(await named_monitor("q", k=2), list[str])
    assert_type(bare_input(1), int)
    assert_type(called_input(1), int)
    assert_type(bare_output(1), int)
    assert_type(called_output(1), list[float])
    assert_type(spec_is_a_class("abc"), int)
    bare_retry("1")  # type: ignore[arg-type]
    await named_monitor(1)  # type: ignore[arg-type]


def settings_are_checked() -> None:
    retry(max_retries="3")  # type: ignore[call-overload]
    retry(max_retry=3)  # type: ignore[call-overload]
    retry(3)  # type: ignore[call-overload]
    memory_guard(action="panic")  # type: ignore[call-overload]
    monitor(name=3)  # type: ignore[call-overload]
    monitor(sample=0.5)  # type: ignore[call-overload]
    circuit_breaker(failure_ratio="high")  # type: ignore[call-overload]
    validate_input(on_error=3)  # type: ignore[call-overload]
    validate_output(on_error=3)  # type: ignore[call-overload]
    cache_result(ttl="1m")  # type: ignore[call-overload]
    cache_result(tll=60)  # type: ignore[call-overload]


# --- every handle under its decorator's own name, typed --------------------------------


@circuit_breaker
def guarded(x: int) -> int:
    return x


@rate_limit(10)
def throttled(x: int) -> int:
    return x


def handles_are_typed() -> None:
    assert_type(bare_monitor.monitor, MonitorHandle)
    assert_type(named_monitor.monitor.stats(), CallStats)
    assert_type(guarded.circuit_breaker, CircuitBreaker)
    assert_type(guarded.breaker.state, BreakerState)
    assert_type(throttled.rate_limit, RateLimiter)
    assert_type(throttled.limiter.stats(), RateLimiterStats)
    assert_type(bare_guard.memory_guard, MemoryGuard)
    assert_type(called_guard.memory_guard.reserved, int)
    print(bare_retry.retry)  # type: ignore[attr-defined]  # @retry has no handle


class Model:
    @monitor
    def predict(self, x: int) -> int:
        return x


def method_handles() -> None:
    assert_type(Model().predict(1), int)
    assert_type(Model().predict.monitor, MonitorHandle)
    assert_type(Model.predict.monitor, MonitorHandle)


# --- a policy's function shows the handles of its layers --------------------------------

stack = policy(cache=60, retry=3, circuit_breaker="search", bulkhead=4, rate_limit=100)


@stack
async def search(query: str, k: int = 10) -> list[str]:
    return [query] * k


@policy(monitor=True, memory_guard=True)
def embed(text: str) -> list[float]:
    return [0.0]


class Ranker:
    @policy(cache=True)
    def score(self, item: int) -> float:
        return float(item)


async def policy_handles() -> None:
    assert_type(await search("q", k=3), list[str])
    assert_type(search.cache.stats(), CacheStats)
    assert_type(search.cache.invalidate("q", k=3), bool)
    assert_type(search.circuit_breaker.state, BreakerState)
    assert_type(search.breaker, CircuitBreaker)
    assert_type(search.bulkhead.stats(), BulkheadStats)
    assert_type(search.rate_limit.stats(), RateLimiterStats)
    assert_type(search.limiter, RateLimiter)
    assert_type(search.policy, Policy)
    assert_type(search.policy.layers, tuple[str, ...])
    assert_type(embed.monitor.stats(), CallStats)
    assert_type(embed.memory_guard, MemoryGuard)
    assert_type(embed("x"), list[float])
    search.cache.invalidate(1)  # type: ignore[arg-type]
    print(search.retry)  # type: ignore[attr-defined]  # @retry has no handle
    ranker = Ranker()
    assert_type(ranker.score(3), float)
    assert_type(ranker.score.cache.invalidate(ranker, 3), bool)
    assert_type(Ranker.score.cache.stats(), CacheStats)
    ranker.score.cache.invalidate(3)  # type: ignore[arg-type, call-arg]  # self comes first
