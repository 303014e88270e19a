"""The event hook: typed records, subscriptions, and a hook that never breaks a call."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from buttress import CacheAccess, Event, RetryScheduled, events, retry
from buttress._events import EventBus
from buttress.testing import testing_mode


def test_inactive_without_subscribers() -> None:
    bus = EventBus()
    assert bus.active is False
    subscription = bus.subscribe(lambda event: None)
    assert bus.active is True
    subscription.cancel()
    subscription.cancel()  # twice is harmless
    assert bus.active is False


def test_events_are_frozen_records() -> None:
    event = CacheAccess(function="f", result="hit")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.result = "miss"  # type: ignore[misc]


def test_subscription_filters_by_kind_and_ends_with_its_block() -> None:
    bus = EventBus()
    everything: list[Event] = []
    cache_only: list[CacheAccess] = []
    bus.subscribe(everything.append)
    with bus.subscribe(cache_only.append, CacheAccess):
        bus.emit(CacheAccess(function="f", result="hit"))
        bus.emit(Event(function="g"))
    bus.emit(CacheAccess(function="f", result="miss"))
    assert [event.function for event in everything] == ["f", "g", "f"]
    assert cache_only == [CacheAccess(function="f", result="hit")]


def test_a_failing_subscriber_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    received: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("subscriber bug")

    bus.subscribe(broken)
    bus.subscribe(received.append)
    with caplog.at_level(logging.ERROR, logger="buttress.events"):
        bus.emit(Event(function="f"))
    assert received == [Event(function="f")]
    assert "subscriber" in caplog.text
    assert "subscriber bug" in caplog.text


def test_retry_reports_to_the_global_bus() -> None:
    calls = 0

    @retry(jitter=None, base_delay=0.5)
    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("once")
        return "ok"

    seen: list[RetryScheduled] = []
    with testing_mode(), events.subscribe(seen.append, RetryScheduled):
        assert flaky() == "ok"
    assert len(seen) == 1
    assert seen[0].function == "test_retry_reports_to_the_global_bus.<locals>.flaky"
    assert seen[0].delay == 0.5
    assert isinstance(seen[0].error, ConnectionError)
