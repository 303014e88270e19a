"""Timing, tables and peer bookkeeping shared by every benchmark module.

A benchmark module ``bench_<topic>.py`` defines ``collect(quick: bool) -> list[Comparison]``
(``benchmarks/run.py`` finds it by its name). Each :class:`Comparison` holds rows measured
in the same process run: usually one ``bare`` row (the undecorated call), ``ours`` rows
(buttress), ``peer`` rows (other libraries, or what people write by hand in their place)
and ``floor`` rows (the least any implementation can cost). The table then shows, for
each row, its figure, the spread of its rounds and how it compares with the bare call,
the floor and the best peer. Every figure is the median of repeated rounds: use
:func:`time_sync` / :func:`time_async`, or :func:`median_of` for what a module measures
itself, so the rounds travel with the figure and the table can show their spread.

Lower is better for every unit used here (time, memory, lag).

Peers are optional: import them with :func:`optional_peer` (or call :func:`note_missing`
from an ``except ImportError`` branch), so that the run says which ones it could not
measure instead of silently leaving rows out. A module that cannot run at all on this
machine (no redis-server, say) raises :class:`Skip` with the reason.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import importlib.abc
import importlib.machinery
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

KINDS = ("bare", "ours", "peer", "floor")
MODES = ("overhead", "ratio")

#: Every peer the suite compares with: distribution name -> import name. The ``bench``
#: extra in pyproject.toml installs them all (a test checks it).
PEERS: dict[str, str] = {
    "tenacity": "tenacity",
    "stamina": "stamina",
    "backoff": "backoff",
    "async-lru": "async_lru",
    "cashews": "cashews",
    "aiocache": "aiocache",
    "asyncache": "asyncache",
    "cachetools": "cachetools",
    "pybreaker": "pybreaker",
    "aiobreaker": "aiobreaker",
    "purgatory": "purgatory",
    "aiolimiter": "aiolimiter",
    "limits": "limits",
    "pydantic": "pydantic",
    "prometheus-client": "prometheus_client",
    "beartype": "beartype",
    "jaxtyping": "jaxtyping",
    "redis": "redis",
    "async-batcher": "async_batcher",
}

#: Where ``run.py --without`` passes the peers to hide on to worker subprocesses.
WITHOUT_ENV = "BUTTRESS_BENCH_WITHOUT"


class Skip(Exception):
    """Raised by ``collect`` when the module cannot run on this machine; says why."""


# --- figures ----------------------------------------------------------------------------


class Timing(float):
    """The median of several rounds, which remembers the rounds it came from."""

    rounds: tuple[float, ...]

    def __new__(cls, rounds: Iterable[float]) -> Timing:
        values = tuple(float(value) for value in rounds)
        if not values:
            raise ValueError("a Timing needs at least one round")
        self = super().__new__(cls, statistics.median(values))
        self.rounds = values
        return self


def median_of(rounds: Iterable[float]) -> Timing:
    """The median of ``rounds``, carrying them so the table can show their spread."""
    return Timing(rounds)


def spread(rounds: Sequence[float]) -> float | None:
    """Median absolute deviation of the rounds, as a fraction of their median.

    ``None`` with fewer than three rounds: two rounds give no robust idea of the noise.
    """
    if len(rounds) < 3:
        return None
    middle = statistics.median(rounds)
    if middle == 0:
        return None
    return statistics.median(abs(value - middle) for value in rounds) / abs(middle)


# --- tables -----------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    value: float  # ns per call, or whatever ``Comparison.unit`` says
    kind: str = "peer"  # "bare", "ours", "peer" or "floor"
    note: str = ""
    rounds: tuple[float, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)  # more columns: name -> value

    @property
    def spread(self) -> float | None:
        return spread(self.rounds)

    @property
    def noise(self) -> float:
        """An absolute noise estimate for this row's figure (0 when unknown)."""
        relative = self.spread
        return 0.0 if relative is None else relative * abs(self.value)

    @property
    def label(self) -> str:
        name = f"**{self.name}**" if self.kind == "ours" else self.name
        return f"{name} ({self.note})" if self.note else name


