"""RedisStore on a real Redis Cluster (three masters) and behind real Sentinels, failover
included."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel

from _redis_support import no_stray_threads  # noqa: F401  (a fixture)
from _redis_topologies import (
    Cluster,
    Sentinels,
    redis_cluster,  # noqa: F401  (a fixture)
    redis_sentinel,  # noqa: F401  (a fixture)
    sentinel_topology,
)
from buttress import RedisStore, cache_result

pytestmark = [pytest.mark.redis, pytest.mark.usefixtures("no_stray_threads")]

KEYS = 60


def square(x: int) -> int:
    return x * x


async def asquare(x: int) -> int:
    return x * x


def _slots_used(cluster: Cluster) -> dict[int, int]:
    """How many of the cache's keys each node holds (port -> count)."""
    counts = {}
    for port in cluster.ports:
        client = redis.Redis(host="127.0.0.1", port=port)
        try:
            counts[port] = sum(1 for _ in client.scan_iter(match="buttress:*"))
        finally:
            client.close()
    return counts


# --- Redis Cluster ------------------------------------------------------------------------


@pytest.fixture
def cluster(redis_cluster: Cluster) -> Cluster:  # noqa: F811
    redis_cluster.flush()
    return redis_cluster


def _exercise_sync(store: RedisStore, cluster: Cluster) -> None:
    fn = cache_result(ttl=60, store=store)(square)
    assert [fn(x) for x in range(KEYS)] == [x * x for x in range(KEYS)]
    assert [fn(x) for x in range(KEYS)] == [x * x for x in range(KEYS)]
    stats = fn.cache.stats()
    assert (stats.misses, stats.hits, stats.store_errors) == (KEYS, KEYS, 0)
    spread = _slots_used(cluster)
    assert sum(spread.values()) == KEYS
    assert all(count > 0 for count in spread.values())  # every node holds some
    assert fn.cache.invalidate(3) is True
    fn.cache.clear()  # SCAN on every node, UNLINK split by slot
    assert sum(_slots_used(cluster).values()) == 0
    assert store.stats().failures == 0


async def _exercise_async(store: RedisStore, cluster: Cluster) -> None:
    fn = cache_result(ttl=60, store=store)(asquare)
    assert [await fn(x) for x in range(KEYS)] == [x * x for x in range(KEYS)]
    assert [await fn(x) for x in range(KEYS)] == [x * x for x in range(KEYS)]
    stats = fn.cache.stats()
    assert (stats.misses, stats.hits, stats.store_errors) == (KEYS, KEYS, 0)
    assert all(count > 0 for count in _slots_used(cluster).values())
    assert await fn.cache.ainvalidate(3) is True
    await fn.cache.aclear()
    assert sum(_slots_used(cluster).values()) == 0
    assert store.stats().failures == 0


def test_a_cluster_url_serves_plain_functions(cluster: Cluster) -> None:
    with RedisStore(cluster.url, timeout=5) as store:
        assert store.address.startswith("cluster:127.0.0.1:")
        _exercise_sync(store, cluster)


@pytest.mark.anyio
async def test_a_cluster_url_serves_coroutines(cluster: Cluster) -> None:
    # asyncio: one redis.asyncio cluster client per loop; trio: the sync one in threads
    store = RedisStore(cluster.url, timeout=5)
    try:
        await _exercise_async(store, cluster)
    finally:
        await store.aclose()
        store.close()


def test_a_sync_cluster_client_given(cluster: Cluster) -> None:
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=cluster.ports[1])
    try:
        store = RedisStore(client=client)
        _exercise_sync(store, cluster)
        store.close()
    finally:
        client.close()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_asyncio_cluster_client_given(cluster: Cluster, anyio_backend: Any) -> None:
    client = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=cluster.ports[2])
    try:
        store = RedisStore(client=client)
        await _exercise_async(store, cluster)
        await store.aclose()
        store.close()
    finally:
        await client.aclose()


