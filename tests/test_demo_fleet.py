"""``python -m buttress demo --replicas N``: gateway processes sharing a real redis-server.

Every run here starts real OS processes (the replicas, and in one test the demo's own
redis-server) and checks that none is left when the demo returns.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from buttress import metrics
from buttress.__main__ import main as buttress_main
from buttress._demo import DemoOptions, fleet_problem, run_demo
from buttress._demo.load import plan_traffic
from buttress._demo.report import render
from conftest import free_port, redis_binary
from test_demo import QUIET
from test_demo import small as single


@pytest.fixture(autouse=True)
def _metrics_off() -> None:
    metrics.disable()


def small(**changes: object) -> DemoOptions:
    """test_demo's small run, as three replicas with a little more time."""
    return single(**{"duration": 2.0, "timeout": 1.5, "replicas": 3, **changes})


def descendants() -> dict[int, str]:
    """The processes this test process started that are still running (not zombies)."""
    found = {}
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                found[child.pid] = " ".join(child.cmdline()[:3])
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.fixture
def no_process_left(redis_server: object) -> Iterator[None]:
    """Fail a test that leaves a process running (the session's redis-server aside)."""
    before = set(descendants())
    yield
    left = {pid: line for pid, line in descendants().items() if pid not in before}
    assert not left, f"processes left running: {left}"


@pytest.mark.asyncio
@pytest.mark.usefixtures("no_process_left")
async def test_three_replicas_share_one_cache_through_redis(redis_url: str, tmp_path: Path) -> None:
    # No faults and a limit far above the traffic: each distinct text is fetched once by
    # the whole fleet, whichever replica the balancer sends it to.
    options = small(**QUIET, redis=redis_url, fleet_rate=10_000.0, out=tmp_path)
    result = await run_demo(options, monitor_log=tmp_path / "monitor.jsonl")
    fleet = result.reports[2]
    assert fleet.name == "fleet"
    assert fleet.fleet is not None
    assert len(fleet.fleet.replicas) == 3
    # Round robin: 50 requests each, all answered.
    assert [replica.requests for replica in fleet.fleet.replicas] == [50, 50, 50]
    assert fleet.received == fleet.summary.requests == 150
    assert fleet.summary.ok == 150
    # What the upstream counted is what the replicas counted sending.
    assert fleet.upstream_calls == fleet.gateway_upstream_calls == sum(fleet.fleet.upstream_calls)
    assert all(calls > 0 for calls in fleet.fleet.upstream_calls)
    plan = plan_traffic(requests=150, duration=2.0, concurrency=8, seed=11)
    distinct = len({planned.text for planned in plan})
    # With a cache per replica, each text would be fetched by every replica the balancer
    # sent it to (round robin: request i goes to replica i % 3).
    apart = len({(planned.text, index % 3) for index, planned in enumerate(plan)})
    assert apart > distinct + 10
    # One computation per text across three processes (a couple more at most: a request
    # that arrives as a text's entry is being written may miss it).
    assert distinct <= fleet.upstream_texts <= distinct + 3
    assert fleet.tally is not None
    assert fleet.tally.cache_hits + fleet.tally.cache_joins + fleet.tally.cache_misses >= 150
    assert "rate_limit" in fleet.layers
    # The run's keys are under a namespace of its own in the given Redis; the shared
    # limit's settings record is dropped at the end.
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [key.decode() for key in client.scan_iter("buttress-demo-*")]
    finally:
        client.close()
    assert keys, "the cache lived in the given Redis"
    assert not [key for key in keys if "rate_limit" in key and key.endswith(":settings")]
    for replica in range(3):
        assert (tmp_path / f"replica-{replica}.log").exists()

    text = render(result.reports, result.info)
    header = next(line for line in text.splitlines() if line.strip().startswith("plain"))
    assert header.split() == ["plain", "resilient", "fleet"]
    calls = " / ".join(str(count) for count in fleet.fleet.upstream_calls)
    assert "upstream calls per replica" in text
    assert calls in text
    assert "breaker openings per replica" in text
    assert f"sharing through {redis_url}" in text
    assert "circuit breaker (FleetStore)" in text


@pytest.mark.asyncio
@pytest.mark.usefixtures("no_process_left")
async def test_the_shared_limit_holds_for_the_whole_fleet(redis_url: str, tmp_path: Path) -> None:
    # 150 requests in 2 s, mostly new texts, against 8 upstream requests a second for
    # all three replicas: the limit binds; no second sees more than rate + burst starts
    # scheduled, and arrivals at the upstream crowd only a little more on a busy machine
    # (three limits of 8/s each, not shared, would let up to 3 x 13 through).
    options = small(redis=redis_url, fleet_rate=8.0, error_rate=0.0, out=tmp_path)
    result = await run_demo(options)
    _, resilient, fleet = result.reports
    assert fleet.fleet is not None
    limit = fleet.fleet.limit
    assert (limit.rate, limit.burst) == (8.0, 5)
    assert fleet.tally is not None
    assert fleet.tally.rate_waits + fleet.tally.rate_refusals > 0
    assert fleet.peak_requests <= 1.5 * (limit.rate + limit.burst)
    assert resilient.peak_requests > fleet.peak_requests
    seconds = options.duration + options.timeout + 1.0
    assert fleet.upstream_calls <= limit.rate * seconds + limit.burst + 1
    text = render(result.reports, result.info)
    assert f"{fleet.peak_requests}/s (limit 8/s + burst 5)" in text


@pytest.mark.usefixtures("no_process_left")  # neither the replicas nor the redis-server
def test_the_command_starts_and_stops_a_private_redis_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    redis_binary()  # skips (or fails under BUTTRESS_REQUIRE_REDIS=1) without one
    status = buttress_main(
        [
            "demo", "--replicas", "2", "--requests", "60", "--duration", "1",
            "--concurrency", "4", "--timeout", "1", "--seed", "5", "--no-progress",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "sharing through a private redis-server" in captured.out
    assert "upstream calls per replica" in captured.out


def test_without_redis_it_says_why_and_runs_the_single_process_demo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no redis-server to be found
    status = buttress_main(
        [
            "demo", "--replicas", "3", "--requests", "40", "--duration", "0.5",
            "--concurrency", "4", "--timeout", "1", "--no-progress", "--out", str(tmp_path),
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert status == 0
    assert "--replicas 3: no --redis URL was given and there is no redis-server" in captured.err
    assert "running the single-process demo instead" in captured.err
    assert "apt-get install redis-server" in captured.err
    assert "success (a usable vector)" in captured.out
    assert "fleet" not in captured.out


@pytest.mark.asyncio
async def test_an_unreachable_redis_is_named_with_the_reason() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    problem = await fleet_problem(DemoOptions(replicas=3, redis=url))
    assert problem is not None
    assert problem.startswith(f"Redis at {url} did not answer PING")
    assert await fleet_problem(DemoOptions()) is None  # no fleet asked for: no Redis needed


def test_redis_without_replicas_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        buttress_main(["demo", "--redis", "redis://127.0.0.1:6379/0"])
    assert exit_info.value.code == 2
    assert "--redis is for the fleet: give --replicas 2 or more" in capsys.readouterr().err
