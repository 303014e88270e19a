"""Values planted in Redis are refused, never executed: pickle payloads, garbage, forgeries."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis

from _redis_support import (
    no_stray_threads,  # noqa: F401  (a fixture)
    raw_client,
)
from buttress import (
    CacheStoreFailed,
    RedisStore,
    RedisStoreError,
    RefusedValueError,
    cache_result,
    events,
)

pytestmark = [pytest.mark.redis, pytest.mark.usefixtures("no_stray_threads")]

SIGNING_KEY = b"a shared secret of 32 bytes....."


class Exploit:
    """Unpickling this creates a directory: the side effect that must never happen."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


def label(x: int) -> dict[str, Any]:
    return {"label": f"class-{x}", "scores": [0.5, 0.25]}


async def alabel(x: int) -> dict[str, Any]:
    return label(x)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = raw_client(redis_url)
    yield connection
    connection.close()


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "exploit-ran"
    payload = pickle.dumps(Exploit(path))
    pickle.loads(payload)  # the payload is live: unpickling it has the side effect...
    assert path.exists()
    path.rmdir()
    yield path
    assert not path.exists()  # ...and nothing a test does ever unpickles it


def _plants(client: redis.Redis, name: bytes, marker: Path) -> dict[str, bytes]:
    """Values an attacker with write access to Redis could put at ``name``."""
    real = client.get(name)
    assert real is not None
    exploit = pickle.dumps(Exploit(marker))
    disguised = bytearray(real[:30]) + exploit  # a real envelope claiming to hold pickle
    disguised[4] = 1
    forged = RedisStore(
        "redis://127.0.0.1:1/0", serializer="pickle", signing_key=b"the attacker's own key!!"
    )._envelope.seal(name, Exploit(marker), stored_wall=0, ttl=None, duration=0, function="f")
    return {
        "raw pickle": exploit,
        "pickle in an envelope": bytes(disguised),
        "garbage": os.urandom(64),
        "truncated": real[: len(real) // 2],
        "empty": b"",
        "signed with another key": forged,
    }


def _stores() -> dict[str, dict[str, Any]]:
    return {
        "safe codec": {},
        "signed pickle": {"serializer": "pickle", "signing_key": SIGNING_KEY},
        "signed safe codec": {"signing_key": SIGNING_KEY},
    }


@pytest.mark.parametrize("options", list(_stores().values()), ids=list(_stores()))
def test_planted_values_are_refused_as_misses_sync(
    redis_url: str, client: redis.Redis, marker: Path, options: dict[str, Any]
) -> None:
    store = RedisStore(redis_url, timeout=5, **options)
    calls: list[int] = []

    def counted(x: int) -> dict[str, Any]:
        calls.append(x)
        return label(x)

    fn = cache_result(store=store)(counted)
    assert fn(1) == label(1)
    (name,) = client.keys()
    seen: list[CacheStoreFailed] = []
    with events.subscribe(seen.append, CacheStoreFailed):
        for what, planted in _plants(client, name, marker).items():
            client.set(name, planted)
            assert fn(1) == label(1), what  # recomputed: the planted value was refused
            assert fn(1) == label(1), what  # and overwritten by the recomputed one
    plants = len(_plants(client, name, marker))
    assert len(calls) == 1 + plants
    # each planted value is refused twice: by the lookup, and by the check after taking
    # the lock (in case another replica stored a value meanwhile)
    assert store.stats().refused == 2 * plants
    assert fn.cache.stats().store_errors == plants
    assert all(isinstance(event.error, RefusedValueError) for event in seen)
    assert [event.operation for event in seen] == ["get", "flight"] * plants
    store.close()


@pytest.mark.anyio
async def test_planted_values_are_refused_as_misses_async(
    redis_url: str, client: redis.Redis, marker: Path
) -> None:
    store = RedisStore(redis_url, serializer="pickle", signing_key=SIGNING_KEY, timeout=5)
    calls = 0

    async def counted(x: int) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return await alabel(x)

    fn = cache_result(store=store)(counted)
    assert await fn(1) == label(1)
    (name,) = client.keys()
    plants = _plants(client, name, marker)
    for planted in plants.values():
        client.set(name, planted)
        assert await fn(1) == label(1)
    assert calls == 1 + len(plants)
    assert store.stats().refused == 2 * len(plants)
    await store.aclose()
    store.close()


def test_a_value_copied_from_another_entry_is_refused(redis_url: str, client: redis.Redis) -> None:
    store = RedisStore(redis_url, signing_key=SIGNING_KEY, timeout=5)
    fn = cache_result(store=store)(label)
    fn(1)
    fn(2)
    one, two = (store.key_name(_key(label, x)) for x in (1, 2))
    client.set(two, client.get(one))  # validly signed, but for another key
    assert fn(2) == label(2)  # not label(1)
    assert store.stats().refused == 2  # the lookup, and the check under the lock
    store.close()


def test_a_planted_value_fails_the_call_when_failing_closed(
    redis_url: str, client: redis.Redis, marker: Path
) -> None:
    store = RedisStore(redis_url, fail_open=False, timeout=5)
    fn = cache_result(store=store)(label)
    fn(1)
    (name,) = client.keys()
    client.set(name, pickle.dumps(Exploit(marker)))
    with pytest.raises(RedisStoreError) as info:
        fn(1)
    assert isinstance(info.value.__cause__, RefusedValueError)
    assert info.value.__cause__.key == name.decode()
    store.close()


@pytest.mark.anyio
async def test_a_planted_value_seen_while_waiting_is_refused_too(
    redis_url: str, client: redis.Redis, marker: Path
) -> None:
    store = RedisStore(redis_url, lock_ttl=0.3, timeout=5)
    fn = cache_result(store=store)(alabel)
    name = store.key_name(_key(alabel, 1))
    # another "replica" holds the lock, and the value that appears is an exploit
    client.set(name + ":lock", "someone", px=300)
    client.set(name, pickle.dumps(Exploit(marker)))
    seen: list[CacheStoreFailed] = []
    with events.subscribe(seen.append, CacheStoreFailed):
        assert await fn(1) == label(1)
    assert store.stats().refused >= 2  # the first read, and the waiter's polls
    assert store.stats().takeovers == 1  # it computed once the lock expired
    assert {event.operation for event in seen} >= {"get", "flight"}
    await store.aclose()
    store.close()


def _key(fn: Callable[..., Any], *args: Any) -> Any:
    from buttress import CacheKey, CacheScope

    return CacheKey(CacheScope(fn.__qualname__, module=fn.__module__), args)


def test_signed_values_written_by_one_replica_are_read_by_another(redis_url: str) -> None:
    first = RedisStore(redis_url, serializer="pickle", signing_key=SIGNING_KEY, timeout=5)
    second = RedisStore(
        redis_url, serializer="pickle", signing_key=SIGNING_KEY.decode(), timeout=5
    )
    a = cache_result(store=first)(label)
    b = cache_result(store=second)(label)
    assert a(3) == b(3) == label(3)
    assert second.stats().reads == 1
    assert second.stats().refused == 0
    anyio.run(first.aclose)
    first.close()
    second.close()