def test_one_computation_across_replicas_on_a_cluster(cluster: Cluster) -> None:
    # Every key one script touches (entry, lock, waiters' keys) shares the entry's hash
    # tag: a CROSSSLOT error would fail the flight, and each replica would compute.
    computed: Counter[int] = Counter()
    gate = threading.Event()

    def slow(x: int) -> int:
        computed[x] += 1
        gate.wait(10)
        return -x

    slow.__qualname__ = "square"  # the replicas' shared function
    stores = [RedisStore(cluster.url, timeout=5, lock_ttl=1.0) for _ in range(2)]
    try:
        functions = [
            cache_result(ttl=60, store=store, name="topologies.slow")(slow) for store in stores
        ]
        results: list[int] = []
        threads = [
            threading.Thread(target=lambda f=f, x=x: results.append(f(x)))
            for f in functions
            for x in range(8)
            for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        time.sleep(1.5)  # longer than the lock's first lifetime: the keeper renews it
        gate.set()
        for thread in threads:
            thread.join(30)
        assert sorted(results) == sorted(-x for x in range(8) for _ in range(6))
        assert computed == Counter(range(8))  # once per key, across both replicas
        assert sum(store.stats().waits for store in stores) > 0
        assert all(store.stats().failures == 0 for store in stores)
    finally:
        for store in stores:
            store.close()


# --- Sentinel -------------------------------------------------------------------------------


def test_a_sentinel_url_serves_both_kinds_of_function(redis_sentinel: Sentinels) -> None:  # noqa: F811
    store = RedisStore(redis_sentinel.url, timeout=5, namespace="sentinel-url")
    try:
        assert store.address == (
            "sentinel:" + ",".join(f"127.0.0.1:{p}" for p in redis_sentinel.sentinels)
            + f"/{redis_sentinel.service}"
        )
        fn = cache_result(ttl=60, store=store)(square)
        afn = cache_result(ttl=60, store=store)(asquare)
        assert fn(4) == fn(4) == 16
        assert anyio.run(afn, 5) == anyio.run(afn, 5) == 25
        assert anyio.run(afn, 6, backend="trio") == 36
        assert (fn.cache.stats().hits, afn.cache.stats().hits) == (1, 1)
        master = redis.Redis(host="127.0.0.1", port=redis_sentinel.master_port())
        try:
            assert len(list(master.scan_iter(match="sentinel-url:*"))) == 3  # on the master
        finally:
            master.close()
    finally:
        store.close()


def test_a_client_from_sentinel_master_for(redis_sentinel: Sentinels) -> None:  # noqa: F811
    hosts = [("127.0.0.1", port) for port in redis_sentinel.sentinels]
    sentinel = redis.sentinel.Sentinel(hosts, socket_timeout=5)
    client = sentinel.master_for(redis_sentinel.service, socket_timeout=5)
    try:
        store = RedisStore(client=client, namespace="sentinel-client")
        assert store.address == f"sentinel:{redis_sentinel.service}"
        fn = cache_result(ttl=60, store=store)(square)
        assert fn(7) == fn(7) == 49
        assert fn.cache.stats().hits == 1
        store.close()
    finally:
        client.close()
        for watcher in sentinel.sentinels:
            watcher.close()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_asyncio_client_from_sentinel_master_for(
    redis_sentinel: Sentinels,  # noqa: F811
    anyio_backend: Any,
) -> None:
    hosts = [("127.0.0.1", port) for port in redis_sentinel.sentinels]
    sentinel = redis.asyncio.sentinel.Sentinel(hosts, socket_timeout=5)
    client = sentinel.master_for(redis_sentinel.service, socket_timeout=5)
    try:
        store = RedisStore(client=client, namespace="sentinel-async")
        fn = cache_result(ttl=60, store=store)(asquare)
        assert await fn(8) == await fn(8) == 64
        assert fn.cache.stats().hits == 1
        await store.aclose()
        store.close()
    finally:
        await client.aclose()
        for watcher in sentinel.sentinels:
            await watcher.aclose()


@pytest.mark.slow
def test_a_failover_keeps_calls_succeeding_and_caching_resumes() -> None:
    with sentinel_topology() as topology:
        store = RedisStore(topology.url, timeout=0.5)
        computed: Counter[int] = Counter()

        def work(x: int) -> int:
            computed[x] += 1
            return x + 1000

        fn = cache_result(ttl=600, store=store, name="topologies.failover")(work)
        try:
            assert fn(0) == fn(0) == 1000
            assert computed[0] == 1
            old = topology.kill_master()
            deadline = time.monotonic() + 60
            key = 1
            while topology.master_port() == old:  # the sentinels have not promoted yet
                assert time.monotonic() < deadline, "no failover within 60 s"
                assert fn(key) == key + 1000  # fail open: computed, never an error
                key += 1
                time.sleep(0.05)
            assert fn.cache.stats().store_errors > 0  # it did go through the outage
            # caching resumes against the new master once the store tries again
            resumed = time.monotonic() + 30
            while True:
                key += 1
                fn(key)
                hits = fn.cache.stats().hits
                assert fn(key) == key + 1000
                if fn.cache.stats().hits == hits + 1:
                    break
                assert time.monotonic() < resumed, "caching did not resume"
                time.sleep(0.1)
            assert computed[key] == 1
            new = redis.Redis(host="127.0.0.1", port=topology.master_port())
            try:
                assert new.info("replication")["role"] == "master"
                assert any(new.scan_iter(match="buttress:*"))  # written to the new master
            finally:
                new.close()
        finally:
            store.close()
