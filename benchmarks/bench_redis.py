"""RedisStore beside cashews' and aiocache's Redis backends, on a private redis-server.

Three comparisons, measured in one run against the same server (started here on a free
port, stopped at the end; skipped with a message when no redis-server is installed):

* hit latency of an async function with one int argument, beside the bare await and a
  raw ``redis.asyncio`` GET (the floor: one round trip), and with ``local_ttl`` (no round
  trip at all);
* miss latency: every call a new key, so each one looks up, computes (nothing) and stores;
  buttress also takes and releases the cross-process lock, with ``single_flight=False``
  it does not;
* hit latency of a plain function through redis-py's sync client, beside a raw GET.

The async rows of a comparison share one event loop (peers' clients are bound to the loop
that made them, so every cache is made inside it) and take turns round by round; figures
are medians of several rounds.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import buttress
from _harness import Comparison

TTL = 600
Setup = Callable[[str], Awaitable[tuple[Callable[[int], Awaitable[Any]], Callable[[], Any]]]]


# --- a private server -------------------------------------------------------------------


@contextmanager
def _redis_server() -> Iterator[str | None]:
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as directory:
        server = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", directory],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.terminate()
            server.wait(timeout=10)


# --- timing inside one loop ---------------------------------------------------------------


def _sizes(quick: bool) -> tuple[int, int]:
    """(calls per round, rounds): Redis calls cost ~100 µs, so fewer than for in-memory."""
    return (100, 2) if quick else (2_000, 7)


def _time_rows(
    rows: list[tuple[str, Setup]], url: str, quick: bool, *, fresh_keys: bool = False
) -> dict[str, float]:
    """Median ns per ``await fn(key)`` of each row: one int key (warm), or a new key per
    call. All rows live in one event loop and their rounds are interleaved, so that every
    row sees the same machine (other work on it shifts all rows alike)."""
    calls, rounds = _sizes(quick)
    _flush(url)

    async def measure() -> dict[str, list[float]]:
        made = []
        for index, (name, setup) in enumerate(rows):
            fn, cleanup = await setup(url)
            await fn(1)  # warm: connections made, key 1 stored
            made.append((name, fn, cleanup, itertools.count(10_000_000 * (index + 1))))
        results: dict[str, list[float]] = {name: [] for name, _ in rows}
        try:
            for _ in range(rounds):
                for name, fn, _, counter in made:
                    gc.collect()
                    start = time.perf_counter_ns()
                    if fresh_keys:
                        for _ in range(calls):
                            await fn(next(counter))
                    else:
                        for _ in range(calls):
                            await fn(1)
                    results[name].append((time.perf_counter_ns() - start) / calls)
        finally:
            for _, _, cleanup, _ in made:
                result = cleanup()
                if asyncio.iscoroutine(result):
                    await result
        return results

    return {name: statistics.median(values) for name, values in asyncio.run(measure()).items()}


def _flush(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()


async def _work(x: int) -> int:
    return x + 1


def _ours(*, single_flight: bool = True, **options: Any) -> Setup:
    async def setup(url: str) -> Any:
        store = buttress.RedisStore(url, namespace="bench", **options)
        fn = buttress.cache_result(ttl=TTL, store=store, single_flight=single_flight)(_work)

        async def cleanup() -> None:
            await store.aclose()
            store.close()

        return fn, cleanup

    return setup


def _bare() -> Setup:
    async def setup(url: str) -> Any:
        return _work, lambda: None

    return setup


def _raw_get(*, like_the_store: bool = False) -> Setup:
    async def setup(url: str) -> Any:
        import redis.asyncio

        if like_the_store:  # a bounded, blocking pool and 0.25 s timeouts, as RedisStore's
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                url, max_connections=100, timeout=0.25, socket_timeout=0.25,
                socket_connect_timeout=0.25,
            )
            client = redis.asyncio.Redis.from_pool(pool)
        else:
            client = redis.asyncio.Redis.from_url(url)
        await client.set("bench:raw", b"x" * 32)

        async def get(x: int) -> Any:
            return await client.get("bench:raw")

        return get, client.aclose

    return setup


def _peers() -> list[tuple[str, Setup]]:
    found: list[tuple[str, Setup]] = []
    try:
        from cashews import Cache

        async def cashews_setup(url: str) -> Any:
            cache = Cache()
            cache.setup(url)
            await cache.init()
            return cache(ttl=TTL)(_work), cache.close

        found.append(("cashews (redis://)", cashews_setup))
    except ImportError:
        pass
    try:
        from aiocache import Cache as AioCache
        from aiocache import cached

        async def aiocache_setup(url: str) -> Any:
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            decorator = cached(
                ttl=TTL,
                cache=AioCache.REDIS,
                endpoint="127.0.0.1",
                port=port,
                namespace="bench",
            )
            return decorator(_work), decorator.cache.close

        found.append(("aiocache (cached, RedisCache)", aiocache_setup))
    except ImportError:
        pass
    return found


# --- the comparisons ----------------------------------------------------------------------


def _hits(url: str, quick: bool) -> Comparison:
    comparison = Comparison(
        "Redis cache hit, async function with one int argument",
        note=(
            "Each row awaits `f(1)` on a warm key, against the same local redis-server; "
            "rows interleaved in one event loop."
        ),
    )
    rows: list[tuple[str, str, Setup, str]] = [
        ("bare await", "bare", _bare(), ""),
        ("redis.asyncio GET (floor)", "floor", _raw_get(), ""),
        (
            "redis.asyncio GET, pool and timeouts as RedisStore's",
            "floor",
            _raw_get(like_the_store=True),
            "",
        ),
        ("buttress.RedisStore", "ours", _ours(), ""),
        ("buttress.RedisStore(local_ttl=60)", "ours", _ours(local_ttl=60), "no round trip"),
        *[(name, "peer", setup, "") for name, setup in _peers()],
    ]
    times = _time_rows([(name, setup) for name, _, setup, _ in rows], url, quick)
    for name, kind, _, note in rows:
        comparison.add(name, times[name], kind, note=note)
    return comparison


def _misses(url: str, quick: bool) -> Comparison:
    comparison = Comparison(
        "Redis cache miss, async function with one int argument",
        note=(
            "Every call a new key: look up, compute (nothing), store. buttress also takes "
            "the cross-process lock (one script: SET NX and GET) and stores the value with "
            "the lock's release (one script); rows interleaved in one event loop."
        ),
    )
    rows: list[tuple[str, str, Setup, str]] = [
        ("bare await", "bare", _bare(), ""),
        ("buttress.RedisStore", "ours", _ours(), "3 round trips"),
        (
            "buttress.RedisStore, single_flight=False",
            "ours",
            _ours(single_flight=False),
            "no lock: 2 round trips",
        ),
        *[(name, "peer", setup, "") for name, setup in _peers()],
    ]
    times = _time_rows(
        [(name, setup) for name, _, setup, _ in rows], url, quick, fresh_keys=True
    )
    for name, kind, _, note in rows:
        comparison.add(name, times[name], kind, note=note)
    return comparison


def _sync_hits(url: str, quick: bool) -> Comparison:
    import redis

    comparison = Comparison(
        "Redis cache hit, plain function (redis-py sync client)",
        note="Rows take turns round by round.",
    )

    def work(x: int) -> int:
        return x + 1

    calls, rounds = _sizes(quick)
    _flush(url)
    client = redis.Redis.from_url(url)
    client.set("bench:raw", b"x" * 32)
    stores = [
        buttress.RedisStore(url, namespace="bench"),
        buttress.RedisStore(url, namespace="bench", local_ttl=60),
    ]
    rows: list[tuple[str, str, Callable[[], Any]]] = [
        ("bare call", "bare", lambda: work(1)),
        ("redis-py GET (floor)", "floor", lambda: client.get("bench:raw")),
    ]
    for name, store in zip(
        ("buttress.RedisStore", "buttress.RedisStore(local_ttl=60)"), stores, strict=True
    ):
        fn = buttress.cache_result(ttl=TTL, store=store)(work)
        fn(1)
        rows.append((name, "ours", lambda fn=fn: fn(1)))
    results: dict[str, list[float]] = {name: [] for name, _, _ in rows}
    for _ in range(rounds):
        for name, _, call in rows:
            gc.collect()
            start = time.perf_counter_ns()
            for _ in range(calls):
                call()
            results[name].append((time.perf_counter_ns() - start) / calls)
    for name, kind, _ in rows:
        comparison.add(name, statistics.median(results[name]), kind)
    client.close()
    for store in stores:
        store.close()
    return comparison


def collect(quick: bool) -> list[Comparison]:
    with _redis_server() as url:
        if url is None:
            print(
                "bench_redis: skipped, redis-server not found (Debian: apt-get install "
                "redis-server)",
                file=sys.stderr,
            )
            return []
        logging.getLogger("buttress.cache").setLevel(logging.ERROR)
        return [_hits(url, quick), _misses(url, quick), _sync_hits(url, quick)]
