"""@retry on the success path (no error) beside tenacity, stamina and backoff.

The floor is a hand-written try/except loop around the same call: the least any retry
decorator can cost.
"""

from __future__ import annotations

import asyncio
import time

import buttress
from _harness import Comparison, missing_from, time_async, time_sync


def _hand_sync(fn):  # type: ignore[no-untyped-def]
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        for attempt in range(4):
            try:
                return fn(*args, **kwargs)
            except Exception:
                if attempt == 3:
                    raise
                time.sleep(0.1 * 2**attempt)
        return None

    return wrapper


def _hand_async(fn):  # type: ignore[no-untyped-def]
    async def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        for attempt in range(4):
            try:
                return await fn(*args, **kwargs)
            except Exception:
                if attempt == 3:
                    raise
                await asyncio.sleep(0.1 * 2**attempt)
        return None

    return wrapper


def _decorators() -> list[tuple[str, str, object]]:
    """(name, kind, decorator) for every implementation installed."""
    found: list[tuple[str, str, object]] = [
        ("hand-written try/except loop", "floor", None),
        ("buttress.retry", "ours", buttress.retry(max_retries=3)),
    ]
    try:
        import tenacity

        found.append(
            (
                "tenacity",
                "peer",
                tenacity.retry(
                    stop=tenacity.stop_after_attempt(4), wait=tenacity.wait_exponential_jitter()
                ),
            )
        )
    except ImportError as error:
        missing_from(error)
    try:
        import stamina

        found.append(("stamina", "peer", stamina.retry(on=Exception, attempts=4)))
    except ImportError as error:
        missing_from(error)
    try:
        import backoff

        found.append(
            ("backoff", "peer", backoff.on_exception(backoff.expo, Exception, max_tries=4))
        )
    except ImportError as error:
        missing_from(error)
    return found


def collect(quick: bool) -> list[Comparison]:
    def work(x: int) -> int:
        return x + 1

    async def awork(x: int) -> int:
        return x + 1

    sync = Comparison("retry, success path, sync function")
    asyn = Comparison("retry, success path, async function")
    sync.add("bare call", time_sync(lambda: work(1), quick=quick), "bare")
    asyn.add("bare await", time_async(lambda: awork(1), quick=quick), "bare")
    for name, kind, decorator in _decorators():
        if decorator is None:
            fs, fa = _hand_sync(work), _hand_async(awork)
        else:
            fs, fa = decorator(work), decorator(awork)  # type: ignore[operator]
        sync.add(name, time_sync(lambda fs=fs: fs(1), quick=quick), kind)
        asyn.add(name, time_async(lambda fa=fa: fa(1), quick=quick), kind)
    return [sync, asyn]
