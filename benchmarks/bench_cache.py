"""@cache_result beside async-lru, cashews, aiocache, asyncache, functools and cachetools.

Three comparisons, measured in one run:

* hit latency of an async function with one int argument (key building included), beside
  the bare await and a hand-written dict lookup in front of it (the floor);
* hit latency of a plain function, beside ``functools.lru_cache`` and cachetools;
* a stampede: many concurrent callers of one cold key whose computation sleeps 50 ms,
  beside the same coroutines gathered with no cache at all. The note of each row says how
  many times the computation ran.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import buttress
from _harness import Comparison, median_of, missing_from, time_async, time_sync

TTL = 60

# --- who is installed -------------------------------------------------------------------


def _async_decorators() -> list[tuple[str, str, Callable[[Any], Any]]]:
    """(name, kind, decorator) for every async cache installed; a fresh cache per call."""
    found: list[tuple[str, str, Callable[[Any], Any]]] = [
        ("buttress.cache_result", "ours", lambda fn: buttress.cache_result(ttl=TTL)(fn)),
    ]
    try:
        from async_lru import alru_cache

        found.append(("async-lru (alru_cache, ttl)", "peer", alru_cache(maxsize=10_000, ttl=TTL)))
    except ImportError as error:
        missing_from(error)
    try:
        from asyncache import cached as asyncache_cached
        from cachetools import TTLCache

        found.append(
            (
                "asyncache + cachetools.TTLCache",
                "peer",
                lambda fn: asyncache_cached(TTLCache(maxsize=10_000, ttl=TTL))(fn),
            )
        )
    except ImportError as error:
        missing_from(error)
    try:
        from aiocache import cached as aiocache_cached

        found.append(("aiocache (cached, memory)", "peer", lambda fn: aiocache_cached(ttl=TTL)(fn)))
    except ImportError as error:
        missing_from(error)
    try:
        from cashews import Cache

        def cashews(lock: bool) -> Callable[[Any], Any]:
            def decorate(fn: Any) -> Any:
                cache = Cache()
                cache.setup("mem://")
                return cache(ttl=TTL, lock=lock)(fn)

            return decorate

        found.append(("cashews (mem://)", "peer", cashews(False)))
        found.append(("cashews (mem://, lock=True)", "peer", cashews(True)))
    except ImportError as error:
        missing_from(error)
    return found


# --- hits -------------------------------------------------------------------------------


def _async_hits(quick: bool) -> Comparison:
    comparison = Comparison(
        "cache hit, async function with one int argument",
        note="Each row awaits `f(1)` on a warm key; key building included.",
    )

    async def work(x: int) -> int:
        return x + 1

    comparison.add("bare await", time_async(lambda: work(1), quick=quick), "bare")
    table: dict[int, int] = {}

    async def by_hand(x: int) -> int:
        value = table.get(x)
        if value is None:
            value = table[x] = x + 1
        return value

    floor = time_async(lambda: by_hand(1), quick=quick)
    comparison.add("dict lookup before the await (floor)", floor, "floor")
    for name, kind, decorate in _async_decorators():
        if "lock=True" in name:
            continue  # the lock only matters on a miss
        fn = decorate(work)  # the first timed call fills the entry; the median ignores it
        comparison.add(name, time_async(lambda fn=fn: fn(1), quick=quick), kind)
    return comparison


def _sync_hits(quick: bool) -> Comparison:
    comparison = Comparison("cache hit, plain function with one int argument")

    def work(x: int) -> int:
        return x + 1

    comparison.add("bare call", time_sync(lambda: work(1), quick=quick), "bare")
    rows: list[tuple[str, str, Callable[[int], int]]] = [
        ("buttress.cache_result", "ours", buttress.cache_result(ttl=TTL)(work)),
        ("functools.lru_cache", "peer", functools.lru_cache(maxsize=10_000)(work)),
    ]
    try:
        from cachetools import TTLCache, cached

        rows.append(
            ("cachetools.cached(TTLCache)", "peer", cached(TTLCache(maxsize=10_000, ttl=TTL))(work))
        )
    except ImportError as error:
        missing_from(error)
    for name, kind, fn in rows:
        fn(1)
        comparison.add(name, time_sync(lambda fn=fn: fn(1), quick=quick), kind)
    return comparison


# --- the stampede -----------------------------------------------------------------------


def _stampede_once(
    make: Callable[[Callable[[int], Awaitable[int]]], Any], callers: int
) -> tuple[float, int]:
    """Wall seconds for ``callers`` concurrent calls of one cold key, and the call count."""
    calls = 0

    async def compute(x: int) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return x * 2

    fn = make(compute)

    async def run() -> float:
        start = time.perf_counter()
        results = await asyncio.gather(*[fn(7) for _ in range(callers)])
        elapsed = time.perf_counter() - start
        assert results == [14] * callers
        return elapsed

    return asyncio.run(run()), calls


def _stampede(quick: bool) -> Comparison:
    callers = 1_000 if quick else 10_000
    rounds = 1 if quick else 7
    comparison = Comparison(
        f"stampede: {callers:,} concurrent callers, one cold key, 50 ms computation",
        unit="ms wall",
        mode="ratio",
        columns=["computations"],
        note=(
            f"Median of {rounds} runs, each in a fresh event loop with a fresh cache; "
            "`computations`: how many times the function ran (a range if runs differed)."
        ),
    )
    makers: list[tuple[str, str, Callable[[Any], Any]]] = [
        ("no cache, gather", "bare", lambda fn: fn),
        *_async_decorators(),
    ]
    times: dict[str, list[float]] = {name: [] for name, _, _ in makers}
    counts: dict[str, list[int]] = {name: [] for name, _, _ in makers}
    for _ in range(rounds):  # rounds interleaved, so that every row sees the same machine
        for name, _, make in makers:
            elapsed, count = _stampede_once(make, callers)
            times[name].append(elapsed * 1000)
            counts[name].append(count)
    for name, kind, _ in makers:
        low, high = min(counts[name]), max(counts[name])
        computations: int | str = high if low == high else f"{low:,}-{high:,}"
        comparison.add(
            name, median_of(times[name]), kind, extra={"computations": computations}
        )
    return comparison


def collect(quick: bool) -> list[Comparison]:
    return [_async_hits(quick), _sync_hits(quick), _stampede(quick)]
