"""@monitor's log records: their fields for ok, error and cancelled calls, sync and async."""

from __future__ import annotations

import inspect
import logging
import random
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import anyio
import anyio.lowlevel
import anyio.to_thread
import numpy as np
import pytest

from _monitor_support import Records, capture, fresh_monitoring
from buttress import (
    ConfigurationError,
    flush_monitoring,
    monitor,
    monitoring_stats,
    request_context,
    request_scope,
)
from buttress._monitoring._emitter import THREAD_NAME
from buttress.testing import FakeClock


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    with fresh_monitoring():
        yield


@pytest.fixture
def records() -> Iterator[Records]:
    with capture() as handler:
        yield handler


async def flush() -> None:
    assert await anyio.to_thread.run_sync(flush_monitoring)


def test_ok_record_carries_every_field(records: Records) -> None:
    @monitor
    def add(count: int, note: str = "") -> list[int]:
        return [count, count]

    before = time.time()
    assert add(3, note="top secret") == [3, 3]
    after = time.time()
    assert flush_monitoring()

    (record,) = records.of(add.monitor.name)
    assert record.name == "buttress.monitor"
    assert record.levelno == logging.INFO
    assert record.function == "test_ok_record_carries_every_field.<locals>.add"  # type: ignore[attr-defined]
    assert record.outcome == "ok"  # type: ignore[attr-defined]
    assert record.slow is False  # type: ignore[attr-defined]
    assert record.error_type is None  # type: ignore[attr-defined]
    assert record.error_message is None  # type: ignore[attr-defined]
    assert record.inputs == {  # type: ignore[attr-defined]
        "count": {"type": "int"},
        "note": {"type": "str", "length": 10},
    }
    assert record.output == {"type": "list", "length": 2, "element_type": "int"}  # type: ignore[attr-defined]
    assert record.context is None  # type: ignore[attr-defined]
    start = datetime.fromisoformat(record.start_time)  # type: ignore[attr-defined]
    assert start.utcoffset() == timedelta(0)
    assert before - 0.001 <= start.timestamp() <= after
    assert 0 <= record.duration <= after - before + 0.001  # type: ignore[attr-defined]
    assert isinstance(record.call_id, str)
    assert record.call_id
    # the record points at the call, not at the exporter thread that built it
    assert record.funcName == "add"
    assert record.pathname == __file__
    assert record.threadName == threading.current_thread().name
    assert record.thread == threading.get_ident()
    assert before - 0.001 <= record.created <= after + 0.001
    assert records.threads == {THREAD_NAME}
    assert "add() ok in" in record.getMessage()
    assert "top secret" not in repr(record.__dict__)


def test_error_is_logged_with_traceback_and_reraised_unchanged(records: Records) -> None:
    raised: list[BaseException] = []

    @monitor
    def parse(text: str) -> int:
        error = ValueError(f"cannot parse {len(text)} characters")
        raised.append(error)
        raise error

    with pytest.raises(ValueError) as info:
        parse("payload")
    assert info.value is raised[0]
    # the traceback still reaches the line that raised
    assert info.traceback[-1].name == "parse"
    assert flush_monitoring()

    (record,) = records
    assert record.levelno == logging.ERROR
    assert record.outcome == "error"  # type: ignore[attr-defined]
    assert record.error_type == "ValueError"  # type: ignore[attr-defined]
    assert record.error_message == "cannot parse 7 characters"  # type: ignore[attr-defined]
    assert record.output is None  # type: ignore[attr-defined]
    assert record.exc_info is not None
    assert record.exc_info[1] is raised[0]
    text = logging.Formatter().format(record)
    assert "Traceback (most recent call last)" in text
    assert "in parse" in text
    assert "failed after" in record.getMessage()
    assert parse.monitor.stats().errors == 1  # type: ignore[attr-defined]


def test_error_type_of_a_library_exception_is_qualified(records: Records) -> None:
    class ModelUnavailable(RuntimeError):
        pass

    @monitor
    def call() -> None:
        raise ModelUnavailable("503")

    with pytest.raises(ModelUnavailable):
        call()
    assert flush_monitoring()
    assert records[0].error_type == (  # type: ignore[attr-defined]
        f"{__name__}.test_error_type_of_a_library_exception_is_qualified.<locals>."
        "ModelUnavailable"
    )


