"""The public API as a user's type checker sees it. Type-checked by mypy, never executed.

mypy --strict tests/typing
"""

from __future__ import annotations

from datetime import timedelta

from typing_extensions import assert_type

from buttress import (
    BreakerState,
    BreakerStats,
    BulkheadStats,
    HedgeStats,
    RateLimiterStats,
    RetryBudget,
    RetryBudgetStats,
    bulkhead,
    circuit_breaker,
    fallback,
    hedge,
    rate_limit,
    retry,
    timeout,
)

# --- policies: decorated functions keep parameters and return types ------------------


@circuit_breaker
def breaker_bare(x: int, *, label: str = "a") -> str:
    return f"{x}{label}"


@circuit_breaker(name="vector-db", failure_ratio=0.5, window=timedelta(seconds=30))
async def breaker_async(query: list[float], k: int = 10) -> list[int]:
    return list(range(k))


@timeout(2.5)
async def timed(text: str) -> bytes:
    return text.encode()


@bulkhead(4, max_waiting=10, wait_timeout=1)
def limited_sync(batch: list[float]) -> float:
    return sum(batch)


@rate_limit(50, per=timedelta(seconds=1), burst=5)
async def throttled(url: str) -> int:
    return len(url)


@fallback([0.0])
async def embed(text: str) -> list[float]:
    return [1.0]


@fallback
def maybe(x: int) -> int:
    return x


@fallback(factory=lambda exc: "degraded")
def labelled(x: int) -> str:
    return str(x)


@hedge("p95", max_hedges=2)
async def search(query: str) -> list[str]:
    return [query]


budget = RetryBudget(ratio=0.1, min_per_second=1)


@retry(max_retries=2, budget=budget)
async def budgeted(x: int) -> float:
    return float(x)


async def policy_callers() -> None:
    assert_type(breaker_bare(1), str)
    assert_type(breaker_bare(1, label="b"), str)
    assert_type(await breaker_async([0.1]), list[int])
    assert_type(await timed("x"), bytes)
    assert_type(limited_sync([1.0]), float)
    assert_type(await throttled("u"), int)
    assert_type(await embed("x"), list[float])
    assert_type(maybe(1), int | None)
    assert_type(labelled(1), str)
    assert_type(await search("q"), list[str])
    assert_type(await budgeted(1), float)
    breaker_bare("1")  # type: ignore[arg-type]
    await timed(1)  # type: ignore[arg-type]
    limited_sync(batch="x")  # type: ignore[arg-type]
    await search()  # type: ignore[call-arg]


def policy_handles() -> None:
    assert_type(breaker_bare.breaker.state, BreakerState)
    assert_type(breaker_async.breaker.stats(), BreakerStats)
    assert_type(limited_sync.bulkhead.stats(), BulkheadStats)
    assert_type(throttled.limiter.stats(), RateLimiterStats)
    assert_type(search.hedge.stats(), HedgeStats)
    assert_type(budget.stats(), RetryBudgetStats)
    breaker_bare.breaker.reset()
    breaker_bare.breaker.force_open()


def blocking(x: int) -> int:
    return x


def policy_refusals() -> None:
    timeout(1)(blocking)  # type: ignore[arg-type]
    hedge(0.1)(blocking)  # type: ignore[arg-type]
