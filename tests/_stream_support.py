"""Helpers shared by the tests/test_streams_*.py files (not a test module itself)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio


async def drain(
    stream: AsyncIterator[Any],
    into: list[Any] | None = None,
    *,
    pause: float = 0.0,
    each: Callable[[Any], object] | None = None,
) -> list[Any]:
    """Iterate ``stream`` to its end: items go to ``into``, ``each`` sees each one, and
    the reader sleeps ``pause`` seconds after each (a slow reader)."""
    items = [] if into is None else into
    async for item in stream:
        items.append(item)
        if each is not None:
            each(item)
        if pause:
            await anyio.sleep(pause)
    return items


def drain_sync(stream: Iterator[Any], into: list[Any] | None = None) -> list[Any]:
    """Iterate a plain ``stream`` to its end; items go to ``into``."""
    items = [] if into is None else into
    items.extend(stream)
    return items
