"""FleetStore and a shared, weighted rate limit as a user's code sees it: type-checked
(mypy --strict), never executed."""

from __future__ import annotations

from typing_extensions import assert_type

from buttress import (
    FleetStore,
    RateLimitCostError,
    RateLimiter,
    RateLimiterStats,
    SharedSettingsError,
    SharedStateError,
    SharedStateLost,
    rate_limit,
)

fleet = FleetStore("redis+cluster://10.0.0.1:7000", timeout=0.5, fail_open=True)
quota = rate_limit(90_000, per=60, burst=90_000, store=fleet, name="tokens", replicas=3)
assert_type(quota, RateLimiter)


@rate_limit(200, per=1, cost=lambda texts: len(texts), store=fleet, fallback_share=0.5)
async def embed(texts: list[str]) -> list[float]:
    return [0.0] * len(texts)


async def main() -> None:
    assert_type(await embed(["a"]), list[float])
    async with quota.acquire(1200):
        pass
    with quota.acquire(3.5):
        pass
    stats = embed.limiter.stats()
    assert_type(stats, RateLimiterStats)
    assert_type(stats.shared, bool)
    try:
        await embed(["b"])
    except RateLimitCostError as error:
        assert_type(error.burst, int)
    except SharedSettingsError as error:
        assert_type(error.setting, str)
    except SharedStateError as error:
        assert_type(error.operation, str)
    await fleet.aclose()
    fleet.close()


def lost(event: SharedStateLost) -> str:
    return f"{event.kind}:{event.name}"
