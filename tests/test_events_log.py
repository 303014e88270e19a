"""The ``buttress.events`` logger: retries, give-ups, breakers, fallbacks, store failures."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from _monitor_support import Records, fresh_monitoring
from buttress import (
    CircuitOpenError,
    LocalStore,
    RetryScheduled,
    cache_result,
    circuit_breaker,
    events,
    fallback,
    flush_monitoring,
    retry,
)
from buttress._events import event_log
from buttress._monitoring._emitter import THREAD_NAME
from buttress.testing import FakeClock

EVENTS_LOGGER = logging.getLogger("buttress.events")


class Recording(Records):
    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        record.built_in = threading.current_thread().name  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    with fresh_monitoring():
        event_log.reset()
        yield
        event_log.reset()


@pytest.fixture
def logged() -> Iterator[Records]:
    handler = Recording()
    previous = EVENTS_LOGGER.level
    EVENTS_LOGGER.setLevel(logging.INFO)
    EVENTS_LOGGER.addHandler(handler)
    try:
        yield handler
    finally:
        EVENTS_LOGGER.removeHandler(handler)
        EVENTS_LOGGER.setLevel(previous)


def of(records: Records, event: str) -> list[logging.LogRecord]:
    return [r for r in records.records if getattr(r, "event", None) == event]


def test_retries_and_give_ups_are_logged(logged: Records, buttress_clock: FakeClock) -> None:
    @retry(max_retries=2, base_delay=0.1)
    def fetch() -> None:
        raise ConnectionError("upstream reset")

    with pytest.raises(ConnectionError):
        fetch()
    assert flush_monitoring()
    scheduled = of(logged, "RetryScheduled")
    assert [r.levelno for r in scheduled] == [logging.INFO, logging.INFO]
    assert [r.attempt for r in scheduled] == [1, 2]  # type: ignore[attr-defined]
    assert scheduled[0].error_type == "ConnectionError"  # type: ignore[attr-defined]
    assert "attempt 1 failed (ConnectionError: upstream reset)" in scheduled[0].getMessage()
    (gave_up,) = of(logged, "RetryGaveUp")
    assert gave_up.levelno == logging.WARNING
    assert gave_up.reason == "attempts"  # type: ignore[attr-defined]
    assert gave_up.function.endswith("fetch")  # type: ignore[attr-defined]
    # built off the caller's path, dated and threaded as the event
    assert {r.built_in for r in logged.records} == {THREAD_NAME}  # type: ignore[attr-defined]
    assert {r.threadName for r in logged.records} == {threading.current_thread().name}


def test_breaker_transitions_and_fallbacks_are_logged(
    logged: Records, buttress_clock: FakeClock
) -> None:
    @fallback(-1)
    @circuit_breaker(name="events-log-breaker", minimum_calls=2, failure_ratio=0.5, open_for=5)
    def call(fail: bool) -> int:
        if fail:
            raise ConnectionError("down")
        return 1

    assert call(True) == -1
    assert call(True) == -1  # opens the breaker
    assert call(False) == -1  # refused with CircuitOpenError: the fallback answers
    buttress_clock.advance(6)
    assert call(False) == 1  # half-open, then closed
    assert flush_monitoring()
    changes = of(logged, "CircuitStateChanged")
    assert [(r.old, r.new, r.levelname) for r in changes] == [  # type: ignore[attr-defined]
        ("closed", "open", "WARNING"),
        ("open", "half_open", "INFO"),
        ("half_open", "closed", "INFO"),
    ]
    assert changes[0].breaker == "events-log-breaker"  # type: ignore[attr-defined]
    fallbacks = of(logged, "FallbackUsed")
    assert len(fallbacks) == 3
    assert fallbacks[-1].error_type == "buttress.CircuitOpenError"  # type: ignore[attr-defined]
    assert issubclass(CircuitOpenError, ConnectionError)


class BrokenStore(LocalStore):
    def get(self, key):  # type: ignore[no-untyped-def]
        raise ConnectionError("store unreachable")


def test_a_storm_is_rate_limited_and_the_gap_reported(
    logged: Records, buttress_clock: FakeClock
) -> None:
    @fallback(0)
    def flaky() -> int:
        raise ValueError("no")

    for _ in range(12):
        flaky()
    assert flush_monitoring()
    assert len(of(logged, "FallbackUsed")) == event_log.burst == 5
    buttress_clock.advance(event_log.window)
    flaky()
    assert flush_monitoring()
    last = of(logged, "FallbackUsed")[-1]
    assert last.suppressed == 7  # type: ignore[attr-defined]
    assert "7 similar record(s) left out" in last.getMessage()


def test_nothing_is_built_when_the_logger_is_off(buttress_clock: FakeClock) -> None:
    built: list[object] = []
    EVENTS_LOGGER.setLevel(logging.CRITICAL)
    try:
        assert not events.notable()

        def on_retry(event: RetryScheduled) -> None:
            built.append(event)

        @retry(max_retries=1, base_delay=0.1)
        def fetch() -> None:
            raise ConnectionError("x")

        with pytest.raises(ConnectionError):
            fetch()
        assert flush_monitoring()
        assert built == []
    finally:
        EVENTS_LOGGER.setLevel(logging.NOTSET)
    assert events.notable()  # WARNING reaches the root logger by default


def test_warnings_pass_when_info_is_off(logged: Records, buttress_clock: FakeClock) -> None:
    EVENTS_LOGGER.setLevel(logging.WARNING)

    @retry(max_retries=1, base_delay=0.1)
    def fetch() -> None:
        raise ConnectionError("x")

    with pytest.raises(ConnectionError):
        fetch()
    assert flush_monitoring()
    assert [r.event for r in logged.records] == ["RetryGaveUp"]  # type: ignore[attr-defined]


def test_store_failures_are_logged(logged: Records) -> None:
    @cache_result(store=BrokenStore())
    def lookup(x: int) -> int:
        return x

    assert lookup(1) == 1
    assert flush_monitoring()
    (record,) = of(logged, "CacheStoreFailed")
    assert record.levelno == logging.WARNING
    assert record.error_message == "store unreachable"  # type: ignore[attr-defined]


def test_shared_state_lost_and_restored_are_logged(logged: Records) -> None:
    # A FleetStore whose Redis is not there: the limiter decides alone, and says so once.
    import socket

    from buttress import FleetStore, rate_limit
    from buttress._events import SharedStateRestored

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here
    store = FleetStore(f"redis://127.0.0.1:{port}/0", timeout=0.5)
    try:
        limited = rate_limit(100, store=store, name="events.log.quota")(lambda: 1)
        assert limited() == 1
        assert limited() == 1
        events.emit(
            SharedStateRestored(
                function="", kind="rate_limit", name="events.log.quota",
                address=store.address, lost_for=2.5,
            )
        )
        assert flush_monitoring()
    finally:
        store.close()
    (lost,) = of(logged, "SharedStateLost")
    assert lost.levelno == logging.WARNING
    assert lost.name == "buttress.events"
    assert lost.kind == "rate_limit"  # type: ignore[attr-defined]
    assert "events.log.quota" in lost.getMessage()
    assert "decides alone" in lost.getMessage()
    (restored,) = of(logged, "SharedStateRestored")
    assert restored.levelno == logging.INFO
    assert "after 2.5s" in restored.getMessage()
