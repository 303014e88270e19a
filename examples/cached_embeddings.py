"""A stampede on a cold key costs one computation; hits cost well under a microsecond.

    python examples/cached_embeddings.py
"""

from __future__ import annotations

import time

import anyio
import numpy as np

from buttress import cache_result

calls = 0


@cache_result(ttl=300, max_bytes="256MiB", stale_while_revalidate=30)
async def embed(text: str, model: str = "e5-small") -> np.ndarray:
    """Stands in for a call to an embedding service that takes 50 ms."""
    global calls
    calls += 1
    await anyio.sleep(0.05)
    return np.random.default_rng(len(text)).random(384, dtype=np.float32)


async def main() -> None:
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(1_000):  # a thousand requests for the same text at once
            tg.start_soon(embed, "what is a buttress?")
    print(f"1,000 concurrent callers: {calls} computation in {time.perf_counter() - started:.3f}s")

    vector = await embed("what is a buttress?", model="e5-small")  # same key, keyword form
    print(f"read-only: {not vector.flags.writeable}, stats: {embed.cache.stats()}")


if __name__ == "__main__":
    anyio.run(main)
