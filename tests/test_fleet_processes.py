"""Shared breakers and retry budgets across 4 real OS processes and a real redis-server.

Each replica is a process of ``tests/_replica_support.py`` calling a stand-in dependency
every 10 ms; the test steers them through a control file (so it can do so while Redis is
down) and reads what each counted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from _replica_support import fleet

pytestmark = [pytest.mark.redis, pytest.mark.slow]

REPLICAS = 4
MINIMUM_CALLS = 30
#: The breakers' window: a pause longer than it empties it between two phases.
WINDOW = 1.0


def quiet(replicas: Any) -> None:
    """A pause in which no replica calls, until the breakers' windows are empty (so
    that the next phase's failures meet no older successes)."""
    replicas.set("wait")
    time.sleep(WINDOW * 1.3)


def failed(results: list[dict[str, Any]], phase: str) -> int:
    """The fleet's calls that reached the failing dependency during ``phase``."""
    return sum(result["phases"].get(phase, {}).get("failed", 0) for result in results)


def other_errors(results: list[dict[str, Any]]) -> int:
    return sum(
        tally.get("other", 0) for result in results for tally in result["phases"].values()
    )


def outage(directory: Path, url: str) -> tuple[int, list[dict[str, Any]]]:
    """Run 4 replicas, make the dependency fail, wait until every breaker refuses:
    ``(the fleet's failed calls, what each replica saw)``."""
    with fleet(directory, "breaker_replica", REPLICAS, url, MINIMUM_CALLS, WINDOW) as replicas:
        replicas.set("healthy")
        time.sleep(0.5)
        quiet(replicas)
        replicas.set("failing")
        replicas.wait_for("refused-failing.1")
        time.sleep(0.2)  # the calls in flight end
        results = replicas.results()
    return failed(results, "failing.1"), results


def test_a_shared_breaker_stops_the_fleet_after_about_one_replicas_minimum_calls(
    redis_url: str, tmp_path: Path
) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "local").mkdir()
    shared, shared_results = outage(tmp_path / "shared", redis_url)
    local, local_results = outage(tmp_path / "local", "-")
    print(f"failed calls before every replica refused: shared {shared}, local {local}")
    # Local breakers each learn alone: every one of them fails minimum_calls calls.
    assert local >= REPLICAS * MINIMUM_CALLS * 0.8
    # One shared window: about minimum_calls for the fleet, plus the calls made while the
    # news travelled (a sync every few ms; generous for a loaded machine).
    assert shared <= MINIMUM_CALLS * 1.5 + 15
    assert other_errors(shared_results) == other_errors(local_results) == 0
    # Every replica saw the opening in its own events (and so in its metrics).
    assert all(result["events"].get("closed->open") == 1 for result in shared_results)
    assert all(result["state"] == "open" for result in shared_results)


def test_retries_of_the_fleet_stay_within_the_ratio_of_the_fleets_calls(
    redis_url: str, tmp_path: Path
) -> None:
    ratio, floor, window = 0.1, 1.0, 30

    def run(directory: Path, url: str) -> tuple[int, int]:
        directory.mkdir()
        with fleet(directory, "budget_replica", REPLICAS, url, ratio, floor) as replicas:
            replicas.set("go")
            time.sleep(3)
            results = replicas.results()
        calls = sum(result["calls"] for result in results)
        retries = sum(result["attempts"] - result["calls"] for result in results)
        return calls, retries

    calls, retries = run(tmp_path / "shared", redis_url)
    local_calls, local_retries = run(tmp_path / "local", "-")
    print(
        f"shared: {retries} retries for {calls} calls; "
        f"local: {local_retries} retries for {local_calls} calls"
    )
    # The fleet's budget: ratio x the fleet's calls + one floor (a little slack for the
    # spends made between two syncs).
    assert retries <= ratio * calls + floor * window + 10
    # It was spent, not starved.
    assert retries >= 0.6 * (ratio * calls + floor * window)
    # Budgets of their own grant every replica the floor (the shared one grants it once).
    assert local_retries >= ratio * local_calls + 0.8 * REPLICAS * floor * window


@pytest.mark.timeout(300)
def test_redis_killed_mid_run_no_call_fails_and_the_shared_state_takes_over_again(
    private_redis: Any, tmp_path: Path
) -> None:
    url = private_redis.url
    with fleet(tmp_path, "breaker_replica", REPLICAS, url, MINIMUM_CALLS, WINDOW) as replicas:
        replicas.set("healthy")
        time.sleep(0.5)
        private_redis.stop()
        time.sleep(1.5)  # calls go on while Redis is gone
        quiet(replicas)
        # The dependency fails while Redis is down: each replica's local breaker opens.
        replicas.set("failing")
        replicas.wait_for("refused-failing.1")
        # Redis returns (empty): the fleet's state, closed, takes over from the local
        # breakers, which alone would refuse calls for 60 s.
        private_redis.start()
        replicas.set("healthy")
        time.sleep(2.0)
        quiet(replicas)
        # The dependency fails again: one shared window for the fleet.
        replicas.set("failing")
        replicas.wait_for("refused-failing.2")
        time.sleep(0.2)
        results = replicas.results()
    during = failed(results, "failing.1")
    after = failed(results, "failing.2")
    print(f"failed calls before every replica refused: Redis down {during}, back {after}")
    assert other_errors(results) == 0  # no call failed because of Redis
    assert during >= REPLICAS * MINIMUM_CALLS * 0.8  # the local fallbacks applied
    assert after <= MINIMUM_CALLS * 1.5 + 15  # shared again
    for result in results:
        healthy = result["phases"]["healthy.1"]
        assert healthy["ok"] > 0
        assert healthy.get("refused", 0) < healthy["ok"]
        assert result["events"]["SharedStateLost"] >= 1
        assert result["events"]["SharedStateRestored"] >= 1
        assert result["events"]["open->closed"] >= 1  # the fleet's state took over
