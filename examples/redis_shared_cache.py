"""Two worker processes share one cache, and one computation per key, through Redis.

    python examples/redis_shared_cache.py                          # starts its own redis-server
    python examples/redis_shared_cache.py redis://127.0.0.1:6380/0  # or uses yours

Each worker stands for a gateway replica: it fires 100 concurrent requests for each of
three texts at a cached "embedding" call that takes 200 ms. Without a shared cache, each
replica would compute each text once (6 computations); with ``RedisStore`` the replicas
compute each text once between them (3), and every other request waits for, or reads,
that one result. A second round is answered from the in-process layer (``local_ttl``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import numpy as np
from pydantic import BaseModel

from buttress import RedisStore, cache_result

TEXTS = ("what is a buttress?", "flying buttress", "retaining wall")
CALLERS = 100


class Embedding(BaseModel):
    """What the stand-in service returns beside the vector: stored as a pydantic model."""

    text: str
    model: str
    norm: float


def make_embed(url: str, version: str, signing_key: bytes) -> Any:
    """The cached call, as each replica builds it: same name, same store settings."""
    # timeout: generous, as this demo starts two interpreters at once on what may be a
    # small machine (the default, 0.25 s, suits a service that must not wait on Redis)
    store = RedisStore(
        url, version=version, local_ttl=30, signing_key=signing_key, timeout=2.0
    )

    @cache_result(ttl=300, store=store)
    async def embed(text: str) -> tuple[np.ndarray, Embedding]:
        await anyio.sleep(0.2)  # the call to the embedding service
        vector = np.random.default_rng(len(text)).random(384, dtype=np.float32)
        return vector, Embedding(text=text, model="e5-small", norm=float(np.linalg.norm(vector)))

    return embed, store


def replica(name: str, url: str, version: str, signing_key: bytes, start: Any, out: Any) -> None:
    """One worker process: waits for the start signal, then serves its requests."""
    embed, store = make_embed(url, version, signing_key)

    async def serve() -> dict[str, Any]:
        start.wait()  # both replicas begin together (a quick, blocking wait: fine here)
        began = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for text in TEXTS:
                for _ in range(CALLERS):
                    tg.start_soon(embed, text)
        first = time.perf_counter() - began
        for text in TEXTS:  # a second round: no network round trip at all
            await embed(text)
        await store.aclose()
        return {"seconds": first, "stats": embed.cache.stats(), "store": store.stats()}

    result = anyio.run(serve)
    store.close()
    out.put((name, result))


@contextmanager
def private_redis() -> Iterator[str]:
    """A throwaway redis-server on a free port, stopped on the way out."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found: install it, or pass the URL of a running Redis")
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
            print(f"started a private redis-server on port {port}")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.terminate()
            server.wait(timeout=10)


def run(url: str) -> int:
    version = secrets.token_hex(4)  # a fresh version: this run never reads an older one's
    signing_key = secrets.token_bytes(32)  # shared by the replicas, as a deployment secret
    context = multiprocessing.get_context("spawn")
    start, out = context.Event(), context.Queue()
    workers = [
        context.Process(target=replica, args=(name, url, version, signing_key, start, out))
        for name in ("replica-a", "replica-b")
    ]
    for worker in workers:
        worker.start()
    time.sleep(1.0)  # let both import and get ready
    start.set()
    results = dict(out.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=30)
    computed = 0
    for name, result in sorted(results.items()):
        stats, store = result["stats"], result["store"]
        computed += stats.misses
        print(
            f"{name}: {len(TEXTS) * CALLERS} requests in {result['seconds']:.2f}s, "
            f"computed {stats.misses}, waited for another {stats.joins}, "
            f"hits {stats.hits} ({store.local_hits} from the in-process layer); "
            f"read {store.reads} values from Redis, waited on the other replica "
            f"{store.waits} times"
        )
    print(f"total computations: {computed} for {len(TEXTS)} texts across {len(workers)} replicas")
    return 0 if computed == len(TEXTS) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", help="a Redis URL (default: start a private server)")
    args = parser.parse_args(argv)
    if args.url:
        return run(args.url)
    with private_redis() as url:
        return run(url)


if __name__ == "__main__":
    sys.exit(main())
