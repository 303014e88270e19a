"""Helpers for the Redis tests, and the worker process they start.

The worker is this module run through ``python -c "import _redis_support; ..."``, so that
its cached functions have the same qualified names (``_redis_support.embed``) in the
worker and in the test process, and so share Redis keys with it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from pydantic import BaseModel

from buttress import RedisStore, cache_result

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

#: Keys the workers and tests share, outside the cache's namespace.
COMPUTATIONS = "test:computations"
STARTED = "test:started"
READY = "test:ready"
GO = "test:go"


class Embedding(BaseModel):
    text: str
    model: str
    norm: float


@pytest.fixture
def no_stray_threads() -> Iterator[None]:
    """Fail a test that leaves a store's lock watchdog running (a store not closed)."""
    yield
    deadline = time.monotonic() + 5
    while True:
        stray = [t.name for t in threading.enumerate() if t.name.startswith("buttress-redis")]
        if not stray:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"threads left running: {stray}")
        time.sleep(0.01)


def named(fn: Any) -> str:
    """``module.qualname`` of ``fn``: the ``name=`` that makes a closure share its keys."""
    return f"{fn.__module__}.{fn.__qualname__}"


def raw_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5)


def digest(value: Any) -> str:
    """A fingerprint of what a caller received: array bytes, dtype, shape and the model."""
    vector, meta = value
    data = vector.tobytes() + str((vector.dtype, vector.shape)).encode()
    return hashlib.sha256(data + meta.model_dump_json().encode()).hexdigest()[:16]


def expected_value(text: str) -> tuple[np.ndarray, Embedding]:
    vector = np.random.default_rng(len(text)).random(64, dtype=np.float32)
    return vector, Embedding(text=text, model="e5", norm=float(np.linalg.norm(vector)))


# --- the worker's cached functions (configured in main) ---------------------------------

_settings: dict[str, Any] = {}


def _count() -> None:
    client = raw_client(_settings["url"])
    try:
        client.incr(COMPUTATIONS)
        client.set(STARTED, os.getpid())
    finally:
        client.close()


async def embed(text: str) -> tuple[np.ndarray, Embedding]:
    """Stands in for an embedding call; counts itself in Redis (undecorated here)."""
    await asyncio.to_thread(_count)
    await asyncio.sleep(_settings["compute"])
    return expected_value(text)


def embed_sync(text: str) -> tuple[np.ndarray, Embedding]:
    _count()
    time.sleep(_settings["compute"])
    return expected_value(text)


def build(url: str, *, lock_ttl: float = 5.0, compute: float = 0.3) -> tuple[Any, Any, RedisStore]:
    """``(embed, embed_sync, store)`` cached through a new store: the same Redis keys in
    every process that calls this (the functions are ``_redis_support.embed[_sync]``)."""
    _settings.update(url=url, lock_ttl=lock_ttl, compute=compute)
    store = RedisStore(url, lock_ttl=lock_ttl, timeout=2.0)
    cached = cache_result(ttl=60, store=store)
    return cached(embed), cached(embed_sync), store


def _wait_for_go(client: redis.Redis) -> None:
    client.incr(READY)
    deadline = time.monotonic() + 60
    while not client.exists(GO):
        if time.monotonic() > deadline:
            raise TimeoutError("the test never said go")
        time.sleep(0.005)


def main(argv: list[str]) -> None:
    """``mode url callers lock_ttl compute``; prints one JSON line of what callers got."""
    mode, url, callers, lock_ttl, compute = argv
    cached, cached_sync, store = build(url, lock_ttl=float(lock_ttl), compute=float(compute))
    client = raw_client(url)
    results: list[str] = []
    if mode == "async":

        async def run() -> None:
            await asyncio.to_thread(_wait_for_go, client)
            values = await asyncio.gather(*[cached("shared") for _ in range(int(callers))])
            results.extend(digest(value) for value in values)
            await store.aclose()

        asyncio.run(run())
        stats = cached.cache.stats()
    elif mode == "sync":
        _wait_for_go(client)
        lock = threading.Lock()

        def call() -> None:
            value = digest(cached_sync("shared"))
            with lock:
                results.append(value)

        threads = [threading.Thread(target=call) for _ in range(int(callers))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stats = cached_sync.cache.stats()
    elif mode == "hold-async":  # compute forever, holding the lock, until killed
        _settings["compute"] = 3600.0
        asyncio.run(cached("held"))
        return
    else:  # "hold"
        _settings["compute"] = 3600.0
        cached_sync("held")
        return
    store.close()
    client.close()
    print(
        json.dumps(
            {
                "results": results,
                "misses": stats.misses,
                "joins": stats.joins,
                "store": store.stats().__repr__(),
            }
        ),
        flush=True,
    )


def start_worker(
    mode: str, url: str, *, callers: int = 100, lock_ttl: float = 5.0, compute: float = 0.3
) -> subprocess.Popen[str]:
    code = "import sys, _redis_support; _redis_support.main(sys.argv[1:])"
    return subprocess.Popen(
        [sys.executable, "-c", code, mode, url, str(callers), str(lock_ttl), str(compute)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)])},
    )


@contextmanager
def workers(*processes: subprocess.Popen[str]) -> Iterator[tuple[subprocess.Popen[str], ...]]:
    """Kill whatever is still running when the block ends, however it ends."""
    try:
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=30)


def wait_for(predicate: Any, timeout: float = 60.0, message: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting: {message}")
        time.sleep(0.01)


#: What a client sends when it opens a connection: not the store's operations.
_HANDSHAKE = frozenset({"hello", "client", "auth", "select", "readonly", "ping"})


@contextmanager
def commands_sent(url: str) -> Iterator[Counter[str]]:
    """Count the commands clients send to Redis inside the block (through ``MONITOR``),
    each a round trip; commands a Lua script runs are not counted (they are part of its
    one ``EVALSHA``), nor what a new connection sends before its first command."""
    seen: Counter[str] = Counter()
    client = redis.Redis.from_url(url, socket_timeout=30)
    marker = redis.Redis.from_url(url, socket_timeout=5)
    started, stopped = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def watch() -> None:
        try:
            with client.monitor() as monitor:
                marker.echo("buttress-start")
                counting = False
                while True:
                    entry = monitor.next_command()
                    words = entry["command"].split()
                    if words[:2] == ["ECHO", "buttress-start"]:
                        counting = True
                        started.set()
                    elif words[:2] == ["ECHO", "buttress-stop"]:
                        return
                    elif counting and entry.get("client_type") != "lua":
                        command = words[0].lower()
                        if command not in _HANDSHAKE:
                            seen[command] += 1
        except BaseException as exc:  # reported by the test
            failures.append(exc)
            started.set()
        finally:
            stopped.set()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert started.wait(10), "MONITOR did not start"
    try:
        yield seen
    finally:
        marker.echo("buttress-stop")
        assert stopped.wait(10), "MONITOR did not stop"
        thread.join(10)
        marker.close()
        client.close()
        if failures:
            raise failures[0]


def command_calls(client: redis.Redis, command: str) -> int:
    """How many times the server ran ``command`` (from INFO commandstats)."""
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


if __name__ == "__main__":  # pragma: no cover - run through start_worker
    main(sys.argv[1:])
