"""The URLs RedisStore takes: one server, a Redis Cluster, a Sentinel-managed master."""

from __future__ import annotations

import pytest

from buttress import ConfigurationError, RedisStore
from buttress._redis import parse_url


def test_a_server_url() -> None:
    topology = parse_url("rediss://user:secret@cache.internal:6380/2")
    assert (topology.kind, topology.address) == ("server", "cache.internal:6380/2")
    assert "secret" not in topology.address
    assert parse_url("unix:///run/redis.sock?db=1").address == "unix:/run/redis.sock/1"


def test_a_cluster_url_names_its_nodes() -> None:
    topology = parse_url("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2,[::1]:7002/0")
    assert topology.kind == "cluster"
    assert topology.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002))
    assert topology.options == {"password": "pw"}
    assert topology.address == "cluster:10.0.0.1:7000,10.0.0.2:6379,::1:7002"
    assert parse_url("rediss+cluster://node:7000").options == {"ssl": True}


def test_a_sentinel_url_names_the_sentinels_the_master_and_a_database() -> None:
    topology = parse_url(
        "redis+sentinel://app:pw@s1:26379,s2/cache-master/3?sentinel_password=watch"
    )
    assert topology.kind == "sentinel"
    assert topology.nodes == (("s1", 26379), ("s2", 26379))
    assert topology.service == "cache-master"
    assert topology.options == {
        "username": "app",
        "password": "pw",
        "db": 3,
        "sentinel_password": "watch",
    }
    assert topology.address == "sentinel:s1:26379,s2:26379/cache-master"
    assert "pw" not in topology.address


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://cache:6379", "must start with redis://"),
        ("redis+sentinel://s1:26379", "names the master"),
        ("redis+sentinel://s1:26379/master/x", "database number"),
        ("redis+cluster://n1:7000/1", "database 0 only"),
        ("redis+cluster://n1:port", "host and port"),
        ("redis+cluster://", "names no cluster node"),
        ("redis+cluster://n1:7000?retries=3", "unknown url options"),
        ("redis://cache:notaport/0", "not a Redis URL"),
    ],
)
def test_urls_that_cannot_work_are_refused_when_the_store_is_made(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RedisStore(url)


def test_url_and_client_are_one_or_the_other() -> None:
    import redis

    client = redis.Redis()
    try:
        with pytest.raises(ConfigurationError, match="either url or client"):
            RedisStore("redis://127.0.0.1:6379/0", client=client)
        with pytest.raises(ConfigurationError, match=r"client must be a redis\.Redis"):
            RedisStore(client=object())
    finally:
        client.close()
