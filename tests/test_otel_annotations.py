"""What each decorator writes on the span current when it acts.

@monitor's span in most tests, the user's own span in some: the decorators need no
@monitor to be seen in a trace. Sync and async, on asyncio and trio.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from opentelemetry.sdk.trace import ReadableSpan

from _otel_support import Telemetry, attributes, events_of, telemetry
from buttress import (
    BulkheadFullError,
    CallTimeoutError,
    CircuitOpenError,
    InputValidationError,
    MemoryPressureError,
    RateLimitExceeded,
    RetryBudget,
    bulkhead,
    cache_result,
    circuit_breaker,
    fallback,
    memory_guard,
    monitor,
    policy,
    rate_limit,
    retry,
    timeout,
    validate_input,
)
from buttress.testing import testing_mode


@pytest.fixture
def spans() -> Iterator[Telemetry]:
    with telemetry(metrics=False) as recorded:
        yield recorded


def call_span(spans: Telemetry) -> ReadableSpan:
    return spans.one("call")


# --- retry ---------------------------------------------------------------------------------


def test_each_retry_is_a_span_event_with_attempt_delay_and_error_type(spans: Telemetry) -> None:
    failures = [ConnectionError("reset"), TimeoutError("slow")]

    @monitor("call")
    @retry(max_retries=3, base_delay=0.25, jitter=None)
    def fetch() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    with testing_mode():
        assert fetch() == "ok"
    span = call_span(spans)
    retries = events_of(span, "buttress.retry")
    assert [event["buttress.retry.attempt"] for event in retries] == [1, 2]
    assert [event["buttress.retry.delay"] for event in retries] == [0.25, 0.5]
    assert [event["error.type"] for event in retries] == ["ConnectionError", "TimeoutError"]
    assert [event["exception.message"] for event in retries] == ["reset", "slow"]
    # the stack's name: the monitor's
    assert all(event["buttress.function"] == "call" for event in retries)
    assert attributes(span)["buttress.retry.retries"] == 2
    assert not events_of(span, "buttress.retry.gave_up")


@pytest.mark.anyio
async def test_async_retries_and_giving_up(spans: Telemetry) -> None:
    @monitor("call")
    @retry(max_retries=2, base_delay=0.01)
    async def fetch() -> str:
        await anyio.lowlevel.checkpoint()
        raise ConnectionRefusedError("down")

    with testing_mode(), pytest.raises(ConnectionRefusedError):
        await fetch()
    span = call_span(spans)
    assert len(events_of(span, "buttress.retry")) == 2
    (gave_up,) = events_of(span, "buttress.retry.gave_up")
    assert gave_up["buttress.retry.attempts"] == 3
    assert gave_up["buttress.retry.reason"] == "attempts"
    assert gave_up["error.type"] == "ConnectionRefusedError"


def test_a_flagged_result_names_its_type_never_its_value(spans: Telemetry) -> None:
    answers = [{"status": "pending", "secret": "token"}, {"status": "done"}]

    @monitor("call")
    @retry(base_delay=0, retry_on_result=lambda r: r["status"] == "pending")
    def poll() -> dict[str, str]:
        return answers.pop(0)

    poll()
    (event,) = events_of(call_span(spans), "buttress.retry")
    assert event["buttress.retry.result_type"] == "dict"
    assert "token" not in repr(event)
    assert "error.type" not in event


def test_a_spent_retry_budget(spans: Telemetry) -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0)

    @monitor("call")
    @retry(base_delay=0, budget=budget)
    def fetch() -> None:
        raise ConnectionError("no")

    with pytest.raises(ConnectionError):
        fetch()
    span = call_span(spans)
    assert len(events_of(span, "buttress.retry_budget.exhausted")) == 1
    (gave_up,) = events_of(span, "buttress.retry.gave_up")
    assert gave_up["buttress.retry.reason"] == "budget"


def test_annotations_land_on_the_users_own_span_without_monitor(spans: Telemetry) -> None:
    calls = 0

    @retry(base_delay=0)
    def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("once")
        return calls

    with spans.tracer.start_as_current_span("my handler"):
        assert flaky() == 2
    (event,) = events_of(spans.one("my handler"), "buttress.retry")
    assert event["error.type"] == "OSError"


def test_no_span_no_annotation(spans: Telemetry) -> None:
    @retry(base_delay=0, max_retries=1)
    def flaky() -> None:
        raise OSError("always")

    with pytest.raises(OSError, match="always"):
        flaky()
    assert spans.spans() == []


# --- cache ---------------------------------------------------------------------------------


def test_the_cache_result_is_an_attribute(spans: Telemetry) -> None:
    @monitor("call")
    @cache_result
    def embed(text: str) -> int:
        return len(text)

    embed("a")
    embed("a")
    miss, hit = spans.named("call")
    assert attributes(miss)["buttress.cache.result"] == "miss"
    assert attributes(hit)["buttress.cache.result"] == "hit"


@pytest.mark.anyio
async def test_a_joined_flight_and_a_stale_value(spans: Telemetry) -> None:
    release = anyio.Event()
    fail = False

    @monitor("call")
    @cache_result(ttl=1, stale_if_error=60)
    async def embed(text: str) -> int:
        await release.wait()
        if fail:
            raise ConnectionError("upstream gone")
        return len(text)

    with testing_mode() as clock:
        async with anyio.create_task_group() as group:
            group.start_soon(embed, "ab")
            group.start_soon(embed, "ab")
            await anyio.sleep(0.05)
            release.set()
        results = sorted(attributes(span)["buttress.cache.result"] for span in spans.named("call"))
        assert results == ["join", "miss"]
        clock.advance(2)  # expired, but within stale_if_error
        fail = True
        assert await embed("ab") == 2
    stale = spans.named("call")[-1]
    assert attributes(stale)["buttress.cache.result"] == "stale"
    (hidden,) = events_of(stale, "buttress.cache.stale_if_error")
    assert hidden["error.type"] == "ConnectionError"


# --- circuit breaker -----------------------------------------------------------------------


def test_breaker_state_change_and_rejection(spans: Telemetry) -> None:
    @monitor("call")
    @circuit_breaker(name="upstream", minimum_calls=2, failure_ratio=0.5, open_for=60)
    def fetch() -> None:
        raise ConnectionError("down")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            fetch()
    with pytest.raises(CircuitOpenError):
        fetch()
    first, tripping, refused = spans.named("call")
    assert not events_of(first, "buttress.circuit_breaker.state_change")
    (change,) = events_of(tripping, "buttress.circuit_breaker.state_change")
    assert change["buttress.circuit_breaker.name"] == "upstream"
    assert (change["buttress.circuit_breaker.from"], change["buttress.circuit_breaker.to"]) == (
        "closed",
        "open",
    )
    (rejected,) = events_of(refused, "buttress.circuit_breaker.rejected")
    assert rejected["buttress.circuit_breaker.name"] == "upstream"
    assert attributes(refused)["error.type"] == "buttress.CircuitOpenError"


# --- rate limit and bulkhead: waits and refusals --------------------------------------------


@pytest.mark.anyio
async def test_rate_limit_wait_and_rejection(spans: Telemetry) -> None:
    @monitor("call")
    @rate_limit(20, burst=1)
    async def paced() -> None:
        pass

    @monitor("call")
    @rate_limit(1, per=60, wait=False)
    async def strict() -> None:
        pass

    await paced()
    await paced()
    await strict()
    with pytest.raises(RateLimitExceeded):
        await strict()
    first, second, _, refused = spans.named("call")
    assert "buttress.rate_limit.wait" not in attributes(first)
    wait = attributes(second)["buttress.rate_limit.wait"]
    assert 0 < wait <= 0.05
    (waited,) = events_of(second, "buttress.rate_limit.waited")
    assert waited["buttress.rate_limit.wait"] == wait
    assert len(events_of(refused, "buttress.rate_limit.rejected")) == 1


@pytest.mark.anyio
async def test_bulkhead_wait_and_rejections(spans: Telemetry) -> None:
    gate = anyio.Event()

    @monitor("call")
    @bulkhead(1, max_waiting=1)
    async def guarded(hold: bool) -> None:
        if hold:
            await gate.wait()

    async def refused() -> None:
        with pytest.raises(BulkheadFullError):
            await guarded(False)

    async with anyio.create_task_group() as group:
        group.start_soon(guarded, True)
        await anyio.sleep(0.02)
        group.start_soon(guarded, False)  # waits for the slot
        await anyio.sleep(0.02)
        await refused()  # no room to wait
        await anyio.sleep(0.02)
        gate.set()
    calls = spans.named("call")
    rejected = [s for s in calls if events_of(s, "buttress.bulkhead.rejected")]
    waited = [s for s in calls if "buttress.bulkhead.wait" in attributes(s)]
    assert len(rejected) == 1
    (event,) = events_of(rejected[0], "buttress.bulkhead.rejected")
    assert event["buttress.bulkhead.reason"] == "full"
    assert len(waited) == 1
    assert attributes(waited[0])["buttress.bulkhead.wait"] >= 0.01
    assert len(events_of(waited[0], "buttress.bulkhead.waited")) == 1


def test_a_bulkhead_wait_that_times_out(spans: Telemetry) -> None:
    import threading

    gate = threading.Event()
    holding = threading.Event()

    @monitor("call")
    @bulkhead(1, max_waiting=1, wait_timeout=0.05)
    def guarded(hold: bool) -> None:
        if hold:
            holding.set()
            gate.wait(10)

    holder = threading.Thread(target=guarded, args=(True,))
    holder.start()
    holding.wait(10)
    with pytest.raises(BulkheadFullError):
        guarded(False)
    gate.set()
    holder.join()
    (event,) = [
        e for s in spans.named("call") for e in events_of(s, "buttress.bulkhead.rejected")
    ]
    assert event["buttress.bulkhead.reason"] == "timeout"
    assert event["buttress.bulkhead.wait"] >= 0.04


# --- timeout, fallback, validation, memory guard -------------------------------------------


@pytest.mark.anyio
async def test_a_timeout_is_a_span_event(spans: Telemetry) -> None:
    @monitor("call")
    @timeout(0.02)
    async def hangs() -> None:
        await anyio.sleep(30)

    with pytest.raises(CallTimeoutError):
        await hangs()
    span = call_span(spans)
    (event,) = events_of(span, "buttress.timeout")
    assert event["buttress.timeout.seconds"] == 0.02
    assert attributes(span)["error.type"] == "buttress.CallTimeoutError"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_fallback_is_an_attribute_and_an_event(spans: Telemetry, kind: str) -> None:
    if kind == "sync":

        @monitor("call")
        @fallback([])
        def recommend() -> list[int]:
            raise LookupError("no model")

        assert recommend() == []
    else:

        @monitor("call")
        @fallback([])
        async def arecommend() -> list[int]:
            raise LookupError("no model")

        assert anyio.run(arecommend) == []
    span = call_span(spans)
    assert attributes(span)["buttress.fallback.used"] is True
    (event,) = events_of(span, "buttress.fallback")
    assert event["error.type"] == "LookupError"
    assert attributes(span)["buttress.outcome"] == "ok"  # the fallback answered


def test_a_validation_failure_names_arguments_never_values(spans: Telemetry) -> None:
    @monitor("call")
    @validate_input(k=int)
    def top(k: Any) -> int:
        return int(k)

    with pytest.raises(InputValidationError):
        top("four hundred secret")
    (event,) = events_of(call_span(spans), "buttress.validation.failed")
    assert event["buttress.validation.direction"] == "input"
    assert event["buttress.validation.problems"] == 1
    assert tuple(event["buttress.validation.arguments"]) == ("k",)
    assert "secret" not in repr(event)


def test_memory_guard_decisions(spans: Telemetry) -> None:
    @monitor("call")
    @memory_guard(max_percent=100, sample_interval=0)
    def roomy() -> None:
        pass

    @monitor("call")
    @memory_guard(max_rss=1024, sample_interval=0)  # every process is bigger than 1 KiB
    def cramped() -> None:
        pass

    roomy()
    with pytest.raises(MemoryPressureError):
        cramped()
    admitted, rejected = spans.named("call")
    assert attributes(admitted)["buttress.memory_guard.action"] == "admitted"
    assert not events_of(admitted, "buttress.memory_guard")
    assert attributes(rejected)["buttress.memory_guard.action"] == "rejected"
    (event,) = events_of(rejected, "buttress.memory_guard")
    assert event["buttress.memory_guard.reason"] == "max_rss"
    assert event["buttress.memory_guard.limit"] == 1024
    assert event["buttress.memory_guard.used"] > 1024


# --- the whole policy() on one span ---------------------------------------------------------


@pytest.mark.anyio
async def test_policy_annotates_the_monitor_span(spans: Telemetry) -> None:
    failures = 1

    @policy(monitor={"name": "call"}, cache=True, retry={"base_delay": 0}, bulkhead=4)
    async def embed(text: str) -> int:
        nonlocal failures
        if failures:
            failures -= 1
            raise ConnectionResetError("blip")
        return len(text)

    assert await embed("abc") == 3
    assert await embed("abc") == 3
    first, second = spans.named("call")
    assert attributes(first)["buttress.cache.result"] == "miss"
    assert [e["error.type"] for e in events_of(first, "buttress.retry")] == [
        "ConnectionResetError"
    ]
    assert attributes(second)["buttress.cache.result"] == "hit"
    assert not events_of(second, "buttress.retry")
