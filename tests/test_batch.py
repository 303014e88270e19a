"""@batch: gathering, results and errors, partitions, limits, cancellation, loops, threads."""

from __future__ import annotations

import asyncio
import functools
import inspect
import pickle
import signal
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import anyio
import anyio.lowlevel
import numpy as np
import pytest

from buttress import (
    BatchCompleted,
    BatchDispatched,
    BatchQueueFullError,
    BatchRejected,
    BatchResultError,
    BatchStats,
    ButtressError,
    ConfigurationError,
    Event,
    RejectedError,
    batch,
    events,
)
from buttress.testing import FakeClock, testing_mode


class Recorder:
    """A batch function's calls, from any thread; how many ran at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches: list[list[Any]] = []
        self.running = 0
        self.peak = 0

    def enter(self, items: list[Any]) -> None:
        with self.lock:
            self.batches.append(list(items))
            self.running += 1
            self.peak = max(self.peak, self.running)

    def leave(self) -> None:
        with self.lock:
            self.running -= 1


async def gather(calls: dict[Any, Any]) -> dict[Any, Any]:
    """Run ``{name: coroutine function of no argument}`` concurrently; their results."""
    results: dict[Any, Any] = {}

    async def run(name: Any, call: Any) -> None:
        try:
            results[name] = await call()
        except Exception as exc:
            results[name] = exc

    async with anyio.create_task_group() as group:
        for name, call in calls.items():
            group.start_soon(run, name, call)
    return results


# --- gathering ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_concurrent_calls_become_batches_of_at_most_max_size() -> None:
    seen = Recorder()

    @batch(max_size=4, max_wait=0.01)
    async def double(items: list[int]) -> list[int]:
        seen.enter(items)
        seen.leave()
        return [x * 2 for x in items]

    results = await gather({x: functools.partial(double.one, x) for x in range(10)})
    assert results == {x: x * 2 for x in range(10)}
    # Ten callers at once: two full batches sent at once, the last two items after max_wait.
    assert sorted(len(b) for b in seen.batches) == [2, 4, 4]
    assert sorted(x for b in seen.batches for x in b) == list(range(10))


@pytest.mark.anyio
async def test_each_caller_gets_its_own_result_in_item_order() -> None:
    @batch(max_size=8, max_wait=0.001)
    async def tag(items: list[str]) -> tuple[str, ...]:
        return tuple(f"<{item}>" for item in items)

    results = await gather({s: functools.partial(tag.one, s) for s in "abcdefgh"})
    assert results == {s: f"<{s}>" for s in "abcdefgh"}


@pytest.mark.anyio
async def test_a_numpy_result_gives_each_caller_its_row() -> None:
    @batch(max_size=3, max_wait=0.001)
    async def embed(texts: list[str]) -> np.ndarray:
        return np.stack([np.full(4, len(text), dtype=np.float32) for text in texts])

    results = await gather({t: functools.partial(embed.one, t) for t in ("a", "bb", "ccc")})
    for text, row in results.items():
        np.testing.assert_array_equal(row, np.full(4, len(text), dtype=np.float32))


@pytest.mark.anyio
async def test_a_generator_result_is_accepted() -> None:
    @batch(max_size=2, max_wait=0.001)
    async def square(items: list[int]) -> Any:
        return (x * x for x in items)

    assert await gather({x: functools.partial(square.one, x) for x in (3, 4)}) == {3: 9, 4: 16}


# --- timing, on the fake clock -----------------------------------------------------------


@pytest.mark.anyio
async def test_a_lone_item_waits_max_wait_then_goes(buttress_clock: FakeClock) -> None:
    dispatched: list[BatchDispatched] = []

    @batch(max_size=10, max_wait=timedelta(milliseconds=5))
    async def echo(items: list[int]) -> list[int]:
        return items

    with events.subscribe(dispatched.append, BatchDispatched):
        assert await echo.one(7) == 7
    assert buttress_clock.sleeps == [0.005]
    assert len(dispatched) == 1
    event = dispatched[0]
    assert (event.size, event.trigger, event.waited, event.in_flight) == (1, "max_wait", 0.005, 1)
    assert event.function.endswith("echo")


@pytest.mark.anyio
async def test_a_full_batch_goes_without_waiting(buttress_clock: FakeClock) -> None:
    dispatched: list[BatchDispatched] = []

    @batch(max_size=3, max_wait=5)
    async def echo(items: list[int]) -> list[int]:
        return items

    with events.subscribe(dispatched.append, BatchDispatched):
        assert await gather({x: functools.partial(echo.one, x) for x in range(3)}) == {
            0: 0,
            1: 1,
            2: 2,
        }
    assert buttress_clock.sleeps == []  # the batch filled before its driver slept
    assert [(e.size, e.trigger, e.waited) for e in dispatched] == [(3, "full", 0.0)]


@pytest.mark.anyio
async def test_late_items_open_the_next_batch(buttress_clock: FakeClock) -> None:
    seen = Recorder()

    @batch(max_size=10, max_wait=1.0)
    async def echo(items: list[int]) -> list[int]:
        seen.enter(items)
        seen.leave()
        return items

    async def late(x: int) -> int:
        while not seen.batches:  # the first batch has been sent
            await anyio.lowlevel.checkpoint()
        return await echo.one(x)

    results = await gather(
        {
            0: functools.partial(echo.one, 0),
            1: functools.partial(echo.one, 1),
            2: functools.partial(late, 2),
        }
    )
    assert results == {0: 0, 1: 1, 2: 2}
    assert sorted(sorted(b) for b in seen.batches) == [[0, 1], [2]]
    assert buttress_clock.sleeps == [1.0, 1.0]  # each batch gathered for max_wait


def test_threads_wait_max_wait_on_the_fake_clock() -> None:
    with testing_mode() as clock:

        @batch(max_size=10, max_wait=0.25)
        def echo(items: list[int]) -> list[int]:
            return items

        assert echo.one(5) == 5
    assert clock.sleeps == [0.25]


# --- results and errors ----------------------------------------------------------------


class Unavailable(Exception):
    pass


@pytest.mark.anyio
async def test_an_exception_returned_for_an_item_goes_to_that_caller_alone() -> None:
    completed: list[BatchCompleted] = []

    @batch(max_size=3, max_wait=0.001)
    async def parse(items: list[str]) -> list[int | Exception]:
        return [int(s) if s.isdigit() else ValueError(f"not a number: {s}") for s in items]

    with events.subscribe(completed.append, BatchCompleted):
        results = await gather({s: functools.partial(parse.one, s) for s in ("1", "x", "3")})
    assert results["1"] == 1
    assert results["3"] == 3
    assert isinstance(results["x"], ValueError)
    assert str(results["x"]) == "not a number: x"
    assert [(e.size, e.outcome, e.failed_items) for e in completed] == [(3, "ok", 1)]
    stats = parse.batcher.stats()
    assert (stats.failed, stats.failed_items) == (0, 1)


@pytest.mark.anyio
async def test_a_batch_that_raises_fails_every_caller_with_that_error() -> None:
    completed: list[BatchCompleted] = []

    @batch(max_size=3, max_wait=0.001)
    async def broken(items: list[int]) -> list[int]:
        raise Unavailable(f"{len(items)} items refused")

    with events.subscribe(completed.append, BatchCompleted):
        results = await gather({x: functools.partial(broken.one, x) for x in range(3)})
    errors = list(results.values())
    assert all(isinstance(error, Unavailable) for error in errors)
    assert errors[0] is errors[1] is errors[2]  # one error, the batch's
    assert str(errors[0]) == "3 items refused"
    assert [(e.outcome, e.size) for e in completed] == [("error", 3)]
    assert broken.batcher.stats().failed == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("result", "reason", "returned"),
    [
        ([1, 2], "length", 2),
        ([1, 2, 3, 4], "length", 4),
        (None, "type", None),
        ({"a": 1, "b": 2, "c": 3}, "type", None),
        ("abc", "type", None),
        (42, "type", None),
    ],
)
async def test_a_result_of_the_wrong_length_or_kind_fails_the_whole_batch(
    result: Any, reason: str, returned: int | None
) -> None:
    @batch(max_size=3, max_wait=0.001)
    async def wrong(items: list[int]) -> Any:
        return result

    results = await gather({x: functools.partial(wrong.one, x) for x in range(3)})
    errors = list(results.values())
    assert all(isinstance(error, BatchResultError) for error in errors)
    error = errors[0]
    assert isinstance(error, ValueError)
    assert isinstance(error, ButtressError)
    assert (error.reason, error.expected, error.returned) == (reason, 3, returned)
    assert error.function.endswith("wrong")
    assert "one result (or exception) per item" in str(error)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason, copy.expected, copy.returned, str(copy)) == (
        reason,
        3,
        returned,
        str(error),
    )


def test_threads_get_per_item_errors_and_batch_errors() -> None:
    @batch(max_size=4, max_wait=0.05)
    def check(items: list[int]) -> list[int | Exception]:
        if 13 in items:
            raise Unavailable("unlucky batch")
        return [x if x % 2 else ValueError(f"{x} is even") for x in items]

    results: dict[int, Any] = {}

    def call(x: int) -> None:
        try:
            results[x] = check.one(x)
        except Exception as exc:
            results[x] = exc

    threads = [threading.Thread(target=call, args=(x,)) for x in (1, 2, 3, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (results[1], results[3], results[5]) == (1, 3, 5)
    assert isinstance(results[2], ValueError)
    with pytest.raises(Unavailable, match="unlucky batch"):
        check.one(13)


# --- partitions --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_items_with_different_keys_never_share_a_batch() -> None:
    seen = Recorder()

    @batch(max_size=10, max_wait=0.001, key=lambda item: item[0])
    async def embed(items: list[tuple[str, str]]) -> list[str]:
        seen.enter(items)
        seen.leave()
        models = {model for model, _ in items}
        assert len(models) == 1
        return [f"{model}:{text}" for model, text in items]

    calls = {
        (model, text): functools.partial(embed.one, (model, text))
        for model in ("small", "large")
        for text in ("a", "b", "c")
    }
    results = await gather(calls)
    assert results == {(m, t): f"{m}:{t}" for m, t in calls}
    assert sorted(len(b) for b in seen.batches) == [3, 3]


@pytest.mark.anyio
async def test_an_error_from_key_is_the_callers_own() -> None:
    @batch(max_size=2, max_wait=0.001, key=lambda item: item["model"])
    async def embed(items: list[dict[str, str]]) -> list[str]:
        return [item["text"] for item in items]

    with pytest.raises(KeyError):
        await embed.one({"text": "no model"})
    assert await embed.one({"model": "m", "text": "fine"}) == "fine"
    assert embed.batcher.stats().queued == 0


# --- limits ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_max_concurrency_bounds_batches_in_flight_and_the_rest_wait_in_order() -> None:
    seen = Recorder()
    release = anyio.Event()

    @batch(max_size=2, max_wait=0.001, max_concurrency=2)
    async def slow(items: list[int]) -> list[int]:
        seen.enter(items)
        try:
            await release.wait()
        finally:
            seen.leave()
        return items

    results: dict[int, int] = {}

    async def call(x: int) -> None:
        results[x] = await slow.one(x)

    async with anyio.create_task_group() as group:
        for x in range(8):
            group.start_soon(call, x)
        await anyio.wait_all_tasks_blocked()  # four full batches: two sent, two queued
        stats = slow.batcher.stats()
        assert (stats.in_flight, stats.queued, stats.batches) == (2, 4, 2)
        release.set()
    assert results == {x: x for x in range(8)}
    assert seen.peak == 2
    assert len(seen.batches) == 4


@pytest.mark.anyio
async def test_max_queue_refuses_items_beyond_it_at_once() -> None:
    rejected: list[BatchRejected] = []
    release = anyio.Event()

    @batch(max_size=2, max_wait=0.001, max_concurrency=1, max_queue=3)
    async def slow(items: list[int]) -> list[int]:
        await release.wait()
        return items

    results: dict[int, int] = {}

    async def call(x: int) -> None:
        results[x] = await slow.one(x)

    with events.subscribe(rejected.append, BatchRejected):
        async with anyio.create_task_group() as group:
            for x in range(5):  # 2 in flight, 3 queued
                group.start_soon(call, x)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(BatchQueueFullError) as caught:
                await slow.one(99)
            release.set()
    assert results == {x: x for x in range(5)}
    error = caught.value
    assert isinstance(error, RejectedError)
    assert isinstance(error, RuntimeError)
    assert (error.max_queue, error.max_concurrency, error.in_flight) == (3, 1, 1)
    assert "3 item(s) already wait" in str(error)
    assert pickle.loads(pickle.dumps(error)).max_queue == 3
    assert [(e.queued, e.function) for e in rejected] == [(3, error.function)]
    assert slow.batcher.stats().rejected == 1


# --- cancellation ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_caller_cancelled_before_sending_is_taken_out_of_its_batch() -> None:
    seen = Recorder()

    @batch(max_size=3, max_wait=60)  # sent when full, never by time in this test
    async def echo(items: list[int]) -> list[int]:
        seen.enter(items)
        seen.leave()
        return items

    results: dict[int, int] = {}

    async def call(x: int) -> None:
        results[x] = await echo.one(x)

    async with anyio.create_task_group() as group:
        group.start_soon(call, 1)
        with anyio.move_on_after(0.001):
            await echo.one(2)  # joins the batch of 1, then leaves it
        assert echo.batcher.stats().queued == 1
        group.start_soon(call, 3)
        group.start_soon(call, 4)  # the third item: the batch is full and goes
    assert results == {1: 1, 3: 3, 4: 4}
    assert [sorted(b) for b in seen.batches] == [[1, 3, 4]]
    assert echo.batcher.stats().left == 1


@pytest.mark.anyio
async def test_when_every_caller_leaves_the_batch_is_never_sent() -> None:
    seen = Recorder()

    @batch(max_size=10, max_wait=30)
    async def echo(items: list[int]) -> list[int]:
        seen.enter(items)
        seen.leave()
        return items

    started = time.monotonic()
    with anyio.move_on_after(0.01):
        await echo.one(1)
    await anyio.sleep(0.02)
    assert seen.batches == []
    stats = echo.batcher.stats()
    assert (stats.queued, stats.batches, stats.left) == (0, 0, 1)
    assert time.monotonic() - started < 10  # the driver's 30 s sleep ended with it


@pytest.mark.anyio
async def test_cancelling_one_caller_after_sending_does_not_cancel_the_batch() -> None:
    entered = anyio.Event()
    release = anyio.Event()
    finished: list[list[int]] = []

    @batch(max_size=2, max_wait=5)
    async def slow(items: list[int]) -> list[int]:
        entered.set()
        await release.wait()
        finished.append(items)
        return items

    results: dict[int, Any] = {}

    async def call(x: int, scope: anyio.CancelScope) -> None:
        with scope:
            results[x] = await slow.one(x)

    first, second = anyio.CancelScope(), anyio.CancelScope()
    async with anyio.create_task_group() as group:
        group.start_soon(call, 1, first)
        group.start_soon(call, 2, second)
        await entered.wait()
        first.cancel()  # the batch is in flight: caller 1 stops waiting
        await anyio.wait_all_tasks_blocked()
        assert 1 not in results
        release.set()
    assert results == {2: 2}
    assert [sorted(b) for b in finished] == [[1, 2]]  # sent once, run to the end
    stats = slow.batcher.stats()
    assert (stats.batches, stats.items, stats.left, stats.in_flight) == (1, 2, 0, 0)


def test_a_thread_interrupted_while_waiting_is_taken_out() -> None:
    seen = Recorder()

    @batch(max_size=2, max_wait=60)  # sent when full, never by time in this test
    def echo(items: list[int]) -> list[int]:
        seen.enter(items)
        seen.leave()
        return items

    # Ctrl-C reaches the main thread only: a real SIGINT interrupts its wait.
    main = threading.main_thread().ident
    assert main == threading.get_ident()
    timer = threading.Timer(0.05, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        echo.one(1)
    timer.join()
    assert echo.batcher.stats().queued == 0
    results: dict[int, int] = {}
    threads = [
        threading.Thread(target=lambda x=x: results.__setitem__(x, echo.one(x))) for x in (2, 3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {2: 2, 3: 3}
    assert [sorted(b) for b in seen.batches] == [[2, 3]]
    assert echo.batcher.stats().left == 1


# --- event loops and threads --------------------------------------------------------------


def test_one_function_from_several_event_loops_never_mixes_them() -> None:
    seen: list[tuple[int, list[int]]] = []

    @batch(max_size=100, max_wait=0.02)
    async def echo(items: list[int]) -> list[int]:
        seen.append((threading.get_ident(), items))
        return items

    async def burst(base: int) -> list[int]:
        return list(await asyncio.gather(*(echo.one(base + i) for i in range(5))))

    def in_thread(base: int, out: dict[int, list[int]]) -> None:
        out[base] = asyncio.run(burst(base))

    assert asyncio.run(burst(0)) == [0, 1, 2, 3, 4]
    assert asyncio.run(burst(10)) == [10, 11, 12, 13, 14]  # a second loop, same thread
    out: dict[int, list[int]] = {}
    threads = [threading.Thread(target=in_thread, args=(b, out)) for b in (100, 200, 300)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert out == {b: [b + i for i in range(5)] for b in (100, 200, 300)}
    for _, items in seen:  # never two loops' items in one batch
        assert len({item // 10 for item in items}) == 1
    import trio

    async def trio_burst() -> list[int]:
        got: dict[int, int] = {}

        async def one(x: int) -> None:
            got[x] = await echo.one(x)

        async with trio.open_nursery() as nursery:
            for x in range(500, 505):
                nursery.start_soon(one, x)
        return [got[x] for x in sorted(got)]

    assert trio.run(trio_burst) == [500, 501, 502, 503, 504]


def test_max_concurrency_holds_across_event_loops_in_threads() -> None:
    seen = Recorder()

    @batch(max_size=3, max_wait=0.005, max_concurrency=1)
    async def slow(items: list[int]) -> list[int]:
        seen.enter(items)
        await asyncio.sleep(0.01)
        seen.leave()
        return items

    async def burst(base: int) -> list[int]:
        return list(await asyncio.gather(*(slow.one(base + i) for i in range(7))))

    out: dict[int, list[int]] = {}
    threads = [
        threading.Thread(target=lambda b=b: out.__setitem__(b, asyncio.run(burst(b))))
        for b in (0, 100, 200)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert out == {b: [b + i for i in range(7)] for b in (0, 100, 200)}
    assert seen.peak == 1
    assert sum(len(b) for b in seen.batches) == 21


def test_threads_are_batched_together() -> None:
    seen = Recorder()
    barrier = threading.Barrier(12)

    @batch(max_size=6, max_wait=5)
    def triple(items: list[int]) -> list[int]:
        seen.enter(items)
        seen.leave()
        return [x * 3 for x in items]

    results: dict[int, int] = {}

    def call(x: int) -> None:
        barrier.wait()
        results[x] = triple.one(x)

    threads = [threading.Thread(target=call, args=(x,)) for x in range(12)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {x: x * 3 for x in range(12)}
    assert sorted(len(b) for b in seen.batches) == [6, 6]  # full: sent without waiting 5 s
    assert time.monotonic() - started < 4


def test_thread_batches_respect_max_concurrency() -> None:
    seen = Recorder()

    @batch(max_size=2, max_wait=0.005, max_concurrency=2)
    def slow(items: list[int]) -> list[int]:
        seen.enter(items)
        time.sleep(0.02)
        seen.leave()
        return items

    results: dict[int, int] = {}
    threads = [
        threading.Thread(target=lambda x=x: results.__setitem__(x, slow.one(x))) for x in range(10)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {x: x for x in range(10)}
    assert seen.peak <= 2
    assert slow.batcher.stats().in_flight == 0


# --- the wrapper ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_decorated_function_called_directly_runs_the_list_at_once() -> None:
    @batch(max_size=2, max_wait=30)
    async def double(items: list[int], scale: int = 2) -> list[int]:
        return [x * scale for x in items]

    assert await double([1, 2, 3]) == [2, 4, 6]  # no gathering, no max_size
    assert await double([1], scale=3) == [3]
    assert double.batcher.stats().batches == 0


def test_the_wrapper_is_honest() -> None:
    async def embed_many(texts: list[str], *, model: str = "small") -> list[list[float]]:
        """Embed texts."""
        return [[0.0] for _ in texts]

    decorated = batch()(embed_many)
    assert decorated.__name__ == "embed_many"
    assert decorated.__doc__ == "Embed texts."
    assert inspect.signature(decorated) == inspect.signature(embed_many)
    assert inspect.iscoroutinefunction(decorated)
    assert inspect.iscoroutinefunction(decorated.one)
    assert decorated.one.__qualname__.endswith("embed_many.one")
    assert decorated.one.__annotations__ == {"item": str, "return": list[float]}
    assert list(inspect.signature(decorated.one).parameters) == ["item"]

    def plain(items: list[int]) -> list[int | Exception]:
        return list(items)

    def mixed(items: list[str]) -> list[list[float] | Exception]:
        return [[0.0] for _ in items]

    # An exception in the result is raised, not returned: the result type leaves it out
    # (list[float] is no class for issubclass, though Python 3.10 calls it a type).
    assert batch()(mixed).one.__annotations__ == {"item": str, "return": list[float]}

    sync = batch()(plain)
    assert not inspect.iscoroutinefunction(sync)
    assert not inspect.iscoroutinefunction(sync.one)
    assert sync.one.__annotations__ == {"item": int, "return": int}
    stats = sync.batcher.stats()
    assert isinstance(stats, BatchStats)
    assert (stats.max_size, stats.max_wait, stats.mean_size) == (64, 0.005, 0.0)
    assert "max_size=64" in repr(sync.batcher)


def test_a_partial_and_a_callable_object_are_decorated() -> None:
    def scale(factor: int, items: list[int]) -> list[int]:
        return [x * factor for x in items]

    tenfold = batch(max_size=2, max_wait=0.001)(functools.partial(scale, 10))
    assert tenfold.one(3) == 30

    class Model:
        async def __call__(self, items: list[int]) -> list[int]:
            return [x + 1 for x in items]

    model = batch(max_size=2, max_wait=0.001)(Model())
    assert asyncio.run(model.one(1)) == 2


def test_a_bound_method_decorated_per_instance() -> None:
    class Client:
        def __init__(self, prefix: str) -> None:
            self.prefix = prefix
            self.embed = batch(max_size=4, max_wait=0.001)(self._embed_many)

        async def _embed_many(self, texts: list[str]) -> list[str]:
            return [self.prefix + text for text in texts]

    a, b = Client("a:"), Client("b:")
    assert asyncio.run(a.embed.one("x")) == "a:x"
    assert asyncio.run(b.embed.one("x")) == "b:x"


def test_targets_that_cannot_take_the_list_alone_are_refused() -> None:
    class Model:
        @batch()
        def fine(items: list[int]) -> list[int]:  # type: ignore[misc]  # a staticmethod-like
            return items

    with pytest.raises(TypeError, match="decorate it per instance"):

        class Other:
            @batch()
            async def embed_many(self, texts: list[str]) -> list[str]:
                return texts

    with pytest.raises(TypeError, match="one argument, the list of items"):
        batch()(lambda a, b: [a, b])
    with pytest.raises(TypeError, match="classmethod"):
        batch()(classmethod(lambda cls, items: items))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="generator"):

        @batch()
        def gen(items: list[int]) -> Any:
            yield from items

    static = batch(max_size=1)(staticmethod(lambda items: [x * 2 for x in items]))
    assert isinstance(static, staticmethod)
    assert static.__func__.one(4) == 8  # type: ignore[attr-defined]
    assert Model.fine([1]) == [1]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_size": 0}, "max_size must be >= 1"),
        ({"max_size": 2.5}, "max_size must be an int"),
        ({"max_wait": -1}, "max_wait must be non-negative"),
        ({"max_wait": "fast"}, "max_wait must be seconds"),
        ({"key": "model"}, "key must be a callable"),
        ({"max_concurrency": 0}, "max_concurrency must be >= 1"),
        ({"max_queue": 0}, "max_queue must be >= 1"),
        ({"max_size": 10, "max_queue": 5}, "max_queue must be at least max_size"),
    ],
)
def test_bad_settings_are_refused_naming_the_parameter(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        batch(**settings)


# --- events and stats ------------------------------------------------------------------


@pytest.mark.anyio
async def test_events_report_each_batch_and_stats_add_up() -> None:
    seen: list[Event] = []
    gate = anyio.Event()

    @batch(max_size=3, max_wait=0.001, max_concurrency=1)
    async def echo(items: list[int]) -> Sequence[int]:
        await gate.wait()
        return items

    with events.subscribe(seen.append, (BatchDispatched, BatchCompleted)):
        async with anyio.create_task_group() as group:
            for x in range(7):
                group.start_soon(echo.one, x)
            await anyio.wait_all_tasks_blocked()
            gate.set()
    dispatched = [e for e in seen if isinstance(e, BatchDispatched)]
    completed = [e for e in seen if isinstance(e, BatchCompleted)]
    assert sorted(e.size for e in dispatched) == [1, 3, 3]
    assert all(e.in_flight == 1 for e in dispatched)
    assert all(e.outcome == "ok" for e in completed)
    # The first batch to finish hands its slot straight to a queued one.
    assert (completed[0].in_flight, completed[-1].in_flight) == (1, 0)
    assert [e.size for e in completed] == [e.size for e in dispatched]
    stats = echo.batcher.stats()
    assert (stats.batches, stats.items, stats.full, stats.queued, stats.in_flight) == (
        3,
        7,
        2,
        0,
        0,
    )
    assert stats.mean_size == pytest.approx(7 / 3)
