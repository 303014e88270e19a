"""@circuit_breaker: stop calling a dependency that keeps failing, and try it again later.

:class:`CircuitBreaker` is the state machine: plain code, no I/O, no waiting. It is
consulted twice per call (admit? then: how did it go?), each time under a
``threading.Lock`` held only for the few attribute updates, never while the call runs, so
concurrent calls through one breaker never queue behind each other (pybreaker holds its
lock around the whole call). The two shells at the bottom only ask, call and report.

States: ``closed`` (calls pass; outcomes are counted over a sliding time window),
``open`` (calls fail at once with :class:`CircuitOpenError`) and ``half_open`` (a few
trial calls decide between closing and opening again).

A stream's outcome is what counts for it (:class:`_StreamCall`), and a block (``with
breaker:`` / ``async with breaker:``) is admitted and counted like a call, through the
same three engine methods: acquire, then record or on_error (or release).
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import Any, Concatenate, Final, Literal, ParamSpec, Protocol, TypeVar, overload

from buttress import _clock, _registry, _settings
from buttress._blocks import Entries, caller_name
from buttress._caching._naming import shared_name
from buttress._declare import Decorate, declare
from buttress._errors import (
    CircuitOpenError,
    ConfigurationError,
    RejectedError,
    SharedSettingsError,
    SharedStateError,
    is_fatal,
)
from buttress._events import CircuitRejected, CircuitStateChanged, events
from buttress._redis import INTERVAL, FleetStore, syncer
from buttress._settings import ExceptionTypes
from buttress._streams import Outcome, Session, async_stream_shell, sync_stream_shell
from buttress._wrapping import WrapperFactory, function_name, stack_name, wrap

from ._fleet_breaker import BreakerLink, FleetReply
from ._window import Window

__all__ = ["BreakerState", "BreakerStats", "CircuitBreaker", "circuit_breaker"]

P = ParamSpec("P")
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
T2 = TypeVar("T2")
S = TypeVar("S")
P2 = ParamSpec("P2")
Q = ParamSpec("Q")

BreakerState = Literal["closed", "open", "half_open"]
_CLOSED: Final = "closed"
_OPEN: Final = "open"
_HALF_OPEN: Final = "half_open"
_STATES: Final[dict[str, BreakerState]] = {
    "closed": _CLOSED,
    "open": _OPEN,
    "half_open": _HALF_OPEN,
}

# Indices of the window's counters.
_CALLS, _FAILURES, _SLOW = 0, 1, 2


@dataclass(frozen=True, slots=True)
class BreakerStats:
    """A snapshot of one breaker.

    Attributes:
        name: the breaker's name.
        state: ``"closed"``, ``"open"`` or ``"half_open"``.
        calls: outcomes counted: over the window when closed, trial calls when half-open,
            0 when open.
        failures: how many of ``calls`` failed.
        slow_calls: how many of ``calls`` took ``slow_call_duration`` or longer.
        failure_ratio: ``failures / calls`` (0 without calls).
        slow_call_ratio: ``slow_calls / calls`` (0 without calls).
        rejected: calls refused since the breaker was created.
        times_opened: how often it has opened since it was created.
        retry_at: when open, the clock reading (``buttress`` monotonic seconds) at which
            it admits a trial call; ``None`` otherwise or when forced open.
        forced: true after :meth:`CircuitBreaker.force_open` until
            :meth:`CircuitBreaker.reset`.
    """

    name: str
    state: BreakerState
    calls: int
    failures: int
    slow_calls: int
    failure_ratio: float
    slow_call_ratio: float
    rejected: int
    times_opened: int
    retry_at: float | None
    forced: bool


@dataclass(frozen=True, init=False)
class _Settings:
    """The settings of one ``@circuit_breaker(...)``, compiled; its constructor declares them.

    Breakers sharing a name (in one store, or none) must agree on all of them but the
    name and the store (equality and the ``repr`` leave those out). See
    :func:`circuit_breaker` for what each means.
    """

    name: str | None = field(compare=False, repr=False)
    failure_ratio: float
    minimum_calls: int
    window: float
    open_for: float
    half_open_calls: int
    slow_call_duration: float | None
    slow_call_ratio: float
    exceptions: tuple[type[BaseException], ...]
    exclude: tuple[type[BaseException], ...]
    store: FleetStore | None = field(compare=False, repr=False)

    def __init__(
        self,
        *,
        name: str | None = None,
        failure_ratio: float = 0.5,
        minimum_calls: int = 20,
        window: float | timedelta = 30.0,
        open_for: float | timedelta = 15.0,
        half_open_calls: int = 1,
        slow_call_duration: float | timedelta | None = None,
        slow_call_ratio: float = 1.0,
        exceptions: ExceptionTypes = (Exception,),
        exclude: ExceptionTypes = (),
        store: FleetStore | None = None,
    ) -> None:
        set_ = object.__setattr__  # frozen: set once, here
        set_(self, "failure_ratio", _settings.ratio(failure_ratio, "failure_ratio"))
        set_(self, "minimum_calls", _settings.positive_int(minimum_calls, "minimum_calls"))
        set_(self, "window", _settings.seconds(window, "window", allow_zero=False))
        set_(self, "open_for", _settings.seconds(open_for, "open_for", allow_zero=False))
        set_(self, "half_open_calls", _settings.positive_int(half_open_calls, "half_open_calls"))
        set_(
            self,
            "slow_call_duration",
            _settings.optional_seconds(slow_call_duration, "slow_call_duration", allow_zero=False),
        )
        set_(self, "slow_call_ratio", _settings.ratio(slow_call_ratio, "slow_call_ratio"))
        set_(self, "exceptions", _settings.exception_types(exceptions, "exceptions"))
        excluded = () if exclude == () else _settings.exception_types(exclude, "exclude")
        set_(self, "exclude", excluded)
        if store is not None and not isinstance(store, FleetStore):
            raise ConfigurationError(f"store must be a FleetStore, got {store!r}")
        set_(self, "store", store)
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigurationError(f"name must be a non-empty string, got {name!r}")
        set_(self, "name", name)


class CircuitBreaker:
    """The state of one circuit breaker, shared by every function decorated with its name.

    Reach it as ``fn.circuit_breaker`` (or ``fn.breaker``), or as what
    ``circuit_breaker(name=...)`` returns. Read :attr:`state` and :meth:`stats`;
    :meth:`reset` closes it and :meth:`force_open` holds it open (a kill switch) until
    the next reset. Calling it decorates a function with this breaker; ``with breaker:``
    and ``async with breaker:`` admit a block as a call (raising
    :class:`CircuitOpenError` when it is refused) and count how the block ends: an
    exception leaving the block is judged as a call's would be (a failure, a success, or
    nothing for cancellation and refusals). Thread safe, and usable from any number of
    event loops at once: it holds no loop-bound state.
    """

    __slots__ = (
        "__weakref__",
        "_blocks",
        "_failure_ratio",
        "_fast",
        "_fleet",
        "_fleet_error",
        "_forced",
        "_generation",
        "_half_open_calls",
        "_judged",
        "_lock",
        "_minimum_calls",
        "_open_for",
        "_permits",
        "_reason",
        "_rejected",
        "_retry_at",
        "_slow_duration",
        "_slow_ratio",
        "_state",
        "_times_opened",
        "_trial_done",
        "_trial_failures",
        "_trial_slow",
        "_window",
        "exceptions",
        "exclude",
        "name",
        "settings",
    )

    def __init__(self, name: str, settings: _Settings) -> None:
        self.name = name
        self.settings = settings
        _registry.breakers.add(self)  # the metrics read every live breaker's state
        self.exceptions = settings.exceptions
        self.exclude = settings.exclude
        self._failure_ratio = settings.failure_ratio
        self._minimum_calls = settings.minimum_calls
        self._open_for = settings.open_for
        self._half_open_calls = settings.half_open_calls
        self._slow_duration = settings.slow_call_duration
        self._slow_ratio = settings.slow_call_ratio
        self._lock = threading.Lock()
        self._window = Window(settings.window, 3)
        self._judged = self._window.head  # the window's head at the last verdict
        self._state: BreakerState = _CLOSED
        # Bumped on every transition. A call carries the generation it was admitted in,
        # and its outcome counts only if the breaker is still in that generation: a call
        # admitted while closed that ends after the breaker opened is not a trial result.
        self._generation = 0
        self._forced = False
        self._retry_at: float | None = None
        self._reason = ""
        self._permits = 0
        self._trial_done = 0
        self._trial_failures = 0
        self._trial_slow = 0
        self._rejected = 0
        self._times_opened = 0
        self._blocks: Entries[tuple[int, float, str]] = Entries()
        # True while a call may pass without the lock: closed, and not refusing calls
        # for the store (fail_open=False and Redis unreachable, or a settings conflict).
        self._fast = True
        #: What callers get instead of a call while the store refuses them.
        self._fleet_error: BaseException | None = None
        self._fleet: BreakerLink | None = None
        store = settings.store
        if store is not None:
            state = store.shared("circuit_breaker", name, _contract(settings), function=name)
            self._fleet = BreakerLink(
                self,
                state,
                failure_ratio=settings.failure_ratio,
                minimum_calls=settings.minimum_calls,
                window=settings.window,
                open_for=settings.open_for,
                half_open_calls=settings.half_open_calls,
                slow_call_duration=settings.slow_call_duration,
                slow_call_ratio=settings.slow_call_ratio,
                retry_wait=INTERVAL,
            )
            syncer(store).add(self._fleet)

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._state}>"

    def __call__(self, fn: Callable[P, T], /) -> BreakerFunction[P, T]:
        """Decorate ``fn`` with this breaker (its calls, or its streams, are counted here)."""
        return wrap(  # type: ignore[no-any-return]
            fn,
            "circuit_breaker",
            sync=_sync_shell(self),
            async_=_async_shell(self),
            stream=_stream_shell(self, sync_stream_shell),
            astream=_stream_shell(self, _async_opener),
            attributes={"circuit_breaker": self, "breaker": self},
        )

    # --- the block --------------------------------------------------------------------

    def __enter__(self) -> CircuitBreaker:
        return self._enter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)

    async def __aenter__(self) -> CircuitBreaker:
        return self._enter()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)

    # The with statement runs two frames above these (through __enter__ or __aenter__).

    def _enter(self) -> CircuitBreaker:
        name = caller_name(2)
        ticket = self.acquire(name)
        entry = (ticket, _clock.monotonic() if self.times_calls else 0.0, name)
        self._blocks.push(entry, depth=2)
        return self

    def _exit(self, exc: BaseException | None) -> None:
        ticket, started, name = self._blocks.pop(depth=2)
        if exc is None:
            self.record(ticket, started, name)
        else:
            self.on_error(ticket, exc, started, name)

    # --- the public handle ------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """``"closed"``, ``"open"`` or ``"half_open"``, as the next call would find it."""
        self._maybe_half_open(self.name)
        return self._state

    @property
    def times_calls(self) -> bool:
        """True when calls must be timed (slow-call tracking is on)."""
        return self._slow_duration is not None

    def stats(self) -> BreakerStats:
        """A frozen snapshot of the state and the counts behind it."""
        self._maybe_half_open(self.name)
        with self._lock:
            fleet = self._fleet
            if fleet is not None and fleet.shared:
                # The fleet's counts at the last sync, and this replica's since.
                calls, failures, slow = fleet.counts
                if self._state is _CLOSED:
                    calls, failures, slow = (
                        calls + fleet.calls,
                        failures + fleet.failures,
                        slow + fleet.slow,
                    )
                elif self._state is _HALF_OPEN:
                    calls, failures, slow = (
                        calls + fleet.trials,
                        failures + fleet.trial_failures,
                        slow + fleet.trial_slow,
                    )
            elif self._state is _CLOSED:
                self._window.touch(_clock.monotonic())
                calls, failures, slow = self._window.totals
            elif self._state is _HALF_OPEN:
                calls, failures, slow = (
                    self._trial_done,
                    self._trial_failures,
                    self._trial_slow,
                )
            else:
                calls = failures = slow = 0
            return BreakerStats(
                name=self.name,
                state=self._state,
                calls=calls,
                failures=failures,
                slow_calls=slow,
                failure_ratio=failures / calls if calls else 0.0,
                slow_call_ratio=slow / calls if calls else 0.0,
                rejected=self._rejected,
                times_opened=self._times_opened,
                retry_at=self._retry_at,
                forced=self._forced,
            )

    def reset(self) -> None:
        """Close the breaker and forget every counted outcome (also ends a forced open).

        A shared breaker closes here at once, and for the whole fleet at the next sync.
        """
        with self._lock:
            self._forced = False
            change = self._transition(_CLOSED, _clock.monotonic(), "reset")
            self._command("reset")
        self._announce(change, self.name)

    def force_open(self) -> None:
        """Open the breaker and keep it open, refusing every call, until :meth:`reset`.

        A shared breaker opens here at once, and for the whole fleet at the next sync.
        """
        with self._lock:
            self._forced = True
            change = self._transition(_OPEN, _clock.monotonic(), "forced open")
            self._retry_at = None
            self._command("force_open")
        self._announce(change, self.name)

    def _command(self, command: str) -> None:
        # The lock is held: send ``command`` to the fleet with the next sync.
        fleet = self._fleet
        if fleet is not None:
            fleet.forget()
            fleet.command = command

    # --- the engine: called by the shells ---------------------------------------------

    def acquire(self, function: str) -> int:
        """Admit a call and return its ticket, or raise :class:`CircuitOpenError`."""
        # Lock-free when closed. Transitions write the state before the generation, and
        # this reads them in the other order: a ticket admitted here belongs to a closed
        # generation, or to one already superseded, whose outcome is then ignored.
        generation = self._generation
        if self._fast:
            return generation
        return self._acquire_slow(function)

    def _acquire_slow(self, function: str) -> int:
        now = _clock.monotonic()
        change = None
        retry_at: float | None = None
        reason = ""
        with self._lock:
            blocked = self._fleet_error
            if blocked is not None:
                raise copy.copy(blocked)  # a fresh one each time: tracebacks never pile up
            state = self._state
            if state is _CLOSED:
                return self._generation
            fleet = self._fleet
            shared = fleet is not None and fleet.shared
            due = state is _OPEN and self._due(now)
            if due and not shared:
                change = self._transition(_HALF_OPEN, now, "")
                state = _HALF_OPEN
            if state is _HALF_OPEN and self._permits > 0:
                self._permits -= 1
                ticket = self._generation
            else:
                self._rejected += 1
                ticket = -1
                retry_at = self._retry_at if state is _OPEN else None
                reason = self._reason
                if fleet is not None and shared and (due or state is _HALF_OPEN):
                    # Trial permits are the fleet's: ask for one at the next sync.
                    fleet.want += 1
                    if due:
                        retry_at = now + fleet.retry_wait
        self._announce(change, function)
        if ticket >= 0:
            return ticket
        if events.active:
            events.emit(CircuitRejected(function=function, breaker=self.name))
        raise self._refusal(function, state, retry_at, reason, now)

    def record(
        self,
        ticket: int,
        started: float,
        function: str,
        failed: bool = False,
        duration: float | None = None,
    ) -> None:
        """Count the outcome of an admitted call: a success, or a failure if ``failed``.

        Slow-call tracking measures ``duration`` when given (a stream's time to its first
        item), else the time since ``started``.
        """
        now = _clock.monotonic()
        limit = self._slow_duration
        if duration is None:
            duration = now - started
        slow = limit is not None and duration >= limit
        change = None
        with self._lock:
            if ticket != self._generation:
                return
            if self._state is _CLOSED:
                window = self._window
                window.touch(now)
                counts, totals = window.current, window.totals
                counts[_CALLS] += 1
                totals[_CALLS] += 1
                if failed:
                    counts[_FAILURES] += 1
                    totals[_FAILURES] += 1
                if slow:
                    counts[_SLOW] += 1
                    totals[_SLOW] += 1
                calls = totals[_CALLS]
                minimum = self._minimum_calls
                fleet = self._fleet
                if fleet is not None and fleet.shared:
                    # The fleet's verdict, at the next sync. The local window counts on,
                    # for the fallback should Redis go.
                    fleet.calls += 1
                    fleet.failures += failed
                    fleet.slow += slow
                # A quick success only lowers the ratios, so it needs no verdict unless it
                # completes minimum_calls or outcomes left the window since the last one.
                elif calls >= minimum and (
                    failed or slow or calls == minimum or window.head != self._judged
                ):
                    self._judged = window.head
                    reason = self._verdict(calls, totals[_FAILURES], totals[_SLOW])
                    if reason:
                        reason += f" within {window.seconds:g}s"
                        change = self._transition(_OPEN, now, reason)
            elif self._state is _HALF_OPEN:
                self._trial_done += 1
                self._trial_failures += failed
                self._trial_slow += slow
                fleet = self._fleet
                if fleet is not None and fleet.shared:
                    fleet.trials += 1
                    fleet.trial_failures += failed
                    fleet.trial_slow += slow
                    return  # the fleet's trials decide, at the next sync
                planned = self._half_open_calls
                # Open as soon as the trials cannot come out well, close when all are in.
                reason = self._verdict(planned, self._trial_failures, self._trial_slow)
                if reason:
                    change = self._transition(_OPEN, now, reason + " in half-open trials")
                elif self._trial_done >= planned:
                    change = self._transition(_CLOSED, now, "")
        if change is not None:
            self._announce(change, function)

    def on_error(
        self,
        ticket: int,
        exc: BaseException,
        started: float,
        function: str,
        duration: float | None = None,
    ) -> None:
        """Count a call that raised ``exc``: a failure, a success, or nothing at all.

        Cancellation, ``exclude`` types and refusals by buttress's own layers below the
        breaker (:class:`RejectedError`: a full bulkhead, a rate limit, memory pressure)
        count as nothing (a half-open permit is given back): the dependency was never
        asked. ``exceptions`` types are failures; any other error counts as a success,
        since the dependency did answer (a ``ValueError`` about the caller's input).
        """
        if is_fatal(exc) or isinstance(exc, (RejectedError, *self.exclude)):
            self.release(ticket)
        else:
            self.record(ticket, started, function, isinstance(exc, self.exceptions), duration)

    def release(self, ticket: int) -> None:
        """Forget an admitted call without counting it, returning its half-open permit."""
        with self._lock:
            if ticket == self._generation and self._state is _HALF_OPEN:
                self._permits += 1

    def _verdict(self, calls: int, failures: int, slow: int) -> str:
        """Why the breaker should open on these counts, or ``""``."""
        if failures and failures >= self._failure_ratio * calls:
            return f"{failures} of {calls} calls failed"
        limit = self._slow_duration
        if limit is not None and slow and slow >= self._slow_ratio * calls:
            return f"{slow} of {calls} calls took {limit:g}s or longer"
        return ""

    def _due(self, now: float) -> bool:
        return not self._forced and self._retry_at is not None and now >= self._retry_at

    def _maybe_half_open(self, function: str) -> None:
        # Open turns half-open lazily, when someone looks: no timer thread. A shared
        # breaker turns half-open when the fleet's does.
        if self._state is not _OPEN:
            return
        fleet = self._fleet
        if fleet is not None and fleet.shared:
            return
        now = _clock.monotonic()
        with self._lock:
            change = (
                self._transition(_HALF_OPEN, now, "")
                if self._state is _OPEN and self._due(now)
                else None
            )
        self._announce(change, function)

    def _transition(
        self, new: BreakerState, now: float, reason: str
    ) -> tuple[BreakerState, BreakerState] | None:
        """Move to ``new`` (the lock is held); return ``(old, new)``, or ``None`` if no move."""
        old = self._state
        self._window.clear()
        self._permits = self._half_open_calls if new is _HALF_OPEN else 0
        self._trial_done = self._trial_failures = self._trial_slow = 0
        if new is _OPEN:
            self._retry_at = now + self._open_for
            self._reason = reason
            if old is not _OPEN:
                self._times_opened += 1
        else:
            self._retry_at = None
        if old is new:
            return None
        self._state = new
        self._fast = new is _CLOSED and self._fleet_error is None
        self._generation += 1  # after the state: see acquire()
        return old, new

    # --- the fleet: called by the store's sync thread ---------------------------------

    def _follow(self, reply: FleetReply) -> None:
        """Copy the fleet's state (a sync's reply) into this replica's breaker."""
        fleet = self._fleet
        assert fleet is not None
        now = _clock.monotonic()
        change = None
        with self._lock:
            self._unblock()
            fleet.counts = (reply.calls, reply.failures, reply.slow_calls)
            if fleet.command:
                return  # reset() or force_open() since the sync left: its reply decides
            state = _STATES[reply.state]
            if state is not self._state:
                self._forced = reply.forced
                change = self._transition(state, now, reply.reason)
                self._permits = 0  # the fleet's trial permits are granted one by one
                fleet.forget()
            elif reply.generation != fleet.generation and fleet.generation >= 0:
                # The fleet went round (closed, open, half-open, closed) between two
                # syncs: a new generation of the same state, with fresh counts.
                self._transition(state, now, reply.reason)
                self._permits = 0
                self._generation += 1
                fleet.forget()
            fleet.generation = reply.generation
            if state is _OPEN:
                self._forced = reply.forced
                self._reason = reply.reason
                self._retry_at = None if reply.retry_in is None else now + reply.retry_in
            elif state is _HALF_OPEN:
                self._permits += reply.granted
        self._announce(change, self.name)

    def _fleet_changed(self, shared: bool, error: BaseException | None, first: bool) -> None:
        """Redis answers again (``shared``), or not: refuse calls with ``error`` when the
        store says so, else decide alone from this replica's own counts."""
        with self._lock:
            if shared:
                self._unblock()
            elif isinstance(error, (SharedStateError, SharedSettingsError)):
                self._fleet_error = error
                self._fast = False
            else:
                self._unblock()
                if first and self._state is _HALF_OPEN:
                    # The fleet's permits are out of reach: run this replica's trials.
                    self._permits = max(0, self._half_open_calls - self._trial_done)

    def _unblock(self) -> None:
        # The lock is held.
        if self._fleet_error is not None:
            self._fleet_error = None
            self._fast = self._state is _CLOSED

    def _announce(self, change: tuple[BreakerState, BreakerState] | None, function: str) -> None:
        if change is not None and events.notable():
            events.emit(
                CircuitStateChanged(
                    function=function, breaker=self.name, old=change[0], new=change[1]
                )
            )

    def _refusal(
        self,
        function: str,
        state: BreakerState,
        retry_at: float | None,
        reason: str,
        now: float,
    ) -> CircuitOpenError:
        if state is _HALF_OPEN:
            message = (
                f"circuit breaker {self.name!r} is half-open and its "
                f"{self._half_open_calls} trial call(s) are in flight; {function}() was "
                "not called"
            )
            retry_after = None
        elif retry_at is None:
            message = (
                f"circuit breaker {self.name!r} is forced open until reset(); "
                f"{function}() was not called"
            )
            retry_after = None
        else:
            retry_after = max(0.0, retry_at - now)
            message = (
                f"circuit breaker {self.name!r} is open ({reason}); {function}() was not "
                f"called; a trial call will be admitted in {retry_after:.3g}s"
            )
        return CircuitOpenError(
            message,
            breaker=self.name,
            state=state,
            retry_after=retry_after,
            retry_at=retry_at,
            function=function,
        )


