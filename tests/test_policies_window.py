"""Properties of the bucketed sliding window under the breaker and the retry budget."""

from __future__ import annotations

import math
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from buttress import circuit_breaker, testing
from buttress._policies._window import Window

steps = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=7, allow_nan=False),  # time passing first
        st.integers(min_value=0, max_value=2),  # which counter
    ),
    max_size=120,
)


@settings(max_examples=200, deadline=None)
@given(steps=steps, seconds=st.sampled_from([1.0, 3.0, 10.0, 30.0]))
def test_totals_equal_a_brute_force_count(steps: list[tuple[float, int]], seconds: float) -> None:
    window = Window(seconds, 3, buckets=10)
    now = 0.0
    log: list[tuple[int, int]] = []  # (slice number, counter)
    for gap, counter in steps:
        now += gap
        window.bucket(now)[counter] += 1
        window.totals[counter] += 1
        log.append((math.floor(now * (10 / seconds)), counter))
        # A count stays while its slice is one of the last ten, and no longer.
        current = math.floor(now * (10 / seconds))
        expected = [0, 0, 0]
        for slice_number, which in log:
            if current - slice_number < 10:
                expected[which] += 1
        assert window.totals == expected
    window.touch(now + seconds)
    assert window.totals == [0, 0, 0]


outcomes = st.lists(
    st.tuples(st.floats(min_value=0, max_value=4, allow_nan=False), st.booleans()),
    min_size=1,
    max_size=150,
)


@settings(max_examples=150, deadline=None)
@given(
    outcomes=outcomes,
    minimum=st.integers(min_value=1, max_value=12),
    ratio=st.sampled_from([0.1, 0.25, 0.5, 0.75, 1.0]),
)
def test_breaker_opens_exactly_when_the_window_crosses_the_ratio(
    outcomes: list[tuple[float, bool]], minimum: int, ratio: float
) -> None:
    window_seconds = 10.0
    with testing.testing_mode() as clock:

        @circuit_breaker(
            name=f"prop-{uuid.uuid4().hex}",
            minimum_calls=minimum,
            failure_ratio=ratio,
            window=window_seconds,
        )
        def call(fail: bool) -> None:
            if fail:
                raise ConnectionError

        log: list[tuple[int, bool]] = []
        for gap, fail in outcomes:
            clock.advance(gap)
            try:
                call(fail)
            except ConnectionError:
                pass
            now_slice = math.floor(clock.monotonic() * (10 / window_seconds))
            log.append((now_slice, fail))
            live = [failed for slice_number, failed in log if now_slice - slice_number < 10]
            failures = sum(live)
            should_open = len(live) >= minimum and failures > 0 and failures >= ratio * len(live)
            assert (call.breaker.state == "open") == should_open
            if should_open:
                break
