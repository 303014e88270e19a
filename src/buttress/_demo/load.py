"""The load generator: one seeded plan of traffic, sent to several gateways at once.

The plan is open-loop, like real users: each request has a send time fixed in advance, so
a slow gateway does not get fewer requests, only slower ones. Texts follow a Zipf law over
a fixed set (a few are asked for all the time, most rarely), and part of the traffic comes
in bursts of ``concurrency`` simultaneous requests, half of each burst asking for one new
"trending" text (a stampede on a cold key). Latency is measured from the planned
send time, so time spent waiting for a free connection counts, as it does for a user.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TextIO

import aiohttp
import anyio
import numpy as np

__all__ = [
    "Outcome",
    "OutcomeKind",
    "Planned",
    "Progress",
    "drive",
    "is_valid_vector",
    "plan_traffic",
]

OutcomeKind = Literal["ok", "invalid", "error", "timeout"]

#: Distinct texts the plan draws from, and the Zipf exponent of their popularity.
KEYS = 1000
ZIPF_EXPONENT = 1.1
#: The share of requests that arrive in bursts, and the share of a burst asking for its
#: one trending text.
BURST_SHARE = 0.3
TRENDING_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class Planned:
    """One request of the plan: when to send it (seconds from the start) and which text."""

    at: float
    text: str
    burst: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one request.

    ``kind``: ``"ok"`` (200 with a usable vector), ``"invalid"`` (200 with NaN or the
    wrong dimension), ``"error"`` (any other status, or a broken connection: ``status``
    0), ``"timeout"`` (the client gave up).
    """

    text: str
    at: float
    latency: float
    status: int
    kind: OutcomeKind


def plan_traffic(
    *,
    requests: int,
    duration: float,
    concurrency: int,
    seed: int,
    keys: int = KEYS,
    exponent: float = ZIPF_EXPONENT,
    burst_share: float = BURST_SHARE,
    trending_share: float = TRENDING_SHARE,
) -> list[Planned]:
    """``requests`` requests spread over ``duration`` seconds, sorted by send time.

    Texts are ``doc-NNNNN`` drawn from a Zipf law over ``keys`` documents, except in
    bursts: there ``trending_share`` of the requests ask for the same new text
    (``trend-NNN``, one per burst), as when many users follow one link at once: a
    stampede on a key nobody asked for before. The same arguments give the same plan.
    """
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, keys + 1, dtype=np.float64)
    popularity = ranks**-exponent
    popularity /= popularity.sum()
    burst_count = int(requests * burst_share) // concurrency if concurrency > 1 else 0
    trending = round(concurrency * trending_share)
    times: list[tuple[float, int | None]] = []
    for number in range(burst_count):
        # A burst: `concurrency` users click within 20 ms of each other.
        start = rng.uniform(0.0, duration * 0.95)
        times += [(start + offset, number) for offset in rng.uniform(0.0, 0.02, concurrency)]
    times += [(at, None) for at in rng.uniform(0.0, duration, requests - len(times))]
    picks = rng.choice(keys, size=requests, p=popularity)
    texts = [f"doc-{int(pick):05d}" for pick in picks]
    seen: Counter[int] = Counter()
    for index, (_, in_burst) in enumerate(times):
        if in_burst is not None:
            seen[in_burst] += 1
            if seen[in_burst] <= trending:
                texts[index] = f"trend-{in_burst:03d}"
    order = sorted(range(requests), key=lambda index: times[index][0])
    return [
        Planned(min(times[index][0], duration), texts[index], times[index][1] is not None)
        for index in order
    ]


def is_valid_vector(values: object, dim: int) -> bool:
    """True for a list of ``dim`` finite numbers: a vector a client can use."""
    return (
        isinstance(values, list)
        and len(values) == dim
        and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
    )


