"""Two inference gateways in front of the stand-in: one plain, one made resilient by buttress.

Both serve ``GET /embed?text=...`` on 127.0.0.1 and answer ``{"text", "embedding"}``.

- :class:`PlainGateway` is the gateway people write first: it calls the upstream and hands
  whatever happens (a 503, a hang, a NaN vector) to its client.
- :class:`ResilientGateway` fetches through a stack of buttress decorators, the
  :class:`Layer` list returned by :func:`resilience_layers`, composed by
  :func:`build_resilient_fetch` in the canonical order of :data:`LAYER_ORDER`. Adding a
  decorator to the gateway is adding one ``Layer`` to that list.

What the decorators do is counted by :class:`EventTally`, which listens on
``buttress.events``: each kind of event it counts is tallied from the moment a decorator
emits it, with no change here.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple, TypeVar

import aiohttp
import anyio
import numpy as np
import numpy.typing as npt
from aiohttp import web

from buttress._errors import ButtressError
from buttress._events import (
    BulkheadRejected,
    CacheAccess,
    CircuitRejected,
    CircuitStateChanged,
    Event,
    MemoryGuardDecision,
    RetryGaveUp,
    RetryScheduled,
    Subscription,
    ValidationFailed,
    events,
)
from buttress._retry import retry

__all__ = [
    "LAYER_ORDER",
    "RETRY_ON",
    "TIMEOUTS",
    "EventTally",
    "Gateway",
    "Layer",
    "PlainGateway",
    "ResilienceSettings",
    "ResilientGateway",
    "build_resilient_fetch",
    "failure_status",
    "resilience_layers",
]

Vector = npt.NDArray[np.float32]
Fetch = Callable[[str], Awaitable[Vector]]
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
G = TypeVar("G", bound="Gateway")

#: Where each decorator sits around the upstream call, outermost first: DESIGN.md's
#: canonical order, with output validation innermost so that an invalid vector is a
#: failed attempt (retried, counted by the breaker, never cached).
LAYER_ORDER: tuple[str, ...] = (
    "monitor",
    "validate_input",
    "fallback",
    "timeout",
    "cache_result",
    "retry",
    "circuit_breaker",
    "bulkhead",
    "rate_limit",
    "memory_guard",
    "validate_output",
)

#: Timeouts: before Python 3.11, asyncio's (which aiohttp raises) is not the builtin.
TIMEOUTS: tuple[type[Exception], ...] = (TimeoutError, asyncio.TimeoutError)

#: The errors worth another attempt: the upstream's 5xx (``raise_for_status`` carries its
#: Retry-After), broken connections, and timeouts (``AttemptTimeoutError`` included);
#: a 4xx is raised as a ValueError, which is not retried.
#: An output-validation error joins them when ``validate_output`` sits inside ``retry``.
RETRY_ON: tuple[type[BaseException], ...] = (aiohttp.ClientError, *TIMEOUTS)


class Layer(NamedTuple):
    """One decorator of the resilient endpoint, with its place name from LAYER_ORDER."""

    name: str
    decorator: Decorator


@dataclass(frozen=True, slots=True)
class ResilienceSettings:
    """How hard the resilient gateway tries, scaled to the client's patience.

    Attributes:
        deadline: retrying stops before this many seconds (it should be shorter than the
            client's timeout, so the gateway answers before the client gives up).
        attempt_timeout: one upstream call is abandoned after this many seconds.
        max_retries: retries after the first attempt.
        base_delay: the first backoff wait (a server's Retry-After replaces it).
        max_delay: no wait is longer, Retry-After included.
        dim: the dimension of a correct vector.
    """

    deadline: float = 1.5
    attempt_timeout: float = 0.3
    max_retries: int = 4
    base_delay: float = 0.05
    max_delay: float = 1.0
    dim: int = 768

    @classmethod
    def for_client_timeout(cls, timeout: float, *, dim: int = 768) -> ResilienceSettings:
        """Settings that give up before a client with ``timeout`` seconds does."""
        deadline = 0.75 * timeout
        return cls(
            deadline=deadline,
            attempt_timeout=min(0.3, deadline / 3),
            max_delay=min(1.0, deadline / 2),
            dim=dim,
        )


def resilience_layers(settings: ResilienceSettings) -> list[Layer]:
    """The decorators of the resilient endpoint, outermost first (see :data:`LAYER_ORDER`).

    Each decorator of the package is one ``Layer(name, decorator)`` at its place here;
    the ones this build does not provide yet have no line.
    """
    return [
        Layer(
            "retry",
            retry(
                max_retries=settings.max_retries,
                base_delay=settings.base_delay,
                max_delay=settings.max_delay,
                deadline=settings.deadline,
                attempt_timeout=settings.attempt_timeout,
                exceptions=RETRY_ON,
                respect_retry_after=True,
            ),
        ),
    ]


def build_resilient_fetch(fetch: Fetch, layers: Sequence[Layer]) -> Fetch:
    """Wrap ``fetch`` in ``layers``, the first outermost.

    Raises:
        ValueError: a layer's name is not in :data:`LAYER_ORDER`, appears twice, or is out
            of the canonical order.
    """
    positions = []
    for layer in layers:
        if layer.name not in LAYER_ORDER:
            raise ValueError(f"unknown layer {layer.name!r}; expected one of {LAYER_ORDER}")
        positions.append(LAYER_ORDER.index(layer.name))
    if positions != sorted(set(positions)):
        names = [layer.name for layer in layers]
        expected = sorted(names, key=LAYER_ORDER.index)
        raise ValueError(f"layers {names} are not in the canonical order {expected}")
    wrapped: Callable[..., Any] = fetch
    for layer in reversed(layers):
        wrapped = layer.decorator(wrapped)
    return wrapped


@dataclass
class EventTally:
    """What buttress's decorators did for one decorated function, counted from events.

    ``start()`` subscribes to ``buttress.events`` and counts the events whose ``function``
    is ``function``; ``stop()`` unsubscribes.
    """

    function: str
    retries: int = 0
    gave_up: int = 0
    cache_hits: int = 0
    cache_joins: int = 0
    cache_misses: int = 0
    cache_stale: int = 0
    breaker_openings: int = 0
    breaker_rejections: int = 0
    invalid_caught: int = 0
    bulkhead_rejections: int = 0
    memory_rejections: int = 0
    _subscription: Subscription[Event] | None = field(default=None, repr=False)

    def counts(self) -> dict[str, int]:
        """Every count, by name."""
        return {
            item.name: getattr(self, item.name)
            for item in fields(self)
            if item.type in ("int", int)
        }

    def start(self) -> None:
        if self._subscription is None:
            self._subscription = events.subscribe(self._count)

    def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None

    def _count(self, event: Event) -> None:
        if event.function != self.function:
            return
        if isinstance(event, RetryScheduled):
            self.retries += 1
        elif isinstance(event, RetryGaveUp):
            self.gave_up += 1
        elif isinstance(event, CacheAccess):
            if event.result == "hit":
                self.cache_hits += 1
            elif event.result == "join":
                self.cache_joins += 1
            elif event.result == "miss":
                self.cache_misses += 1
            else:
                self.cache_stale += 1
        elif isinstance(event, CircuitStateChanged):
            if event.new == "open":
                self.breaker_openings += 1
        elif isinstance(event, CircuitRejected):
            self.breaker_rejections += 1
        elif isinstance(event, ValidationFailed):
            if event.direction == "output":
                self.invalid_caught += 1
        elif isinstance(event, BulkheadRejected):
            self.bulkhead_rejections += 1
        elif isinstance(event, MemoryGuardDecision) and event.action == "rejected":
            self.memory_rejections += 1


@dataclass
class GatewayStats:
    """What a gateway saw: requests received, answers by status, calls made upstream."""

    requests: int = 0
    upstream_calls: int = 0
    in_flight: int = 0
    statuses: Counter[int] = field(default_factory=Counter)


class Gateway:
    """The shared part of both gateways: the server, the upstream session, the counters."""

    kind = "gateway"

    def __init__(self, upstream_url: str, *, name: str | None = None) -> None:
        self.upstream_url = upstream_url
        self.name = name if name is not None else self.kind
        self.stats = GatewayStats()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._idle: anyio.Event | None = None
        self._port = 0

    @property
    def url(self) -> str:
        if self._runner is None:
            raise RuntimeError(f"the {self.name} gateway is not running: call start() first")
        return f"http://127.0.0.1:{self._port}/embed"

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The buttress decorators around the upstream call (none for the plain one)."""
        return ()

    async def start(self) -> None:
        """Open the upstream session and serve on a free port of 127.0.0.1."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        app = web.Application()
        app.router.add_get("/embed", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Close the server and the upstream session."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __aenter__(self: G) -> G:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def wait_idle(self) -> None:
        """Wait until no request is being handled (bound it with ``anyio.move_on_after``).

        Handlers outlive a client that gave up (aiohttp does not cancel them), and their
        upstream calls must be counted before the report is written.
        """
        while self.stats.in_flight:
            self._idle = anyio.Event()
            await self._idle.wait()

    async def _handle(self, request: web.Request) -> web.Response:
        self.stats.requests += 1
        self.stats.in_flight += 1
        try:
            text = request.query.get("text", "")
            if not text:
                response = web.json_response({"error": "missing ?text="}, status=400)
            else:
                response = await self._answer(text)
        finally:
            self.stats.in_flight -= 1
            if not self.stats.in_flight and self._idle is not None:
                self._idle.set()
        self.stats.statuses[response.status] += 1
        return response

    async def _answer(self, text: str) -> web.Response:
        raise NotImplementedError


class PlainGateway(Gateway):
    """Calls the upstream once per request and passes along whatever comes back."""

    kind = "plain"

    async def _answer(self, text: str) -> web.Response:
        assert self._session is not None
        self.stats.upstream_calls += 1
        try:
            async with self._session.get(self.upstream_url, params={"text": text}) as upstream:
                body = await upstream.read()
                headers = {}
                if "Retry-After" in upstream.headers:
                    headers["Retry-After"] = upstream.headers["Retry-After"]
                return web.Response(
                    body=body,
                    status=upstream.status,
                    headers=headers,
                    content_type=upstream.content_type,
                )
        except TIMEOUTS:
            return web.json_response({"error": "upstream timed out"}, status=504)
        except aiohttp.ClientError as exc:
            return web.json_response({"error": f"upstream failed: {exc!r}"}, status=502)


class ResilientGateway(Gateway):
    """Fetches through buttress decorators; see :func:`resilience_layers`.

    Args:
        upstream_url: the embeddings endpoint.
        layers: the decorators, outermost first; by default
            ``resilience_layers(settings)``.
        settings: used for the default layers and the vector's dimension.
        name: names the gateway; events are told apart by it.
    """

    kind = "resilient"

    def __init__(
        self,
        upstream_url: str,
        *,
        layers: Sequence[Layer] | None = None,
        settings: ResilienceSettings | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(upstream_url, name=name)
        self.settings = settings if settings is not None else ResilienceSettings()
        self.layers = list(layers if layers is not None else resilience_layers(self.settings))

        async def embed(text: str) -> Vector:
            return await self._fetch_once(text)

        # Events name the decorated function by its qualified name; one per gateway lets
        # the tally tell this gateway's retries from anyone else's.
        embed.__qualname__ = f"{self.name}.embed"
        self.fetch = build_resilient_fetch(embed, self.layers)
        self.tally = EventTally(embed.__qualname__)

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    async def start(self) -> None:
        self.tally.start()
        await super().start()

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            self.tally.stop()

    async def _fetch_once(self, text: str) -> Vector:
        """One upstream call: the function all the layers wrap."""
        assert self._session is not None
        self.stats.upstream_calls += 1
        async with self._session.get(self.upstream_url, params={"text": text}) as upstream:
            if 400 <= upstream.status < 500:
                # Our request is wrong: asking again will not help (ValueError is not retried).
                raise ValueError(f"the upstream refused the request: {upstream.status}")
            upstream.raise_for_status()
            payload = await upstream.json()
        return np.asarray(payload["embedding"], dtype=np.float32)

    async def _answer(self, text: str) -> web.Response:
        try:
            vector = await self.fetch(text)
        except Exception as exc:
            status, reason = failure_status(exc)
            return web.json_response({"error": reason}, status=status)
        return web.json_response({"text": text, "embedding": vector.tolist()})


def failure_status(exc: Exception) -> tuple[int, str]:
    """The HTTP status and reason a gateway answers when fetching failed with ``exc``."""
    if isinstance(exc, aiohttp.ClientResponseError):
        status = exc.status if exc.status >= 500 else 502
        return status, f"upstream answered {exc.status}"
    if isinstance(exc, TIMEOUTS):
        return 504, "upstream timed out"
    if isinstance(exc, aiohttp.ClientError):
        return 502, f"upstream failed: {type(exc).__name__}"
    if isinstance(exc, (ValueError, KeyError, TypeError)):
        # An invalid vector caught by validation, or a payload that is not an embedding.
        return 502, f"upstream answered garbage: {type(exc).__name__}"
    if isinstance(exc, ButtressError):
        # Shed by a breaker, a bulkhead or the memory guard.
        return 503, f"{type(exc).__name__}: {exc}"
    return 500, type(exc).__name__

