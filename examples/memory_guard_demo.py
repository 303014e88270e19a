"""@memory_guard in a small batch-inference loop: what it sees, and what it does under pressure.

    python examples/memory_guard_demo.py

The guard reads the container's memory (cgroup v2 or v1) where there is a limit, else the
host's. Here a deliberately low ``max_percent`` makes it refuse, so both paths show.
"""

from __future__ import annotations

import asyncio

import numpy as np

from buttress import MemoryGuardDecision, MemoryPressureError, events, memory_guard, memory_snapshot


@memory_guard(max_percent=85.0, reserve=lambda batch: batch.nbytes * 4)
async def embed(batch: np.ndarray) -> np.ndarray:
    """A stand-in for a model: a projection of each row to 8 numbers."""
    await asyncio.sleep(0)
    return batch @ np.ones((batch.shape[1], 8), dtype=batch.dtype)


async def main() -> None:
    snapshot = memory_snapshot()
    print(
        f"memory: {snapshot.used / 2**20:,.0f} MiB used of {snapshot.limit / 2**20:,.0f} MiB "
        f"({snapshot.percent:.1f}%, from {snapshot.source}); this process: "
        f"{snapshot.rss / 2**20:,.0f} MiB"
    )
    with events.subscribe(lambda event: print("  event:", event.action), MemoryGuardDecision):
        batches = [np.ones((64, 256), dtype=np.float32) for _ in range(4)]
        results = await asyncio.gather(*(embed(batch) for batch in batches))
        print(f"embedded {len(results)} batches concurrently")

        strict = memory_guard(max_percent=max(snapshot.percent / 2, 0.1), action="raise")(embed)
        try:
            await strict(batches[0])
        except MemoryPressureError as error:
            print(f"refused as expected: {error}")


if __name__ == "__main__":
    asyncio.run(main())
