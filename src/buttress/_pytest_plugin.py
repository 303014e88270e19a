"""pytest plugin, registered through the ``pytest11`` entry point when buttress is installed.

Provides the ``buttress_clock`` fixture: the test runs in :func:`buttress.testing.testing_mode`
and receives its :class:`~buttress.testing.FakeClock`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .testing import FakeClock, testing_mode


@pytest.fixture
def buttress_clock() -> Iterator[FakeClock]:
    """A fake clock for one test: sleeps return at once and are recorded in ``.sleeps``."""
    with testing_mode() as clock:
        yield clock
