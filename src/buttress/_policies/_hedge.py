"""@hedge: when a call is slow to answer, start another; the first success wins.

Tail latency of a replicated service (a model server with several replicas, a vector
database behind a load balancer) is mostly bad luck: one slow replica, one GC pause.
Sending a second request after the usual response time has passed cuts the tail at the
price of a few percent more requests ("The Tail at Scale", Dean and Barroso, 2013).

Coroutine functions only: hedging means abandoning the slower attempts, and only a
coroutine can be cancelled; a plain function's losing attempts would run on in threads.
The winner cancels the others, and a caller cancelled from outside cancels them all. On
asyncio the first attempt is awaited in the caller's task (inside a
:class:`~buttress._deadline.Deadline` that a winning hedge expires) and the hedges run in
an anyio task group of a task started by a timer when the delay passes: a call answered in
time never pays for a task group. On trio, where a task cannot be started from a timer,
every attempt runs in a task group of the call's own.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, overload

import anyio
from anyio.abc import TaskGroup

from buttress import _clock, _settings, _tracing
from buttress._deadline import Deadline
from buttress._declare import suggests_keywords
from buttress._errors import ConfigurationError, is_fatal
from buttress._events import HedgeStarted, HedgeWon, events
from buttress._wrapping import WrapperFactory, stack_name, wrap

__all__ = ["HedgeStats", "HedgedFunction", "Hedger", "hedge"]

_get_running_loop = asyncio.events._get_running_loop

P = ParamSpec("P")
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
T2 = TypeVar("T2")
S = TypeVar("S")
P2 = ParamSpec("P2")

_PERCENTILE = re.compile(r"^p(\d+(?:\.\d+)?)$")
_SAMPLES = 200  # latencies kept for a percentile delay
_MIN_SAMPLES = 20  # latencies needed before a percentile delay is trusted
_REFRESH = 16  # new latencies between two recomputations of the percentile


@dataclass(frozen=True, slots=True)
class HedgeStats:
    """A snapshot of one ``@hedge``.

    Attributes:
        calls: calls made since creation.
        hedged_calls: calls that started at least one hedge.
        hedges: hedges started (attempts after the first).
        hedge_wins: calls won by a hedge rather than the first attempt.
        delay: the delay the next call would use, in seconds; ``None`` while a
            percentile delay is still warming up (no hedging yet).
        samples: latencies held for a percentile delay (0 for a fixed delay).
    """

    calls: int
    hedged_calls: int
    hedges: int
    hedge_wins: int
    delay: float | None
    samples: int


class Hedger:
    """The delay policy and counters of one ``@hedge``; reach it as ``fn.hedge``.

    With a percentile delay it keeps the latencies of the last 200 successful attempts
    (each measured from its own start) and recomputes the percentile every 16 new ones.
    Thread safe.
    """

    __slots__ = (
        "_calls",
        "_delay",
        "_fresh",
        "_hedge_wins",
        "_hedged_calls",
        "_hedges",
        "_lock",
        "_samples",
        "max_hedges",
        "quantile",
    )

    def __init__(self, delay: float | None, quantile: float | None, max_hedges: int) -> None:
        self.max_hedges = max_hedges
        #: The percentile as a fraction (0.95 for "p95"), or ``None`` for a fixed delay.
        self.quantile = quantile
        self._delay = delay
        #: First-attempt latencies: (seconds, censored). A censored sample is a first
        #: attempt cut short by a winning hedge: its latency is only known to exceed it.
        self._samples: deque[tuple[float, bool]] = deque(maxlen=_SAMPLES)
        self._fresh = 0
        self._lock = threading.Lock()
        self._calls = self._hedged_calls = self._hedges = self._hedge_wins = 0

    def __repr__(self) -> str:
        what = f"p{self.quantile * 100:g}" if self.quantile is not None else f"{self._delay:g}s"
        return f"<Hedger after {what}, up to {self.max_hedges} hedge(s)>"

    def stats(self) -> HedgeStats:
        """A frozen snapshot of the counters and the current delay."""
        with self._lock:
            return HedgeStats(
                calls=self._calls,
                hedged_calls=self._hedged_calls,
                hedges=self._hedges,
                hedge_wins=self._hedge_wins,
                delay=self._delay,
                samples=len(self._samples),
            )

    # --- the engine -------------------------------------------------------------------

    def begin(self) -> float | None:
        """Count a call; return the delay before its first hedge, or ``None``: no hedging."""
        with self._lock:
            self._calls += 1
            return self._delay

    def hedged(self, attempt: int, function: str) -> None:
        """Attempt number ``attempt`` (2 for the first hedge) is starting."""
        with self._lock:
            self._hedges += 1
            if attempt == 2:
                self._hedged_calls += 1
        if events.active:
            events.emit(HedgeStarted(function=function, attempt=attempt))

    def succeeded(self, attempt: int, first_latency: float | None) -> None:
        """Attempt ``attempt`` won; the first attempt had run ``first_latency`` seconds.

        The percentile is of the *first* attempt's latency, the one a hedge is meant to
        cut short. When a hedge wins, the first attempt's latency is only known to exceed
        ``first_latency`` (a censored sample): recording the winner's latency instead
        would pull the percentile down, hedge earlier, and pull it down further.
        ``first_latency`` is ``None`` when the first attempt failed (nothing learned).
        """
        with self._lock:
            if attempt > 1:
                self._hedge_wins += 1
            quantile = self.quantile
            if quantile is None or first_latency is None:
                return
            self._samples.append((first_latency, attempt > 1))
            self._fresh += 1
            count = len(self._samples)
            if count < _MIN_SAMPLES or (self._fresh < _REFRESH and self._delay is not None):
                return
            self._fresh = 0
            samples = list(self._samples)
        # Sorting 200 samples takes microseconds: done outside the lock, every 16 samples.
        delay = _percentile(samples, quantile)
        with self._lock:
            self._delay = delay


def _percentile(samples: list[tuple[float, bool]], quantile: float) -> float:
    """The nearest-rank percentile of latencies some of which are censored.

    A censored sample ranks above every observed one (its latency is unknown but larger
    than its value). When the rank falls among them, the percentile is above everything
    observed: the best known lower bound is the larger of the slowest observed latency and
    that sample's value, so the delay rises until fewer first attempts are cut short.
    """
    ordered = sorted(samples, key=lambda sample: (sample[1], sample[0]))
    value, censored = ordered[max(0, math.ceil(quantile * len(ordered)) - 1)]
    if not censored:
        return value
    observed = [latency for latency, cut in ordered if not cut]
    return max(value, observed[-1]) if observed else value


class _Race:
    """One hedged call: the attempts in flight and what they have produced."""

    __slots__ = (
        "changed",
        "done",
        "error",
        "failures",
        "finished",
        "first",
        "first_failed",
        "launched",
        "result",
        "runner",
        "started",
        "winner",
    )

    def __init__(self) -> None:
        self.started = _clock.monotonic()
        self.first_failed = False
        #: Set while the hedging loop waits; an attempt that fails sets it to wake it.
        self.changed: anyio.Event | None = None
        self.launched = 0
        self.failures = 0
        self.done = False
        self.winner = 0
        self.result: Any = None
        self.error: BaseException | None = None
        #: On asyncio: the first attempt, run in the caller's task (cancelled when a
        #: hedge wins); the task that runs the hedges once the delay has passed, and
        #: the event it sets when it ends.
        self.first: Deadline | None = None
        self.runner: asyncio.Task[None] | None = None
        self.finished: asyncio.Event | None = None


def _async_shell(hedger: Hedger) -> WrapperFactory:
    total = 1 + hedger.max_hedges

    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        stack = stack_name(fn)
        # Raced attempts run side by side: with tracing on, each gets a span of its own,
        # so what an attempt does (its HTTP call) nests under it and the loser shows as
        # cancelled. The attempt's number is its one attribute.
        span_attributes = [{"buttress.hedge.attempt": n} for n in range(total + 1)]

        async def attempt(
            number: int, race: _Race, scope: anyio.CancelScope, args: Any, kwargs: Any
        ) -> None:
            tracer = _tracing.tracer
            span = None if tracer is None else tracer.start(
                f"{stack.value} attempt", "internal", span_attributes[number]
            )
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                if span is not None:
                    span.end(exc)
                if is_fatal(exc):  # our own cancellation of a loser, or the caller's
                    raise
                race.first_failed |= number == 1
                race.failures += 1
                race.error = exc
                if race.changed is not None:
                    race.changed.set()
                return
            if span is not None:
                span.end(None)
            if race.done:  # two answered in the same instant: the first one won
                return
            race.done = True
            race.winner = number
            race.result = result
            first = None if race.first_failed else _clock.monotonic() - race.started
            hedger.succeeded(number, first)
            if race.first is not None and not race.first_failed:
                race.first.cancel()  # the first attempt, running in the caller's task
            if race.launched - race.failures > 1:
                scope.cancel()  # the losers, and the hedging loop below
            elif race.changed is not None:  # alone: wake the hedging loop, cheaper
                race.changed.set()

        async def hedges(
            race: _Race, group: TaskGroup, delay: float, args: Any, kwargs: Any
        ) -> None:
            # Start attempts race.launched + 1, ... in the group, each once the delay has
            # passed since the previous one (or at once when every attempt in flight has
            # failed), until one succeeds or none is left.
            for number in range(race.launched + 1, total + 1):
                if number > 1:
                    hedger.hedged(number, stack.value)
                race.launched += 1
                group.start_soon(attempt, number, race, group.cancel_scope, args, kwargs)
                if number == total:
                    break
                deadline: float | None = None
                while not race.done and race.failures < race.launched:
                    race.changed = anyio.Event()
                    if deadline is None:
                        with anyio.move_on_after(delay) as waiting:
                            await race.changed.wait()
                        deadline = waiting.deadline
                    else:
                        with anyio.move_on_at(deadline) as waiting:
                            await race.changed.wait()
                    if waiting.cancelled_caught:
                        break
                if race.done:
                    break

        async def run(race: _Race, args: Any, kwargs: Any, delay: float) -> None:
            # The task that runs the hedges of a call whose first attempt runs in the
            # caller's task (asyncio), started when the delay has passed.
            async with anyio.create_task_group() as group:
                await hedges(race, group, delay, args, kwargs)

        def start_hedges(
            loop: asyncio.AbstractEventLoop, race: _Race, args: Any, kwargs: Any, delay: float
        ) -> None:
            # A loop callback (the delay has passed), or the caller once its first attempt
            # failed before it had.
            if race.runner is not None or race.done:
                return
            finished = race.finished = asyncio.Event()
            runner = race.runner = loop.create_task(run(race, args, kwargs, delay))
            # A done callback: it runs even for a task cancelled before it started.
            runner.add_done_callback(lambda _: finished.set())

        async def stop(race: _Race) -> None:
            # Cancel the hedges still running and wait until they have ended: shielded,
            # since a caller cancelled from outside must not leave them behind.
            runner, finished = race.runner, race.finished
            if runner is None or finished is None:
                return
            runner.cancel()
            with anyio.CancelScope(shield=True):
                await finished.wait()
            ended(runner)

        def ended(runner: asyncio.Task[None]) -> None:
            # What the hedges' task ended with: the attempts' own errors are in the race;
            # only what must not be swallowed (KeyboardInterrupt...) ends the task.
            if not runner.cancelled() and (crash := runner.exception()) is not None:
                raise crash

        async def first_in_caller(
            loop: asyncio.AbstractEventLoop, delay: float, args: Any, kwargs: Any
        ) -> Any:
            # asyncio: the first attempt is awaited right here, in the caller's task; a
            # timer starts the hedges in a task of their own only if the delay passes.
            race = _Race()
            race.launched = 1
            race.first = first = Deadline(math.inf)
            timer = loop.call_later(delay, start_hedges, loop, race, args, kwargs, delay)
            tracer = _tracing.tracer
            span = None if tracer is None else tracer.start(
                f"{stack.value} attempt", "internal", span_attributes[1]
            )
            try:
                with first:
                    try:
                        result = await fn(*args, **kwargs)
                    except BaseException as exc:
                        # Here, before the deadline swallows a winning hedge's
                        # cancellation: the span shows the first attempt cancelled.
                        if span is not None:
                            span.end(exc)
                            span = None
                        raise
            except BaseException as exc:
                timer.cancel()
                if is_fatal(exc):  # the caller's cancellation (never ours: swallowed)
                    await stop(race)
                    raise
                race.first_failed = True
                race.failures += 1
                race.error = exc
                if race.runner is None:
                    if race.launched == total:  # pragma: no cover - max_hedges >= 1
                        raise
                    start_hedges(loop, race, args, kwargs, delay)  # hedge at once
                elif race.changed is not None:
                    race.changed.set()
                assert race.finished is not None
                assert race.runner is not None
                try:
                    await race.finished.wait()
                except BaseException:
                    await stop(race)
                    raise
                ended(race.runner)
                return outcome(race)
            timer.cancel()
            if span is not None:
                span.end(None)
            if race.runner is None:  # no hedge started: the common case
                hedger.succeeded(1, _clock.monotonic() - race.started)
                return result
            if not first.expired and not race.done:  # the first attempt won
                race.done = True
                race.winner = 1
                race.result = result
                hedger.succeeded(1, _clock.monotonic() - race.started)
            await stop(race)
            return outcome(race)

        def outcome(race: _Race) -> Any:
            if race.done:
                if race.launched > 1 and events.active:
                    events.emit(
                        HedgeWon(
                            function=stack.value, attempt=race.winner, attempts=race.launched
                        )
                    )
                return race.result
            error, race.error = race.error, None  # no cycle through the race record
            assert error is not None
            raise error

        async def hedge_wrapper(*args: Any, **kwargs: Any) -> Any:
            delay = hedger.begin()
            if delay is None:  # warming up: a plain call, timed for the percentile
                started = _clock.monotonic()
                result = await fn(*args, **kwargs)
                hedger.succeeded(1, _clock.monotonic() - started)
                return result
            loop = _get_running_loop()
            if loop is not None:
                return await first_in_caller(loop, delay, args, kwargs)
            # trio: every attempt in a task group of the call's own.
            race = _Race()
            async with anyio.create_task_group() as group:
                await hedges(race, group, delay, args, kwargs)
            return outcome(race)

        return hedge_wrapper

    return build


#: Why @hedge refuses plain functions.
_WHY = (
    "hedging abandons the slower attempts, which only a coroutine can be: a losing thread "
    "would run on, doing the work twice"
)


class HedgedFunction(Protocol[P, T_co]):
    """A coroutine function decorated with ``@hedge``: callable as before, plus ``.hedge``."""

    hedge: Hedger

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, T_co]: ...

    # Decorated methods bind like functions: the instance fills the first parameter.
    @overload
    def __get__(
        self, instance: None, owner: type[Any] | None = None
    ) -> HedgedFunction[P, T_co]: ...

    @overload
    def __get__(
        self: HedgedFunction[Concatenate[S, P2], T2], instance: S, owner: type[Any] | None = None
    ) -> HedgedFunction[P2, T2]: ...


class _Decorator(Protocol):
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, T]], /) -> HedgedFunction[P, T]: ...


#: Why @hedge refuses streams, and the way out.
_WHY_STREAM = (
    "hedging a stream would run two streams at once and abandon one after its first "
    "item, paying for both. Hedge the coroutine that opens the stream (the request), or "
    "bound its first item with @timeout(first_item=...) under @retry"
)


@suggests_keywords
def hedge(delay: float | timedelta | str, *, max_hedges: int = 1) -> _Decorator:
    """Start another attempt when the first has not answered within ``delay``.

    The first attempt to succeed wins; the others are cancelled at once. An attempt that
    fails does not end the call while others are still running; when every attempt in
    flight has failed, the next hedge starts without waiting for the delay, and when none
    is left the last error is raised. Hedging multiplies requests, so use it only on calls
    that are safe to repeat (reads, idempotent writes).

    Coroutine functions only: the losers must be cancelled, and a thread cannot be.

    Args:
        delay: seconds (or a ``timedelta``) to wait for an answer before each hedge; or a
            percentile of recent latencies such as ``"p95"`` or ``"p99.9"``, computed
            over the last 200 successful attempts. A percentile delay does not hedge
            until 20 latencies are known (the first calls just run), and follows the
            service as it speeds up or slows down.
        max_hedges: extra attempts at most (so ``1 + max_hedges`` in all); each starts
            ``delay`` after the previous one.

    Raises:
        ConfigurationError: at decoration, for a setting that cannot work.
        TypeError: at decoration, for a plain (not ``async``) function.

    Each hedge emits :class:`HedgeStarted`, and a call that hedged emits :class:`HedgeWon`
    with the winning attempt. With tracing on (:func:`buttress.otel.enable`), each raced
    attempt runs in a span of its own. The delay is measured with the event loop's
    clock. On asyncio the first attempt runs in the caller's own task and a timer starts
    the hedges in a task of their own only once the delay has passed, so a call answered
    in time costs about what a timeout costs; on trio each call runs its attempts in a
    task group. The wrapper carries ``fn.hedge``
    (:class:`Hedger`) with ``.stats()``.
    """
    hedges = _settings.positive_int(max_hedges, "max_hedges")
    if isinstance(delay, str):
        match = _PERCENTILE.match(delay.strip().lower())
        percent = float(match.group(1)) if match else -1.0
        if not 0 < percent < 100:
            raise ConfigurationError(
                f"delay must be seconds or a percentile such as 'p95' (between p0 and "
                f"p100, exclusive), got {delay!r}"
            )
        hedger = Hedger(None, percent / 100, hedges)
    else:
        hedger = Hedger(_settings.seconds(delay, "delay"), None, hedges)
    async_ = _async_shell(hedger)

    def decorate(target: Callable[..., Any]) -> Any:
        return wrap(
            target,
            "hedge",
            sync=None,
            async_=async_,
            attributes={"hedge": hedger},
            why=_WHY,
            stream_why=_WHY_STREAM,
        )

    return decorate
