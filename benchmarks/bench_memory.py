"""@memory_guard on the admitted path beside a bare call and a hand-written psutil check.

No peer library guards calls by memory, so the comparison is with what people write by
hand: ``psutil.virtual_memory()`` on every call (which, in a container, also reads the
wrong limit). ``sample_interval=0`` shows what the guard would cost if it read memory on
every call instead of reusing a reading.
"""

from __future__ import annotations

import psutil

import buttress
from _harness import Comparison, time_async, time_sync


def _psutil_sync(fn):  # type: ignore[no-untyped-def]
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        if psutil.virtual_memory().percent > 85.0:
            raise MemoryError("memory over 85%")
        return fn(*args, **kwargs)

    return wrapper


def _psutil_async(fn):  # type: ignore[no-untyped-def]
    async def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        if psutil.virtual_memory().percent > 85.0:
            raise MemoryError("memory over 85%")
        return await fn(*args, **kwargs)

    return wrapper


def collect(quick: bool) -> list[Comparison]:
    def work(x: int) -> int:
        return x + 1

    async def awork(x: int) -> int:
        return x + 1

    # (name, kind, decorator, note, calls per round: fewer for the slow rows)
    rows = [
        ("buttress.memory_guard", "ours", buttress.memory_guard(), "reading reused 50 ms", None),
        (
            "buttress.memory_guard",
            "ours",
            buttress.memory_guard(reserve="1MiB"),
            "with reserve=",
            None,
        ),
        (
            "buttress.memory_guard",
            "ours",
            buttress.memory_guard(sample_interval=0),
            "sample_interval=0: reads every call",
            None if quick else 2_000,
        ),
        (
            "psutil.virtual_memory() every call",
            "peer",
            None,
            "hand-written",
            None if quick else 2_000,
        ),
    ]
    source = buttress.memory_snapshot().source
    note = f"Memory read from: {source} (this machine)."
    sync = Comparison("memory_guard, admitted call, sync function", note=note)
    asyn = Comparison("memory_guard, admitted call, async function", note=note)
    sync.add("bare call", time_sync(lambda: work(1), quick=quick), "bare")
    asyn.add("bare await", time_async(lambda: awork(1), quick=quick), "bare")
    for name, kind, decorator, row_note, number in rows:
        if decorator is None:
            fs, fa = _psutil_sync(work), _psutil_async(awork)
        else:
            fs, fa = decorator(work), decorator(awork)
        sync.add(name, time_sync(lambda fs=fs: fs(1), quick=quick, number=number), kind, row_note)
        asyn.add(name, time_async(lambda fa=fa: fa(1), quick=quick, number=number), kind, row_note)
    return [sync, asyn]
