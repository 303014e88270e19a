"""Shared circuit breakers and retry budgets on a real redis-server, in one process.

Two :class:`FleetStore` objects on one Redis are two replicas: each has its own breaker
or budget of the same name, synced by its own thread. (4 real processes:
``tests/test_fleet_processes.py``.)
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from _replica_support import no_sync_threads
from buttress import (
    CircuitOpenError,
    CircuitStateChanged,
    ConfigurationError,
    FleetStore,
    RetryBudget,
    SharedSettingsError,
    SharedStateError,
    SharedStateLost,
    SharedStateRestored,
    circuit_breaker,
    events,
)

pytestmark = pytest.mark.redis


class Upstream(ConnectionError):
    pass


def eventually(predicate: Callable[[], object], timeout: float = 20.0) -> None:
    """Wait for ``predicate`` (the syncs run every few ms; generous for a busy machine)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def unique() -> str:
    return f"dep-{uuid.uuid4().hex[:8]}"


def attempt(breaker: Any, fail: bool = True) -> str:
    """One call through ``breaker``: ``"failed"``, ``"ok"`` or ``"refused"``."""
    try:
        with breaker:
            if fail:
                raise Upstream("down")
    except CircuitOpenError:
        return "refused"
    except Upstream:
        return "failed"
    return "ok"


