"""The public API as a user's type checker sees it. Type-checked by mypy, never executed.

    mypy --strict tests/typing
"""

from __future__ import annotations

from datetime import timedelta

from typing_extensions import assert_type

import buttress
from buttress import RetryScheduled, events, retry
from buttress.testing import FakeClock, testing_mode

# --- @retry keeps parameters and return types, bare and called ---------------------------


@retry
def bare_sync(x: int, *, label: str = "a") -> str:
    return f"{x}{label}"


@retry(max_retries=2, base_delay=timedelta(milliseconds=50), jitter=None)
async def called_async(x: int) -> list[float]:
    return [float(x)]


def on_retry(details: RetryScheduled) -> None:
    assert_type(details.attempt, int)
    assert_type(details.delay, float)


@retry(deadline=5, attempt_timeout=1, on_retry=on_retry, retry_on_result=lambda r: r is None)
async def with_hooks(text: str) -> bytes | None:
    return text.encode()


async def callers() -> None:
    assert_type(bare_sync(1), str)
    assert_type(bare_sync(1, label="b"), str)
    assert_type(await called_async(3), list[float])
    assert_type(await with_hooks("x"), bytes | None)
    bare_sync("1")  # type: ignore[arg-type]
    bare_sync(1, colour="b")  # type: ignore[call-arg]
    await called_async()  # type: ignore[call-arg]


class Model:
    @retry
    def predict(self, batch: list[float]) -> float:
        return sum(batch)

    @retry(max_retries=1)
    async def apredict(self, batch: list[float]) -> float:
        return sum(batch)


async def methods() -> None:
    model = Model()
    assert_type(model.predict([1.0]), float)
    assert_type(await model.apredict([1.0]), float)


# --- testing mode and events ---------------------------------------------------------


def testing() -> None:
    with testing_mode() as clock:
        assert_type(clock, FakeClock)
        assert_type(clock.sleeps, list[float])
        assert_type(clock.advance(1.0), float)


def listening() -> None:
    with events.subscribe(lambda event: None, RetryScheduled) as subscription:
        assert_type(subscription, buttress.Subscription[RetryScheduled])


# --- policy() keeps parameters and return types ------------------------------------


stack = buttress.policy(retry=3, cache={"ttl": 30}, bulkhead=10)


@stack
async def ranked(query: str, *, top_k: int = 10) -> list[str]:
    return [query] * top_k


async def policy_callers() -> None:
    assert_type(await ranked("q", top_k=3), list[str])
    await ranked(3)  # type: ignore[arg-type]
    assert_type(stack.layers, tuple[str, ...])


def policy_with_a_spec() -> None:
    buttress.policy(validate_output=buttress.ArraySpec(shape=(768,)), fallback=[0.0])