# --- sharing by name -------------------------------------------------------------------

# By name and store: a name shared through a FleetStore belongs to that store's fleet.
_by_name: weakref.WeakValueDictionary[tuple[str, FleetStore | None], CircuitBreaker]
_by_name = weakref.WeakValueDictionary()
_by_name_lock = threading.Lock()


def _shared(name: str, settings: _Settings) -> CircuitBreaker:
    """The breaker called ``name``, created on first use; settings must match."""
    key = (name, settings.store)
    with _by_name_lock:
        breaker = _by_name.get(key)
        if breaker is None:
            breaker = CircuitBreaker(name, settings)
            _by_name[key] = breaker
        elif breaker.settings != settings:
            found = _settings.differences(
                _settings.compared_fields(breaker.settings), _settings.compared_fields(settings)
            )
            raise ConfigurationError(_settings.name_conflict("circuit breaker", name, found))
        return breaker


def _contract(settings: _Settings) -> dict[str, object]:
    """What every replica sharing a breaker's name must agree on (compared in Redis)."""

    def names(types: tuple[type[BaseException], ...]) -> str:
        return ",".join(sorted(f"{kind.__module__}.{kind.__qualname__}" for kind in types))

    return {
        "failure_ratio": settings.failure_ratio,
        "minimum_calls": settings.minimum_calls,
        "window": settings.window,
        "open_for": settings.open_for,
        "half_open_calls": settings.half_open_calls,
        "slow_call_duration": settings.slow_call_duration,
        "slow_call_ratio": settings.slow_call_ratio,
        "exceptions": names(settings.exceptions),
        "exclude": names(settings.exclude),
    }