@pytest.fixture
def stores(redis_url: str) -> Iterator[Callable[..., FleetStore]]:
    """Replicas: each call makes a store (closed, and its thread stopped, at the end)."""
    made: list[FleetStore] = []

    def make(url: str = redis_url, **options: Any) -> FleetStore:
        store = FleetStore(url, timeout=2.0, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()
    eventually(lambda: not no_sync_threads(), timeout=10)


@pytest.fixture
def seen() -> Iterator[list[Any]]:
    received: list[Any] = []
    kinds = (CircuitStateChanged, SharedStateLost, SharedStateRestored)
    with events.subscribe(received.append, kinds):
        yield received


# --- one window for the fleet ----------------------------------------------------------


def test_one_replicas_failures_open_the_breaker_of_every_replica(
    stores: Callable[..., FleetStore], seen: list[Any]
) -> None:
    name = unique()
    a = circuit_breaker(name=name, store=stores(), minimum_calls=6, open_for=60)
    b = circuit_breaker(name=name, store=stores(), minimum_calls=6, open_for=60)
    assert a is not b  # two replicas
    assert [attempt(a) for _ in range(3)] == ["failed"] * 3
    eventually(lambda: b.stats().calls == 3)  # b sees a's outcomes
    assert [attempt(b) for _ in range(3)] == ["failed"] * 3
    eventually(lambda: a.state == "open" and b.state == "open")
    assert attempt(a) == attempt(b) == "refused"
    opened = [e for e in seen if isinstance(e, CircuitStateChanged) and e.breaker == name]
    # Each replica announced the transition: its own events and metrics see it.
    assert [(e.old, e.new) for e in opened] == [("closed", "open")] * 2
    assert a.stats().times_opened == b.stats().times_opened == 1
    with pytest.raises(CircuitOpenError, match="6 of 6 calls failed within 30s"), a:
        pass


def test_a_half_open_trial_is_granted_to_one_replica_of_the_fleet(
    stores: Callable[..., FleetStore],
) -> None:
    name = unique()
    replicas = [
        circuit_breaker(name=name, store=stores(), minimum_calls=2, open_for=0.3)
        for _ in range(3)
    ]
    assert [attempt(replicas[0]) for _ in range(2)] == ["failed"] * 2
    eventually(lambda: all(r.state == "open" for r in replicas))
    time.sleep(0.35)
    # Every replica asks for a trial until the fleet's one permit has been granted.
    granted: list[Any] = []

    def ask() -> bool:
        for replica in replicas:
            if replica not in granted:
                try:
                    ticket = replica.acquire("probe")
                except CircuitOpenError:
                    continue
                granted.append(replica)
                replica.release(ticket)  # keep the permit for the trial below
        return bool(granted)

    eventually(ask)
    time.sleep(0.1)  # more syncs: no other replica gets one
    for _ in range(5):
        ask()
    assert len(granted) == 1
    trial = granted[0]
    assert attempt(trial, fail=False) == "ok"  # the trial succeeds: the fleet closes
    eventually(lambda: all(r.state == "closed" for r in replicas))


def test_reset_and_force_open_act_on_the_whole_fleet(
    stores: Callable[..., FleetStore],
) -> None:
    name = unique()
    a = circuit_breaker(name=name, store=stores(), minimum_calls=5)
    b = circuit_breaker(name=name, store=stores(), minimum_calls=5)
    a.force_open()
    assert a.state == "open"  # at once here
    eventually(lambda: b.state == "open")
    assert b.stats().forced
    assert attempt(b) == "refused"
    b.reset()
    eventually(lambda: a.state == "closed")
    assert attempt(a, fail=False) == "ok"


@pytest.mark.anyio
async def test_coroutines_use_a_shared_breaker_without_waiting_on_redis(
    stores: Callable[..., FleetStore],
) -> None:
    store = stores()
    name = unique()
    calls = 0

    @circuit_breaker(name=name, store=store, minimum_calls=3, open_for=60)
    async def fetch() -> None:
        nonlocal calls
        calls += 1
        await anyio.lowlevel.checkpoint()
        raise Upstream("down")

    for _ in range(3):
        with pytest.raises(Upstream):
            await fetch()
    with anyio.fail_after(20):
        while fetch.breaker.state != "open":  # noqa: ASYNC110 - the sync thread decides
            await anyio.sleep(0.005)
    with pytest.raises(CircuitOpenError):
        await fetch()
    assert calls == 3


# --- names are the contract ------------------------------------------------------------


def test_other_settings_under_one_name_are_refused_naming_the_setting(
    stores: Callable[..., FleetStore],
) -> None:
    name = unique()
    first = circuit_breaker(name=name, store=stores(), minimum_calls=5)
    eventually(lambda: first._fleet is not None and first._fleet.generation >= 0)
    other = circuit_breaker(name=name, store=stores(), minimum_calls=6)

    def refused() -> bool:
        try:
            with other:
                pass
        except SharedSettingsError:
            return True
        return False

    eventually(refused)
    with pytest.raises(SharedSettingsError, match="minimum_calls") as caught, other:
        pass
    assert caught.value.setting == "minimum_calls"
    assert (caught.value.recorded, caught.value.given) == ("5", "6")
    # In one process the same store refuses it at once.
    store = stores()
    circuit_breaker(name=name, store=store, minimum_calls=5)
    with pytest.raises(ConfigurationError, match="minimum_calls"):
        circuit_breaker(name=name, store=store, minimum_calls=7)


def test_a_shared_name_is_known_per_store_and_decorated_functions_are_named_for_the_fleet(
    stores: Callable[..., FleetStore],
) -> None:
    store = stores()

    @circuit_breaker(store=store, minimum_calls=5)
    def call() -> str:
        return "ok"

    assert call.breaker.name == f"{__name__}.test_a_shared_name_is_known_per_store_and_" + (
        "decorated_functions_are_named_for_the_fleet.<locals>.call"
    )
    local = circuit_breaker(name="same", minimum_calls=5)
    shared = circuit_breaker(name="same", store=store, minimum_calls=5)
    assert local is not shared
    assert shared is circuit_breaker(name="same", store=store, minimum_calls=5)
    with pytest.raises(ConfigurationError, match="store must be a FleetStore"):
        circuit_breaker(name="x", store="redis://localhost")  # type: ignore[arg-type]


# --- outages ---------------------------------------------------------------------------


def test_without_redis_each_replica_decides_alone_and_the_fleet_takes_over_again(
    private_redis: Any, stores: Callable[..., FleetStore], seen: list[Any]
) -> None:
    name = unique()
    a = circuit_breaker(name=name, store=stores(private_redis.url), minimum_calls=4, open_for=60)
    b = circuit_breaker(name=name, store=stores(private_redis.url), minimum_calls=4, open_for=60)
    eventually(lambda: a._fleet is not None and a._fleet.generation >= 0)
    private_redis.stop()
    eventually(lambda: a._fleet is not None and not a._fleet.shared)
    eventually(lambda: b._fleet is not None and not b._fleet.shared)
    # No call fails because of Redis; each local breaker counts its own outcomes.
    assert attempt(a, fail=False) == "ok"
    assert [attempt(a) for _ in range(3)] == ["failed"] * 3
    assert a.state == "open"  # at once, locally
    assert b.state == "closed"  # b saw none of it
    assert [attempt(b) for _ in range(4)] == ["failed"] * 4
    assert b.state == "open"
    private_redis.start()
    # Redis is back (empty): the fleet's state, closed, takes over from both.
    eventually(lambda: a.state == "closed" and b.state == "closed")
    lost = [e for e in seen if isinstance(e, SharedStateLost) and e.name == name]
    restored = [e for e in seen if isinstance(e, SharedStateRestored) and e.name == name]
    assert [e.kind for e in lost] == ["circuit_breaker"] * 2
    assert [e.kind for e in restored] == ["circuit_breaker"] * 2
    # Shared again: a's failures open b.
    assert [attempt(a) for _ in range(4)] == ["failed"] * 4
    eventually(lambda: b.state == "open")


def test_fail_open_false_refuses_calls_while_redis_is_unreachable(
    private_redis: Any, stores: Callable[..., FleetStore]
) -> None:
    store = stores(private_redis.url, fail_open=False)
    breaker = circuit_breaker(name=unique(), store=store, minimum_calls=4)
    eventually(lambda: breaker._fleet is not None and breaker._fleet.generation >= 0)
    private_redis.stop()

    def raises() -> bool:
        try:
            attempt(breaker, fail=False)
        except SharedStateError:
            return True
        return False

    eventually(raises)
    with pytest.raises(SharedStateError) as caught:
        attempt(breaker, fail=False)
    assert caught.value.address == store.address
    private_redis.start()

    def passes() -> bool:
        try:
            return attempt(breaker, fail=False) == "ok"
        except SharedStateError:
            return False

    eventually(passes)


# --- threads ---------------------------------------------------------------------------


def test_close_stops_the_sync_thread_and_a_later_breaker_starts_it_again(
    stores: Callable[..., FleetStore],
) -> None:
    store = stores()
    first = circuit_breaker(name=unique(), store=store)
    assert no_sync_threads()
    store.close()
    assert not no_sync_threads()
    second = circuit_breaker(name=unique(), store=store)
    assert no_sync_threads()
    store.close()
    assert not no_sync_threads()
    del first, second


def _child(name: str, url: str, queue: Any) -> None:
    # A forked child: the breaker came from the parent; its sync thread must run here.
    from buttress._policies._breaker import _by_name

    store = next(store for (n, store) in _by_name if n == name and store is not None)
    breaker = _by_name[name, store]
    for _ in range(3):
        attempt(breaker)
    deadline = time.monotonic() + 20
    while breaker.state != "open" and time.monotonic() < deadline:
        time.sleep(0.005)
    queue.put((breaker.state, no_sync_threads()))


def test_a_forked_child_syncs_its_breakers(
    stores: Callable[..., FleetStore], redis_url: str
) -> None:
    name = unique()
    parent = circuit_breaker(name=name, store=stores(), minimum_calls=3, open_for=60)
    eventually(lambda: parent._fleet is not None and parent._fleet.generation >= 0)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child, args=(name, redis_url, queue))
    child.start()
    state, threads = queue.get(timeout=60)
    child.join(30)
    assert child.exitcode == 0
    assert state == "open"
    assert threads  # its own sync thread
    eventually(lambda: parent.state == "open")  # the child's failures opened the parent


