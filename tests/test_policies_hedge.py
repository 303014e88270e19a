"""@hedge: a second attempt after a delay; the first success wins, the losers are cancelled."""

from __future__ import annotations

import contextvars
import inspect
from typing import Any

import anyio
import pytest

from buttress import ConfigurationError, HedgeStarted, HedgeStats, events, hedge, testing
from buttress.testing import FakeClock

LONG = 30.0  # an attempt that would hang the test if it were waited for


class Attempts:
    """Scripted attempts: each call takes the next (delay, outcome) and records its fate."""

    def __init__(self, *script: tuple[float, Any]) -> None:
        self.script = list(script)
        self.fates: list[str] = []

    async def __call__(self, query: str) -> str:
        number = len(self.fates) + 1
        delay, outcome = self.script.pop(0)
        self.fates.append("running")
        try:
            await anyio.sleep(delay)
        except BaseException:
            self.fates[number - 1] = "cancelled"
            raise
        if isinstance(outcome, BaseException):
            self.fates[number - 1] = "failed"
            raise outcome
        self.fates[number - 1] = "won"
        return f"{outcome}:{query}"


@pytest.mark.anyio
async def test_a_hedge_wins_when_the_first_attempt_is_slow() -> None:
    attempts = Attempts((LONG, "first"), (0.0, "second"))
    seen: list[Any] = []
    search = hedge(0.05)(attempts)
    with events.subscribe(seen.append, HedgeStarted):
        start = anyio.current_time()
        assert await search("q") == "second:q"
    assert anyio.current_time() - start < LONG / 2
    assert attempts.fates == ["cancelled", "won"]
    assert [event.attempt for event in seen] == [2]
    stats = search.hedge.stats()
    assert isinstance(stats, HedgeStats)
    assert (stats.calls, stats.hedged_calls, stats.hedges, stats.hedge_wins) == (1, 1, 1, 1)


@pytest.mark.anyio
async def test_no_hedge_when_the_first_answers_in_time() -> None:
    attempts = Attempts((0.0, "first"))
    search = hedge(LONG)(attempts)
    assert await search("q") == "first:q"
    assert attempts.fates == ["won"]
    assert search.hedge.stats().hedges == 0


@pytest.mark.anyio
async def test_the_first_attempt_can_still_win_after_a_hedge_started() -> None:
    attempts = Attempts((0.1, "first"), (LONG, "second"))
    search = hedge(0.02)(attempts)
    assert await search("q") == "first:q"
    assert attempts.fates == ["won", "cancelled"]
    stats = search.hedge.stats()
    assert (stats.hedges, stats.hedge_wins) == (1, 0)


@pytest.mark.anyio
async def test_a_failed_attempt_starts_the_next_hedge_at_once() -> None:
    attempts = Attempts((0.0, ConnectionError("replica down")), (0.0, "second"))
    search = hedge(LONG)(attempts)
    start = anyio.current_time()
    assert await search("q") == "second:q"
    assert anyio.current_time() - start < LONG / 2
    assert attempts.fates == ["failed", "won"]


@pytest.mark.anyio
async def test_a_failure_does_not_end_the_call_while_others_run() -> None:
    attempts = Attempts((0.2, "first"), (0.0, ConnectionError("hedge failed")))
    search = hedge(0.02)(attempts)
    assert await search("q") == "first:q"
    assert attempts.fates == ["won", "failed"]


@pytest.mark.anyio
async def test_when_every_attempt_fails_the_last_error_is_raised() -> None:
    attempts = Attempts(
        (0.0, ConnectionError("one")), (0.0, ConnectionError("two")), (0.0, KeyError("three"))
    )
    search = hedge(LONG, max_hedges=2)(attempts)
    with pytest.raises(KeyError, match="three"):
        await search("q")
    assert attempts.fates == ["failed", "failed", "failed"]


@pytest.mark.anyio
async def test_several_hedges_start_one_delay_apart() -> None:
    attempts = Attempts((LONG, "first"), (LONG, "second"), (0.0, "third"))
    seen: list[Any] = []
    search = hedge(0.02, max_hedges=2)(attempts)
    with events.subscribe(seen.append, HedgeStarted):
        assert await search("q") == "third:q"
    assert attempts.fates == ["cancelled", "cancelled", "won"]
    assert [event.attempt for event in seen] == [2, 3]


@pytest.mark.anyio
async def test_cancelling_the_caller_cancels_every_attempt() -> None:
    attempts = Attempts((LONG, "first"), (LONG, "second"))
    search = hedge(0.01)(attempts)
    with anyio.move_on_after(0.1) as scope:
        await search("q")
    assert scope.cancelled_caught
    assert attempts.fates == ["cancelled", "cancelled"]


@pytest.mark.anyio
async def test_a_caller_cancelled_after_its_first_attempt_failed_cancels_the_hedge() -> None:
    attempts = Attempts((0.0, ConnectionError("down")), (LONG, "second"))
    search = hedge(LONG)(attempts)
    with anyio.move_on_after(0.1) as scope:
        await search("q")
    assert scope.cancelled_caught
    assert attempts.fates == ["failed", "cancelled"]


