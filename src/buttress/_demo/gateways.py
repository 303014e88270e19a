"""Two inference gateways in front of the stand-in: one plain, one made resilient by buttress.

Both serve ``GET /embed?text=...`` on 127.0.0.1 and answer ``{"text", "embedding"}``.

- :class:`PlainGateway` is the gateway people write first: it calls the upstream and hands
  whatever happens (a 503, a hang, a NaN vector) to its client.
- :class:`ResilientGateway` fetches through one :func:`buttress.policy`, which stacks the
  decorators in the canonical order: :func:`resilience_policy` builds it from
  :class:`ResilienceSettings`. Its ``batch`` layer gathers the texts being fetched at
  the same moment into one upstream request (``POST {"texts": [...]}``): the layers
  above it work per text (monitoring, input validation, the cache), the layers below per
  request (retry, the breaker, the bulkhead, the memory guard, the attempt timeout and
  output validation), so that the breaker judges the upstream by its requests.

What the decorators do is counted by :class:`EventTally`, which listens on
``buttress.events`` for the events of one decorated function.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import aiohttp
import anyio
import numpy as np
import numpy.typing as npt
from aiohttp import web
from pydantic import StringConstraints

from buttress import (
    ArraySpec,
    BatchDispatched,
    BulkheadFullError,
    BulkheadRejected,
    ButtressError,
    CacheAccess,
    CacheStore,
    CircuitRejected,
    CircuitStateChanged,
    Event,
    InputValidationError,
    MemoryGuardDecision,
    MemoryPressureError,
    OutputValidationError,
    Policy,
    RateLimited,
    RateLimitExceeded,
    RetryGaveUp,
    RetryScheduled,
    Subscription,
    TimedOut,
    ValidationFailed,
    batch,
    events,
    policy,
)

if TYPE_CHECKING:  # the demo runs without redis-py; only a fleet's replicas need it
    from buttress import FleetStore

__all__ = [
    "FLEET",
    "RETRY_ON",
    "TIMEOUTS",
    "EventTally",
    "FleetLimit",
    "Gateway",
    "PlainGateway",
    "ResilienceSettings",
    "ResilientGateway",
    "failure_status",
    "resilience_policy",
]

Vector = npt.NDArray[np.float32]
Fetch = Callable[[str], Awaitable[Vector]]
G = TypeVar("G", bound="Gateway")

#: Timeouts: before Python 3.11, asyncio's (which aiohttp raises) is not the builtin.
TIMEOUTS: tuple[type[Exception], ...] = (TimeoutError, asyncio.TimeoutError)

#: The errors worth another attempt: the upstream's 5xx (``raise_for_status`` carries its
#: Retry-After), broken connections, timeouts (the attempt timeout's ``CallTimeoutError``
#: is a ``TimeoutError``), and an invalid vector (the next answer may be fine). A 4xx is
#: raised as a ValueError, which is not retried; nor is an open breaker's
#: ``CircuitOpenError``: while the upstream is down, failing at once is the point.
RETRY_ON: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    *TIMEOUTS,
    OutputValidationError,
)

#: The name of the demo's fleet of replicas: its column in the report, and every
#: replica's gateway (so that their batch functions share one name, ``fleet.embed``).
FLEET = "fleet"

#: Texts longer than this are refused by input validation (422) before any work is done.
MAX_TEXT = 2048


@dataclass(frozen=True, slots=True)
class ResilienceSettings:
    """How hard the resilient gateway tries, scaled to the client's patience and the run.

    Attributes:
        deadline: retrying stops before this many seconds (shorter than the client's
            timeout, so the gateway answers before the client gives up).
        attempt_timeout: one upstream call is abandoned after this many seconds.
        max_retries: retries after the first attempt.
        base_delay: the first backoff wait (a server's Retry-After replaces it).
        max_delay: no wait is longer, Retry-After included.
        cache_ttl: how long a fetched vector is served from the cache.
        breaker_window: the breaker judges the failure ratio over this many seconds...
        breaker_minimum_calls: ...once it holds at least this many attempts.
        breaker_open_for: an open breaker fails calls at once for this long, then lets
            one trial call through.
        max_concurrent: upstream requests in flight at once (the bulkhead)...
        max_waiting: ...and attempts that may queue for a slot.
        batch_size: texts per upstream request at most (``@batch``'s ``max_size``; 1
            fetches every text in a request of its own)...
        batch_wait: ...and how long a request gathers texts at most, in seconds.
        dim: the dimension of a correct vector.
    """

    deadline: float = 1.5
    attempt_timeout: float = 0.3
    max_retries: int = 4
    base_delay: float = 0.05
    max_delay: float = 1.0
    cache_ttl: float = 60.0
    breaker_window: float = 2.0
    breaker_minimum_calls: int = 20
    breaker_open_for: float = 0.5
    max_concurrent: int = 32
    max_waiting: int = 256
    batch_size: int = 32
    batch_wait: float = 0.005
    dim: int = 768

    @classmethod
    def for_client_timeout(
        cls, timeout: float, *, duration: float = 60.0, dim: int = 768
    ) -> ResilienceSettings:
        """Settings that give up before a client with ``timeout`` seconds does.

        Args:
            timeout: the client's patience, in seconds.
            duration: how long the traffic lasts; cached vectors stay fresh that long
                (a text's embedding does not change during a run).
            dim: the dimension of a correct vector.
        """
        deadline = 0.75 * timeout
        return cls(
            deadline=deadline,
            attempt_timeout=min(0.3, deadline / 3),
            max_delay=min(1.0, deadline / 2),
            cache_ttl=duration,
            # A client arriving while the upstream is down fails fast; a quarter of its
            # patience later a trial call checks whether the upstream is back.
            breaker_window=timeout,
            breaker_open_for=timeout / 4,
            dim=dim,
        )


@dataclass(frozen=True, slots=True)
class FleetLimit:
    """The upstream rate limit of a fleet of gateways, shared through Redis.

    Attributes:
        rate: upstream requests per second, for the whole fleet.
        burst: requests that may start back to back after a quiet spell.
        max_wait: the longest a request waits for its turn; one that would wait longer is
            refused (and the gateway answers 503).
        name: the shared name every replica uses.
    """

    rate: float
    burst: int = 5
    max_wait: float = 0.5
    name: str = "buttress-demo.upstream"


def resilience_policy(
    settings: ResilienceSettings,
    *,
    cache_store: CacheStore | None = None,
    fleet: FleetStore | None = None,
    limit: FleetLimit | None = None,
) -> Policy:
    """The resilient gateway's decorators, as one :func:`buttress.policy`.

    Outermost first, per text: monitor, validate (input), cache (single-flight); then
    batch; then per upstream request: retry, circuit_breaker, bulkhead, (rate_limit,)
    memory_guard, attempt_timeout, validate_output. Output validation is innermost, so a
    request that brought back an invalid vector is a failed attempt: retried, counted by
    the breaker, never cached.

    A replica of a fleet passes what it shares with the others: ``cache_store`` (a
    :class:`~buttress.RedisStore`) for the cache, ``fleet`` (a
    :class:`~buttress.FleetStore`) for the circuit breaker and, with ``limit``, the
    upstream rate limit.
    """
    vector = Annotated[np.ndarray, ArraySpec(shape=(settings.dim,), dtype="float32", finite=True)]
    cache: dict[str, Any] = {"ttl": settings.cache_ttl}
    if cache_store is None:
        cache["maxsize"] = 100_000
    else:
        # Every replica's cache must carry the same name to share the store's entries.
        cache.update(store=cache_store, name=f"{FLEET}.embed.one")
    breaker: dict[str, Any] = {}
    if fleet is not None:
        # Shared by the fleet: one replica's failures open it for all. Named as the batch
        # function, so that transitions a replica learns from Redis reach its EventTally.
        breaker = {"store": fleet, "name": f"{FLEET}.embed"}
    shared: dict[str, Any] = {}
    if limit is not None:
        shared["rate_limit"] = {
            "rate": limit.rate,
            "burst": limit.burst,
            "max_wait": limit.max_wait,
            **({} if fleet is None else {"store": fleet, "name": limit.name}),
        }
    return policy(
        monitor={"slow_threshold": settings.deadline / 2},
        validate={"item": Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT)]},
        cache=cache,
        batch={"max_size": settings.batch_size, "max_wait": settings.batch_wait},
        retry={
            "max_retries": settings.max_retries,
            "base_delay": settings.base_delay,
            "max_delay": settings.max_delay,
            "deadline": settings.deadline,
            "exceptions": RETRY_ON,
            "respect_retry_after": True,
        },
        circuit_breaker={
            "failure_ratio": 0.5,
            "minimum_calls": settings.breaker_minimum_calls,
            "window": settings.breaker_window,
            "open_for": settings.breaker_open_for,
            # Refusals by our own bulkhead, rate limit or memory guard say nothing about
            # the upstream.
            "exclude": (BulkheadFullError, RateLimitExceeded, MemoryPressureError),
            **breaker,
        },
        bulkhead={
            "max_concurrent": settings.max_concurrent,
            "max_waiting": settings.max_waiting,
            "wait_timeout": settings.attempt_timeout,
        },
        **shared,
        # A batch's JSON and its parsing take a few MiB at most.
        memory_guard={"max_percent": 95.0, "reserve": "4MiB"},
        attempt_timeout=settings.attempt_timeout,
        validate_output={"spec": list[vector]},
    )


@dataclass
class EventTally:
    """What buttress's decorators did for one decorated function, counted from events.

    ``start()`` subscribes to ``buttress.events`` and counts the events whose ``function``
    is ``function``, or ``function + ".one"`` for a batch function's single-item call
    (every decorator names the function it wraps by its qualified name, the breaker
    included, since each layer's wrapper carries the original's name); ``stop()``
    unsubscribes.
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
    invalid_input: int = 0
    bulkhead_rejections: int = 0
    memory_rejections: int = 0
    attempt_timeouts: int = 0
    batches: int = 0
    batched_texts: int = 0
    rate_waits: int = 0
    rate_refusals: int = 0
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
        if event.function != self.function and event.function != self.function + ".one":
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
            else:
                self.invalid_input += 1
        elif isinstance(event, BulkheadRejected):
            self.bulkhead_rejections += 1
        elif isinstance(event, MemoryGuardDecision) and event.action == "rejected":
            self.memory_rejections += 1
        elif isinstance(event, TimedOut):
            self.attempt_timeouts += 1
        elif isinstance(event, RateLimited):
            if event.rejected:
                self.rate_refusals += 1
            else:
                self.rate_waits += 1
        elif isinstance(event, BatchDispatched):
            self.batches += 1
            self.batched_texts += event.size

    @property
    def mean_batch(self) -> float:
        """Texts per upstream request, on average (0 before the first)."""
        return self.batched_texts / self.batches if self.batches else 0.0


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
    """Fetches through a :func:`buttress.policy`; see :func:`resilience_policy`.

    The policy decorates the batch function, which makes one upstream request for a list
    of texts; ``batched`` is the decorated batch function and ``fetch`` its single-text
    call, ``batched.one``. A policy without a ``batch`` layer decorates a single-text
    fetch instead, and the texts it fetches at the same moment are still batched beneath
    it (``@batch`` sized by ``settings.batch_size`` and ``settings.batch_wait``).

    Args:
        upstream_url: the embeddings endpoint.
        policy: the decorators; by default ``resilience_policy(settings)``.
        settings: used for the default policy, and for the batching.
        name: names the gateway; its batch function is ``<name>.embed`` (its single-text
            call ``<name>.embed.one``), which is how events, logs and metrics tell this
            gateway's calls from anyone else's.
    """

    kind = "resilient"

    def __init__(
        self,
        upstream_url: str,
        *,
        policy: Policy | None = None,
        settings: ResilienceSettings | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(upstream_url, name=name)
        self.settings = settings if settings is not None else ResilienceSettings()
        self.policy = policy if policy is not None else resilience_policy(self.settings)

        async def embed(texts: list[str]) -> list[Vector]:
            return await self._fetch_batch(texts)

        # Set before decorating: each decorator reads the name once, when it wraps.
        embed.__qualname__ = f"{self.name}.embed"
        self.batched: Any
        if "batch" in self.policy.layers:
            self.batched = self.policy(embed)
            self.fetch: Fetch = self.batched.one
        else:
            batched = batch(
                max_size=self.settings.batch_size, max_wait=self.settings.batch_wait
            )(embed)
            self.batched = batched

            async def embed_one(text: str) -> Vector:
                return await batched.one(text)

            embed_one.__qualname__ = f"{self.name}.embed.one"
            self.fetch = self.policy(embed_one)
        self.tally = EventTally(embed.__qualname__)

    @property
    def layer_names(self) -> tuple[str, ...]:
        layers = self.policy.layers
        return layers if "batch" in layers else (*layers, "batch")

    async def start(self) -> None:
        self.tally.start()
        await super().start()

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            self.tally.stop()

    async def _fetch_batch(self, texts: list[str]) -> list[Vector]:
        """One upstream request for the texts gathered by ``@batch``."""
        assert self._session is not None
        self.stats.upstream_calls += 1
        async with self._session.post(self.upstream_url, json={"texts": texts}) as upstream:
            if 400 <= upstream.status < 500:
                # Our request is wrong: asking again will not help (ValueError is not retried).
                raise ValueError(f"the upstream refused the request: {upstream.status}")
            upstream.raise_for_status()
            payload = await upstream.json()
        return [np.asarray(vector, dtype=np.float32) for vector in payload["embeddings"]]

    async def _answer(self, text: str) -> web.Response:
        try:
            vector = await self.fetch(text)
        except Exception as exc:
            status, reason = failure_status(exc)
            return web.json_response({"error": reason}, status=status)
        return web.json_response({"text": text, "embedding": vector.tolist()})


def failure_status(exc: Exception) -> tuple[int, str]:
    """The HTTP status and reason a gateway answers when fetching failed with ``exc``."""
    if isinstance(exc, InputValidationError):
        return 422, f"invalid request: {exc}"
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
        # Shed by the breaker, the bulkhead or the memory guard.
        return 503, f"{type(exc).__name__}: {exc}"
    return 500, type(exc).__name__