def test_keyboard_interrupt_counts_as_cancelled_and_propagates(records: Records) -> None:
    @monitor
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert flush_monitoring()
    (record,) = records
    assert record.outcome == "cancelled"  # type: ignore[attr-defined]
    assert record.exc_info is None
    stats = interrupted.monitor.stats()  # type: ignore[attr-defined]
    assert (stats.cancelled, stats.errors, stats.in_flight) == (1, 0, 0)


@pytest.mark.anyio
async def test_async_ok_error_and_cancelled(records: Records) -> None:
    started = anyio.Event()

    @monitor
    async def infer(x: float) -> float:
        if x < 0:
            raise ValueError("negative")
        if x > 100:
            started.set()
            await anyio.sleep_forever()
        await anyio.lowlevel.checkpoint()
        return x * 2

    assert await infer(1.5) == 3.0
    with pytest.raises(ValueError, match="negative"):
        await infer(-1.0)
    async with anyio.create_task_group() as group:
        group.start_soon(infer, 1000.0)
        await started.wait()
        assert infer.monitor.stats().in_flight == 1  # type: ignore[attr-defined]
        group.cancel_scope.cancel()
    await flush()

    ok, error, cancelled = records.of(infer.monitor.name)  # type: ignore[attr-defined]
    assert (ok.outcome, error.outcome, cancelled.outcome) == ("ok", "error", "cancelled")  # type: ignore[attr-defined]
    assert ok.output == {"type": "float", "finite": True}  # type: ignore[attr-defined]
    assert error.levelno == logging.ERROR
    assert error.exc_info is not None
    assert cancelled.levelno == logging.INFO
    assert cancelled.exc_info is None
    assert cancelled.output is None  # type: ignore[attr-defined]
    assert "cancelled after" in cancelled.getMessage()
    stats = infer.monitor.stats()  # type: ignore[attr-defined]
    assert (stats.calls, stats.ok, stats.errors, stats.cancelled, stats.in_flight) == (
        3, 1, 1, 1, 0,
    )


@pytest.mark.anyio
async def test_coroutine_duration_is_its_whole_run(records: Records) -> None:
    # prometheus-client's Histogram.time() around an async def measures the creation of
    # the coroutine object; @monitor measures from its start to its end.
    clock = FakeClock()

    @monitor
    async def slow_model() -> str:
        await anyio.lowlevel.checkpoint()
        clock.advance(0.75)
        return "done"

    from buttress.testing import testing_mode

    with testing_mode(clock):
        coroutine = slow_model()
        clock.advance(5)  # time before the coroutine starts does not count
        await coroutine
    await flush()
    (record,) = records
    assert record.duration == pytest.approx(0.75)  # type: ignore[attr-defined]
    assert slow_model.monitor.stats().total_seconds == pytest.approx(0.75)  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_cancelled_call_is_timed_until_cancellation(records: Records) -> None:
    @monitor
    async def hang() -> None:
        await anyio.sleep_forever()

    with anyio.move_on_after(0.2):
        await hang()
    await flush()
    (record,) = records
    assert record.outcome == "cancelled"  # type: ignore[attr-defined]
    assert 0.15 <= record.duration < 30  # type: ignore[attr-defined]


def test_slow_calls_are_warnings(records: Records, buttress_clock: FakeClock) -> None:
    @monitor(slow_threshold=timedelta(milliseconds=200))
    def step(seconds: float) -> None:
        buttress_clock.advance(seconds)

    step(0.1)
    step(0.25)
    assert flush_monitoring()
    fast, slow = records
    assert (fast.levelno, fast.slow) == (logging.INFO, False)  # type: ignore[attr-defined]
    assert (slow.levelno, slow.slow) == (logging.WARNING, True)  # type: ignore[attr-defined]
    assert slow.duration == pytest.approx(0.25)  # type: ignore[attr-defined]
    assert "slow: threshold 200.0 ms" in slow.getMessage()


def test_sample_rate_thins_routine_records_only(records: Records) -> None:
    random.seed(7)

    @monitor(sample_rate=0.25)
    def score(x: int) -> int:
        if x % 10 == 0:
            raise ArithmeticError(x)
        return x

    for x in range(1, 1001):
        try:
            score(x)
        except ArithmeticError:
            pass
    assert flush_monitoring()
    ok = [r for r in records if r.outcome == "ok"]  # type: ignore[attr-defined]
    errors = [r for r in records if r.outcome == "error"]  # type: ignore[attr-defined]
    assert len(errors) == 100  # every error is logged
    assert 150 <= len(ok) <= 300  # about a quarter of the 900 successes
    stats = score.monitor.stats()  # type: ignore[attr-defined]
    assert (stats.ok, stats.errors) == (900, 100)  # metrics count every call


