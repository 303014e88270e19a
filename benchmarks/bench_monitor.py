"""@monitor's per-call overhead beside hand-written prometheus-client instrumentation,
and the event-loop lag a slow log handler causes with and without the queue.

The peer is what one writes by hand with prometheus-client: a Counter child and a
Histogram child bound once (``.labels(...)`` outside the call), the call timed with
``perf_counter`` and both observed after it; each observation takes prometheus-client's
locks. prometheus-client's own decorators (``Histogram.time()``,
``Counter.count_exceptions()``) are shown too; on an ``async def`` they time only the
creation of the coroutine, not its run.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import buttress
from _harness import Comparison, median_of, missing_from, time_async, time_sync
from buttress import metrics

LOGGER = logging.getLogger("buttress.monitor")


class _Quiet:
    """Route buttress.monitor records to a handler that does nothing, at ``level``."""

    def __init__(self, level: int, handler: logging.Handler | None = None) -> None:
        self.level = level
        self.handler = handler or logging.NullHandler()

    def __enter__(self) -> None:
        self.saved = (LOGGER.level, LOGGER.propagate)
        LOGGER.setLevel(self.level)
        LOGGER.propagate = False
        LOGGER.addHandler(self.handler)

    def __exit__(self, *exc: object) -> None:
        LOGGER.removeHandler(self.handler)
        LOGGER.setLevel(self.saved[0])
        LOGGER.propagate = self.saved[1]


def _prometheus_peers(registry: Any) -> list[tuple[str, Callable[..., Any], Callable[..., Any]]]:
    """(name, sync decorator, async decorator) built with prometheus-client."""
    try:
        from prometheus_client import Counter, Histogram
    except ImportError as error:
        missing_from(error)
        return []
    calls = Counter("hand_calls", "calls", ["function", "outcome"], registry=registry)
    duration = Histogram("hand_duration_seconds", "duration", ["function"], registry=registry)
    ok, failed = calls.labels("work", "ok"), calls.labels("work", "error")
    timed = duration.labels("work")

    def hand_sync(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            except Exception:
                timed.observe(time.perf_counter() - start)
                failed.inc()
                raise
            timed.observe(time.perf_counter() - start)
            ok.inc()
            return result

        return wrapper

    def hand_async(fn: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                result = await fn(*args, **kwargs)
            except Exception:
                timed.observe(time.perf_counter() - start)
                failed.inc()
                raise
            timed.observe(time.perf_counter() - start)
            ok.inc()
            return result

        return wrapper

    def decorators(fn: Callable[..., Any]) -> Callable[..., Any]:
        return failed.count_exceptions()(timed.time()(fn))  # type: ignore[no-any-return]

    return [
        (
            "hand-written prometheus-client (bound Counter + Histogram children)",
            hand_sync,
            hand_async,
        ),
        (
            "prometheus-client decorators (Histogram.time, Counter.count_exceptions)",
            decorators,
            decorators,
        ),
    ]


def _drained(
    fn: Callable[[], object], *, quick: bool, clock: Callable[[], int] = time.perf_counter_ns
) -> float:
    """ns per call of ``fn()`` on ``clock``, including the exporter thread's work to drain
    the queue."""
    calls, rounds = (200, 2) if quick else (20_000, 5)
    buttress.configure_monitoring(queue_size=calls * 2)
    results = []
    for _ in range(rounds):
        buttress.flush_monitoring()
        start = clock()
        for _ in range(calls):
            fn()
        buttress.flush_monitoring()
        results.append((clock() - start) / calls)
    buttress.configure_monitoring(queue_size=10_000)
    return median_of(results)


def _cpu(fn: Callable[[], object], *, quick: bool) -> float:
    """CPU ns per call of ``fn()``, every thread of the process counted (the exporter's
    work to build and handle the records included), median of several rounds."""
    return _drained(fn, quick=quick, clock=time.process_time_ns)


def _overhead(quick: bool) -> list[Comparison]:
    from prometheus_client import CollectorRegistry

    def work(x: int) -> int:
        return x + 1

    async def awork(x: int) -> int:
        return x + 1

    cpu = Comparison(
        "monitor, every call logged: total CPU per call",
        unit="ns CPU/call",
        note=(
            "Process CPU time (every thread: the exporter thread's building and handling "
            "of each record included) per call, records to a NullHandler, rounds of "
            "calls then a flush; the inline logger.info row is the target."
        ),
    )
    sync = Comparison(
        "monitor, per-call overhead, sync function",
        note="Metrics on in every buttress row; records go to a NullHandler through the queue.",
    )
    asyn = Comparison("monitor, per-call overhead, async function")
    sync.add("bare call", time_sync(lambda: work(1), quick=quick), "bare")
    asyn.add("bare await", time_async(lambda: awork(1), quick=quick), "bare")
    for name, deco_sync, deco_async in _prometheus_peers(CollectorRegistry()):
        fs, fa = deco_sync(work), deco_async(awork)
        sync.add(name, time_sync(lambda fs=fs: fs(1), quick=quick), "peer")
        note = "times coroutine creation only" if "decorators" in name else ""
        asyn.add(name, time_async(lambda fa=fa: fa(1), quick=quick), "peer", note)

    metrics.enable(CollectorRegistry())
    try:
        plain = buttress.monitor("bench_plain")(work)
        aplain = buttress.monitor("bench_aplain")(awork)
        with _Quiet(logging.WARNING):
            sync.add(
                "buttress.monitor, metrics only (logger below INFO)",
                time_sync(lambda: plain(1), quick=quick),
                "ours",
            )
            asyn.add(
                "buttress.monitor, metrics only (logger below INFO)",
                time_async(lambda: aplain(1), quick=quick),
                "ours",
            )
        sampled = buttress.monitor("bench_sampled", sample_rate=0.01)(work)
        asampled = buttress.monitor("bench_asampled", sample_rate=0.01)(awork)
        with _Quiet(logging.INFO):
            for _ in range(1000):  # start the exporter thread before timing
                sampled(1)
            buttress.flush_monitoring()
            sync.add(
                "buttress.monitor, metrics + 1% of calls logged (queued)",
                time_sync(lambda: sampled(1), quick=quick),
                "ours",
            )
            asyn.add(
                "buttress.monitor, metrics + 1% of calls logged (queued)",
                time_async(lambda: asampled(1), quick=quick),
                "ours",
            )
            reference = logging.getLogger("bench.reference")
            reference.addHandler(logging.NullHandler())
            reference.propagate = False
            reference.setLevel(logging.INFO)

            def logged(x: int) -> int:
                start = time.perf_counter()
                result = work(x)
                reference.info(
                    "work ok", extra={"duration": time.perf_counter() - start, "x": x}
                )
                return result

            sync.add(
                "stdlib logger.info(extra=...) inline, no metrics",
                time_sync(lambda: logged(1), quick=quick),
                "peer",
                "reference: what one log record costs",
            )
            sync.add(
                "buttress.monitor, every call logged",
                _drained(lambda: plain(1), quick=quick),
                "ours",
                "incl. the exporter thread building and handling each record",
            )
            # Side by side, interleaved, in CPU time: the target of issue 18.
            bare_cpu, inline_cpu, monitor_cpu = [], [], []
            for _ in range(1 if quick else 3):
                bare_cpu.append(_cpu(lambda: work(1), quick=quick))
                inline_cpu.append(_cpu(lambda: logged(1), quick=quick))
                monitor_cpu.append(_cpu(lambda: plain(1), quick=quick))
            cpu.add("bare call", median_of(bare_cpu), "bare")
            cpu.add(
                "stdlib logger.info(extra=...) inline, no metrics",
                median_of(inline_cpu),
                "peer",
                "the record built on the caller's thread",
            )
            cpu.add(
                "buttress.monitor, every call logged, metrics on",
                median_of(monitor_cpu),
                "ours",
                "the record built in the exporter thread",
            )
    finally:
        buttress.flush_monitoring()
        metrics.disable()
    return [sync, asyn, cpu]


class _SlowHandler(logging.Handler):
    """A log handler that takes 100 ms per record (a remote log service having a bad day)."""

    def emit(self, record: logging.LogRecord) -> None:
        time.sleep(0.1)


def _lag(quick: bool) -> Comparison:
    requests = 5 if quick else 20
    comparison = Comparison(
        "event-loop lag with a 100 ms-per-record log handler",
        unit="ms max lag",
        mode="ratio",
        note=(
            f"An asyncio loop serves {requests} requests (each awaits 10 ms) while a probe "
            "task measures how late its 5 ms sleeps wake up; the figure is the largest "
            f"lateness of a run, median of {1 if quick else 3} runs."
        ),
    )
    inline_logger = logging.getLogger("bench.inline")

    async def endpoint_plain(i: int) -> int:
        await asyncio.sleep(0.01)
        return i

    async def endpoint_inline(i: int) -> int:
        await asyncio.sleep(0.01)
        inline_logger.info("endpoint ok", extra={"i": i})
        return i

    endpoint_monitored = buttress.monitor("bench_lag_endpoint")(endpoint_plain)

    async def measure(endpoint: Callable[[int], Any]) -> tuple[float, float]:
        lags: list[float] = []

        async def probe() -> None:
            while True:
                before = time.perf_counter()
                await asyncio.sleep(0.005)
                lags.append(time.perf_counter() - before - 0.005)

        task = asyncio.create_task(probe())
        start = time.perf_counter()
        for i in range(requests):
            await endpoint(i)
        elapsed = time.perf_counter() - start
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return max(lags, default=0.0) * 1000, elapsed

    def repeat(endpoint: Callable[[int], Any], between: Callable[[], None] = lambda: None) -> None:
        lags, times = [], []
        for _ in range(rounds):
            lag, elapsed = asyncio.run(measure(endpoint))
            between()
            lags.append(lag)
            times.append(elapsed)
        found.append((median_of(lags), statistics.median(times)))

    rounds = 1 if quick else 3
    found: list[tuple[float, float]] = []
    repeat(endpoint_plain)
    slow = _SlowHandler()
    inline_logger.addHandler(slow)
    inline_logger.setLevel(logging.INFO)
    inline_logger.propagate = False
    try:
        repeat(endpoint_inline)
    finally:
        inline_logger.removeHandler(slow)
    quiet = _Quiet(logging.INFO, _SlowHandler())

    def drain() -> None:
        LOGGER.removeHandler(quiet.handler)  # let the queue drain without the 100 ms each
        buttress.flush_monitoring()
        LOGGER.addHandler(quiet.handler)

    with quiet:
        repeat(endpoint_monitored, drain)
    names = [
        ("no logging", "floor"),
        ("logger.info() inline with the slow handler", "peer"),
        ("buttress.monitor (records queued to the exporter thread)", "ours"),
    ]
    for (name, kind), (lag, elapsed) in zip(names, found, strict=True):
        comparison.add(name, lag, kind, f"{requests} requests in {elapsed:.2f}s")
    return comparison


def collect(quick: bool) -> list[Comparison]:
    try:
        import prometheus_client  # noqa: F401
    except ImportError as error:
        missing_from(error)
        return [_lag(quick)]
    return [*_overhead(quick), _lag(quick)]
