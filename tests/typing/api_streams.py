"""Streams and blocks as a user's type checker sees them. Type-checked by mypy, never executed.

mypy --strict tests/typing
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from typing_extensions import assert_type

from buttress import (
    Attempt,
    Bulkhead,
    CircuitBreaker,
    MemoryAdmission,
    MemoryGuard,
    RateLimiter,
    Retrying,
    StreamResume,
    Timeout,
    bulkhead,
    circuit_breaker,
    memory_guard,
    monitor,
    policy,
    rate_limit,
    retry,
    retrying,
    timeout,
)

# --- decorated streams keep their parameters and item types --------------------------


def resume_from(state: StreamResume) -> dict[str, int] | None:
    assert_type(state.items, int)
    return {"offset": state.items}


@monitor
@timeout(60, first_item=2, idle=10)
@retry(max_retries=2, on=lambda e: e.status >= 500, resume=resume_from)
@circuit_breaker
@bulkhead(8)
@rate_limit(100)
@memory_guard(reserve="64MiB")
async def tokens(prompt: str, offset: int = 0) -> AsyncIterator[str]:
    yield prompt


@retry
@bulkhead(2)
def lines(path: str) -> Iterator[str]:
    yield path


gateway = policy(monitor=True, timeout={"seconds": 60, "first_item": 2}, retry=2, bulkhead=8)


@gateway
async def relayed(prompt: str) -> AsyncIterator[bytes]:
    yield prompt.encode()


async def use_streams() -> None:
    async for token in tokens("hello", offset=3):
        assert_type(token, str)
    for line in lines("/tmp/x"):
        assert_type(line, str)
    async for chunk in relayed("x"):
        assert_type(chunk, bytes)
    tokens(1)  # type: ignore[arg-type]


# --- the objects behind the decorators, used as blocks -------------------------------

pool = bulkhead(4)
assert_type(pool, Bulkhead)
quota = rate_limit(10, per=1)
assert_type(quota, RateLimiter)
guard = memory_guard(max_percent=80)
assert_type(guard, MemoryGuard)
limit = timeout(5)
assert_type(limit, Timeout)
db = circuit_breaker(name="db", failure_ratio=0.5)
assert_type(db, CircuitBreaker)


@pool
async def pooled(x: int) -> int:
    return x


async def use_blocks() -> None:
    assert_type(await pooled(1), int)
    async with pool:
        pass
    with pool:
        pass
    async with db:
        pass
    with db:
        pass
    async with limit:
        pass
    admission = guard.admit(reserve="2GiB")
    assert_type(admission, MemoryAdmission)
    with admission:
        pass
    async with guard.admit(reserve=1024):
        pass

    loop = retrying(max_retries=3, deadline=10, on=lambda e: True)
    assert_type(loop, Retrying)
    for attempt in loop:
        assert_type(attempt, Attempt)
        with attempt:
            attempt.result = 1
    async for attempt in retrying(attempt_timeout=1):
        with attempt:
            pass
    retrying(max_retries="3")  # type: ignore[arg-type]