def test_sample_rate_zero_logs_no_successes(records: Records) -> None:
    @monitor(sample_rate=0)
    def quiet() -> int:
        return 1

    for _ in range(50):
        quiet()
    assert flush_monitoring()
    assert len(records) == 0
    assert quiet.monitor.stats().ok == 50  # type: ignore[attr-defined]


def test_disabled_logger_queues_nothing_and_starts_no_thread() -> None:
    with capture(level=logging.WARNING) as records:

        @monitor
        def fine() -> int:
            return 1

        for _ in range(100):
            fine()
        assert flush_monitoring()
    assert len(records) == 0
    stats = monitoring_stats()
    assert (stats.exported, stats.dropped, stats.running) == (0, 0, False)
    assert fine.monitor.stats().ok == 100  # type: ignore[attr-defined]


def test_log_level_is_configurable() -> None:
    with capture(level=logging.INFO) as records:

        @monitor(log_level="debug")
        def chatty() -> None:
            pass

        @monitor(log_level=logging.WARNING)
        def loud() -> None:
            pass

        chatty()
        loud()
        assert flush_monitoring()
    assert [r.levelno for r in records] == [logging.WARNING]


def test_inputs_and_outputs_can_be_left_out(records: Records) -> None:
    @monitor(log_inputs=False, log_outputs=False)
    def secret(token: str) -> str:
        return token[::-1]

    secret("abc")
    assert flush_monitoring()
    assert records[0].inputs is None  # type: ignore[attr-defined]
    assert records[0].output is None  # type: ignore[attr-defined]


def test_redact_replaces_summaries(records: Records) -> None:
    def shape_only(array: np.ndarray) -> dict[str, object]:
        return {"shape": list(array.shape)}

    def broken(value: object) -> object:
        raise RuntimeError(f"leaks {value!r}")

    @monitor(redact={"user": "[redacted]", "image": shape_only, "extra": broken, "return": None})
    def classify(user: str, image: np.ndarray, extra: str = "") -> str:
        return "cat"

    classify("alice@example.com", np.zeros((2, 3)), extra="hidden")
    assert flush_monitoring()
    (record,) = records
    assert record.inputs == {  # type: ignore[attr-defined]
        "user": "[redacted]",
        "image": {"shape": [2, 3]},
        "extra": {"type": "str", "redact_failed": "RuntimeError"},
    }
    assert record.output is None  # type: ignore[attr-defined]
    assert "alice" not in repr(record.__dict__)
    assert "hidden" not in repr(record.__dict__)


def test_redact_must_name_parameters() -> None:
    with pytest.raises(ConfigurationError, match="'usr'"):

        @monitor(redact={"usr": "x"})
        def f(user: str) -> None:
            pass

    # **kwargs can receive any name: nothing to check then
    @monitor(redact={"anything": "x"})
    def g(**kwargs: object) -> None:
        pass


def test_request_context_is_captured(records: Records) -> None:
    @monitor
    def handle() -> None:
        pass

    with request_scope(request_id="r-1", tenant="acme"):
        handle()
        with request_scope(request_id="r-2"):
            handle()
    token = request_context.set({"request_id": "r-3"})
    try:
        handle()
    finally:
        request_context.reset(token)
    handle()
    assert flush_monitoring()
    assert [r.context for r in records] == [  # type: ignore[attr-defined]
        {"request_id": "r-1", "tenant": "acme"},
        {"request_id": "r-2", "tenant": "acme"},
        {"request_id": "r-3"},
        None,
    ]


@pytest.mark.anyio
async def test_request_context_is_per_task(records: Records) -> None:
    @monitor
    async def handle(n: int) -> int:
        await anyio.sleep(0.01 * (3 - n))
        return n

    async def request(n: int) -> None:
        with request_scope(request_id=f"req-{n}"):
            await handle(n)

    async with anyio.create_task_group() as group:
        for n in range(3):
            group.start_soon(request, n)
    await flush()
    pairs = {
        (r.inputs["n"]["type"], r.context["request_id"])  # type: ignore[attr-defined]
        for r in records
    }
    assert pairs == {("int", "req-0"), ("int", "req-1"), ("int", "req-2")}
    assert len(records) == 3


