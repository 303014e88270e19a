"""Coroutine functions: the same checks, async handlers, concurrent calls, asyncio and trio."""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Annotated, Any

import anyio
import anyio.lowlevel
import numpy as np
import pytest
from pydantic import BaseModel

from buttress import (
    ArraySpec,
    InputValidationError,
    OutputValidationError,
    ValidationFailed,
    events,
    validate_input,
    validate_output,
)

pytestmark = pytest.mark.anyio

Batch = Annotated[np.ndarray, ArraySpec(("batch", 4), "float32")]
Mask = Annotated[np.ndarray, ArraySpec(("batch",), "bool")]


class Query(BaseModel):
    text: str
    top_k: int = 5


@validate_input
async def embed(x: Batch, mask: Mask, query: Query) -> tuple[Any, Any, Query]:
    await anyio.lowlevel.checkpoint()
    return x, mask, query


@validate_output(ArraySpec(("batch",), min=0, max=1))
async def score(values: list[float]) -> Any:
    await anyio.lowlevel.checkpoint()
    return np.array(values)


async def test_async_input_passes_and_coerces() -> None:
    x, mask = np.zeros((2, 4), np.float32), np.ones(2, bool)
    got_x, got_mask, query = await embed(x, mask, {"text": "cats"})  # type: ignore[arg-type]
    assert got_x is x
    assert got_mask is mask
    assert query == Query(text="cats")
    assert inspect.iscoroutinefunction(embed)


async def test_async_input_reports_every_problem() -> None:
    with pytest.raises(InputValidationError) as caught:
        await embed(np.zeros((2, 4), np.float32), np.ones(3, bool), {"top_k": "x"})  # type: ignore[arg-type]
    assert [(p.argument, p.path) for p in caught.value.errors] == [
        ("mask", ()),
        ("query", ("text",)),
        ("query", ("top_k",)),
    ]


async def test_async_output() -> None:
    assert (await score([0.1, 0.9])).tolist() == [0.1, 0.9]
    with pytest.raises(OutputValidationError, match="values must be <= 1"):
        await score([0.1, 1.9])


async def test_async_handlers_may_be_coroutines_or_plain() -> None:
    async def later(error: InputValidationError) -> str:
        await anyio.lowlevel.checkpoint()
        return f"async: {len(error.errors)}"

    def now(error: InputValidationError) -> str:
        return f"sync: {len(error.errors)}"

    async def out_later(error: OutputValidationError) -> str:
        await anyio.lowlevel.checkpoint()
        return "fallback"

    @validate_input(on_error=later)
    async def a(k: int) -> Any:
        return k

    @validate_input(on_error=now)
    async def b(k: int) -> Any:
        return k

    @validate_input(default="default")
    async def c(k: int) -> Any:
        return k

    @validate_output(int, on_error=out_later)
    async def d() -> Any:
        return "nope"

    @validate_output(int, default=0)
    async def e() -> Any:
        return "nope"

    assert await a("x") == "async: 1"
    assert await b("x") == "sync: 1"
    assert await c("x") == "default"
    assert await a("3") == 3
    assert await d() == "fallback"
    assert await e() == 0


async def test_async_failures_are_events() -> None:
    received: list[ValidationFailed] = []

    @validate_input(default=None)
    async def f(k: int) -> Any:
        return k

    with events.subscribe(received.append, ValidationFailed):
        await f("x")
        with pytest.raises(OutputValidationError):
            await score([2.0])
    assert [event.direction for event in received] == ["input", "output"]


async def test_concurrent_calls_keep_their_own_dimension_names() -> None:
    # Each call binds "batch" for itself, even while many calls interleave.
    results: list[int] = []
    failures: list[int] = []

    async def one(size: int, good: bool) -> None:
        mask = np.ones(size if good else size + 1, bool)
        try:
            x, _, _ = await embed(np.zeros((size, 4), np.float32), mask, {"text": "t"})  # type: ignore[arg-type]
            results.append(x.shape[0])
        except InputValidationError:
            failures.append(size)

    async with anyio.create_task_group() as group:
        for size in range(1, 41):
            group.start_soon(one, size, size % 3 != 0)
    assert sorted(results) == [s for s in range(1, 41) if s % 3 != 0]
    assert sorted(failures) == [s for s in range(1, 41) if s % 3 == 0]


async def test_cancellation_passes_through_untouched() -> None:
    started = anyio.Event()

    @validate_input
    @validate_output(int)
    async def slow(k: int) -> int:
        started.set()
        await anyio.sleep(30)
        return k

    with anyio.move_on_after(5) as scope:
        async with anyio.create_task_group() as group:
            group.start_soon(slow, 1)
            await started.wait()
            group.cancel_scope.cancel()
    assert not scope.cancelled_caught  # cancelled by us, promptly, not by the timeout


def test_reused_across_event_loops_and_threads() -> None:
    # No loop-bound state is created at decoration: asyncio.run twice, and in a thread.
    for _ in range(2):
        assert asyncio.run(score([0.5])).tolist() == [0.5]
    outcome: list[Any] = []

    def in_thread() -> None:
        try:
            asyncio.run(score([3.0]))
        except OutputValidationError as error:
            outcome.append(error)

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(timeout=60)
    assert len(outcome) == 1
    assert isinstance(outcome[0], OutputValidationError)
