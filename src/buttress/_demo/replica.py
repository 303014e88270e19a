"""One replica of the demo's fleet: a resilient gateway in a process of its own.

``python -m buttress._demo.replica CONFIG`` (``CONFIG``: the JSON of
:class:`ReplicaConfig`) serves a :class:`~.gateways.ResilientGateway` on a free port of
127.0.0.1 whose cache lives in Redis (a :class:`~buttress.RedisStore`) and whose upstream
rate limit is shared with the other replicas (a :class:`~buttress.FleetStore`). It prints
one JSON line when it serves (``{"url": ...}``), then waits for a line on its standard
input (or its end): it lets the requests it holds finish, prints one JSON line of what it
counted (:class:`ReplicaStats`) and exits. :mod:`.fleet` starts and stops replicas.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any

import anyio
import anyio.to_thread

from buttress import FleetStore, RedisStore

from .gateways import (
    FLEET,
    FleetLimit,
    ResilienceSettings,
    ResilientGateway,
    resilience_policy,
)
from .observe import observe_run
from .report import ReplicaStats

__all__ = ["ReplicaConfig", "main", "serve"]

#: Seconds a Redis operation may take: the demo runs on busy laptops and CI machines.
REDIS_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    """What a replica is told when it starts."""

    index: int
    upstream: str
    redis: str
    namespace: str
    timeout: float
    duration: float
    dim: int
    replicas: int
    limit: FleetLimit

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ReplicaConfig:
        values: dict[str, Any] = json.loads(text)
        values["limit"] = FleetLimit(**values["limit"])
        return cls(**values)


async def serve(config: ReplicaConfig, *, stop: anyio.Event | None = None) -> ReplicaStats:
    """Serve until ``stop`` is set (by default: until a line, or the end, on stdin)."""
    settings = ResilienceSettings.for_client_timeout(
        config.timeout, duration=config.duration, dim=config.dim
    )
    cache_store = RedisStore(
        config.redis, namespace=config.namespace, version=1, timeout=REDIS_TIMEOUT
    )
    fleet = FleetStore(config.redis, namespace=config.namespace, timeout=REDIS_TIMEOUT)
    gateway = ResilientGateway(
        config.upstream,
        policy=resilience_policy(
            settings, cache_store=cache_store, fleet=fleet, limit=config.limit
        ),
        settings=settings,
        # One name for all: the cache's keys follow from it, so the replicas share them.
        name=FLEET,
    )
    # observe_run: @monitor's records go nowhere (not to this process' stderr).
    async with observe_run(None):
        await gateway.start()
        try:
            print(json.dumps({"url": gateway.url}), flush=True)
            if stop is None:
                await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            else:
                await stop.wait()
            # Handlers outlive a client that gave up: let them finish, so that every
            # upstream call is counted.
            with anyio.move_on_after(config.timeout + 5.0):
                await gateway.wait_idle()
        finally:
            await gateway.stop()
            await cache_store.aclose()
            cache_store.close()
            await fleet.aclose()
            fleet.close()
    return ReplicaStats(
        index=config.index,
        requests=gateway.stats.requests,
        upstream_calls=gateway.stats.upstream_calls,
        statuses={str(status): count for status, count in gateway.stats.statuses.items()},
        tally=gateway.tally.counts(),
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m buttress._demo.replica CONFIG_JSON", file=sys.stderr)
        return 2
    stats = asyncio.run(serve(ReplicaConfig.from_json(args[0])))
    print(json.dumps(asdict(stats)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
