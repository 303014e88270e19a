"""RedisStore with @cache_result: keys, expiry, both kinds of function, loops, trio, clients."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import numpy as np
import pytest
import redis
import redis.asyncio
from pydantic import BaseModel

from _redis_support import (
    Embedding,
    named,
    no_stray_threads,  # noqa: F401  (a fixture)
    raw_client,
)
from buttress import (
    CacheKey,
    CacheScope,
    ConfigurationError,
    RedisStore,
    RedisStoreError,
    UnkeyableArgumentError,
    cache_result,
)
from buttress.testing import FakeClock

pytestmark = [pytest.mark.redis, pytest.mark.usefixtures("no_stray_threads")]

Factory = Callable[..., RedisStore]


@pytest.fixture
def stores(redis_url: str) -> Iterator[Factory]:
    """Makes stores on the test's server; closes their sync clients afterwards."""
    made: list[RedisStore] = []

    def make(**options: Any) -> RedisStore:
        # patient: a loaded machine must not turn a slow reply into a miss here
        store = RedisStore(redis_url, **{"timeout": 5.0, **options})
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
async def astores(stores: Factory) -> AsyncIterator[Factory]:
    """Like ``stores``, also closing their asyncio clients inside the test's loop."""
    made: list[RedisStore] = []

    def make(**options: Any) -> RedisStore:
        store = stores(**options)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = raw_client(redis_url)
    yield connection
    connection.close()


def triple(x: int) -> list[int]:
    """Module-level, so two decorations share one qualified name (two replicas)."""
    return [x, x, x]


async def atriple(x: int) -> list[int]:
    await anyio.lowlevel.checkpoint()
    return [x, x, x]


def test_replicas_share_values_under_namespaced_keys(stores: Factory, client: redis.Redis) -> None:
    calls: list[int] = []

    def counted(x: int) -> list[int]:
        calls.append(x)
        return triple(x)

    counted.__qualname__ = "triple"
    same = named(triple)  # a closure captured calls: named, it shares triple's keys
    one = cache_result(ttl=30, store=stores(namespace="svc", version=3), name=same)(counted)
    two = cache_result(ttl=30, store=stores(namespace="svc", version=3), name=same)(counted)
    assert one(7) == [7, 7, 7]
    assert two(7) == [7, 7, 7]  # read from Redis: computed by the other replica
    assert calls == [7]
    digest = CacheKey(CacheScope("triple", module=__name__), (7,)).digest()
    assert client.keys() == [f"svc:3:{__name__}.triple:{{{digest}}}".encode()]
    other_version = cache_result(ttl=30, store=stores(namespace="svc", version=4), name=same)(
        counted
    )
    assert other_version(7) == [7, 7, 7]
    assert calls == [7, 7]  # a new version never reads the old one's values


def test_expiry_is_enforced_by_redis(stores: Factory, client: redis.Redis) -> None:
    store = stores()
    fn = cache_result(ttl=30, stale_while_revalidate=10, store=store)(triple)
    forever = cache_result(ttl=None, store=store)(atriple)
    fn(1)
    anyio.run(forever, 1, backend="trio")  # (trio: no asyncio client left open)
    ttls = {name.decode().rsplit(":", 2)[-2]: client.pttl(name) for name in client.scan_iter()}
    assert 39_000 < ttls[f"{__name__}.triple"] <= 40_000  # ttl plus the stale window
    assert ttls[f"{__name__}.atriple"] == -1  # ttl=None: no expiry


def test_sync_functions_hit_miss_invalidate_and_clear(stores: Factory, client: redis.Redis) -> None:
    store = stores()
    fn = cache_result(store=store)(triple)
    other = cache_result(store=store)(atriple)
    assert fn(1) == fn(1) == [1, 1, 1]
    fn(2)
    asyncio.run(_call_and_close(other, store, 1))
    assert fn.cache.stats().hits == 1
    assert fn.cache.stats().misses == 2
    assert fn.cache.invalidate(1) is True
    assert fn.cache.invalidate(1) is False
    client.set(store.key_name(_key(triple, 2)) + ":lock", "held by someone")
    fn.cache.clear()
    names = {name.decode() for name in client.scan_iter()}
    # the other function's entry and the lock key survive
    assert names == {
        store.key_name(_key(atriple, 1)),
        store.key_name(_key(triple, 2)) + ":lock",
    }


async def _call_and_close(fn: Any, store: RedisStore, *args: Any) -> Any:
    try:
        return await fn(*args)
    finally:
        await store.aclose()


def _key(fn: Any, *args: Any) -> CacheKey:
    return CacheKey(CacheScope(fn.__qualname__, module=fn.__module__), args)


