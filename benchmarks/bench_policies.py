"""Circuit breaker, bulkhead, rate limiter, timeout and hedge beside their peers.

Success-path overhead (every call admitted, nothing fails): breakers beside pybreaker,
aiobreaker and purgatory; bulkheads beside a hand-written semaphore (no peer library has
one); the rate limiter beside aiolimiter when it never has to wait. Then the rate
limiter's accuracy under load: how long N concurrent callers take at a target rate, and
the most starts any one-period window saw.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

import buttress
from _harness import Comparison, time_async, time_sync


def work(x: int) -> int:
    return x + 1


async def awork(x: int) -> int:
    return x + 1


# --- circuit breakers ------------------------------------------------------------------


def _breakers() -> list[tuple[str, str, Any, Any]]:
    """(name, kind, sync-wrapped, async-wrapped or None) for every breaker installed."""
    found: list[tuple[str, str, Any, Any]] = [
        (
            "buttress.circuit_breaker",
            "ours",
            buttress.circuit_breaker(work),
            buttress.circuit_breaker(awork),
        ),
        (
            "buttress.circuit_breaker",
            "ours",
            buttress.circuit_breaker(slow_call_duration=1.0)(work),
            buttress.circuit_breaker(slow_call_duration=1.0)(awork),
        ),
    ]
    try:
        import pybreaker

        found.append(("pybreaker", "peer", pybreaker.CircuitBreaker()(work), None))
    except ImportError:
        pass
    try:
        import aiobreaker

        breaker = aiobreaker.CircuitBreaker()
        found.append(("aiobreaker", "peer", breaker(work), breaker(awork)))
    except ImportError:
        pass
    try:
        import purgatory

        sync_factory = purgatory.SyncCircuitBreakerFactory()
        async_factory = purgatory.AsyncCircuitBreakerFactory()
        found.append(
            ("purgatory", "peer", sync_factory("bench")(work), async_factory("bench")(awork))
        )
    except ImportError:
        pass
    return found


def breakers(quick: bool) -> list[Comparison]:
    sync = Comparison(
        "circuit breaker, success path, sync function",
        note="The second buttress row also times each call (slow_call_duration set).",
    )
    asyn = Comparison("circuit breaker, success path, async function")
    sync.add("bare call", time_sync(lambda: work(1), quick=quick), "bare")
    asyn.add("bare await", time_async(lambda: awork(1), quick=quick), "bare")
    for index, (name, kind, fs, fa) in enumerate(_breakers()):
        note = "slow-call timing" if index == 1 else ""
        sync.add(name, time_sync(lambda fs=fs: fs(1), quick=quick), kind, note)
        if fa is not None:
            asyn.add(name, time_async(lambda fa=fa: fa(1), quick=quick), kind, note)
    return [sync, asyn]


# --- bulkheads -------------------------------------------------------------------------


def _semaphore_sync(fn: Callable[[int], int]) -> Callable[[int], int]:
    semaphore = threading.BoundedSemaphore(10)

    def wrapper(x: int) -> int:
        with semaphore:
            return fn(x)

    return wrapper


def _limiter_async(fn: Callable[[int], Awaitable[int]]) -> Callable[[int], Awaitable[int]]:
    limiter = anyio.CapacityLimiter(10)

    async def wrapper(x: int) -> int:
        async with limiter:
            return await fn(x)

    return wrapper


def _semaphore_async(fn: Callable[[int], Awaitable[int]]) -> Callable[[int], Awaitable[int]]:
    semaphore = asyncio.Semaphore(10)

    async def wrapper(x: int) -> int:
        async with semaphore:
            return await fn(x)

    return wrapper


def bulkheads(quick: bool) -> list[Comparison]:
    note = (
        "No peer library has a bulkhead; the floors are the primitives one would hand-write "
        "(per event loop, where buttress's limit is process-wide)."
    )
    sync = Comparison("bulkhead, slot free, sync function", note=note)
    asyn = Comparison("bulkhead, slot free, async function", note=note)
    sync.add("bare call", time_sync(lambda: work(1), quick=quick), "bare")
    asyn.add("bare await", time_async(lambda: awork(1), quick=quick), "bare")
    ours_sync = buttress.bulkhead(10)(work)
    ours_async = buttress.bulkhead(10)(awork)
    sync.add("buttress.bulkhead", time_sync(lambda: ours_sync(1), quick=quick), "ours")
    floor_sync = _semaphore_sync(work)
    sync.add("threading.BoundedSemaphore", time_sync(lambda: floor_sync(1), quick=quick), "floor")
    asyn.add("buttress.bulkhead", time_async(lambda: ours_async(1), quick=quick), "ours")
    capacity = _limiter_async(awork)
    asyn.add("anyio.CapacityLimiter", time_async(lambda: capacity(1), quick=quick), "floor")
    semaphore = _semaphore_async(awork)
    asyn.add("asyncio.Semaphore", time_async(lambda: semaphore(1), quick=quick), "floor")
    return [sync, asyn]


# --- rate limiters -----------------------------------------------------------------------


def limiter_overhead(quick: bool) -> list[Comparison]:
    asyn = Comparison(
        "rate limit, never waiting (rate far above the call rate), async function",
    )
    sync = Comparison("rate limit, never waiting, sync function")
    asyn.add("bare await", time_async(lambda: awork(1), quick=quick), "bare")
    sync.add("bare call", time_sync(lambda: work(1), quick=quick), "bare")
    ours_async = buttress.rate_limit(1e12)(awork)
    ours_sync = buttress.rate_limit(1e12)(work)
    asyn.add("buttress.rate_limit", time_async(lambda: ours_async(1), quick=quick), "ours")
    sync.add("buttress.rate_limit", time_sync(lambda: ours_sync(1), quick=quick), "ours")
    try:
        import aiolimiter

        limiter = aiolimiter.AsyncLimiter(1e12, 1)

        async def peer() -> int:
            async with limiter:
                return await awork(1)

        asyn.add("aiolimiter.AsyncLimiter", time_async(peer, quick=quick), "peer")
    except ImportError:
        pass
    return [asyn, sync]


def _run_burst(call: Callable[[], Awaitable[None]], calls: int) -> list[float]:
    """Start ``calls`` concurrent callers at once; return their start times."""
    starts: list[float] = []

    async def one() -> None:
        await call()
        starts.append(time.perf_counter())

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(calls):
                group.start_soon(one)

    began = time.perf_counter()
    asyncio.run(main())
    return [start - began for start in sorted(starts)]


def _busiest_window(starts: list[float], per: float) -> int:
    best, low = 0, 0
    for high, start in enumerate(starts):
        while start - starts[low] >= per:
            low += 1
        best = max(best, high - low + 1)
    return best


def limiter_accuracy(quick: bool) -> list[Comparison]:
    # Three periods' worth of calls, so that even a burst of a whole period must wait.
    rate, per = (500.0, 1.0) if quick else (100.0, 1.0)
    calls = int(3 * rate)
    candidates: list[tuple[str, str, int, Callable[[], Awaitable[None]]]] = []

    async def noop() -> None:
        return None

    for burst in (1, int(rate)):
        limited = buttress.rate_limit(rate, per, burst=burst)(noop)
        candidates.append((f"buttress.rate_limit (burst={burst})", "ours", burst, limited))
    try:
        import aiolimiter

        limiter = aiolimiter.AsyncLimiter(rate, per)

        async def peer() -> None:
            async with limiter:
                pass

        candidates.append(("aiolimiter.AsyncLimiter (bucket of rate)", "peer", int(rate), peer))
    except ImportError:
        pass
    timing = Comparison(
        f"rate limit accuracy: {calls} concurrent callers at {rate:g}/s",
        unit="ms for all",
        note=(
            "The least time possible is (calls - burst) / rate: "
            + ", ".join(
                f"{(calls - burst) / rate * 1000:,.0f} ms with a burst of {burst}"
                for burst in sorted({c[2] for c in candidates})
            )
            + "."
        ),
    )
    window = Comparison(
        f"rate limit accuracy: most starts in any {per:g}s window (limit {rate:g}/{per:g}s)",
        unit="starts",
        note=(
            "Measured on actual start times. A limiter with a burst of b schedules up to "
            "rate + b - 1 starts in one window; a timer that fires late (a busy machine) "
            "can crowd one more in."
        ),
    )
    for name, kind, burst, call in candidates:
        starts = _run_burst(call, calls)
        timing.add(name, starts[-1] * 1000, kind)
        window.add(name, _busiest_window(starts, per), kind, f"burst {burst}")
    return [timing, window]


# --- timeout and hedge: what they cost when nothing is slow ------------------------------


def timeout_and_hedge(quick: bool) -> list[Comparison]:
    asyn = Comparison(
        "timeout and hedge, answer in time, async function",
        note=(
            "On asyncio the first attempt runs in the caller's task; the hedges get a "
            "task of their own only once the delay passes."
        ),
    )
    asyn.add("bare await", time_async(lambda: awork(1), quick=quick), "bare")
    timed = buttress.timeout(30)(awork)
    asyn.add("buttress.timeout", time_async(lambda: timed(1), quick=quick), "ours")

    async def scoped() -> int:
        with anyio.move_on_after(30):
            return await awork(1)
        return 0

    asyn.add("anyio.move_on_after by hand", time_async(scoped, quick=quick), "floor")

    async def native() -> int:
        async with asyncio.timeout(30):
            return await awork(1)

    if hasattr(asyncio, "timeout"):
        asyn.add("asyncio.timeout by hand", time_async(native, quick=quick), "floor")
    hedged = buttress.hedge(30)(awork)
    asyn.add("buttress.hedge", time_async(lambda: hedged(1), quick=quick), "ours")
    return [asyn]


def retry_budget(quick: bool) -> list[Comparison]:
    sync = Comparison(
        "retry budget, success path, sync function",
        note="Every call counts toward the budget's recent-call rate, even when it succeeds.",
    )
    sync.add("bare call", time_sync(lambda: work(1), quick=quick), "bare")
    plain = buttress.retry(max_retries=3)(work)
    budgeted = buttress.retry(max_retries=3, budget=buttress.RetryBudget())(work)
    sync.add("buttress.retry", time_sync(lambda: plain(1), quick=quick), "ours")
    sync.add("buttress.retry(budget=...)", time_sync(lambda: budgeted(1), quick=quick), "ours")
    return [sync]


def collect(quick: bool) -> list[Comparison]:
    return [
        *breakers(quick),
        *bulkheads(quick),
        *limiter_overhead(quick),
        *limiter_accuracy(quick),
        *timeout_and_hedge(quick),
        *retry_budget(quick),
    ]