# --- the shells --------------------------------------------------------------------------


def _sync_shell(breaker: CircuitBreaker) -> WrapperFactory:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        stack = stack_name(fn)
        acquire, record, on_error = breaker.acquire, breaker.record, breaker.on_error
        timed = breaker.times_calls

        def circuit_breaker_wrapper(*args: Any, **kwargs: Any) -> Any:
            ticket = acquire(stack.value)
            started = _clock.monotonic() if timed else 0.0
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                on_error(ticket, exc, started, stack.value)
                raise
            record(ticket, started, stack.value)
            return result

        return circuit_breaker_wrapper

    return build


def _async_shell(breaker: CircuitBreaker) -> WrapperFactory:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        stack = stack_name(fn)
        acquire, record, on_error = breaker.acquire, breaker.record, breaker.on_error
        timed = breaker.times_calls

        async def circuit_breaker_wrapper(*args: Any, **kwargs: Any) -> Any:
            ticket = acquire(stack.value)
            started = _clock.monotonic() if timed else 0.0
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                on_error(ticket, exc, started, stack.value)
                raise
            record(ticket, started, stack.value)
            return result

        return circuit_breaker_wrapper

    return build


class _StreamCall(Session):
    """One stream through a breaker: admitted once, counted by how it ends.

    Completed: a success; failed (before or after its first item): judged as a call's
    error would be; cancelled or abandoned by its caller (``aclose()``, ``break`` and
    garbage collection): neither, and a half-open permit is given back. With slow-call
    tracking, a stream is slow when its first item took ``slow_call_duration`` or longer
    (a stream that ends without items: when it lasted that long).
    """

    __slots__ = ("breaker", "first", "name", "started", "ticket")

    def __init__(self, breaker: CircuitBreaker, name: str, ticket: int) -> None:
        self.breaker = breaker
        self.name = name
        self.ticket = ticket
        self.started = _clock.monotonic() if breaker.times_calls else 0.0
        self.first: float | None = None

    def end(self, outcome: Outcome, error: BaseException | None) -> None:
        breaker, ticket = self.breaker, self.ticket
        if outcome == "completed":
            breaker.record(ticket, self.started, self.name, duration=self.first)
        elif outcome == "failed" and error is not None:
            breaker.on_error(ticket, error, self.started, self.name, self.first)
        else:
            breaker.release(ticket)


