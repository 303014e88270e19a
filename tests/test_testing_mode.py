"""buttress.testing: the fake clock, the testing mode and its pytest fixture."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import anyio
import pytest

from buttress import _clock
from buttress.testing import FakeClock, testing_mode


def test_testing_mode_swaps_and_restores_the_clock() -> None:
    assert _clock.current() is _clock.REAL
    with testing_mode() as clock:
        assert _clock.current() is clock
        assert _clock.monotonic() == 0.0
        _clock.sleep(1.5)
        assert clock.sleeps == [1.5]
        assert _clock.monotonic() == 1.5
    assert _clock.current() is _clock.REAL
    assert _clock.monotonic is time.monotonic


def test_testing_mode_restores_after_an_error() -> None:
    with pytest.raises(RuntimeError), testing_mode():
        raise RuntimeError("boom")
    assert _clock.current() is _clock.REAL


def test_nesting_restores_the_outer_clock() -> None:
    with testing_mode() as outer:
        with testing_mode(FakeClock(start=100)) as inner:
            assert _clock.monotonic() == 100
            assert inner is not outer
        assert _clock.current() is outer


def test_advance_by_hand_and_without_auto_advance() -> None:
    clock = FakeClock(start=5, auto_advance=False)
    clock.sleep(3)
    assert clock.monotonic() == 5
    assert clock.advance(timedelta(seconds=2)) == 7
    assert clock.advance(0.5) == 7.5
    assert clock.sleeps == [3]
    assert "sleeps=1" in repr(clock)


def test_real_sleep_would_have_taken_an_hour() -> None:
    started = time.monotonic()
    with testing_mode() as clock:
        _clock.sleep(3600)
    assert clock.monotonic() == 3600
    assert time.monotonic() - started < 5


def test_fake_clock_is_thread_safe() -> None:
    clock = FakeClock()

    def sleeper() -> None:
        for _ in range(1000):
            clock.sleep(0.001)

    threads = [threading.Thread(target=sleeper) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(clock.sleeps) == 4000
    assert clock.monotonic() == pytest.approx(4.0)


@pytest.mark.anyio
async def test_async_sleep_is_instant_but_still_a_checkpoint() -> None:
    ran: list[str] = []
    with testing_mode() as clock:
        async with anyio.create_task_group() as group:

            async def other() -> None:
                ran.append("other")

            group.start_soon(other)
            # A sleep that never yielded would spin here forever without `other` running.
            sleeps = 0
            while not ran and sleeps < 100:
                await _clock.async_sleep(60)
                sleeps += 1
    assert ran == ["other"]
    assert clock.sleeps == [60] * sleeps


@pytest.mark.anyio
async def test_async_sleep_can_be_cancelled() -> None:
    with testing_mode():
        with anyio.CancelScope() as scope:
            scope.cancel()
            await _clock.async_sleep(10)
            pytest.fail("the sleep should have been cancelled")  # pragma: no cover
        assert scope.cancelled_caught


def test_fixture_installs_a_fake_clock(buttress_clock: FakeClock) -> None:
    assert _clock.current() is buttress_clock
    _clock.sleep(2)
    assert buttress_clock.sleeps == [2]
