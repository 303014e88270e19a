"""The worker process of the shared rate limit's tests: one replica of a fleet.

Run as ``python -c "import _fleet_support; _fleet_support.main(sys.argv[1:])"`` with
``url name weighted tasks seconds``: it says it is ready (``INCR fleet:ready``), waits for
the test's go (``fleet:go`` holds the wall-clock start of the window), then calls one
shared ``rate_limit(200, per=1, burst=10)`` from ``tasks`` concurrent tasks, from a second
before the window to its end, and prints one JSON line: the calls that started inside
the window and their tokens.
"""

from __future__ import annotations

import json
import random
import sys
import time

import anyio
import redis

from buttress import FleetStore, rate_limit

RATE = 200
BURST = 10
WARM_UP = 1.0
READY = "fleet:ready"
GO = "fleet:go"


def main(argv: list[str]) -> None:
    url, name, weighted, tasks, seconds = argv
    store = FleetStore(url, timeout=2.0)
    started: list[int] = []
    window: list[float] = []

    @rate_limit(
        RATE,
        per=1,
        burst=BURST,
        store=store,
        name=name,
        cost=(lambda tokens: tokens) if weighted == "1" else 1,
    )
    async def call(tokens: int) -> None:
        now = time.time()
        if window[0] <= now < window[1]:
            started.append(tokens)

    async def caller(seed: int) -> None:
        rng = random.Random(seed)
        while time.time() < window[1]:
            await call(rng.randint(1, 5) if weighted == "1" else 1)

    async def run() -> None:
        client = redis.Redis.from_url(url, socket_timeout=5)
        client.incr(READY)
        deadline = time.monotonic() + 120
        while (go := client.get(GO)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError("the test never said go")
            await anyio.sleep(0.01)
        client.close()
        begin = float(go)
        window.extend([begin, begin + float(seconds)])
        # a second's warm-up first: the window counts the steady state, where a timer
        # firing late moves as many starts into the window as out of it
        await anyio.sleep(max(0.0, begin - WARM_UP - time.time()))
        async with anyio.create_task_group() as group:
            for index in range(int(tasks)):
                group.start_soon(caller, index * 7919 + int(begin))
        await store.aclose()

    anyio.run(run)
    stats = call.limiter.stats()
    store.close()
    print(
        json.dumps(
            {"calls": len(started), "tokens": sum(started), "fallbacks": stats.fallbacks}
        ),
        flush=True,
    )


if __name__ == "__main__":  # pragma: no cover - run through the tests
    main(sys.argv[1:])