@pytest.mark.anyio
async def test_a_caller_cancelled_before_the_delay_starts_no_hedge() -> None:
    attempts = Attempts((LONG, "first"), (0.0, "second"))
    seen: list[Any] = []
    search = hedge(0.05)(attempts)
    with events.subscribe(seen.append, HedgeStarted):
        with anyio.move_on_after(0.01):
            await search("q")
        await anyio.sleep(0.1)  # past the delay: no hedge may start now
    assert attempts.fates == ["cancelled"]
    assert seen == []


@pytest.mark.anyio
async def test_a_winning_hedge_waits_for_the_first_attempts_shield() -> None:
    steps: list[str] = []

    async def write(query: str) -> str:
        steps.append("started")
        if len(steps) == 1:  # the first attempt: a shielded part outlives the delay
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.1)
                steps.append("shielded part done")
            await anyio.sleep(LONG)
        return f"hedge:{query}"

    assert await hedge(0.01)(write)("q") == "hedge:q"
    assert steps == ["started", "started", "shielded part done"]


@pytest.mark.anyio
async def test_the_hedges_see_the_callers_context() -> None:
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
    seen: list[str] = []

    async def lookup(query: str) -> str:
        seen.append(request_id.get())
        if len(seen) == 1:
            await anyio.sleep(LONG)
        return query

    request_id.set("r-1")
    assert await hedge(0.01)(lookup)("q") == "q"
    assert seen == ["r-1", "r-1"]


@pytest.mark.anyio
async def test_percentile_delay_warms_up_then_follows_latency() -> None:
    with testing.testing_mode(FakeClock(auto_advance=False)) as clock:
        latencies = iter(range(1, 1000))

        @hedge("p50")
        async def infer() -> str:
            clock.advance(next(latencies))  # this attempt "took" 1 s, 2 s, ...
            return "ok"

        assert infer.hedge.stats().delay is None
        for _ in range(19):
            await infer()
        assert infer.hedge.stats().delay is None  # 19 latencies: still warming up
        await infer()
        stats = infer.hedge.stats()
        assert stats.delay == 10  # the median of 1..20 (nearest rank)
        assert stats.samples == 20
        for _ in range(16):  # latencies 21..36: recomputed after sixteen new ones
            await infer()
        assert infer.hedge.stats().delay == 18  # the median of 1..36
        assert infer.hedge.stats().hedges == 0  # nothing was slow enough to hedge


def test_plain_functions_are_refused() -> None:
    with pytest.raises(TypeError, match="coroutine function"):

        @hedge(0.1)
        def blocking() -> None: ...


def test_wrapper_stays_a_coroutine_function() -> None:
    @hedge(0.1)
    async def search(q: str) -> str:
        return q

    assert inspect.iscoroutinefunction(search)
    assert "p95" not in repr(search.hedge)
    assert "p95" in repr(hedge("p95")(search).hedge)


@pytest.mark.parametrize(
    ("delay", "kwargs", "word"),
    [
        ("p0", {}, "percentile"),
        ("p100", {}, "percentile"),
        ("95", {}, "percentile"),
        ("fast", {}, "percentile"),
        (-1, {}, "delay"),
        (0.1, {"max_hedges": 0}, "max_hedges"),
    ],
)
def test_settings_are_checked(delay: Any, kwargs: dict[str, Any], word: str) -> None:
    with pytest.raises(ConfigurationError, match=word):
        hedge(delay, **kwargs)


class _TrioVirtualClock:
    """buttress's clock read from trio's (virtual) clock, so latencies are exact."""

    @staticmethod
    def monotonic() -> float:
        import trio

        return trio.current_time()

    @staticmethod
    def sleep(seconds: float) -> None:  # pragma: no cover - no sync sleeps here
        raise AssertionError("not used")

    @staticmethod
    async def async_sleep(seconds: float) -> None:  # pragma: no cover
        await anyio.sleep(seconds)


@pytest.mark.parametrize(("label", "quantile"), [("p50", 0.5), ("p90", 0.9)])
def test_percentile_delay_learns_the_first_attempt_latency(label: str, quantile: float) -> None:
    """Latencies uniform in [10, 100] ms: the learned delay is near the true percentile.

    Only first attempts are sampled; one cut short by a winning hedge is a censored
    sample. Recording winners' latencies instead biases the delay low and hedges more
    often than the percentile says.
    """
    import random

    import trio
    import trio.testing

    from buttress import _clock

    rng = random.Random(1)

    @hedge(label)
    async def call() -> int:
        await trio.sleep(rng.uniform(0.010, 0.100))
        return 1

    async def main() -> None:
        for _ in range(2000):
            await call()

    previous = _clock.install(_TrioVirtualClock())
    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        _clock.install(previous)
    stats = call.hedge.stats()
    true_delay = 0.010 + quantile * 0.090
    assert stats.delay is not None
    assert abs(stats.delay - true_delay) < 0.012, stats
    assert abs(stats.hedged_calls / stats.calls - (1 - quantile)) < 0.08, stats
