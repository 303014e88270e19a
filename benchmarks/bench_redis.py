"""RedisStore beside cashews' and aiocache's Redis backends, on a private redis-server.

Five comparisons, measured in one run against the same server (started here on a free
port, stopped at the end; skipped with a message when no redis-server is installed):

* hit latency of an async function with one int argument, beside the bare await and a
  raw ``redis.asyncio`` GET (the floor: one round trip), and with ``local_ttl`` (no round
  trip at all);
* miss latency: every call a new key, so each one looks up, computes (nothing) and stores;
  buttress also takes and releases the cross-process lock (in the same two round trips),
  with ``single_flight=False`` it takes none;
* the commands (round trips) a miss and a hit send, counted by the server (``MONITOR``);
* the wake-up across processes: one process computes a key while another waits for it;
  from the end of the holder's computation (its write follows at once) to the waiter's
  call returning, and the commands sent while the waiter waited;
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
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import _redis_wakeup as wakeup
import buttress
from _harness import Comparison, median_of
from _redis_server import commands_sent as _monitor
from _redis_server import redis_server as _redis_server

TTL = 600
Setup = Callable[[str], Awaitable[tuple[Callable[[int], Awaitable[Any]], Callable[[], Any]]]]


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
            "the cross-process lock in the look-up (one script: GET, and SET NX when "
            "nothing is stored) and lets go of it with the write (one script); rows "
            "interleaved in one event loop."
        ),
    )
    rows: list[tuple[str, str, Setup, str]] = [
        ("bare await", "bare", _bare(), ""),
        ("buttress.RedisStore", "ours", _ours(), "2 round trips, with the lock"),
        (
            "buttress.RedisStore, single_flight=False",
            "ours",
            _ours(single_flight=False),
            "no lock: 2 round trips (GET, SET)",
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


# --- round trips and wake-ups, counted by the server ----------------------------------------


def _describe(seen: Counter[str], calls: int) -> str:
    return ", ".join(
        f"{name.upper()} {count / calls:g}" for name, count in sorted(seen.items())
    )


def _cashews_locked() -> Setup | None:
    try:
        from cashews import Cache
    except ImportError:
        return None

    async def setup(url: str) -> Any:
        cache = Cache()
        cache.setup(url)
        await cache.init()
        return cache(ttl=TTL, lock=True)(_work), cache.close

    return setup


def _round_trips(url: str, quick: bool) -> Comparison:
    comparison = Comparison(
        "Redis commands per call, async function with one int argument",
        unit="commands/miss",
        mode="ratio",
        note=(
            "Commands each call sends, as the server saw them (MONITOR; each is its own "
            "round trip: no row pipelines here). A miss is a new key, a hit the same keys "
            "again. Commands a Lua script runs are part of its EVALSHA."
        ),
    )
    rows: list[tuple[str, str, Setup]] = [
        ("buttress.RedisStore", "ours", _ours()),
        ("buttress.RedisStore, single_flight=False", "ours", _ours(single_flight=False)),
        *[(name, "peer", setup) for name, setup in _peers()],
    ]
    locked = _cashews_locked()
    if locked is not None:
        rows.append(("cashews (redis://, lock=True)", "peer", locked))
    calls = 5 if quick else 20
    _flush(url)

    async def measure() -> list[tuple[str, str, float, float, str, str]]:
        results = []
        for index, (name, kind, setup) in enumerate(rows):
            fn, cleanup = await setup(url)
            await fn(1)  # connections open, scripts loaded
            keys = range(1000 * (index + 1), 1000 * (index + 1) + calls)
            with _monitor(url) as missed:
                for key in keys:
                    await fn(key)
            with _monitor(url) as hit:
                for key in keys:
                    await fn(key)
            result = cleanup()
            if asyncio.iscoroutine(result):
                await result
            results.append(
                (
                    name,
                    kind,
                    sum(missed.values()) / calls,
                    sum(hit.values()) / calls,
                    _describe(missed, calls),
                    _describe(hit, calls),
                )
            )
        return results

    for name, kind, misses, hits, miss_commands, hit_commands in asyncio.run(measure()):
        comparison.add(
            name,
            misses,
            kind,
            extra={"commands/hit": hits, "a miss": miss_commands, "a hit": hit_commands},
        )
    return comparison


def _waiter(implementation: str, url: str) -> subprocess.Popen[str]:
    here = Path(__file__).resolve().parent
    source = Path(buttress.__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(source), str(here), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    code = "import sys, _redis_wakeup; _redis_wakeup.main(*sys.argv[1:])"
    process = subprocess.Popen(
        [sys.executable, "-c", code, implementation, url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        process.kill()
        raise RuntimeError(f"the {implementation} waiter did not start")
    return process


def _wakeups(url: str, quick: bool) -> Comparison:
    comparison = Comparison(
        "Cross-process wake-up: the holder's write to a waiting process's return",
        unit="ms",
        mode="ratio",
        note=(
            "One process computes a key (holding the implementation's lock) while another "
            "process calls the same key and waits; the figure is the time from the end of "
            "the holder's computation (its write follows) to the waiter's call returning "
            "(one clock, CLOCK_MONOTONIC). `commands/s` is what was sent while the waiter "
            "waited."
        ),
    )
    implementations = [
        ("buttress.RedisStore (BLMOVE wake-up)", "ours", "buttress"),
        ("buttress.RedisStore (polling fallback)", "ours", "buttress-poll"),
    ]
    for module, name in (("cashews", "cashews (redis://, lock=True)"), ("aiocache", "")):
        try:
            __import__(module)
        except ImportError:
            continue
        implementations.append((name or "aiocache (RedLock)", "peer", module))
    rounds, hold = (2, 0.1) if quick else (9, 0.3)
    _flush(url)
    alone = []
    for index, (name, kind, implementation) in enumerate(implementations):
        latencies, rate, computed = asyncio.run(
            _hold(implementation, url, 10_000 * (index + 1), rounds, hold)
        )
        if computed:  # no cross-process wait at all: nothing to time
            alone.append(name)
            continue
        comparison.add(name, median_of(latencies), kind, extra={"commands/s": rate})
    if alone:
        comparison.note += (
            f" Not in the table: {', '.join(alone)}, whose waiting process did not wait "
            "for the holder but computed the value itself (aiocache's RedLock wakes the "
            "waiters of its own process only; another process finds no lock event to wait "
            "on and goes ahead)."
        )
    return comparison


async def _hold(
    implementation: str, url: str, base: int, rounds: int, hold: float
) -> tuple[list[float], float, bool]:
    """Hold keys ``base..`` in this process while a waiter process asks for them: the
    latencies (ms), the commands sent per second while it waited, and whether the waiter
    ever computed the value itself."""
    fn, cleanup = await wakeup.IMPLEMENTATIONS[implementation](url)
    waiter = _waiter(implementation, url)
    assert waiter.stdin is not None
    assert waiter.stdout is not None
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    sent: Counter[str] = Counter()
    computed = False
    try:
        for round_ in range(rounds + 1):
            counting = round_ == rounds  # a last round under MONITOR, for the commands
            wakeup.GATE = asyncio.Event()
            holding = asyncio.ensure_future(fn(base + round_))
            await asyncio.sleep(0.05)  # the holder has its lock
            with _monitor(url) if counting else _nothing() as seen:
                waiter.stdin.write(f"{base + round_}\n")
                waiter.stdin.flush()
                await asyncio.sleep(hold)  # the waiter waits
            wakeup.GATE.set()
            await holding
            ended = wakeup.ENDED[-1]
            line = await loop.run_in_executor(None, waiter.stdout.readline)
            returned, itself = line.split()
            computed = computed or itself == "1"
            if counting:
                sent = seen
            else:
                latencies.append((float(returned) - ended) * 1000)
    finally:
        wakeup.GATE = None
        waiter.stdin.close()
        waiter.wait(30)
        result = cleanup()
        if asyncio.iscoroutine(result):
            await result
    return latencies, sum(sent.values()) / hold, computed


@contextmanager
def _nothing() -> Iterator[Counter[str]]:
    yield Counter()


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
        return [
            _hits(url, quick),
            _misses(url, quick),
            _round_trips(url, quick),
            _wakeups(url, quick),
            _sync_hits(url, quick),
        ]
