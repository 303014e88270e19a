"""A rate limit shared through Redis: buttress beside the ``limits`` library's Redis strategies.

Two comparisons against one private redis-server (started here on a free port, stopped at
the end; skipped with a message when no redis-server is installed):

* per admitted call, async: the latency of ``await f()`` under a shared limit far above
  the call rate (every call admitted at once), beside the bare await and one raw
  ``redis.asyncio`` round trip (the floor); with the commands each admission sends
  (round trips, counted by the server with ``MONITOR``) and the commands the server runs
  for it (``INFO commandstats``, those a Lua script runs included). buttress runs GCRA in
  one Lua script; ``limits`` runs its moving window and its sliding window counter over
  ``redis.asyncio`` (``implementation="redispy"``).
* accuracy under 4 processes: each process calls as fast as it is let for a few seconds
  against one limit of 200 a second; the table gives how far the calls admitted in total
  are from the limit's ``rate x seconds`` (plus the burst), the most admitted in any one
  second, and the commands sent per admitted call. buttress' calls wait their turn (one
  round trip reserves a start); ``limits`` cannot wait, so its callers retry a refused
  hit after 1 ms, as one would write it by hand.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis

import buttress
from _harness import Comparison, median_of, note_missing
from _redis_server import commands_sent, redis_server

#: The shared limit of the accuracy comparison, and its processes.
RATE = 200
PROCESSES = 4
#: Far above any call rate: every call is admitted at once.
HUGE = 1_000_000_000

Call = Callable[[], Awaitable[Any]]
Setup = Callable[[str, str], Awaitable[tuple[Call, Callable[[], Awaitable[None]]]]]


async def _work() -> int:
    return 1


# --- the implementations ------------------------------------------------------------------


def _ours(rate: float, burst: int) -> Setup:
    async def setup(url: str, name: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
        store = buttress.FleetStore(url, namespace="bench", timeout=5.0)
        fn = buttress.rate_limit(rate, per=1, burst=burst, store=store, name=name)(_work)

        async def close() -> None:
            await store.aclose()
            store.close()

        return fn, close

    return setup


def _local() -> Setup:
    async def setup(url: str, name: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
        fn = buttress.rate_limit(HUGE, per=1, burst=1)(_work)

        async def close() -> None:
            pass

        return fn, close

    return setup


def _limits(strategy: str, rate: int) -> Setup | None:
    """``limits``' async strategy over redis.asyncio; ``None`` when it is not installed.

    Its call admits or refuses: a refused hit is tried again after 1 ms (no such refusal
    happens in the latency comparison, whose limit is far above the call rate)."""
    try:
        from limits import RateLimitItemPerSecond
        from limits.aio import strategies
        from limits.aio.storage import RedisStorage
    except ImportError:
        note_missing("limits")
        return None
    limiter_class = {
        "moving window": strategies.MovingWindowRateLimiter,
        "sliding window counter": strategies.SlidingWindowCounterRateLimiter,
    }[strategy]

    async def setup(url: str, name: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
        storage = RedisStorage(
            url.replace("redis://", "async+redis://", 1), implementation="redispy"
        )
        limiter = limiter_class(storage)
        item = RateLimitItemPerSecond(rate, 1)

        async def call() -> int:
            while not await limiter.hit(item, name):
                await asyncio.sleep(0.001)
            return await _work()

        async def close() -> None:
            pass

        return call, close

    return setup


def _implementations(rate: int, burst: int) -> list[tuple[str, str, Setup]]:
    found: list[tuple[str, str, Setup]] = [
        ("buttress.rate_limit(store=FleetStore)", "ours", _ours(rate, burst))
    ]
    for strategy in ("moving window", "sliding window counter"):
        setup = _limits(strategy, rate)
        if setup is not None:
            found.append((f"limits, {strategy} (redis.asyncio)", "peer", setup))
    return found


# --- per admitted call ----------------------------------------------------------------------


def _raw_round_trip() -> Setup:
    async def setup(url: str, name: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(url)
        await client.set("bench:raw", b"x")

        async def get() -> Any:
            return await client.get("bench:raw")

        return get, client.aclose

    return setup


def _bare() -> Setup:
    async def setup(url: str, name: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
        async def close() -> None:
            pass

        return _work, close

    return setup


def _server_commands(client: redis.Redis) -> Counter[str]:
    """Commands the server has run since its last reset, by name (scripts' included)."""
    stats = client.info("commandstats")
    return Counter(
        {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}
    )


#: Commands the measurement itself sends (MONITOR's markers, these readings).
OURS = frozenset({"echo", "monitor", "info", "config|resetstat", "hello", "client|setinfo"})


def _latency(url: str, quick: bool) -> Comparison:
    comparison = Comparison(
        "shared rate limit, per admitted call, async function",
        note=(
            "Each row awaits `f()` under a limit far above the call rate (every call "
            "admitted at once), against the same local redis-server; rows interleaved in "
            "one event loop. `round trips` are the commands a call sends (MONITOR); "
            "`server commands` also count those its Lua script runs (INFO commandstats)."
        ),
    )
    rows: list[tuple[str, str, Setup, str]] = [
        ("bare await", "bare", _bare(), ""),
        ("redis.asyncio GET (floor)", "floor", _raw_round_trip(), "one round trip"),
        ("buttress.rate_limit, in process", "ours", _local(), "not shared: no Redis"),
        *[(name, kind, setup, "") for name, kind, setup in _implementations(HUGE, 1)],
    ]
    calls, rounds = (100, 2) if quick else (2_000, 7)
    counted = 5 if quick else 50
    client = redis.Redis.from_url(url)
    client.flushall()

    async def measure() -> tuple[dict[str, list[float]], dict[str, tuple[float, float]]]:
        made = []
        for index, (name, _, setup, _) in enumerate(rows):
            fn, close = await setup(url, f"latency-{index}")
            await fn()  # connections open, scripts loaded, settings recorded
            made.append((name, fn, close))
        times: dict[str, list[float]] = {name: [] for name, _, _, _ in rows}
        commands: dict[str, tuple[float, float]] = {}
        try:
            for name, fn, _ in made:
                client.config_resetstat()
                with commands_sent(url) as seen:
                    for _ in range(counted):
                        await fn()
                ran = _server_commands(client)
                round_trips = sum(seen.values()) / counted
                server = sum(n for command, n in ran.items() if command not in OURS) / counted
                commands[name] = (round_trips, server)
            for _ in range(rounds):
                for name, fn, _ in made:
                    gc.collect()
                    start = time.perf_counter_ns()
                    for _ in range(calls):
                        await fn()
                    times[name].append((time.perf_counter_ns() - start) / calls)
        finally:
            for _, _, close in made:
                await close()
        return times, commands

    try:
        times, commands = asyncio.run(measure())
    finally:
        client.close()
    for name, kind, _, note in rows:
        round_trips, server = commands[name]
        comparison.add(
            name,
            median_of(times[name]),
            kind,
            note=note,
            extra={"round trips": round_trips, "server commands": server},
        )
    return comparison


# --- accuracy under several processes ---------------------------------------------------------


def _worker(implementation: str, url: str, name: str, seconds: str) -> None:
    """One process of the accuracy run: connect, print ``ready``, read the start time (a
    ``time.time()``) from stdin, call from then on for ``seconds``, and print the times of
    the admitted calls as JSON."""
    setup = {n: s for n, _, s in _implementations(RATE, 1)}[implementation]

    async def run() -> list[float]:
        fn, close = await setup(url, name)
        admitted: list[float] = []
        try:
            print("ready", flush=True)
            start = float(await asyncio.to_thread(sys.stdin.readline))
            await asyncio.sleep(max(0.0, start - time.time()))
            end = start + float(seconds)
            while True:
                await fn()
                now = time.time()
                if now >= end:
                    break
                admitted.append(now)
        finally:
            await close()
        return admitted

    print(json.dumps(asyncio.run(run())))


def _most_in_a_second(times: list[float]) -> int:
    times = sorted(times)
    most = first = 0
    for last, at in enumerate(times):
        while at - times[first] >= 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


def _accuracy(url: str, quick: bool) -> Comparison:
    seconds = 2.0 if quick else 10.0
    comparison = Comparison(
        f"shared rate limit accuracy: {PROCESSES} processes, {RATE}/s for {seconds:g} s",
        unit="% off",
        mode="ratio",
        note=(
            f"{PROCESSES} processes call one limit of {RATE} a second (burst 1) as fast as "
            f"they are let, for {seconds:g} s; `% off` is how far the calls admitted in "
            f"total are from {RATE} x {seconds:g} s. buttress' calls wait their turn; "
            "`limits` cannot wait, so a refused hit is tried again after 1 ms. `commands "
            "per call` is what the server ran per admitted call (INFO commandstats)."
        ),
    )
    expected = RATE * seconds
    client = redis.Redis.from_url(url)
    env = dict(os.environ)
    source = str(Path(buttress.__file__).resolve().parent.parent)
    here = str(Path(__file__).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join([source, here, *filter(None, [env.get("PYTHONPATH")])])
    try:
        for index, (name, kind, _) in enumerate(_implementations(RATE, 1)):
            client.flushall()
            client.config_resetstat()
            code = "import sys, bench_fleet; bench_fleet._worker(*sys.argv[1:])"
            arguments = [name, url, f"accuracy-{index}", str(seconds)]
            workers = [
                subprocess.Popen(
                    [sys.executable, "-c", code, *arguments],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    env=env,
                )
                for _ in range(PROCESSES)
            ]
            for worker in workers:  # every one imported and connected...
                assert worker.stdout is not None
                if worker.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"an accuracy worker of {name} did not start")
            start = time.time() + 0.2  # ...then all start at once
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write(f"{start}\n")
                worker.stdin.flush()
            admitted: list[float] = []
            for worker in workers:
                out, _ = worker.communicate(timeout=seconds + 120)
                if worker.returncode != 0:
                    raise RuntimeError(f"an accuracy worker of {name} failed ({worker.returncode})")
                admitted += json.loads(out.strip().splitlines()[-1])
            ran = _server_commands(client)
            server = sum(n for command, n in ran.items() if command not in OURS)
            total = len(admitted)
            comparison.add(
                name,
                abs(total - expected) / expected * 100,
                kind,
                extra={
                    "admitted": total,
                    "limit x seconds": int(expected),
                    "most in 1 s": _most_in_a_second(admitted),
                    "commands per call": server / max(total, 1),
                },
            )
    finally:
        client.close()
    return comparison


def collect(quick: bool) -> list[Comparison]:
    with redis_server() as url:
        if url is None:
            print(
                "bench_fleet: skipped, redis-server not found (Debian: apt-get install "
                "redis-server)",
                file=sys.stderr,
            )
            return []
        return [_latency(url, quick), _accuracy(url, quick)]


if __name__ == "__main__":  # pragma: no cover - run through run.py
    print("run it through benchmarks/run.py fleet", file=sys.stderr)
    sys.exit(2)