class _TimedStreamCall(_StreamCall):
    __slots__ = ()

    watches_items = True

    def item(self, item: Any) -> None:
        if self.first is None:
            self.first = _clock.monotonic() - self.started


def _async_opener(open_run: Callable[..., Session]) -> WrapperFactory:
    """``async_stream_shell`` around a plain ``open_run`` (a breaker never waits)."""

    async def opened(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Session:
        return open_run(args, kwargs)

    return async_stream_shell(opened)


def _stream_shell(breaker: CircuitBreaker, shell: Callable[..., Any]) -> WrapperFactory:
    kind = _TimedStreamCall if breaker.times_calls else _StreamCall

    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        stack = stack_name(fn)

        def open_run(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Session:
            return kind(breaker, stack.value, breaker.acquire(stack.value))

        return shell(open_run)(fn)  # type: ignore[no-any-return]

    return build


class BreakerFunction(Protocol[P, T_co]):
    """A function decorated with ``@circuit_breaker``: callable as before, plus its breaker.

    The breaker is ``.circuit_breaker``, named after the decorator, and ``.breaker``.
    """

    circuit_breaker: CircuitBreaker
    breaker: CircuitBreaker

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T_co: ...

    # Decorated methods bind like functions: the instance fills the first parameter.
    @overload
    def __get__(
        self, instance: None, owner: type[Any] | None = None
    ) -> BreakerFunction[P, T_co]: ...

    @overload
    def __get__(
        self: BreakerFunction[Concatenate[S, P2], T2], instance: S, owner: type[Any] | None = None
    ) -> BreakerFunction[P2, T2]: ...


class _Decorator(Protocol):
    def __call__(self, fn: Callable[P, T], /) -> BreakerFunction[P, T]: ...


class _CircuitBreaker(Protocol[Q]):
    """``@circuit_breaker`` bare, or called with the settings ``Q`` first."""

    # The settings are keyword-only: the two forms never match one call.
    @overload
    def __call__(self, fn: Callable[P, T], /) -> BreakerFunction[P, T]: ...  # type: ignore[overload-overlap]

    # Named, it returns the named breaker (settings then checked at run time only).
    @overload
    def __call__(self, *, name: str, **settings: Any) -> CircuitBreaker: ...

    @overload
    def __call__(self, *args: Q.args, **kwargs: Q.kwargs) -> _Decorator: ...


def _declared(
    settings: Callable[Q, _Settings],
) -> Callable[[Callable[[_Settings], Decorate]], _CircuitBreaker[Q]]:
    return lambda build: declare(settings, build)


@_declared(_Settings)
def circuit_breaker(settings: _Settings) -> Decorate:
    """Fail fast while a dependency keeps failing; let a few trial calls test its recovery.

    Outcomes are counted over a sliding time window of ``window`` seconds (kept in ten
    buckets, so old outcomes leave it in steps of ``window / 10``). Once the window holds
    at least ``minimum_calls`` outcomes and the share of failures reaches
    ``failure_ratio`` (or the share of slow calls reaches ``slow_call_ratio``), the
    breaker **opens**: calls fail at once with :class:`CircuitOpenError`, without being
    made. After ``open_for`` seconds it turns **half-open** and admits
    ``half_open_calls`` trial calls (others are refused meanwhile); it opens again as
    soon as the trials' failures (or slow calls) reach the same ratios of
    ``half_open_calls``, and **closes** when all trials are in without that. Every
    transition starts a fresh count.

    Works on ``def`` and ``async def`` alike. Its lock is held only for a few attribute
    updates, never while the call runs, so concurrent calls never wait on each other.

    Args:
        name: breakers with the same name share one state (one breaker per dependency,
            whichever functions call it) and must have equal settings. Without a name,
            each decorated function has its own breaker, named after it.
        failure_ratio: share of failed calls, in (0, 1], at which the breaker opens.
        minimum_calls: outcomes the window must hold before a ratio can open it.
        window: length of the sliding window, in seconds or as a ``timedelta``.
        open_for: seconds the breaker stays open before admitting trial calls.
        half_open_calls: trial calls admitted while half-open.
        slow_call_duration: calls taking at least this long (measured with the
            ``buttress`` clock) count as slow, whether they failed or not; ``None``
            turns slow-call tracking off.
        slow_call_ratio: share of slow calls, in (0, 1], at which the breaker opens.
        exceptions: error types counted as failures. Any other error counts as a success
            (the dependency answered; the error is about something else).
        exclude: error types counted as neither success nor failure, even if they match
            ``exceptions``. Cancellation, ``KeyboardInterrupt`` and ``SystemExit`` are
            always treated this way, and a cancelled trial call gives its permit back.

    Raises:
        ConfigurationError: at decoration, for a setting that cannot work, or a ``name``
            already in use with other settings.
        CircuitOpenError: at call time, when the breaker refuses the call. It carries
            ``retry_after``, which ``@retry`` honours like an HTTP ``Retry-After``.

    The wrapper carries the breaker as ``fn.circuit_breaker`` (also ``fn.breaker``), a
    :class:`CircuitBreaker` with ``.state``, ``.stats()``, ``.reset()`` and
    ``.force_open()``. Transitions emit :class:`CircuitStateChanged` and refusals
    :class:`CircuitRejected`. Given a ``name``, ``circuit_breaker(...)`` returns that
    named :class:`CircuitBreaker` itself, which decorates (``db = circuit_breaker(
    name="db")``, then ``@db``) and guards blocks (``async with db:``); any breaker
    guards blocks, ``fn.breaker`` included.

    On a stream (a generator or async-generator function) the breaker admits the stream
    when it is first iterated, and its outcome is what the window records: completed is
    a success; failed, before or after its first item, is judged like a call's error;
    cancelled, or abandoned by the caller (``aclose()``, ``break``), counts as neither.
    With slow-call tracking, a stream is slow when its first item takes
    ``slow_call_duration`` or longer.
    """
    name = settings.name
    if name is not None:
        return _shared(name, settings)

    def decorate(target: Callable[..., Any]) -> Any:
        inner = getattr(target, "__func__", target)
        if settings.store is None:
            return CircuitBreaker(function_name(inner), settings)(target)
        # Shared: replicas know it by the name every process gives it.
        qualname, module = shared_name(inner, None, "circuit_breaker")
        return CircuitBreaker(f"{module}.{qualname}" if module else qualname, settings)(target)

    return decorate