@dataclass
class Comparison:
    """One table: rows measured side by side in one run.

    ``mode="overhead"`` (the default, for time per call and bytes per entry) subtracts
    the bare row: the table shows each row's overhead, its ratio to the bare figure, and
    its overhead as a multiple of the floor's and of the best peer's. ``mode="ratio"``
    (wall time of a stampede, event-loop lag) compares whole figures instead: the ratio
    to the bare row and to the best peer. ``columns`` names extra columns that rows fill
    through ``extra`` (call counts, peak memory).
    """

    title: str
    rows: list[Row] = field(default_factory=list)
    unit: str = "ns/call"
    note: str = ""
    mode: str = "overhead"
    columns: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    def add(
        self,
        name: str,
        value: float,
        kind: str = "peer",
        note: str = "",
        *,
        extra: Mapping[str, Any] | None = None,
    ) -> Row:
        """Add a row; a :class:`Timing` value brings its rounds along."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind == "bare" and self.bare is not None:
            raise ValueError(f"{self.title!r} already has a bare row")
        if not math.isfinite(value):
            raise ValueError(f"{self.title!r}: {name!r} measured {value!r}")
        rounds = getattr(value, "rounds", ())
        row = Row(name, float(value), kind, note, tuple(rounds), dict(extra or {}))
        for column in row.extra:
            if column not in self.columns:
                self.columns.append(column)
        self.rows.append(row)
        return row

    # -- what the table compares with --

    @property
    def bare(self) -> Row | None:
        return next((row for row in self.rows if row.kind == "bare"), None)

    @property
    def floor(self) -> Row | None:
        floors = [row for row in self.rows if row.kind == "floor"]
        return min(floors, key=lambda row: row.value) if floors else None

    @property
    def best_peer(self) -> Row | None:
        peers = [row for row in self.rows if row.kind == "peer"]
        return min(peers, key=lambda row: row.value) if peers else None

    def figures(self, row: Row) -> dict[str, float | None]:
        """The derived figures of ``row``: overhead and ratios (``None``: not meaningful).

        A ratio to an overhead is ``None`` when that overhead is within the noise of the
        bare call (not above twice their combined spread, or not positive), and ``0.0``
        when the row's own overhead is.
        """
        bare, floor, peer = self.bare, self.floor, self.best_peer
        found: dict[str, float | None] = {
            "overhead": None,
            "x_bare": None,
            "x_floor": None,
            "x_best_peer": None,
        }
        if bare is not None and row is not bare:
            found["x_bare"] = row.value / bare.value if bare.value > 0 else None
        if self.mode == "ratio" or bare is None:
            if peer is not None and peer.value > 0:
                found["x_best_peer"] = row.value / peer.value
            return found
        found["overhead"] = row.value - bare.value
        if row is bare:
            return found
        for key, reference in (("x_floor", floor), ("x_best_peer", peer)):
            if reference is None or (reference is row and key == "x_floor"):
                continue
            found[key] = self._overhead_ratio(row, reference, bare)
        return found

    @staticmethod
    def _overhead_ratio(row: Row, reference: Row, bare: Row) -> float | None:
        reference_overhead = reference.value - bare.value
        if reference_overhead <= max(2 * (reference.noise + bare.noise), 0.0):
            return None
        overhead = row.value - bare.value
        if overhead <= 2 * (row.noise + bare.noise) and row is not reference:
            return 0.0
        return overhead / reference_overhead

    # -- output --

    def to_json(self) -> dict[str, Any]:
        bare, floor, peer = self.bare, self.floor, self.best_peer
        return {
            "title": self.title,
            "unit": self.unit,
            "note": self.note,
            "mode": self.mode,
            "columns": list(self.columns),
            "bare": bare.name if bare else None,
            "floor": floor.name if floor else None,
            "best_peer": peer.name if peer else None,
            "rows": [
                {
                    "name": row.name,
                    "value": row.value,
                    "kind": row.kind,
                    "note": row.note,
                    "rounds": list(row.rounds),
                    "spread": row.spread,
                    "extra": row.extra,
                    **self.figures(row),
                }
                for row in self.rows
            ],
        }

    def markdown(self) -> str:
        bare, floor, peer = self.bare, self.floor, self.best_peer
        overhead = self.mode == "overhead" and bare is not None
        show_spread = any(row.spread is not None for row in self.rows)
        headers = ["implementation", self.unit]
        if show_spread:
            headers.append("±")
        headers += self.columns
        if overhead:
            headers += ["overhead", "x bare"]
            if floor is not None:
                headers.append("overhead x floor")
            if peer is not None:
                headers.append("overhead x best peer")
        else:
            if bare is not None:
                headers.append("x bare")
            if peer is not None:
                headers.append("x best peer")
        lines = [f"### {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|---|" + "---:|" * (len(headers) - 1))
        unknown_ratio = False
        for row in self.rows:
            figures = self.figures(row)
            cells = [row.label, number(row.value)]
            if show_spread:
                relative = row.spread
                cells.append("" if relative is None else f"±{relative * 100:.1f}%")
            cells += [_cell(row.extra.get(column, "")) for column in self.columns]
            if overhead:
                cells.append(number(figures["overhead"] or 0.0))
                cells.append("" if row is bare else ratio(figures["x_bare"]))
                keys = (["x_floor"] if floor is not None else []) + (
                    ["x_best_peer"] if peer is not None else []
                )
                for key in keys:
                    if row is bare or (key == "x_floor" and row is floor):
                        cells.append("")
                    elif figures[key] is None:
                        cells.append("—")
                        unknown_ratio = True
                    else:
                        cells.append(ratio(figures[key]))
            else:
                if bare is not None:
                    cells.append("" if row is bare else ratio(figures["x_bare"]))
                if peer is not None:
                    cells.append(ratio(figures["x_best_peer"]))
            lines.append("| " + " | ".join(cells) + " |")
        footnotes = []
        if peer is not None:
            if overhead and bare is not None:
                footnotes.append(
                    f"Best peer: {peer.name} (overhead {number(peer.value - bare.value)} "
                    f"{self.unit})."
                )
            else:
                footnotes.append(f"Best peer: {peer.name}.")
        elif any(row.kind == "ours" for row in self.rows):
            footnotes.append("No peer in this table: none installed or none does this.")
        if unknown_ratio:
            footnotes.append(
                "—: that overhead is within the noise of the bare call, so a ratio to it "
                "would mean nothing."
            )
        if footnotes:
            lines += ["", " ".join(footnotes)]
        return "\n".join(lines)


def number(value: float) -> str:
    """A figure with as many decimals as its size deserves."""
    size = abs(value)
    if size >= 10 or size == 0:
        return f"{value:,.0f}"
    if size >= 1:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(value: float | None) -> str:
    if value is None:
        return ""
    if value == 0:
        return "≈0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.2g}"


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return number(value)
    return str(value)


# --- timing -----------------------------------------------------------------------------

#: Rounds per figure, and how long one round should last, in full runs. When the rounds
#: disagree by more than NOISY (their spread), more are run, up to MAX_ROUNDS: a burst of
#: other work on the machine then disturbs a minority of them and the median stays put.
ROUNDS = 9
MAX_ROUNDS = 27
NOISY = 0.03
ROUND_SECONDS = 0.05
QUICK = (200, 2)  # calls per round, rounds


def _more(results: list[float], rounds: int) -> bool:
    """Whether to time another round."""
    if len(results) < rounds:
        return True
    if rounds < ROUNDS or len(results) >= MAX_ROUNDS:
        return False
    noise = spread(results)
    return noise is not None and noise > NOISY


def _calibration(quick: bool, number: int | None) -> Generator[int, float, tuple[int, int]]:
    """Yields how many calls to time next, is sent their seconds; returns (calls, rounds).

    ``number`` calls per round if given, else enough for ROUND_SECONDS. Calibrating also
    warms up (fills a cache, starts a background thread) before any round is timed.
    """
    if quick:
        calls, rounds = QUICK
        yield min(number or calls, 10)
        return number or calls, rounds
    if number is not None:
        yield min(number, 100)
        return number, ROUNDS
    calls = 1
    while True:
        elapsed = yield calls
        if elapsed >= ROUND_SECONDS / 10 or calls >= 10_000_000:
            break
        calls *= 4
    per_call = max(elapsed / calls, 1e-9)
    return max(100, min(10_000_000, int(ROUND_SECONDS / per_call))), ROUNDS


def time_sync(fn: Callable[[], object], *, quick: bool, number: int | None = None) -> Timing:
    """Median ns per call of ``fn()`` over several rounds (calibrated unless ``number``)."""

    def timed(calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return time.perf_counter() - start

    plan = _calibration(quick, number)
    try:
        calls = next(plan)
        while True:
            calls = plan.send(timed(calls))
    except StopIteration as done:
        calls, rounds = done.value
    results: list[float] = []
    while _more(results, rounds):
        gc.collect()
        start = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        results.append((time.perf_counter_ns() - start) / calls)
    return Timing(results)


def time_async(
    fn: Callable[[], Awaitable[object]], *, quick: bool, number: int | None = None
) -> Timing:
    """Median ns per ``await fn()``, calibrated and measured inside one asyncio event loop."""

    async def timed(calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            await fn()
        return time.perf_counter() - start

    async def measure() -> list[float]:
        plan = _calibration(quick, number)
        try:
            calls = next(plan)
            while True:
                calls = plan.send(await timed(calls))
        except StopIteration as done:
            calls, rounds = done.value
        results: list[float] = []
        while _more(results, rounds):
            gc.collect()
            start = time.perf_counter_ns()
            for _ in range(calls):
                await fn()
            results.append((time.perf_counter_ns() - start) / calls)
        return results

    return Timing(asyncio.run(measure()))


# --- peers ------------------------------------------------------------------------------

#: Peers a module wanted but could not import in this run: distribution names.
MISSING: set[str] = set()


def note_missing(distribution: str) -> None:
    """Record that a peer is not installed, so the run reports it."""
    MISSING.add(distribution)


def missing_from(error: ImportError) -> None:
    """Record the peer whose import raised ``error`` (from an ``except ImportError``)."""
    top = (error.name or "").split(".")[0]
    by_module = {module: distribution for distribution, module in PEERS.items()}
    note_missing(by_module.get(top, top.replace("_", "-") or str(error)))


def optional_peer(module: str, distribution: str | None = None) -> ModuleType | None:
    """Import a peer, or record it as missing and return ``None``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        note_missing(distribution or module.split(".")[0].replace("_", "-"))
        return None


