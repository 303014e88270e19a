"""policy(): the canonical stacking order, and what that order buys."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import anyio
import numpy as np
import pytest

from buttress import (
    ArraySpec,
    BulkheadFullError,
    CircuitOpenError,
    ConfigurationError,
    InputValidationError,
    MemoryPressureError,
    OutputValidationError,
    RateLimitExceeded,
    RejectedError,
    RetryScheduled,
    events,
    policy,
)
from buttress.testing import FakeClock

EVERY_LAYER: dict[str, Any] = {
    "monitor": True,
    "validate": True,
    "fallback": -1.0,
    "timeout": 5,
    "cache": 30,
    "retry": 3,
    "circuit_breaker": {"name": "policy-test-every-layer"},
    "bulkhead": 10,
    "rate_limit": 1000,
    "memory_guard": {"max_percent": 100},
    "attempt_timeout": 1,
    "validate_output": {"spec": float},
}


def wrapper_chain(fn: Any) -> list[str]:
    """The code names of the nested wrappers, outermost first, down to the function."""
    names = []
    while fn is not None:
        names.append(fn.__code__.co_name)
        fn = getattr(fn, "__wrapped__", None)
    return names


def test_the_canonical_order_whatever_the_keyword_order() -> None:
    reversed_keywords = dict(reversed(list(EVERY_LAYER.items())))
    for settings in (EVERY_LAYER, reversed_keywords):
        stack = policy(**settings)

        @stack
        async def score(x: int) -> float:
            return x / 2

        assert wrapper_chain(score) == [
            "monitor_wrapper",
            "validate_input_wrapper",
            "fallback_wrapper",
            "timeout_wrapper",
            "cache_wrapper",
            "retry_wrapper",
            "circuit_breaker_wrapper",
            "bulkhead_wrapper",
            "rate_limit_wrapper",
            "memory_guard_wrapper",
            "timeout_wrapper",
            "validate_output_wrapper",
            "score",
        ]
        assert stack.layers == tuple(EVERY_LAYER)
        assert asyncio.run(score(3)) == 1.5


def test_repr_shows_the_stack() -> None:
    stack = policy(retry={"max_retries": 2}, cache=True, monitor="ranker")
    assert repr(stack) == "policy(monitor('ranker') > cache > retry(max_retries=2))"
    assert repr(policy()) == "policy()"


def test_layers_left_out() -> None:
    stack = policy(retry=2, cache=None, bulkhead=False)
    assert stack.layers == ("retry",)

    @stack
    def plain(x: int) -> int:
        return x

    assert wrapper_chain(plain) == ["retry_wrapper", "plain"]


def test_bad_input_fails_fast_and_is_never_retried(buttress_clock: FakeClock) -> None:
    calls = 0

    @policy(validate=True, retry={"max_retries": 5, "exceptions": (Exception,)})
    def rank(top_k: int) -> list[int]:
        nonlocal calls
        calls += 1
        return list(range(top_k))

    retries: list[RetryScheduled] = []
    with (
        events.subscribe(retries.append, RetryScheduled),
        pytest.raises(InputValidationError, match="top_k"),
    ):
        rank("many")  # type: ignore[arg-type]
    assert calls == 0
    assert retries == []
    assert buttress_clock.sleeps == []


def test_a_cache_hit_skips_retry_and_breaker(buttress_clock: FakeClock) -> None:
    calls = 0

    @policy(cache=60, retry=2, circuit_breaker={"name": "policy-test-cache-hit"})
    def embed(text: str) -> tuple[float, ...]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("flaky once")
        return (1.0, 2.0)

    assert embed("a") == (1.0, 2.0)  # one failed attempt, one retry
    assert embed("a") == (1.0, 2.0)  # from the cache
    assert calls == 2
    assert embed.breaker.stats().calls == 2  # type: ignore[attr-defined]
    assert embed.cache.stats().hits == 1  # type: ignore[attr-defined]


def test_the_breaker_counts_each_attempt(buttress_clock: FakeClock) -> None:
    @policy(
        retry={"max_retries": 3, "jitter": None},
        circuit_breaker={
            "name": "policy-test-attempts",
            "minimum_calls": 4,
            "failure_ratio": 1.0,
        },
    )
    def down() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        down()
    # One call, four attempts: enough on its own to open the breaker.
    assert down.breaker.state == "open"  # type: ignore[attr-defined]


def test_fallback_answers_for_what_retry_gives_up_on(buttress_clock: FakeClock) -> None:
    calls = 0

    @policy(fallback=[], retry={"max_retries": 2, "jitter": None})
    def recommendations(user: int) -> list[int]:
        nonlocal calls
        calls += 1
        raise TimeoutError("feature store")

    assert recommendations(7) == []
    assert calls == 3
    assert buttress_clock.sleeps == [0.1, 0.2]


@pytest.mark.anyio
async def test_attempt_timeout_inside_retry_and_total_timeout_outside() -> None:
    calls = 0

    @policy(timeout=10, retry={"max_retries": 3, "base_delay": 0}, attempt_timeout=0.05)
    async def hangs_once() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await anyio.sleep(30)
        return "answered"

    assert await hangs_once() == "answered"
    assert calls == 2

    @policy(timeout=0.2, retry={"max_retries": 100, "base_delay": 0.05, "jitter": None})
    async def never_works() -> None:
        raise ConnectionError("down")

    with pytest.raises(TimeoutError):
        await never_works()


def test_invalid_output_is_a_failed_attempt_never_cached(buttress_clock: FakeClock) -> None:
    answers = iter([np.array([np.nan, 0.5]), np.array([0.25, 0.75])])
    calls = 0

    @policy(
        cache=60,
        retry={"max_retries": 2, "jitter": None},
        validate_output=ArraySpec(shape=(2,), finite=True),
    )
    def probabilities(x: int) -> Any:
        nonlocal calls
        calls += 1
        return next(answers)

    assert probabilities(1).tolist() == [0.25, 0.75]  # the NaN answer was retried
    assert probabilities(1).tolist() == [0.25, 0.75]  # the good one was cached
    assert calls == 2
    assert buttress_clock.sleeps == [0.1]


def test_an_invalid_output_that_persists_is_not_cached(buttress_clock: FakeClock) -> None:
    @policy(cache=60, retry=1, validate_output=ArraySpec(finite=True))
    def broken(x: int) -> Any:
        return np.array([np.inf])

    for _ in range(2):
        with pytest.raises(OutputValidationError):
            broken(1)
    assert broken.cache.stats().size == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"memory_guard": 5}, "memory_guard must be True or a dict"),
        ({"validate": "x"}, "validate must be True or a dict"),
        ({"retry": "three"}, "max_retries"),
        ({"bulkhead": 0}, "max_concurrent"),
        ({"cache": -1}, "ttl"),
    ],
)
def test_bad_settings_fail_when_the_policy_is_built(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        policy(**settings)


def test_timeout_layers_refuse_plain_functions() -> None:
    with pytest.raises(TypeError, match="timeout"):
        policy(attempt_timeout=1)(lambda: None)


@pytest.mark.anyio
async def test_functions_under_one_policy_do_not_share_slots() -> None:
    stack = policy(bulkhead=1)
    release = anyio.Event()

    @stack
    async def first() -> str:
        await release.wait()
        return "first"

    @stack
    async def second() -> str:
        return "second"

    results: list[str] = []
    async with anyio.create_task_group() as group:

        async def run_first() -> None:
            results.append(await first())

        group.start_soon(run_first)
        await anyio.sleep(0.01)
        results.append(await second())  # first holds its own slot, not this one
        release.set()
    assert results == ["second", "first"]
    assert first.bulkhead is not second.bulkhead  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_refusals_below_the_breaker_do_not_open_it() -> None:
    @policy(
        circuit_breaker={"name": "policy-test-refusals", "minimum_calls": 4},
        bulkhead=1,
    )
    async def slow() -> str:
        await anyio.sleep(0.05)
        return "ok"

    outcomes: list[str] = []

    async def one() -> None:
        try:
            outcomes.append(await slow())
        except BulkheadFullError:
            outcomes.append("refused")

    async with anyio.create_task_group() as group:
        for _ in range(6):
            group.start_soon(one)
    assert sorted(outcomes) == ["ok"] + ["refused"] * 5
    assert slow.breaker.state == "closed"  # type: ignore[attr-defined]
    assert slow.breaker.stats().calls == 1  # type: ignore[attr-defined]
    assert await slow() == "ok"


def test_every_load_shedding_error_is_a_rejection() -> None:
    for error in (BulkheadFullError, CircuitOpenError, MemoryPressureError, RateLimitExceeded):
        assert issubclass(error, RejectedError)


# --- batch ------------------------------------------------------------------------------


def test_batch_stands_between_the_cache_and_retry() -> None:
    every = {**EVERY_LAYER, "batch": {"max_size": 4, "max_wait": 0.001}}
    every["validate_output"] = {"spec": list[float]}  # the batch function's whole result
    every["circuit_breaker"] = {"name": "policy-test-batch-order"}
    stack = policy(**every)
    assert stack.layers[4:7] == ("cache", "batch", "retry")

    @stack
    async def score_many(xs: list[int]) -> list[float]:
        return [x / 2 for x in xs]

    # The layers below batch wrap the batch function...
    assert wrapper_chain(score_many) == [
        "batch_wrapper",
        "retry_wrapper",
        "circuit_breaker_wrapper",
        "bulkhead_wrapper",
        "rate_limit_wrapper",
        "memory_guard_wrapper",
        "timeout_wrapper",
        "validate_output_wrapper",
        "score_many",
    ]
    # ...the layers above wrap the single-item call.
    assert wrapper_chain(score_many.one) == [  # type: ignore[attr-defined]
        "monitor_wrapper",
        "validate_input_wrapper",
        "fallback_wrapper",
        "timeout_wrapper",
        "cache_wrapper",
        "one",
    ]
    assert asyncio.run(score_many.one(3)) == 1.5  # type: ignore[attr-defined]
    assert score_many.cache.stats().misses == 1  # type: ignore[attr-defined]
    assert "batch(max_size=4, max_wait=0.001)" in repr(stack)
    assert policy(batch=16).layers == ("batch",)


@pytest.mark.anyio
async def test_under_a_policy_hits_skip_batches_and_a_retry_resends_the_batch() -> None:
    sent: list[list[str]] = []
    failures = [1]

    @policy(
        cache=60,
        batch={"max_size": 10, "max_wait": 0.005},
        retry={"max_retries": 2, "base_delay": 0.001, "exceptions": ConnectionError},
        # A name of its own: the test runs once per backend, and breakers share by name.
        circuit_breaker={"name": f"policy-test-batch-{uuid.uuid4()}", "minimum_calls": 100},
    )
    async def embed_many(texts: list[str]) -> list[str | Exception]:
        sent.append(list(texts))
        if failures[0]:
            failures[0] -= 1
            raise ConnectionError("flaky")
        return [t.upper() if t != "bad" else ValueError("bad text") for t in texts]

    results: dict[int, Any] = {}

    async def call(index: int, text: str) -> None:
        try:
            results[index] = await embed_many.one(text)  # type: ignore[attr-defined]
        except ValueError as exc:
            results[index] = exc

    texts = ["a", "b", "a", "bad", "b", "c"]
    async with anyio.create_task_group() as group:
        for index, text in enumerate(texts):
            group.start_soon(call, index, text)
    assert [results[i] for i in (0, 1, 2, 4, 5)] == ["A", "B", "A", "B", "C"]
    assert isinstance(results[3], ValueError)  # its own error, not retried
    # Identical texts shared one slot; the failed batch was sent again as it was.
    assert len(sent) == 2
    assert sent[0] == sent[1]
    assert sorted(sent[0]) == ["a", "b", "bad", "c"]
    assert embed_many.breaker.stats().calls == 2  # type: ignore[attr-defined]
    assert await embed_many.one("a") == "A"  # type: ignore[attr-defined]  # a cache hit
    assert len(sent) == 2
    assert embed_many.cache.stats().hits == 1  # type: ignore[attr-defined]
