"""Properties of every schedule @retry can produce (hypothesis)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from buttress import RetryScheduled, retry
from buttress.testing import testing_mode

schedules = st.fixed_dictionaries(
    {
        "max_retries": st.integers(min_value=0, max_value=12),
        "base_delay": st.floats(min_value=0, max_value=5),
        "backoff_factor": st.floats(min_value=1, max_value=4),
        "extra_max_delay": st.floats(min_value=0, max_value=60),
        "jitter": st.sampled_from(["full", "equal", "decorrelated", None]),
        "deadline": st.none() | st.floats(min_value=0.01, max_value=100),
        "attempt_cost": st.floats(min_value=0, max_value=3),
        "retry_after": st.none() | st.floats(min_value=0, max_value=100),
    }
)


class Busy(Exception):
    def __init__(self, retry_after: float | None) -> None:
        super().__init__("busy")
        self.retry_after = retry_after


@settings(max_examples=300, deadline=None)
@given(schedules)
def test_schedule_properties(params: dict[str, Any]) -> None:
    max_delay = params["base_delay"] + params["extra_max_delay"]
    deadline = params["deadline"]
    details: list[RetryScheduled] = []
    calls = 0
    with testing_mode() as clock:

        def always_fails() -> None:
            nonlocal calls
            calls += 1
            clock.advance(params["attempt_cost"])
            raise Busy(params["retry_after"])

        wrapped = retry(
            max_retries=params["max_retries"],
            base_delay=params["base_delay"],
            backoff_factor=params["backoff_factor"],
            max_delay=max_delay,
            jitter=params["jitter"],
            deadline=deadline,
            on_retry=details.append,
        )(always_fails)
        try:
            wrapped()
        except Busy:
            pass
        else:  # pragma: no cover
            raise AssertionError("the last error must be re-raised")

    # Never more than 1 + max_retries attempts; one sleep between two attempts.
    assert 1 <= calls <= 1 + params["max_retries"]
    assert len(clock.sleeps) == calls - 1 == len(details)
    # Never a wait above max_delay, never a negative one.
    assert all(0 <= delay <= max_delay for delay in clock.sleeps)
    # Never sleeping up to or past the deadline.
    if deadline is not None:
        assert all(d.elapsed + d.delay < deadline for d in details)
    # Retry-After, when given, replaces the backoff (capped by max_delay).
    if params["retry_after"] is not None:
        assert all(delay == min(params["retry_after"], max_delay) for delay in clock.sleeps)
    # Without a deadline or a Retry-After, every retry is used.
    if deadline is None:
        assert calls == 1 + params["max_retries"]