class Progress:
    """A plain-text progress bar on a stream (stderr by default).

    On a terminal it redraws one line in place, at most ten times a second; elsewhere (a
    log, a pipe) it writes a line at each quarter.
    """

    def __init__(
        self,
        total: int,
        names: Sequence[str],
        *,
        stream: TextIO | None = None,
        live: bool | None = None,
        width: int = 28,
    ) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.width = width
        self.started = time.monotonic()
        self.answered = 0
        self.ok = dict.fromkeys(names, 0)
        self.count = dict.fromkeys(names, 0)
        self._drawn = 0.0
        self._quarter = 0
        self._length = 0

    def done(self, name: str, outcome: Outcome) -> None:
        self.answered += 1
        self.count[name] += 1
        self.ok[name] += outcome.kind == "ok"
        if self.live:
            now = time.monotonic()
            if now - self._drawn >= 0.1:
                self._drawn = now
                self._redraw()
        elif self.total and self.answered * 4 // self.total > self._quarter:
            self._quarter = self.answered * 4 // self.total
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def finish(self) -> None:
        if self.live:
            self._redraw()
            self.stream.write("\n")
            self.stream.flush()

    def _redraw(self) -> None:
        # Padded to the previous line's length, so that no longer line shows through.
        line = self.line()
        self.stream.write("\r" + line.ljust(self._length))
        self._length = len(line)
        self.stream.flush()

    def line(self) -> str:
        share = self.answered / self.total if self.total else 1.0
        filled = round(share * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        rates = "  ".join(
            f"{name} ok {100 * self.ok[name] / self.count[name]:5.1f}%"
            for name in self.ok
            if self.count[name]
        )
        elapsed = time.monotonic() - self.started
        return (
            f"[{bar}] {100 * share:5.1f}%  {self.answered}/{self.total} answered  "
            f"{elapsed:5.1f}s  {rates}"
        )


async def _send(
    session: aiohttp.ClientSession,
    url: str,
    planned: Planned,
    *,
    origin: float,
    patience: float,
    dim: int,
) -> Outcome:
    start = origin + planned.at
    status = 0
    kind: OutcomeKind = "timeout"
    with anyio.move_on_after(max(0.0, start + patience - time.monotonic())):
        try:
            async with session.get(url, params={"text": planned.text}) as response:
                status = response.status
                if status == 200:
                    payload = await response.json()
                    vector = payload.get("embedding") if isinstance(payload, dict) else None
                    kind = "ok" if is_valid_vector(vector, dim) else "invalid"
                else:
                    await response.read()
                    kind = "error"
        except (aiohttp.ClientError, ValueError):
            kind = "error"
    return Outcome(planned.text, planned.at, time.monotonic() - start, status, kind)


async def drive(
    plan: Sequence[Planned],
    targets: Mapping[str, str | Sequence[str]],
    *,
    concurrency: int,
    patience: float,
    dim: int,
    origin: float | None = None,
    progress: Progress | None = None,
) -> dict[str, list[Outcome]]:
    """Send ``plan`` to every target at once; return each target's outcomes.

    A target is a URL, or several (the replicas of one service): then the requests go to
    them in turn, round robin, as a load balancer would send them. Each target gets its
    own connection pool of ``concurrency`` connections. The client
    gives up on a request ``patience`` seconds after its planned time, so the whole run
    ends by the last planned time plus ``patience``.

    Args:
        origin: the ``time.monotonic()`` reading the plan's times count from (now by
            default).
    """
    start = time.monotonic() if origin is None else origin
    turns = {
        name: itertools.cycle([url] if isinstance(url, str) else list(url))
        for name, url in targets.items()
    }
    results: dict[str, list[Outcome]] = {name: [] for name in targets}
    sessions = {
        name: aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        for name in targets
    }

    async def one(name: str, planned: Planned) -> None:
        outcome = await _send(
            sessions[name], next(turns[name]), planned, origin=start, patience=patience, dim=dim
        )
        results[name].append(outcome)
        if progress is not None:
            progress.done(name, outcome)

    try:
        async with anyio.create_task_group() as group:
            for planned in plan:
                wait = start + planned.at - time.monotonic()
                if wait > 0:
                    await anyio.sleep(wait)
                for name in targets:
                    group.start_soon(one, name, planned)
    finally:
        with anyio.CancelScope(shield=True):
            for session in sessions.values():
                await session.close()
        if progress is not None:
            progress.finish()
    return results
