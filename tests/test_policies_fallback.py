"""@fallback: a safe default in place of a failure; cancellation is never replaced."""

from __future__ import annotations

import inspect
import uuid
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from buttress import (
    CircuitOpenError,
    ConfigurationError,
    FallbackUsed,
    circuit_breaker,
    events,
    fallback,
)


def test_bare_use_answers_none() -> None:
    @fallback
    def rank(user: int) -> list[int]:
        raise ConnectionError("feature store down")

    assert rank(1) is None


def test_value_and_events() -> None:
    seen: list[Any] = []

    @fallback(["popular"])
    def rank(user: int) -> list[str]:
        raise TimeoutError(f"user {user}")

    with events.subscribe(seen.append, FallbackUsed):
        assert rank(7) == ["popular"]
    assert len(seen) == 1
    assert isinstance(seen[0].error, TimeoutError)
    assert seen[0].function.endswith("rank")


def test_factory_gets_the_error_and_builds_a_fresh_answer() -> None:
    @fallback(factory=lambda exc: {"degraded": True, "why": type(exc).__name__})
    def predict() -> dict[str, Any]:
        raise ValueError

    first, second = predict(), predict()
    assert first == {"degraded": True, "why": "ValueError"}
    assert first is not second


def test_only_listed_errors_are_replaced() -> None:
    @fallback(0, exceptions=(ConnectionError, TimeoutError))
    def fetch(error: Exception) -> int:
        raise error

    assert fetch(ConnectionRefusedError()) == 0
    with pytest.raises(KeyError):
        fetch(KeyError("bug"))


def test_success_passes_through() -> None:
    @fallback(-1)
    def add(a: int, b: int) -> int:
        return a + b

    assert add(1, 2) == 3


def test_interpreter_exits_are_never_replaced() -> None:
    @fallback("never", exceptions=BaseException)
    def stop() -> str:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stop()


@pytest.mark.anyio
async def test_async_value_and_async_factory() -> None:
    @fallback([0.0])
    async def embed(text: str) -> list[float]:
        await anyio.lowlevel.checkpoint()
        raise ConnectionError

    async def cached(exc: Exception) -> list[float]:
        await anyio.lowlevel.checkpoint()
        return [9.0]

    @fallback(factory=cached)
    async def embed_cached(text: str) -> list[float]:
        raise ConnectionError

    assert inspect.iscoroutinefunction(embed)
    assert await embed("x") == [0.0]
    assert await embed_cached("x") == [9.0]


@pytest.mark.anyio
async def test_cancellation_is_never_replaced() -> None:
    @fallback("never", exceptions=BaseException)
    async def hang() -> str:
        await anyio.sleep_forever()
        return "unreachable"

    with anyio.move_on_after(0.02) as scope:
        await hang()
        pytest.fail("the cancellation was swallowed")
    assert scope.cancelled_caught


def test_async_factory_on_a_plain_function_is_refused_at_call() -> None:
    async def cached(exc: Exception) -> int:
        return 1

    @fallback(factory=cached)
    def fetch() -> int:
        raise ConnectionError

    with pytest.raises(TypeError, match="awaitable"):
        fetch()  # and no "coroutine was never awaited" warning (warnings are errors)


def test_an_open_circuit_falls_back() -> None:
    @fallback("cached answer", exceptions=CircuitOpenError)
    @circuit_breaker(name=f"fb-{uuid.uuid4().hex}", minimum_calls=1)
    def search() -> str:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        search()  # a real failure is not in exceptions: it propagates and opens the breaker
    assert search() == "cached answer"


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        fallback(1, factory=lambda exc: 2)
    with pytest.raises(ConfigurationError, match="factory"):
        fallback(factory=3)  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="exceptions"):
        fallback(1, exceptions=(str,))  # type: ignore[arg-type]
