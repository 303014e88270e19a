"""A stand-in embedding service that misbehaves the way real ones do.

It answers ``GET /v1/embeddings?text=...`` with a 768-dimension unit vector that depends only
on the text, and injects faults at configurable rates: latency spikes, 503 with
``Retry-After``, hangs, an outage window in which every call fails, NaN vectors and vectors
of the wrong dimension. It counts every call it receives.

Which fault a call gets is drawn from ``(seed, text, n)``, where ``n`` counts earlier
calls for the same text: the same seed and the same calls give the same faults, whatever
order concurrent calls arrive in. Only the outage window is a matter of time.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import anyio
import numpy as np
import numpy.typing as npt
from aiohttp import web

__all__ = ["Call", "FaultKind", "Faults", "Upstream", "draw_call", "vector_for"]

FaultKind = Literal["ok", "spike", "unavailable", "hang", "nan", "wrong_dim", "outage"]

#: The path the stand-in serves.
PATH = "/v1/embeddings"


@dataclass(frozen=True, slots=True)
class Faults:
    """How the stand-in misbehaves. Rates are probabilities per call; together at most 1.

    Attributes:
        spike_rate: the call answers correctly but slowly (``spike_seconds``).
        error_rate: the call is answered 503 with ``Retry-After: retry_after``.
        hang_rate: the call is answered only after ``hang_seconds`` (or when the server
            stops), long after any sensible client has given up.
        nan_rate: the vector holds NaN values.
        wrong_dim_rate: the vector has half the dimensions (another model's output).
        outage_start: seconds after :meth:`Upstream.begin` when every call starts to fail
            with a 503 without ``Retry-After``; ``None`` for no outage.
        outage_length: how long the outage lasts, in seconds.
        latency: the normal response time, drawn uniformly in this range (seconds).
        dim: the dimension of a correct vector.
    """

    spike_rate: float = 0.05
    error_rate: float = 0.08
    hang_rate: float = 0.01
    nan_rate: float = 0.01
    wrong_dim_rate: float = 0.01
    retry_after: float = 0.2
    spike_seconds: tuple[float, float] = (0.25, 1.0)
    hang_seconds: float = 10.0
    outage_start: float | None = None
    outage_length: float = 0.0
    latency: tuple[float, float] = (0.004, 0.02)
    dim: int = 768

    def __post_init__(self) -> None:
        rates = self.rates()
        for name, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name}_rate must be in [0, 1], got {rate!r}")
        if sum(rates.values()) > 1.0 + 1e-9:
            raise ValueError(f"fault rates add up to more than 1: {rates}")
        if self.retry_after < 0 or self.hang_seconds < 0 or self.outage_length < 0:
            raise ValueError("retry_after, hang_seconds and outage_length must be >= 0")
        if self.dim < 2:
            raise ValueError(f"dim must be at least 2, got {self.dim}")

    def rates(self) -> dict[str, float]:
        """The per-call fault rates, by fault name, in the order they are drawn."""
        return {
            "unavailable": self.error_rate,
            "hang": self.hang_rate,
            "nan": self.nan_rate,
            "wrong_dim": self.wrong_dim_rate,
            "spike": self.spike_rate,
        }


@dataclass(frozen=True, slots=True)
class Call:
    """One call the stand-in received: for which text, the how-many-th, and its fault."""

    text: str
    n: int
    fault: FaultKind
    delay: float


def _stable_int(*parts: object) -> int:
    # hash() of a str changes from process to process; a seed must not.
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def draw_call(faults: Faults, seed: int, text: str, n: int) -> Call:
    """The fault and delay of call number ``n`` (from 0) for ``text``; the outage aside."""
    rng = random.Random(_stable_int(seed, text, n))
    u = rng.random()
    fault: FaultKind = "ok"
    threshold = 0.0
    for name, rate in faults.rates().items():
        threshold += rate
        if u < threshold:
            fault = name  # type: ignore[assignment]  # the keys of rates() are FaultKinds
            break
    if fault == "hang":
        delay = faults.hang_seconds
    elif fault == "spike":
        delay = rng.uniform(*faults.spike_seconds)
    else:
        delay = rng.uniform(*faults.latency)
    return Call(text, n, fault, delay)


def vector_for(text: str, dim: int) -> npt.NDArray[np.float32]:
    """The correct embedding of ``text``: a unit vector that depends only on the text."""
    vector = np.random.default_rng(_stable_int("vector", text)).standard_normal(dim)
    vector /= np.linalg.norm(vector)
    return vector.astype(np.float32)


class Upstream:
    """The misbehaving embedding service, an aiohttp server on 127.0.0.1.

    Use ``async with Upstream(faults, seed=...) as upstream:`` (or :meth:`start` and
    :meth:`stop`), then call ``upstream.url``. :meth:`begin` starts the outage clock.

    Attributes:
        calls: every call received, in arrival order.
        served: how many calls got each fault (``"ok"`` included).
    """

    def __init__(self, faults: Faults | None = None, *, seed: int = 0) -> None:
        self.faults = faults if faults is not None else Faults()
        self.seed = seed
        self.calls: list[Call] = []
        self.served: Counter[str] = Counter()
        self._seen: dict[str, int] = {}
        self._origin: float | None = None
        self._runner: web.AppRunner | None = None
        self._released: anyio.Event | None = None
        self._port = 0

    @property
    def total(self) -> int:
        """How many calls the stand-in has received."""
        return len(self.calls)

    @property
    def url(self) -> str:
        """The embeddings endpoint; query it with ``?text=...``."""
        if self._runner is None:
            raise RuntimeError("the upstream is not running: call start() first")
        return f"http://127.0.0.1:{self._port}{PATH}"

    def begin(self, origin: float | None = None) -> None:
        """Start the outage clock now, or at ``origin`` (a ``time.monotonic()`` reading)."""
        self._origin = time.monotonic() if origin is None else origin

    def in_outage(self, now: float | None = None) -> bool:
        start = self.faults.outage_start
        if self._origin is None or start is None or self.faults.outage_length <= 0:
            return False
        since = (time.monotonic() if now is None else now) - self._origin
        return start <= since < start + self.faults.outage_length

    async def start(self) -> None:
        """Serve on a free port of 127.0.0.1."""
        app = web.Application()
        app.router.add_get(PATH, self._embed)
        self._released = anyio.Event()
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    def release(self) -> None:
        """End every hang and spike in progress now (they answer 503), as before a stop."""
        if self._released is not None:
            self._released.set()

    async def stop(self) -> None:
        """Release the waiting calls and close the server."""
        self.release()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Upstream:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds``; False when :meth:`release` cut the wait short."""
        assert self._released is not None
        with anyio.move_on_after(seconds):
            await self._released.wait()
            return False
        return True

    async def _embed(self, request: web.Request) -> web.Response:
        text = request.query.get("text", "")
        if not text:
            return web.json_response({"error": "missing ?text="}, status=400)
        n = self._seen.get(text, 0)
        self._seen[text] = n + 1
        if self.in_outage():
            call = Call(text, n, "outage", 0.0)
        else:
            call = draw_call(self.faults, self.seed, text, n)
        self.calls.append(call)
        self.served[call.fault] += 1

        if call.fault == "outage":
            return web.json_response({"error": "no healthy backend"}, status=503)
        if call.fault == "unavailable":
            return web.json_response(
                {"error": "overloaded"},
                status=503,
                headers={"Retry-After": f"{self.faults.retry_after:g}"},
            )
        if not await self._wait(call.delay):
            return web.json_response({"error": "shutting down"}, status=503)
        if call.fault == "hang":
            return web.json_response({"error": "backend timed out"}, status=504)

        vector = vector_for(text, self.faults.dim)
        if call.fault == "wrong_dim":
            vector = vector[: self.faults.dim // 2]
        elif call.fault == "nan":
            vector = vector.copy()
            spots = random.Random(_stable_int(self.seed, text, n, "nan"))
            for index in spots.sample(range(vector.size), 3):
                vector[index] = np.nan
        body = json.dumps({"text": text, "model": "stand-in", "embedding": vector.tolist()})
        return web.Response(text=body, content_type="application/json")
