"""A stand-in embedding service that misbehaves the way real ones do.

It answers ``GET /v1/embeddings?text=...`` with a 768-dimension unit vector that depends only
on the text, and ``POST /v1/embeddings`` with ``{"texts": [...]}`` (a batch) with one vector
per text, in order. It injects faults at configurable rates: latency spikes, 503 with
``Retry-After``, hangs, an outage window in which every call fails, NaN vectors and vectors
of the wrong dimension. It counts every request and every text it receives.

Which fault a text gets is drawn from ``(seed, text, n)``, where ``n`` counts earlier
requests for the same text: the same seed and the same calls give the same faults,
whatever order concurrent calls arrive in. In a batch, the faults of the request as a
whole (503, hang, spike) are drawn once, from the request's texts and their counts, and
the faults of single vectors (NaN, wrong dimension) per text. Only the outage window is a
matter of time.
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

__all__ = ["Call", "FaultKind", "Faults", "Upstream", "draw_batch", "draw_call", "vector_for"]

FaultKind = Literal["ok", "spike", "unavailable", "hang", "nan", "wrong_dim", "outage"]

#: The path the stand-in serves.
PATH = "/v1/embeddings"

#: The most texts one batch request may carry (more is answered 413).
MAX_BATCH = 512

#: The faults of a batch request as a whole, and of single vectors in it.
REQUEST_FAULTS = ("unavailable", "hang", "spike")
ITEM_FAULTS = ("nan", "wrong_dim")


@dataclass(frozen=True, slots=True)
class Faults:
    """How the stand-in misbehaves. Rates are probabilities per call; together at most 1.

    A batch request counts as one call for ``error_rate``, ``hang_rate`` and
    ``spike_rate`` (the request fails, hangs or is slow as a whole), and as one call per
    text for ``nan_rate`` and ``wrong_dim_rate`` (single vectors are wrong).

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
    fault = _pick(rng, faults, tuple(faults.rates()))
    return Call(text, n, fault, _delay(rng, faults, fault))


def _delay(rng: random.Random, faults: Faults, fault: FaultKind) -> float:
    if fault == "hang":
        return faults.hang_seconds
    if fault == "spike":
        return rng.uniform(*faults.spike_seconds)
    return rng.uniform(*faults.latency)


def _pick(rng: random.Random, faults: Faults, kinds: tuple[str, ...]) -> FaultKind:
    u = rng.random()
    threshold = 0.0
    for name, rate in faults.rates().items():
        if name not in kinds:
            continue
        threshold += rate
        if u < threshold:
            return name  # type: ignore[return-value]  # the keys of rates() are FaultKinds
    return "ok"