def test_labels_are_logged(records: Records) -> None:
    @monitor("rank", labels={"model": "bert-base"})
    def rank() -> None:
        pass

    rank()
    assert flush_monitoring()
    assert records[0].labels == {"model": "bert-base"}  # type: ignore[attr-defined]
    assert records[0].function == "rank"  # type: ignore[attr-defined]
    assert dict(rank.monitor.labels) == {"model": "bert-base"}  # type: ignore[attr-defined]


def test_call_ids_are_unique(records: Records) -> None:
    @monitor
    def f() -> None:
        pass

    for _ in range(200):
        f()
    assert flush_monitoring()
    assert len({r.call_id for r in records}) == 200  # type: ignore[attr-defined]


def test_counts_are_exact_across_threads() -> None:
    @monitor
    def work(x: int) -> int:
        return x

    def hammer() -> None:
        for x in range(2000):
            work(x)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = work.monitor.stats()  # type: ignore[attr-defined]
    assert (stats.calls, stats.ok, stats.in_flight) == (16_000, 16_000, 0)


def test_forms_of_the_decorator() -> None:
    @monitor
    def bare() -> int:
        return 1

    @monitor()
    def called() -> int:
        return 2

    @monitor("custom")
    def positional() -> int:
        return 3

    @monitor(name="named")
    def keyword() -> int:
        return 4

    assert (bare(), called(), positional(), keyword()) == (1, 2, 3, 4)
    assert bare.monitor.name.endswith("bare")  # type: ignore[attr-defined]
    assert positional.monitor.name == "custom"  # type: ignore[attr-defined]
    assert keyword.monitor.name == "named"  # type: ignore[attr-defined]
    assert "named" in repr(keyword.monitor)  # type: ignore[attr-defined]


def test_wrappers_are_honest() -> None:
    def plain(a: int, b: str = "x", *, c: float = 1.0) -> str:
        """Doc."""
        return b * a

    async def coroutine(a: int) -> int:
        return a

    wrapped, wrapped_async = monitor(plain), monitor(coroutine)
    assert inspect.signature(wrapped) == inspect.signature(plain)
    assert wrapped.__doc__ == "Doc."
    assert wrapped.__name__ == "plain"
    assert wrapped.__wrapped__ is plain  # type: ignore[attr-defined]
    assert not inspect.iscoroutinefunction(wrapped)
    assert inspect.iscoroutinefunction(wrapped_async)


def test_generators_are_refused() -> None:
    def numbers() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        monitor(numbers)


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({"name": ""}, "name"),
        ({"log_level": "LOUD"}, "log_level"),
        ({"log_level": 0}, "log_level"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"sample_rate": -0.1}, "sample_rate"),
        ({"slow_threshold": -1}, "slow_threshold"),
        ({"slow_threshold": "1s"}, "slow_threshold"),
        ({"track_output": 3}, "track_output"),
        ({"output_buckets": []}, "output_buckets"),
        ({"output_buckets": [1, 1]}, "output_buckets"),
        ({"output_buckets": [0, float("nan")]}, "output_buckets"),
        ({"redact": ["x"]}, "redact"),
        ({"labels": {"0bad": "x"}}, "labels"),
        ({"labels": {"__name": "x"}}, "labels"),
        ({"labels": {"function": "x"}}, "labels"),
        ({"labels": {"model": 3}}, "labels"),
        ({"labels": ["model"]}, "labels"),
    ],
)
def test_bad_settings_fail_at_decoration(options: dict[str, object], parameter: str) -> None:
    with pytest.raises(ConfigurationError, match=parameter):
        monitor(**options)  # type: ignore[call-overload]


def test_a_non_callable_non_name_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="name"):
        monitor(42)  # type: ignore[call-overload]


def test_start_time_is_utc_iso(records: Records) -> None:
    @monitor
    def f() -> None:
        pass

    f()
    assert flush_monitoring()
    parsed = datetime.fromisoformat(records[0].start_time)  # type: ignore[attr-defined]
    assert parsed.tzinfo is not None
    assert abs(parsed - datetime.now(timezone.utc)) < timedelta(minutes=1)
