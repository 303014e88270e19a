"""A rate limit shared through Redis: one limit for every process that names it.

Against real redis-servers and real OS processes: four worker processes (``_fleet_support``)
for the accuracy of the fleet's limit, a private server stopped and started again for the
fallback, the three-master cluster for hash slots.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import redis

from _fleet_support import BURST, GO, RATE, READY, WARM_UP
from _redis_support import HERE, SRC, commands_sent, wait_for
from _redis_topologies import Cluster, redis_cluster  # noqa: F401  (a fixture)
from buttress import (
    ConfigurationError,
    Event,
    FleetStore,
    RateLimitCostError,
    RateLimitExceeded,
    SharedSettingsError,
    SharedStateError,
    SharedStateLost,
    SharedStateRestored,
    events,
    rate_limit,
)


@pytest.fixture
def fleet(redis_url: str) -> Iterator[FleetStore]:
    store = FleetStore(redis_url, timeout=2.0)
    yield store
    store.close()


# --- one limit across stores (each stands for a process here) ---------------------------


def test_two_stores_share_one_limit(redis_url: str) -> None:
    with FleetStore(redis_url, timeout=2.0) as one, FleetStore(redis_url, timeout=2.0) as two:
        first = rate_limit(1, per=60, burst=3, wait=False, store=one, name="shared-quota")
        second = rate_limit(1, per=60, burst=3, wait=False, store=two, name="shared-quota")

        @first
        def call() -> str:
            return "ok"

        @second
        def other() -> str:
            return "ok"

        assert [call(), other(), call()] == ["ok", "ok", "ok"]
        with pytest.raises(RateLimitExceeded) as caught:
            other()  # the fourth call of the fleet: the burst of 3 is spent
        assert 59 < caught.value.retry_after <= 60
        assert "shared as 'shared-quota'" in str(caught.value)
        assert first.stats().shared
        assert (first.stats().admitted, second.stats().admitted) == (2, 1)
        assert first.stats().available == 0


@pytest.mark.anyio
async def test_coroutines_share_it_and_wait_their_turn(fleet: FleetStore) -> None:
    limit = rate_limit(20, per=1, burst=2, store=fleet, name="async-quota")
    starts: list[float] = []

    @limit
    async def call() -> None:
        starts.append(time.monotonic())

    async with anyio.create_task_group() as group:
        for _ in range(6):
            group.start_soon(call)
    stats = limit.stats()
    assert (stats.admitted, stats.delayed) == (2, 4)
    # 6 starts at 20/s with a burst of 2 need at least 0.2 s
    assert max(starts) - min(starts) >= 0.19
    await fleet.aclose()


@pytest.mark.anyio
async def test_one_round_trip_per_admission(fleet: FleetStore, redis_url: str) -> None:
    limit = rate_limit(1000, burst=1000, store=fleet, name="round-trips")

    @limit
    async def call() -> None:
        return None

    @limit
    def call_sync() -> None:
        return None

    call_sync()  # the name's settings are recorded once, before its first admission
    with commands_sent(redis_url) as sent:
        for _ in range(10):
            await call()
            call_sync()
    assert dict(sent) == {"evalsha": 20}
    await fleet.aclose()


def test_the_default_name_is_the_functions(fleet: FleetStore, redis_url: str) -> None:
    @rate_limit(5, store=fleet)
    def named_call() -> None:
        return None

    named_call()
    assert named_call.limiter.name == f"{__name__}.test_the_default_name_is_the_functions."\
        "<locals>.named_call"
    raw = redis.Redis.from_url(redis_url)
    try:
        assert raw.exists(f"buttress:{{rate_limit:{named_call.limiter.name}}}:tat")
    finally:
        raw.close()


def test_other_settings_under_one_name_are_refused(redis_url: str) -> None:
    with FleetStore(redis_url) as one, FleetStore(redis_url) as two:
        rate_limit(10, store=one, name="contract")(lambda: None)()
        later = rate_limit(20, store=two, name="contract")(lambda: None)
        with pytest.raises(SharedSettingsError, match=r"rate=10 .* rate=20") as caught:
            later()
        assert caught.value.setting == "rate"


def test_weights_and_acquire_spend_the_shared_quota(fleet: FleetStore) -> None:
    limit = rate_limit(100, per=60, burst=100, wait=False, store=fleet, name="tokens")

    @limit
    def embed(texts: list[str]) -> None:
        return None

    def count(texts: list[str]) -> int:
        return len(texts)

    weighted = rate_limit(
        100, per=60, burst=100, wait=False, store=fleet, name="tokens", cost=count
    )(embed.__wrapped__)
    weighted(["a"] * 60)
    with limit.acquire(30):
        pass
    with pytest.raises(RateLimitExceeded):
        weighted(["a"] * 20)  # 90 spent of 100
    weighted(["a"] * 10)
    with pytest.raises(RateLimitCostError):
        weighted(["a"] * 101)


@pytest.mark.anyio
async def test_a_cancelled_shared_waiter_gives_its_start_back(fleet: FleetStore) -> None:
    limit = rate_limit(1, per=30, store=fleet, name="cancel")
    async with limit.acquire():
        pass
    with anyio.move_on_after(0.2):
        async with limit.acquire():  # reserves a start 30 s away, then is cancelled
            pass
    # the start came back: the next waiter waits 30 s, not 60
    wait, reserved = await limit.areserve("probe")
    assert 25 < wait <= 30
    assert reserved is not None
    await limit.acancel(reserved)
    await fleet.aclose()


def test_store_settings_are_checked(fleet: FleetStore) -> None:
    with pytest.raises(ConfigurationError, match="store must be a FleetStore"):
        rate_limit(1, store="redis://")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="not both"):
        rate_limit(1, store=fleet, replicas=2, fallback_share=0.5)
    with pytest.raises(ConfigurationError, match="fallback_share"):
        rate_limit(1, store=fleet, fallback_share=1.5)
    with pytest.raises(ConfigurationError, match="replicas"):
        rate_limit(1, store=fleet, replicas=0)
    with pytest.raises(ConfigurationError, match="no name"):
        rate_limit(1, store=fleet).acquire()
    assert rate_limit(8, burst=8, store=fleet, name="x", replicas=4)._local.capacity == (
        rate_limit(2, burst=2)._local.capacity
    )


# --- Redis goes away, and comes back ---------------------------------------------------


async def _until(predicate: Any) -> None:
    with anyio.fail_after(30):
        while not predicate():  # noqa: ASYNC110 - nothing to wait on but time
            await anyio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.anyio
async def test_redis_killed_mid_run_then_restarted(private_redis: Any) -> None:
    store = FleetStore(private_redis.url, timeout=0.5)
    limit = rate_limit(400, per=1, burst=5, store=store, name="outage", replicas=2)
    seen: list[Event] = []
    failures: list[BaseException] = []
    done = anyio.Event()

    @limit
    async def call() -> None:
        return None

    async def caller() -> None:
        while not done.is_set():
            try:
                await call()
            except Exception as exc:  # any failure is what this test is about
                failures.append(exc)
            await anyio.sleep(0.005)

    with events.subscribe(seen.append, (SharedStateLost, SharedStateRestored)):
        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(caller)
            await _until(lambda: limit.stats().admitted + limit.stats().delayed >= 20)
            assert limit.stats().shared
            await anyio.to_thread.run_sync(private_redis.stop)
            await _until(lambda: limit.stats().fallbacks >= 20)  # the local half admits
            assert not limit.stats().shared
            await anyio.to_thread.run_sync(private_redis.start)
            await _until(lambda: limit.stats().shared)
            fallbacks = limit.stats().fallbacks
            await anyio.sleep(0.3)
            done.set()
    assert failures == []  # no call failed because of Redis
    assert limit.stats().fallbacks == fallbacks  # Redis decides again
    assert [type(event) for event in seen] == [SharedStateLost, SharedStateRestored]
    raw = redis.Redis.from_url(private_redis.url)
    try:
        assert raw.hgetall("buttress:{rate_limit:outage}:settings")  # recorded again
    finally:
        raw.close()
    await store.aclose()
    store.close()


def test_fail_closed_raises_while_redis_is_down() -> None:
    with FleetStore("redis://127.0.0.1:1/0", timeout=0.5, fail_open=False) as store:

        @rate_limit(5, store=store, name="closed")
        def call() -> None:
            return None

        with pytest.raises(SharedStateError):
            call()


# --- a cluster ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_shared_limits_on_a_cluster(redis_cluster: Cluster) -> None:  # noqa: F811
    redis_cluster.flush()
    store = FleetStore(redis_cluster.url, timeout=2.0)
    limits = [
        rate_limit(1, per=60, burst=2, wait=False, store=store, name=f"cluster-{n}")
        for n in range(12)
    ]  # names on every master: no CROSSSLOT, one script each
    for limit in limits:
        async with limit.acquire():
            pass
        with limit.acquire():
            pass
        with pytest.raises(RateLimitExceeded):
            async with limit.acquire():
                pass
        assert limit.stats().shared
    await store.aclose()
    store.close()


# --- four real processes, ten seconds ----------------------------------------------------


def _run_fleet(url: str, name: str, *, weighted: bool, seconds: float = 10.0) -> list[Any]:
    code = "import sys, _fleet_support; _fleet_support.main(sys.argv[1:])"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)])}
    raw = redis.Redis.from_url(url, socket_timeout=5)
    raw.delete(READY, GO)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, url, name, "1" if weighted else "0", "16", str(seconds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    try:
        wait_for(lambda: int(raw.get(READY) or 0) == 4, 120, "four workers ready")
        raw.set(GO, repr(time.time() + 1.0 + WARM_UP))
        results = []
        for process in processes:
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=30)
        raw.close()


@pytest.mark.slow
@pytest.mark.parametrize("weighted", [False, True], ids=["calls", "tokens"])
def test_four_processes_keep_one_limit(redis_url: str, weighted: bool) -> None:
    results = _run_fleet(redis_url, f"fleet-{weighted}", weighted=weighted)
    expected = 10 * RATE  # the steady state: the burst was spent in the warm-up
    counted = sum(result["tokens" if weighted else "calls"] for result in results)
    print(f"fleet of 4, {counted} admitted of {expected} expected: {results}")
    assert abs(counted - expected) <= 0.02 * expected, (counted, results)
    assert counted <= expected + BURST + 5  # never more than the limit (+ a weighted call)
    assert all(result["calls"] > 0 for result in results)  # every process took part
    assert all(result["fallbacks"] == 0 for result in results)