@pytest.mark.anyio
async def test_coroutines_hit_miss_invalidate_and_clear(astores: Factory) -> None:
    store = astores()
    calls = 0

    async def counted(x: int) -> list[int]:
        nonlocal calls
        calls += 1
        return await atriple(x)

    fn = cache_result(store=store)(counted)
    assert await fn(1) == await fn(1) == [1, 1, 1]
    assert calls == 1
    assert await fn.cache.ainvalidate(1) is True
    await fn(1)
    await fn.cache.aclear()
    await fn(1)
    assert calls == 3
    stats = fn.cache.stats()
    assert (stats.hits, stats.misses, stats.store_errors) == (1, 3, 0)
    assert store.stats().writes == 3


def test_one_store_serves_several_event_loops(stores: Factory) -> None:
    store = stores()
    fn = cache_result(store=store)(atriple)
    # two asyncio.run in a row, then a loop in another thread, then trio
    assert asyncio.run(fn(5)) == [5, 5, 5]
    assert asyncio.run(fn(5)) == [5, 5, 5]
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(asyncio.run(fn(5))))
    thread.start()
    thread.join()
    assert anyio.run(fn, 5, backend="trio") == [5, 5, 5]
    assert results == [[5, 5, 5]]
    assert fn.cache.stats().hits == 3
    gc.collect()  # an unclosed client would warn here (and warnings are errors)


