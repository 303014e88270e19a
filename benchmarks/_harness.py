"""Timing and tables shared by every benchmark module.

A benchmark module ``bench_<topic>.py`` defines ``collect(quick: bool) -> list[Comparison]``.
Each :class:`Comparison` holds rows measured in the same process run, one of them the bare
call they all wrap, so the table can show each row's overhead and its ratio to the bare
call and to the best peer. Figures are medians of repeated rounds.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    name: str
    value: float  # ns per call, or whatever ``Comparison.unit`` says
    kind: str = "peer"  # "bare", "ours", "peer" or "floor"
    note: str = ""


@dataclass
class Comparison:
    title: str
    rows: list[Row] = field(default_factory=list)
    unit: str = "ns/call"
    note: str = ""

    def add(self, name: str, value: float, kind: str = "peer", note: str = "") -> None:
        self.rows.append(Row(name, value, kind, note))

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "unit": self.unit,
            "note": self.note,
            "rows": [row.__dict__ for row in self.rows],
        }

    def markdown(self) -> str:
        bare = next((row.value for row in self.rows if row.kind == "bare"), None)
        peers = [row for row in self.rows if row.kind in ("peer", "floor")]
        lines = [f"### {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        if bare is None:
            lines += [f"| implementation | {self.unit} |", "|---|---:|"]
            lines += [f"| {self._label(row)} | {row.value:,.0f} |" for row in self.rows]
            return "\n".join(lines)
        best_peer = min((row.value - bare for row in peers), default=None)
        lines += [
            f"| implementation | {self.unit} | overhead | x bare | overhead x best peer |",
            "|---|---:|---:|---:|---:|",
        ]
        for row in self.rows:
            overhead = row.value - bare
            vs_peer = (
                f"{overhead / best_peer:.2f}"
                if best_peer and best_peer > 0 and row.kind != "bare"
                else ""
            )
            lines.append(
                f"| {self._label(row)} | {row.value:,.0f} | {overhead:,.0f} | "
                f"{row.value / bare:.2f} | {vs_peer} |"
            )
        return "\n".join(lines)

    @staticmethod
    def _label(row: Row) -> str:
        name = f"**{row.name}**" if row.kind == "ours" else row.name
        return f"{name} ({row.note})" if row.note else name


def _rounds(quick: bool) -> tuple[int, int]:
    """(calls per round, rounds)."""
    return (200, 2) if quick else (20_000, 9)


def time_sync(fn: Callable[[], object], *, quick: bool, number: int | None = None) -> float:
    """Median ns per call of ``fn()`` over several rounds."""
    calls, rounds = _rounds(quick)
    calls = number or calls
    results = []
    for _ in range(rounds):
        gc.collect()
        start = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        results.append((time.perf_counter_ns() - start) / calls)
    return statistics.median(results)


def time_async(
    fn: Callable[[], Awaitable[object]], *, quick: bool, number: int | None = None
) -> float:
    """Median ns per ``await fn()``, measured inside one asyncio event loop."""
    calls, rounds = _rounds(quick)
    calls = number or calls

    async def measure() -> list[float]:
        results = []
        for _ in range(rounds):
            gc.collect()
            start = time.perf_counter_ns()
            for _ in range(calls):
                await fn()
            results.append((time.perf_counter_ns() - start) / calls)
        return results

    return statistics.median(asyncio.run(measure()))
