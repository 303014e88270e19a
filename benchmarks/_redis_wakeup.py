"""The cached functions of the cross-process wake-up benchmark, and its waiting process.

``bench_redis.py`` (the holder) and a waiter started as ``python _redis_wakeup.py IMPL URL``
import the same functions from this module, so they share Redis keys. The holder calls
``f(key)`` and keeps its computation running (holding the lock) until told to finish; the
waiter, told a key on its stdin, calls ``f(key)`` meanwhile, waits for the holder, and
prints the ``time.monotonic()`` (one clock for every process on Linux) at which its call
returned. The holder notes when its computation ended, just before its write.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

#: The holder sets this to an event its computation waits for; the waiter leaves it None.
GATE: asyncio.Event | None = None
#: When each of this process's computations ended (the holder's write follows at once).
ENDED: list[float] = []
#: How long aiocache's RedLock lets a waiter wait for the holder (its ``lease``).
LEASE = 2.0

Setup = Callable[[str], Awaitable[tuple[Callable[[int], Awaitable[Any]], Callable[[], Any]]]]


async def _compute(key: int) -> int:
    if GATE is not None:
        await GATE.wait()
    ENDED.append(time.monotonic())
    return key + 1


async def _buttress(url: str, *, poll: bool = False) -> Any:
    import buttress

    store = buttress.RedisStore(url, namespace="bench-wakeup", timeout=1.0)
    if poll:  # as if the server refused BLMOVE: the polling fallback
        store._wakeups = False
    name = "wakeup.poll" if poll else "wakeup.block"
    fn = buttress.cache_result(ttl=600, store=store, name=name)(_compute)

    async def close() -> None:
        await store.aclose()
        store.close()

    return fn, close


async def _cashews(url: str) -> Any:
    from cashews import Cache

    cache = Cache()
    cache.setup(url)
    await cache.init()

    @cache(ttl=600, key="bench-wakeup:cashews:{key}", lock=True)
    async def fn(key: int) -> int:
        return await _compute(key)

    return fn, cache.close


async def _aiocache(url: str) -> Any:
    from aiocache import RedisCache
    from aiocache.lock import RedLock

    port = int(url.rsplit(":", 1)[1].split("/")[0])
    cache = RedisCache(endpoint="127.0.0.1", port=port, namespace="bench-wakeup")

    async def fn(key: int) -> int:
        name = f"aiocache:{key}"
        async with RedLock(cache, name, lease=LEASE):  # its documented stampede guard
            value = await cache.get(name)
            if value is None:
                value = await _compute(key)
                await cache.set(name, value)
            return int(value)

    return fn, cache.close


IMPLEMENTATIONS: dict[str, Setup] = {
    "buttress": _buttress,
    "buttress-poll": lambda url: _buttress(url, poll=True),
    "cashews": _cashews,
    "aiocache": _aiocache,
}


def main(implementation: str, url: str) -> None:
    """The waiter: for each key read from stdin, call ``f(key)`` and print when it returned."""

    async def run() -> None:
        fn, close = await IMPLEMENTATIONS[implementation](url)
        loop = asyncio.get_running_loop()
        try:
            print("ready", flush=True)
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line.strip():
                    return
                computed = len(ENDED)
                await fn(int(line))
                # when it returned, and whether it computed the value itself
                print(f"{time.monotonic():.9f} {len(ENDED) > computed:d}", flush=True)
        finally:
            result = close()
            if asyncio.iscoroutine(result):
                await result

    asyncio.run(run())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
