"""The background exporter: bounded queue, drops, flush, atexit, slow handler isolation."""

from __future__ import annotations

import logging
import os
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from prometheus_client import CollectorRegistry

from _monitor_support import (
    MONITOR_LOGGER,
    Records,
    exporter_threads,
    fresh_monitoring,
    parse,
    value,
)
from buttress import (
    ConfigurationError,
    configure_monitoring,
    flush_monitoring,
    metrics,
    monitor,
    monitoring_stats,
)
from buttress._monitoring._emitter import THREAD_NAME, exporter

SRC = Path(__file__).resolve().parent.parent / "src"


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    with fresh_monitoring():
        yield


class GatedHandler(logging.Handler):
    """Blocks in emit() until released; tells when the first record arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.handled = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.entered.set()
        self.gate.wait(30)
        self.handled += 1


class SlowHandler(logging.Handler):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.handled = 0

    def emit(self, record: logging.LogRecord) -> None:
        time.sleep(self.delay)
        self.handled += 1


@pytest.fixture
def attach() -> Iterator[list[logging.Handler]]:
    added: list[logging.Handler] = []
    previous = MONITOR_LOGGER.level
    MONITOR_LOGGER.setLevel(logging.INFO)
    try:
        yield added
    finally:
        for handler in added:
            if isinstance(handler, GatedHandler):
                handler.gate.set()
        flush_monitoring()
        for handler in added:
            MONITOR_LOGGER.removeHandler(handler)
        MONITOR_LOGGER.setLevel(previous)


def add(attach: list[logging.Handler], handler: logging.Handler) -> None:
    MONITOR_LOGGER.addHandler(handler)
    attach.append(handler)


def test_a_full_queue_drops_and_counts_without_waiting(attach: list[logging.Handler]) -> None:
    configure_monitoring(queue_size=5)
    registry = CollectorRegistry()
    metrics.enable(registry)
    handler = GatedHandler()
    add(attach, handler)

    @monitor
    def call(i: int) -> int:
        return i

    call(0)
    assert handler.entered.wait(10)  # the exporter is now stuck in the handler
    start = time.monotonic()
    for i in range(1, 50):
        call(i)
    assert time.monotonic() - start < 2  # 49 calls against a stuck handler never wait
    stats = monitoring_stats()
    assert (stats.queued, stats.dropped, stats.queue_size) == (5, 44, 5)
    samples = parse(metrics.generate_latest(registry))
    assert value(samples, "buttress_monitor_dropped_total") == 44
    assert value(samples, "buttress_calls_total", function=call.monitor.name, outcome="ok") == 50  # type: ignore[attr-defined]

    handler.gate.set()
    assert flush_monitoring()
    assert handler.handled == 6
    assert monitoring_stats().exported == 6


def test_flush_waits_for_the_handlers(attach: list[logging.Handler]) -> None:
    handler = SlowHandler(0.05)
    add(attach, handler)

    @monitor
    def f() -> None:
        pass

    for _ in range(4):
        f()
    assert flush_monitoring()
    assert handler.handled == 4
    assert monitoring_stats().queued == 0


def test_flush_times_out_on_a_stuck_handler(attach: list[logging.Handler]) -> None:
    handler = GatedHandler()
    add(attach, handler)

    @monitor
    def f() -> None:
        pass

    f()
    assert handler.entered.wait(10)
    f()
    assert flush_monitoring(timeout=0.05) is False
    handler.gate.set()
    assert flush_monitoring(timeout=10) is True
    assert handler.handled == 2


def test_flush_inside_a_handler_does_not_deadlock(attach: list[logging.Handler]) -> None:
    results: list[bool] = []

    class Flushing(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            results.append(flush_monitoring(timeout=5))

    add(attach, Flushing())

    @monitor
    def f() -> None:
        pass

    f()
    f()
    assert flush_monitoring(timeout=10)
    assert results
    assert all(results)


def test_the_thread_starts_on_demand_and_stops(attach: list[logging.Handler]) -> None:
    records = Records()
    add(attach, records)

    @monitor
    def f() -> None:
        pass

    assert not exporter_threads()
    f()
    assert flush_monitoring()
    (thread,) = exporter_threads()
    assert thread.daemon
    assert thread.name == THREAD_NAME
    assert exporter.stop(timeout=10)
    assert not exporter_threads()
    f()  # a new one starts
    assert flush_monitoring()
    assert len(records) == 2
    assert len(exporter_threads()) == 1


def test_a_failing_filter_does_not_kill_the_exporter(
    attach: list[logging.Handler], caplog: pytest.LogCaptureFixture
) -> None:
    records = Records()
    add(attach, records)
    calls = 0

    def flaky(record: logging.LogRecord) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("filter bug")
        return True

    MONITOR_LOGGER.addFilter(flaky)
    try:

        @monitor
        def f() -> None:
            pass

        with caplog.at_level(logging.ERROR, logger="buttress.monitor.exporter"):
            f()
            f()
            assert flush_monitoring()
    finally:
        MONITOR_LOGGER.removeFilter(flaky)
    assert len(records.of(f.monitor.name)) == 1  # type: ignore[attr-defined]
    assert any("could not export" in r.getMessage() for r in caplog.records)


@pytest.mark.anyio
async def test_a_slow_handler_does_not_slow_an_async_endpoint(
    attach: list[logging.Handler],
) -> None:
    # 100 ms per record: inline logging would add 100 ms to every call (3 s in all).
    configure_monitoring(queue_size=5)
    handler = SlowHandler(0.1)
    add(attach, handler)

    @monitor
    async def endpoint(i: int) -> int:
        await anyio.sleep(0.01)
        return i

    lags: list[float] = []

    async def probe() -> None:
        while True:
            before = time.monotonic()
            await anyio.sleep(0.005)
            lags.append(time.monotonic() - before - 0.005)

    start = time.monotonic()
    async with anyio.create_task_group() as group:
        group.start_soon(probe)
        for i in range(30):
            assert await endpoint(i) == i
        group.cancel_scope.cancel()
    elapsed = time.monotonic() - start

    assert elapsed < 2.0  # about 0.3 s of real work; 3.3 s with the handler inline
    assert lags
    assert statistics.median(lags) < 0.05
    await anyio.to_thread.run_sync(flush_monitoring)
    stats = monitoring_stats()
    assert stats.dropped > 0  # the handler could not keep up: records were dropped
    assert handler.handled + stats.dropped == 30
    assert endpoint.monitor.stats().ok == 30  # type: ignore[attr-defined]


def _run(script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def test_atexit_drains_the_queue(tmp_path: Path) -> None:
    log = tmp_path / "records.jsonl"
    result = _run(
        f"""
        import logging, time
        from buttress import JsonFormatter, monitor

        class Slow(logging.FileHandler):
            def emit(self, record):
                time.sleep(0.02)
                super().emit(record)

        handler = Slow({str(log)!r})
        handler.setFormatter(JsonFormatter())
        logger = logging.getLogger("buttress.monitor")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)

        @monitor
        def job(i):
            return i

        for i in range(20):
            job(i)
        # no flush: the atexit hook must write all 20
        """
    )
    assert result.returncode == 0, result.stderr
    lines = log.read_text().splitlines()
    assert len(lines) == 20


def test_calls_after_the_atexit_hook_are_still_logged(tmp_path: Path) -> None:
    log = tmp_path / "records.log"
    result = _run(
        f"""
        import atexit, logging
        from buttress import monitor

        logger = logging.getLogger("buttress.monitor")
        logger.addHandler(logging.FileHandler({str(log)!r}))
        logger.setLevel(logging.INFO)

        @monitor
        def job(i):
            return i

        atexit.register(job, "late")  # registered first, so it runs after buttress' hook
        job("early")
        """
    )
    assert result.returncode == 0, result.stderr
    assert len(log.read_text().splitlines()) == 2


def test_atexit_gives_up_after_the_shutdown_timeout() -> None:
    start = time.monotonic()
    result = _run(
        """
        import logging, time
        from buttress import configure_monitoring, monitor

        class Stuck(logging.Handler):
            def emit(self, record):
                time.sleep(0.5)

        configure_monitoring(shutdown_timeout=0.2)
        logger = logging.getLogger("buttress.monitor")
        logger.addHandler(Stuck())
        logger.setLevel(logging.INFO)

        @monitor
        def job():
            pass

        for _ in range(100):   # 50 s of handler time
            job()
        """
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - start < 30


def test_configure_monitoring_validates() -> None:
    with pytest.raises(ConfigurationError, match="queue_size"):
        configure_monitoring(queue_size=0)
    with pytest.raises(ConfigurationError, match="interval"):
        configure_monitoring(interval=0)
    with pytest.raises(ConfigurationError, match="shutdown_timeout"):
        configure_monitoring(shutdown_timeout=-1)
    with pytest.raises(ConfigurationError, match="timeout"):
        flush_monitoring(timeout=-1)