def draw_batch(faults: Faults, seed: int, texts: list[str], ns: list[int]) -> list[Call]:
    """The calls of one batch request: ``texts[i]`` asked for the ``ns[i]``-th time.

    The request's own fault (503, hang, spike, or none) and its delay are drawn once from
    all its texts and counts; each text then draws whether its vector is wrong (NaN,
    wrong dimension). Each call carries the request's delay, and as its fault the
    request's if it failed (503, hang), else its own vector's, else ``"spike"`` if the
    request was slow, else ``"ok"``. A batch of one text is a single call: it gets
    :func:`draw_call`'s draw, as a ``GET`` would.
    """
    if len(texts) == 1:
        return [draw_call(faults, seed, texts[0], ns[0])]
    pairs = (f"{text}#{n}" for text, n in zip(texts, ns, strict=True))
    rng = random.Random(_stable_int(seed, "batch", *pairs))
    fault = _pick(rng, faults, REQUEST_FAULTS)
    delay = _delay(rng, faults, fault)
    calls = []
    for text, n in zip(texts, ns, strict=True):
        kind = fault
        if fault not in ("unavailable", "hang"):
            own = _pick(random.Random(_stable_int(seed, text, n, "item")), faults, ITEM_FAULTS)
            if own != "ok" or fault == "ok":
                kind = own
        calls.append(Call(text, n, kind, delay))
    return calls


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
        calls: every text asked for, in arrival order (one per GET, one per text of a
            batch).
        served: how many of ``calls`` got each fault (``"ok"`` included).
        requests: HTTP requests received (a batch is one).
        batch_sizes: the number of texts of each batch request, in arrival order.
        arrivals: when each request arrived (``time.monotonic()``) and how many texts it
            asked for, in arrival order: what :meth:`peak_rate` reads.
    """

    def __init__(self, faults: Faults | None = None, *, seed: int = 0) -> None:
        self.faults = faults if faults is not None else Faults()
        self.seed = seed
        self.calls: list[Call] = []
        self.served: Counter[str] = Counter()
        self.requests = 0
        self.batch_sizes: list[int] = []
        self.arrivals: list[tuple[float, int]] = []
        self._seen: dict[str, int] = {}
        self._origin: float | None = None
        self._runner: web.AppRunner | None = None
        self._released: anyio.Event | None = None
        self._port = 0

    @property
    def total(self) -> int:
        """How many requests the stand-in has received (a batch is one)."""
        return self.requests

    @property
    def url(self) -> str:
        """The embeddings endpoint: ``GET ?text=...``, or ``POST {"texts": [...]}``."""
        if self._runner is None:
            raise RuntimeError("the upstream is not running: call start() first")
        return f"http://127.0.0.1:{self._port}{PATH}"

    def begin(self, origin: float | None = None) -> None:
        """Start the outage clock now, or at ``origin`` (a ``time.monotonic()`` reading)."""
        self._origin = time.monotonic() if origin is None else origin

    def peak_rate(self, window: float = 1.0) -> tuple[int, int]:
        """The most requests, and the most texts, that arrived within any ``window``
        seconds (its end excluded): what a provider counting "N per second" would see."""
        times = [at for at, _ in self.arrivals]
        texts = [0]
        for _, count in self.arrivals:
            texts.append(texts[-1] + count)
        most_requests = most_texts = 0
        first = 0
        for last, at in enumerate(times):
            while at - times[first] >= window:
                first += 1
            most_requests = max(most_requests, last - first + 1)
            most_texts = max(most_texts, texts[last + 1] - texts[first])
        return most_requests, most_texts

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
        app.router.add_post(PATH, self._embed_batch)
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

    def _count(self, text: str) -> int:
        n = self._seen.get(text, 0)
        self._seen[text] = n + 1
        return n

    async def _embed(self, request: web.Request) -> web.Response:
        text = request.query.get("text", "")
        if not text:
            return web.json_response({"error": "missing ?text="}, status=400)
        self.requests += 1
        self.arrivals.append((time.monotonic(), 1))
        n = self._count(text)
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

        vector = self._vector(call)
        body = json.dumps({"text": text, "model": "stand-in", "embedding": vector.tolist()})
        return web.Response(text=body, content_type="application/json")

    def _vector(self, call: Call) -> npt.NDArray[np.float32]:
        """The vector ``call`` answers: correct, or made wrong as its fault says."""
        vector = vector_for(call.text, self.faults.dim)
        if call.fault == "wrong_dim":
            vector = vector[: self.faults.dim // 2]
        elif call.fault == "nan":
            vector = vector.copy()
            spots = random.Random(_stable_int(self.seed, call.text, call.n, "nan"))
            for index in spots.sample(range(vector.size), 3):
                vector[index] = np.nan
        return vector

    async def _embed_batch(self, request: web.Request) -> web.Response:
        try:
            payload = await request.json()
        except ValueError:
            return web.json_response({"error": "the body is not JSON"}, status=400)
        texts = payload.get("texts") if isinstance(payload, dict) else None
        if (
            not isinstance(texts, list)
            or not texts
            or not all(isinstance(text, str) and text for text in texts)
        ):
            return web.json_response(
                {"error": 'expected {"texts": [one or more non-empty strings]}'}, status=400
            )
        if len(texts) > MAX_BATCH:
            return web.json_response(
                {"error": f"at most {MAX_BATCH} texts per request"}, status=413
            )
        self.requests += 1
        self.arrivals.append((time.monotonic(), len(texts)))
        self.batch_sizes.append(len(texts))
        ns = [self._count(text) for text in texts]
        if self.in_outage():
            calls = [Call(text, n, "outage", 0.0) for text, n in zip(texts, ns, strict=True)]
        else:
            calls = draw_batch(self.faults, self.seed, texts, ns)
        self.calls.extend(calls)
        self.served.update(call.fault for call in calls)

        fault = calls[0].fault
        if fault == "outage":
            return web.json_response({"error": "no healthy backend"}, status=503)
        if fault == "unavailable":
            return web.json_response(
                {"error": "overloaded"},
                status=503,
                headers={"Retry-After": f"{self.faults.retry_after:g}"},
            )
        if not await self._wait(calls[0].delay):
            return web.json_response({"error": "shutting down"}, status=503)
        if fault == "hang":
            return web.json_response({"error": "backend timed out"}, status=504)
        vectors = [self._vector(call).tolist() for call in calls]
        body = json.dumps({"model": "stand-in", "embeddings": vectors})
        return web.Response(text=body, content_type="application/json")