# --- the retry budget ------------------------------------------------------------------


def test_a_shared_budget_counts_the_fleets_calls_and_retries(
    stores: Callable[..., FleetStore],
) -> None:
    name = unique()
    a = RetryBudget(0.5, 0, window=30, store=stores(), name=name)
    b = RetryBudget(0.5, 0, window=30, store=stores(), name=name)
    for _ in range(10):
        a.record_call()
    eventually(lambda: b.stats().calls == 10)  # b sees a's calls
    assert b.stats().available == 5
    spent = 0
    deadline = time.monotonic() + 20
    # Both spend until the fleet's 5 retries are gone (shares refresh with each sync).
    while b.stats().available or a.stats().available:
        assert time.monotonic() < deadline
        spent += a.try_spend() + b.try_spend()
        time.sleep(0.002)
    time.sleep(0.1)
    spent += a.try_spend() + b.try_spend()
    # The fleet's 5 (or one more: each replica may take the last one at once).
    assert 5 <= spent <= 6
    eventually(lambda: a.stats().retries == b.stats().retries == spent)


def test_a_shared_budget_needs_a_name_and_a_store(stores: Callable[..., FleetStore]) -> None:
    with pytest.raises(ConfigurationError, match="needs name="):
        RetryBudget(store=stores())
    with pytest.raises(ConfigurationError, match="no effect without store="):
        RetryBudget(name="x")
    with pytest.raises(ConfigurationError, match="store must be a FleetStore"):
        RetryBudget(store="redis://", name="x")  # type: ignore[arg-type]
    store = stores()
    RetryBudget(0.2, store=store, name="one")
    with pytest.raises(SharedSettingsError, match="ratio"):
        RetryBudget(0.3, store=store, name="one")


def test_a_shared_budget_falls_back_to_its_own_counts_without_redis(
    private_redis: Any, stores: Callable[..., FleetStore]
) -> None:
    budget = RetryBudget(0.5, 0, window=30, store=stores(private_redis.url), name=unique())
    eventually(lambda: budget._fleet is not None and budget._fleet.share is not None)
    private_redis.stop()
    eventually(lambda: budget._fleet is not None and not budget._fleet.shared)
    for _ in range(4):
        budget.record_call()
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]
    private_redis.start()
    eventually(lambda: budget._fleet is not None and budget._fleet.shared)
