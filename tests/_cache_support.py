"""Helpers for the @cache_result tests: counting accesses, and knowing when threads wait."""

from __future__ import annotations

import inspect
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from buttress import CacheAccess, CacheStats, cache_result, events

KINDS = ("hit", "miss", "join", "stale")


@contextmanager
def accesses(function: str) -> Iterator[list[CacheAccess]]:
    """Record the ``CacheAccess`` events of one function (by qualified name) in a list."""
    seen: list[CacheAccess] = []

    def record(event: CacheAccess) -> None:
        if event.function == function:
            seen.append(event)  # list.append is atomic: threads may report at once

    with events.subscribe(record, CacheAccess):
        yield seen


def calls_of(fn: Callable[..., Any]) -> tuple[Any, list[Any]]:
    """``fn`` under ``@cache_result(ttl=None)``, and the list of the calls that reached it."""
    calls: list[Any] = []

    def body(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return fn(*args, **kwargs)

    body.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
    body.__name__ = fn.__name__
    return cache_result(ttl=None)(body), calls


def by_kind(seen: Iterable[CacheAccess]) -> dict[str, int]:
    """How many accesses of each kind."""
    results = [event.result for event in seen]
    return {kind: results.count(kind) for kind in KINDS}


def counted(stats: CacheStats) -> dict[str, int]:
    """The four per-call counters of a stats snapshot, keyed like :func:`by_kind`."""
    return {"hit": stats.hits, "miss": stats.misses, "join": stats.joins, "stale": stats.stale}


def _waiting(thread: threading.Thread, frames: dict[int, object]) -> bool:
    frame = frames.get(thread.ident)  # type: ignore[arg-type]
    while frame is not None:
        code = frame.f_code  # type: ignore[attr-defined]
        if code.co_name == "wait" and code.co_filename == threading.__file__:
            return True
        frame = frame.f_back  # type: ignore[attr-defined]
    return False


def wait_until_blocked(
    threads: Iterable[threading.Thread], count: int, timeout: float = 30
) -> None:
    """Return once ``count`` of ``threads`` sit in a ``threading`` wait (an Event or a
    Condition): the leader on the test's gate, the others on the flight they joined.

    Looks at the threads' stacks rather than at the cache's counters, which say what a
    call's outcome was only once it has one.
    """
    threads = list(threads)
    deadline = time.monotonic() + timeout
    while True:
        frames = sys._current_frames()
        blocked = sum(_waiting(thread, frames) for thread in threads)
        if blocked >= count:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"only {blocked} of {count} threads are waiting")
        time.sleep(0.002)
