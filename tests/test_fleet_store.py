"""FleetStore: shared names, scripts in one round trip, the settings contract, outages.

Against real redis-servers (a private one where the test stops it, the three-master
cluster of ``_redis_topologies``). Two stores on one server stand for two processes here;
the shared rate limit's tests use real processes.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from _redis_topologies import Cluster, redis_cluster  # noqa: F401  (a fixture)
from buttress import (
    ConfigurationError,
    Event,
    FleetStore,
    SharedSettingsError,
    SharedStateError,
    SharedStateLost,
    SharedStateRestored,
    events,
)
from buttress._monitoring._stats import SHARED_STATE, EventCounters
from buttress._redis import LOST, Script

#: Counts a call in the name's key and returns the new count and the server's time.
COUNT = Script(
    "test-count",
    """
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
local now = redis.call('TIME')
return {n, tonumber(now[1])}
""",
)


@pytest.fixture
def fleet(redis_url: str) -> Iterator[FleetStore]:
    store = FleetStore(redis_url, timeout=2.0)
    yield store
    store.close()


@pytest.fixture
def seen() -> Iterator[list[Event]]:
    received: list[Event] = []
    with events.subscribe(received.append, (SharedStateLost, SharedStateRestored)):
        yield received


def test_keys_of_one_name_share_a_hash_tag(fleet: FleetStore) -> None:
    state = fleet.shared("rate_limit", "app.embed", {"rate": 200})
    assert state.key("tat") == "buttress:{rate_limit:app.embed}:tat"
    assert state.settings_key == "buttress:{rate_limit:app.embed}:settings"
    weird = fleet.shared("rate_limit", "a{b}c", {})
    assert weird.key("tat") == "buttress:{rate_limit:a(b)c}:tat"


def test_a_script_runs_and_the_settings_are_recorded(fleet: FleetStore, redis_url: str) -> None:
    state = fleet.shared("rate_limit", "count", {"rate": 200.0, "per": 1, "burst": None})
    assert state.run("count", COUNT, [state.key("n")], [3])[0] == 3
    assert state.run("count", COUNT, [state.key("n")], [2])[0] == 5
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert raw.hgetall(state.settings_key) == {"rate": "200", "per": "1", "burst": "none"}
    finally:
        raw.close()


@pytest.mark.anyio
async def test_a_script_runs_from_a_coroutine(fleet: FleetStore) -> None:
    state = fleet.shared("rate_limit", "acount", {"rate": 5})
    first = await state.arun("count", COUNT, [state.key("n")], [1])
    second = await state.arun("count", COUNT, [state.key("n")], [1])
    assert (first[0], second[0]) == (1, 2)
    assert second[1] > 1_600_000_000  # the server's clock
    await fleet.aclose()


def test_another_process_with_other_settings_is_refused(redis_url: str) -> None:
    with FleetStore(redis_url) as first, FleetStore(redis_url) as second:
        mine = first.shared("rate_limit", "quota", {"rate": 200, "per": 1})
        theirs = second.shared("rate_limit", "quota", {"rate": 300, "per": 1})
        mine.run("count", COUNT, [mine.key("n")], [1])
        with pytest.raises(SharedSettingsError) as caught:
            theirs.run("count", COUNT, [theirs.key("n")], [1])
        error = caught.value
        assert isinstance(error, ConfigurationError)
        assert (error.kind, error.name, error.setting) == ("rate_limit", "quota", "rate")
        assert (error.recorded, error.given) == ("200", "300")
        assert "rate=200" in str(error)
        assert "rate=300" in str(error)
        assert "forget" in str(error)
        assert pickle.loads(pickle.dumps(error)).setting == "rate"
        with pytest.raises(SharedSettingsError):  # refused again, at once
            theirs.run("count", COUNT, [theirs.key("n")], [1])
        # the same settings are welcome; forgetting the record lets new settings in
        assert first.shared("rate_limit", "quota", {"per": 1, "rate": 200.0}) is mine
        assert second.forget("rate_limit", "quota") is True
        assert theirs.run("count", COUNT, [theirs.key("n")], [1])[0] == 2


def test_a_setting_only_one_side_has_is_a_difference(redis_url: str) -> None:
    with FleetStore(redis_url) as first, FleetStore(redis_url) as second:
        first.shared("budget", "b", {"ratio": 0.1}).run("c", COUNT, ["buttress:{budget:b}:n"], [1])
        later = second.shared("budget", "b", {"ratio": 0.1, "minimum": 3})
        with pytest.raises(SharedSettingsError) as caught:
            later.run("c", COUNT, [later.key("n")], [1])
        assert (caught.value.setting, caught.value.recorded, caught.value.given) == (
            "minimum",
            None,
            "3",
        )


def test_one_process_refuses_two_settings_at_once(fleet: FleetStore) -> None:
    fleet.shared("rate_limit", "local", {"rate": 1})
    with pytest.raises(SharedSettingsError, match=r"rate=1 .*this process"):
        fleet.shared("rate_limit", "local", {"rate": 2})


def test_bad_arguments_are_refused(fleet: FleetStore) -> None:
    with pytest.raises(ConfigurationError, match="kind"):
        fleet.shared("rate limit", "x", {})
    with pytest.raises(ConfigurationError, match="name"):
        fleet.shared("rate_limit", "", {})
    with pytest.raises(ConfigurationError, match="shared setting"):
        fleet.shared("rate_limit", "x", {"fn": print})
    with pytest.raises(ConfigurationError, match="namespace"):
        FleetStore("redis://127.0.0.1:1/0", namespace="a b")
    with pytest.raises(ConfigurationError, match="fail_open"):
        FleetStore("redis://127.0.0.1:1/0", fail_open=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="either url or client"):
        FleetStore("redis://127.0.0.1:1/0", client=redis.Redis())


@pytest.mark.slow
def test_an_outage_is_lost_then_restored(private_redis: Any, seen: list[Event]) -> None:
    store = FleetStore(private_redis.url, timeout=1.0)
    state = store.shared("rate_limit", "outage", {"rate": 1}, function="app.call")
    assert state.run("count", COUNT, [state.key("n")], [1])[0] == 1
    private_redis.stop()
    assert state.run("count", COUNT, [state.key("n")], [1]) is LOST
    assert state.lost
    assert state.run("count", COUNT, [state.key("n")], [1]) is LOST  # fails fast
    assert [type(event) for event in seen] == [SharedStateLost]  # once per outage
    lost = seen[0]
    assert isinstance(lost, SharedStateLost)
    assert (lost.function, lost.kind, lost.name) == ("app.call", "rate_limit", "outage")
    private_redis.start()
    reply: Any = LOST
    for _ in range(200):
        reply = state.run("count", COUNT, [state.key("n")], [1])
        if reply is not LOST:
            break
        store.connection.succeeded()  # skip the second of failing fast
    assert reply[0] == 1  # a restarted Redis is empty...
    raw = redis.Redis.from_url(private_redis.url)
    try:
        assert raw.exists(state.settings_key)  # ...and the settings are recorded again
    finally:
        raw.close()
    assert [type(event) for event in seen] == [SharedStateLost, SharedStateRestored]
    restored = seen[1]
    assert isinstance(restored, SharedStateRestored)
    assert restored.lost_for > 0
    assert not state.lost
    store.close()


@pytest.mark.anyio
async def test_fail_closed_raises_and_still_reports(seen: list[Event]) -> None:
    store = FleetStore("redis://127.0.0.1:1/0", timeout=0.5, fail_open=False)
    state = store.shared("rate_limit", "closed", {"rate": 1})
    with pytest.raises(SharedStateError) as caught:
        await state.arun("admit", COUNT, [state.key("n")], [1])
    assert caught.value.operation == "claim"
    assert caught.value.address == "127.0.0.1:1/0"
    assert isinstance(caught.value, ConnectionError)
    assert [type(event) for event in seen] == [SharedStateLost]
    await store.aclose()


def test_the_events_are_counted_in_metrics() -> None:
    counters = EventCounters()
    error = ConnectionError("down")
    counters.handle(SharedStateLost("f", kind="rate_limit", name="q", address="a", error=error))
    counters.handle(SharedStateRestored("f", kind="rate_limit", name="q", address="a", lost_for=1))
    values = counters.values()[SHARED_STATE]
    assert values == {("rate_limit", "q", "lost"): 1, ("rate_limit", "q", "restored"): 1}


def test_scripts_run_on_a_cluster(redis_cluster: Cluster) -> None:  # noqa: F811
    redis_cluster.flush()
    with FleetStore(redis_cluster.url, timeout=2.0) as store:
        for index in range(20):  # names on every master, settings and state in one slot
            state = store.shared("rate_limit", f"name-{index}", {"rate": index + 1})
            assert state.run("count", COUNT, [state.key("n")], [index])[0] == index
            assert state.run("count", COUNT, [state.key("n")], [1])[0] == index + 1