class _Hide(importlib.abc.MetaPathFinder):
    """Makes chosen top-level packages unimportable, as if they were not installed."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.split(".")[0] in self.names:
            _note_module(fullname)
            raise ModuleNotFoundError(
                f"No module named {fullname!r} (hidden by --without)", name=fullname
            )
        return None


class _Recorder(importlib.abc.MetaPathFinder):
    """Last on sys.meta_path: sees only imports no other finder could satisfy, and notes
    the peers among them, so a module that swallows an ImportError is reported too."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        _note_module(fullname)
        return None


def _note_module(fullname: str) -> None:
    top = fullname.split(".")[0]
    for distribution, module in PEERS.items():
        if module == top:
            note_missing(distribution)


sys.meta_path.append(_Recorder())


def hide_peers(distributions: Iterable[str]) -> set[str]:
    """Make these peers unimportable here and in worker subprocesses; returns the names."""
    names = {name.strip() for name in distributions if name.strip()}
    if not names:
        return set()
    unknown = names - set(PEERS)
    if unknown:
        raise ValueError(f"not peers of this suite: {sorted(unknown)}; known: {sorted(PEERS)}")
    os.environ[WITHOUT_ENV] = ",".join(sorted(names))
    sys.meta_path.insert(0, _Hide({PEERS[name] for name in names}))
    return names


def hidden_peers() -> set[str]:
    return {name for name in os.environ.get(WITHOUT_ENV, "").split(",") if name}


if os.environ.get(WITHOUT_ENV):  # a worker subprocess of a run with --without
    sys.meta_path.insert(0, _Hide({PEERS[name] for name in hidden_peers() if name in PEERS}))


# --- isolation --------------------------------------------------------------------------


def in_subprocess(script: str | Path, *args: str, timeout: float = 600) -> dict[str, Any]:
    """Run ``python script args`` in a fresh interpreter and return the JSON it prints last.

    The child imports buttress from where this process did, so ``PYTHONPATH=src`` runs
    measure the working tree. It reports missing peers in its JSON (``"missing"``), which
    are added to this run's.
    """
    import buttress

    env = dict(os.environ)
    source = str(Path(buttress.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(
        [source, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    completed = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"{Path(script).name} {' '.join(args)} failed with exit code "
            f"{completed.returncode}:\n{completed.stderr[-4000:]}"
        )
    lines = [line for line in completed.stdout.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError(f"{Path(script).name} {' '.join(args)} printed nothing")
    result: dict[str, Any] = json.loads(lines[-1])
    for name in result.get("missing", ()):
        note_missing(name)
    return result