def test_trio_runs_the_sync_client_in_worker_threads(
    stores: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from buttress._redis import Script

    store = stores()
    fn = cache_result(store=store)(atriple)
    threads: list[tuple[str, str]] = []
    original = Script.run

    def spy(self: Script, client: Any, keys: Any, args: Any) -> Any:
        threads.append((self.name, threading.current_thread().name))
        return original(self, client, keys, args)

    monkeypatch.setattr(Script, "run", spy)

    async def main() -> list[int]:
        await fn(2)
        return await fn(2)

    assert anyio.run(main, backend="trio") == [2, 2, 2]
    # the miss: read-or-lock, then store-and-release; the hit: read-or-lock
    assert [name for name, _ in threads] == ["lookup", "store", "lookup"]
    assert threading.current_thread().name not in {thread for _, thread in threads}
    assert not store.connection._loops  # no redis.asyncio client was made: it cannot run on trio


def test_a_loop_ended_by_asyncio_run_closes_its_client(stores: Factory) -> None:
    store = stores()
    fn = cache_result(store=store)(atriple)
    clients: list[Any] = []

    async def main() -> None:
        await fn(1)
        clients.append(store.connection.async_client("get"))

    asyncio.run(main())
    assert not store.connection._loops
    pool = clients[0].connection_pool
    assert all(not connection.is_connected for connection in pool._available_connections)


# --- the in-process layer ---------------------------------------------------------------


def test_local_ttl_serves_hot_keys_without_a_round_trip(
    stores: Factory, client: redis.Redis, buttress_clock: FakeClock
) -> None:
    store = stores(local_ttl=5)
    calls: list[int] = []

    def counted(x: int) -> list[int]:
        calls.append(x)
        return triple(x)

    fn = cache_result(ttl=60, store=store)(counted)
    fn(1)
    client.flushall()  # whatever Redis holds now, the local layer answers
    assert fn(1) == [1, 1, 1]
    assert store.stats().local_hits == 1
    assert calls == [1]
    buttress_clock.advance(5)  # the local copy is done: Redis is asked, and has nothing
    fn(1)
    assert calls == [1, 1]
    assert store.stats().local_hits == 1


def test_another_replicas_value_is_read_once_then_served_locally(stores: Factory) -> None:
    writer = cache_result(store=stores())(triple)
    reader_store = stores(local_ttl=30)
    reader = cache_result(store=reader_store)(triple)
    writer(4)
    for _ in range(5):
        assert reader(4) == [4, 4, 4]
    assert (reader_store.stats().reads, reader_store.stats().local_hits) == (1, 4)


def test_an_expired_local_copy_is_not_served_instead_of_a_fresh_one(
    stores: Factory, buttress_clock: FakeClock
) -> None:
    store = stores(local_ttl=100)
    calls = 0

    def counted(x: int) -> int:
        nonlocal calls
        calls += 1
        return calls

    fn = cache_result(ttl=10, store=store)(counted)
    other = cache_result(ttl=10, store=stores())(counted)
    assert fn(1) == 1
    buttress_clock.advance(11)  # expired, though still in the local layer
    assert other(1) == 2  # another replica recomputes and stores it
    assert fn(1) == 2  # this replica reads Redis again and finds the fresh value
    assert calls == 2


# --- values -----------------------------------------------------------------------------


class Report(BaseModel):
    label: str
    scores: list[float]
    embedding: Embedding


def rich(x: int) -> dict[str, Any]:
    return {
        "vector": np.linspace(0, 1, 384, dtype=np.float32) * x,
        "matrix": np.arange(12, dtype=">i8").reshape(3, 4),
        "report": Report(
            label="cat", scores=[0.5, 0.25], embedding=Embedding(text="t", model="m", norm=1.5)
        ),
        "raw": b"\x00\xff",
        "pair": (x, None),
    }


@pytest.mark.anyio
async def test_numpy_arrays_and_pydantic_models_round_trip_exactly(astores: Factory) -> None:
    async def arich(x: int) -> dict[str, Any]:
        return rich(x)

    writer = cache_result(store=astores())(arich)
    reader_store = astores()
    reader = cache_result(store=reader_store)(arich)
    original = await writer(3)
    copy = await reader(3)
    assert reader_store.stats().reads == 1  # decoded from the bytes in Redis
    expected = rich(3)
    for name in ("vector", "matrix"):
        assert copy[name].dtype == expected[name].dtype
        assert copy[name].shape == expected[name].shape
        assert copy[name].tobytes() == expected[name].tobytes()
        assert not copy[name].flags.writeable  # read-only, like every cached array
    assert copy["report"] == expected["report"]
    assert type(copy["report"].embedding) is Embedding
    assert (copy["raw"], copy["pair"]) == (b"\x00\xff", (3, None))
    assert original["vector"].tobytes() == copy["vector"].tobytes()


def test_an_argument_keyed_by_identity_cannot_go_to_redis(stores: Factory) -> None:
    fn = cache_result(store=stores())(lambda thing: 1)
    with pytest.raises(UnkeyableArgumentError, match="shared between processes"):
        fn(object())


# --- probabilistic early refresh ----------------------------------------------------------


def _slow_counter(clock: FakeClock, seconds: float) -> tuple[Callable[[int], int], list[int]]:
    calls: list[int] = []

    def compute(x: int) -> int:
        clock.sleep(seconds)  # the computation "takes" this long: XFetch weighs it
        calls.append(x)
        return len(calls)

    return compute, calls


def test_early_refresh_recomputes_a_fresh_value_before_it_expires(
    stores: Factory, buttress_clock: FakeClock
) -> None:
    compute, _ = _slow_counter(buttress_clock, 2.0)
    eager = cache_result(ttl=30, store=stores(early_refresh_beta=1e9), name=named(compute))(
        compute
    )
    assert eager(1) == 1
    assert eager(1) == 2  # ~certain at this beta: the caller refreshed it
    stats = eager.cache.stats()
    assert (stats.misses, stats.refreshes, stats.hits) == (2, 1, 0)


def test_early_refresh_is_rare_far_from_expiry(stores: Factory, buttress_clock: FakeClock) -> None:
    # A computation of 1 s: far from expiry the chance is exp(-3600); with a millisecond
    # left (the wall-clock stamp in Redis is kept to the millisecond) it is exp(-0.001).
    compute, _ = _slow_counter(buttress_clock, 1.0)
    fn = cache_result(ttl=3600, store=stores(early_refresh_beta=1.0), name=named(compute))(
        compute
    )
    for _ in range(50):
        assert fn(1) == 1  # exp(-3600): never
    assert fn.cache.stats().refreshes == 0
    buttress_clock.advance(3600 - 1e-6)  # a microsecond left of an hour: ~certain now
    assert fn(1) == 2
    assert fn.cache.stats().refreshes == 1


def test_while_another_process_refreshes_the_current_value_is_served_at_once(
    stores: Factory, client: redis.Redis, buttress_clock: FakeClock
) -> None:
    store = stores(early_refresh_beta=1e9)
    compute, calls = _slow_counter(buttress_clock, 2.0)
    fn = cache_result(ttl=30, store=store, name=named(compute))(compute)
    fn(1)
    name = store.key_name(_key(compute, 1))
    client.set(name + ":lock", "another replica", px=10_000)  # it is refreshing
    assert fn(1) == 1  # served the current value: no waiting, no computing
    assert calls == [1]
    assert store.stats().waits == 0
    assert fn.cache.stats().hits == 1


def test_stale_while_revalidate_serves_at_once_while_another_process_refreshes(
    stores: Factory, client: redis.Redis, buttress_clock: FakeClock
) -> None:
    store = stores()
    compute, _ = _slow_counter(buttress_clock, 0.0)
    fn = cache_result(ttl=10, stale_while_revalidate=60, store=store, name=named(compute))(
        compute
    )
    fn(1)
    buttress_clock.advance(20)
    client.set(store.key_name(_key(compute, 1)) + ":lock", "another replica", px=10_000)
    assert fn(1) == 1
    assert fn.cache.stats().stale == 1
    client.delete(store.key_name(_key(compute, 1)) + ":lock")
    assert fn(1) == 2  # nobody refreshing now: this caller does


def test_a_failed_early_refresh_serves_the_value_that_is_still_fresh(
    stores: Factory, buttress_clock: FakeClock
) -> None:
    outcomes: list[Any] = [5, ConnectionError("down")]

    def flaky(x: int) -> int:
        buttress_clock.sleep(2)
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return int(outcome)

    fn = cache_result(ttl=30, store=stores(early_refresh_beta=1e9), name=named(flaky))(flaky)
    assert fn(1) == 5
    assert fn(1) == 5  # the refresh raised; the value it refreshed is still fresh
    stats = fn.cache.stats()
    assert (stats.errors, stats.hits, stats.refreshes) == (1, 1, 1)


# --- clients and settings ----------------------------------------------------------------


def test_a_sync_client_serves_both_kinds_of_function(redis_url: str) -> None:
    given = redis.Redis.from_url(redis_url)
    store = RedisStore(client=given)
    sync_fn = cache_result(store=store)(triple)
    async_fn = cache_result(store=store)(atriple)
    assert sync_fn(1) == sync_fn(1) == [1, 1, 1]
    assert asyncio.run(async_fn(1)) == asyncio.run(async_fn(1)) == [1, 1, 1]
    assert (sync_fn.cache.stats().hits, async_fn.cache.stats().hits) == (1, 1)
    store.close()
    assert given.ping()  # the store does not close a client it was given
    given.close()


def test_an_asyncio_client_serves_coroutines_only(redis_url: str) -> None:
    async def main() -> None:
        given = redis.asyncio.Redis.from_url(redis_url)
        store = RedisStore(client=given, fail_open=True)
        fn = cache_result(store=store)(atriple)
        assert await fn(1) == await fn(1) == [1, 1, 1]
        assert fn.cache.stats().hits == 1
        plain = cache_result(store=store)(triple)
        with pytest.raises(RedisStoreError, match=r"redis\.asyncio client") as info:
            plain(1)  # even with fail_open: a misconfiguration, not an outage
        assert info.value.operation == "get"
        await store.aclose()
        await given.aclose()

    asyncio.run(main())


def test_an_asyncio_client_on_trio_is_a_clear_error(redis_url: str) -> None:
    async def main() -> None:
        given = redis.asyncio.Redis.from_url(redis_url)
        store = RedisStore(client=given)
        fn = cache_result(store=store)(atriple)
        with pytest.raises(RedisStoreError, match="on trio"):
            await fn(1)  # redis.asyncio cannot run on trio: said so, not counted away

    anyio.run(main, backend="trio")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"serializer": "pickle"}, "needs signing_key"),
        ({"serializer": "json"}, "serializer must be"),
        ({"serializer": 42}, "serializer must be"),
        ({"signing_key": b"short"}, "at least 16 bytes"),
        ({"signing_key": 12345}, "bytes or str"),
        ({"namespace": ""}, "namespace"),
        ({"namespace": "a b"}, "namespace"),
        ({"version": ""}, "version"),
        ({"timeout": 0}, "timeout"),
        ({"lock_ttl": 0.001}, "lock_ttl"),
        ({"local_ttl": -1}, "local_ttl"),
        ({"local_maxsize": 0}, "local_maxsize"),
        ({"early_refresh_beta": -1}, "early_refresh_beta"),
        ({"url": "http://example.com"}, "url"),
        ({"client": object()}, "client"),
    ],
)
def test_bad_settings_are_refused_naming_the_parameter(
    options: dict[str, Any], message: str
) -> None:
    if "local_maxsize" in options:
        options["local_ttl"] = 1  # the bound matters only with a local layer
    with pytest.raises(ConfigurationError, match=message):
        RedisStore(**{"url": "redis://127.0.0.1:1/0", **options})


def test_url_and_client_together_are_refused(redis_url: str) -> None:
    given = redis.Redis.from_url(redis_url)
    with pytest.raises(ConfigurationError, match="not both"):
        RedisStore(redis_url, client=given)
    given.close()


def test_the_repr_never_shows_a_password() -> None:
    store = RedisStore("redis://user:s3cret@cache.internal:6380/2")
    assert "s3cret" not in repr(store)
    assert store.address == "cache.internal:6380/2"


def test_redis_is_imported_only_when_a_store_is_made() -> None:
    code = (
        "import sys, buttress\n"
        "from buttress import RedisStore\n"
        "assert 'redis' not in sys.modules\n"
        "RedisStore('redis://127.0.0.1:1/0')\n"
        "assert 'redis' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
