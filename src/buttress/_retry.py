"""@retry: exponential backoff with jitter, a deadline, attempt timeouts and Retry-After.

The engine (:class:`_Retrier`, whose constructor declares the settings) and one call's
state (:class:`_Run`) are plain code: they decide whether to try again and how long to
wait. Every form is a thin shell over them: the decorator's two call shells (which only
call, catch and sleep), its stream session (a stream is retried while no item has reached
the caller; see :class:`_StreamRun`), and the block form, :func:`retrying`
(``for attempt in retrying(...): with attempt: ...``), whose attempts report to the same
:class:`_Run`. Nothing is allocated for a call that succeeds first time but the clock
reading that anchors its deadline.

The retry budget is a policy (:mod:`buttress._policies._budget`) that ``@retry`` consults:
this feature imports that one, never the other way.
"""

from __future__ import annotations

import inspect
import math
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Literal, ParamSpec

from . import _clock, _settings
from ._blocks import caller_name
from ._deadline import Deadline
from ._declare import Decorate, bare_or_called
from ._errors import AttemptTimeoutError, ConfigurationError, RetryError, is_fatal, value_text
from ._events import RetryBudgetExhausted, RetryGaveUp, RetryScheduled, events
from ._policies._budget import RetryBudget
from ._settings import ExceptionTypes
from ._signature import MISSING, CallSignature, signature_of
from ._streams import Restart, Session, async_stream_shell, sync_stream_shell
from ._wrapping import StackName, WrapperFactory, function_name, stack_name, wrap

__all__ = ["Attempt", "Jitter", "Retrying", "StreamResume", "retry", "retry_after", "retrying"]

Q = ParamSpec("Q")

Jitter = Literal["full", "equal", "decorrelated"]
_GaveUp = Literal["attempts", "deadline", "budget"]
_JITTERS: tuple[Jitter | None, ...] = ("full", "equal", "decorrelated", None)


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait, from an error's HTTP ``Retry-After``.

    Looks at, in order: a ``retry_after`` attribute (seconds, a ``timedelta`` or a header
    string), the error's ``headers`` (aiohttp's ``ClientResponseError``), and its
    ``response.headers`` (httpx and requests). Accepts delta-seconds and HTTP dates.
    Returns ``None`` when there is no usable value.
    """
    value = getattr(exc, "retry_after", None)
    if value is None:
        headers = getattr(exc, "headers", None)
        if headers is None:
            headers = getattr(getattr(exc, "response", None), "headers", None)
        if headers is not None:
            value = _header(headers, "Retry-After")
    return _parse_retry_after(value)


def _header(headers: Any, name: str) -> Any:
    try:
        value = headers.get(name)
        return headers.get(name.lower()) if value is None else value
    except Exception:  # headers of an unknown shape: no hint rather than a crash
        return None


def _parse_retry_after(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, (str, bytes)):
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        text = text.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                when = parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            seconds = (when - datetime.now(timezone.utc)).total_seconds()
    else:
        return None
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


def _add_note(exc: BaseException, note: str) -> None:
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    else:  # PEP 678 notes by hand
        exc.__notes__ = [*getattr(exc, "__notes__", ()), note]  # type: ignore[attr-defined]


def _seconds_list(delays: list[float]) -> str:
    return ", ".join(f"{delay:.3g}s" for delay in delays) or "nothing"


@dataclass(frozen=True, slots=True)
class StreamResume:
    """What ``@retry(resume=...)`` is asked when a stream fails after delivering items.

    The callback returns the arguments to change for the next run, by parameter name
    (``{"offset": resume.items}``), or ``None`` to let the error propagate.

    Attributes:
        function: the stream function's qualified name.
        attempt: the number of the attempt that failed, from 1.
        items: items delivered to the caller so far, over every attempt.
        error: what the failed attempt raised.
        arguments: the failed attempt's arguments by parameter name, defaults applied
            (a fresh dict: changing it changes nothing).
    """

    function: str
    attempt: int
    items: int
    error: BaseException
    arguments: dict[str, Any]


class _Retrier:
    """The engine of one ``@retry``: its compiled settings and pure decisions, no I/O.

    Its constructor declares ``@retry``'s settings (see :func:`retry` for what they mean).
    """

    __slots__ = (
        "attempt_timeout",
        "backoff_factor",
        "base_delay",
        "budget",
        "deadline",
        "exceptions",
        "jitter",
        "max_delay",
        "max_retries",
        "on",
        "on_retry",
        "respect_retry_after",
        "resume",
        "retry_on_result",
    )

    def __init__(
        self,
        *,
        max_retries: int = 3,
        backoff_factor: float = 2.0,
        base_delay: float | timedelta = 0.1,
        max_delay: float | timedelta = 30.0,
        exceptions: ExceptionTypes = (Exception,),
        on: Callable[[Any], object] | None = None,
        jitter: Jitter | None = "full",
        deadline: float | timedelta | None = None,
        attempt_timeout: float | timedelta | None = None,
        retry_on_result: Callable[[Any], bool] | None = None,
        respect_retry_after: bool = True,
        on_retry: Callable[[RetryScheduled], object] | None = None,
        budget: RetryBudget | None = None,
        resume: Callable[[StreamResume], Mapping[str, Any] | None] | None = None,
    ) -> None:
        self.max_retries = _settings.non_negative_int(max_retries, "max_retries")
        self.backoff_factor = _settings.number(backoff_factor, "backoff_factor", minimum=1.0)
        self.base_delay = _settings.seconds(base_delay, "base_delay")
        self.max_delay = _settings.seconds(max_delay, "max_delay")
        if self.max_delay < self.base_delay:
            raise ConfigurationError(
                f"max_delay ({self.max_delay:g}s) must be >= base_delay ({self.base_delay:g}s)"
            )
        self.exceptions = _settings.exception_types(exceptions, "exceptions")
        self.jitter = _settings.choice(jitter, "jitter", _JITTERS)
        self.deadline = _settings.optional_seconds(deadline, "deadline", allow_zero=False)
        self.attempt_timeout = _settings.optional_seconds(
            attempt_timeout, "attempt_timeout", allow_zero=False
        )
        for name, hook in (
            ("on", on),
            ("retry_on_result", retry_on_result),
            ("on_retry", on_retry),
            ("resume", resume),
        ):
            if hook is not None and not callable(hook):
                raise ConfigurationError(f"{name} must be callable, got {hook!r}")
        self.on = on
        self.resume = resume
        self.retry_on_result = retry_on_result
        self.respect_retry_after = bool(respect_retry_after)
        self.on_retry = on_retry
        if budget is not None and not isinstance(budget, RetryBudget):
            raise ConfigurationError(f"budget must be a RetryBudget, got {budget!r}")
        self.budget = budget

    def backoff(self, retry_number: int, previous: float) -> float:
        """The wait before retry ``retry_number`` (from 1), jitter applied."""
        if self.jitter == "decorrelated":
            high = max(self.base_delay, 3 * previous)
            return min(self.max_delay, random.uniform(self.base_delay, high))
        exponent = retry_number - 1
        try:
            delay = min(self.max_delay, self.base_delay * self.backoff_factor**exponent)
        except OverflowError:  # a huge attempt count: the cap applies
            delay = self.max_delay
        if self.jitter == "full":
            return random.uniform(0.0, delay)
        if self.jitter == "equal":
            return delay / 2 + random.uniform(0.0, delay / 2)
        return delay

    def retriable(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth another attempt (``on`` sees only ``exceptions``' types)."""
        if isinstance(exc, AttemptTimeoutError):
            return True
        if not isinstance(exc, self.exceptions) or is_fatal(exc):
            return False
        on = self.on
        return on is None or bool(on(exc))


class _Run:
    """The retry state of one call, created when its first attempt fails."""

    __slots__ = ("attempts", "delays", "function", "retrier", "start")

    def __init__(self, retrier: _Retrier, function: StackName, start: float) -> None:
        self.retrier = retrier
        self.function = function  # read when reported: the stack's name by then
        self.start = start
        self.attempts = 0
        self.delays: list[float] = []

    def remaining(self) -> float | None:
        """Seconds left before the deadline, or ``None`` without one."""
        deadline = self.retrier.deadline
        return None if deadline is None else deadline - (_clock.monotonic() - self.start)

    def after_error(self, exc: BaseException) -> float | None:
        """The delay before the next attempt, or ``None``: re-raise ``exc`` as it is."""
        self.attempts += 1
        if not self.retrier.retriable(exc):
            return None
        hint = retry_after(exc) if self.retrier.respect_retry_after else None
        delay, reason = self._next_delay(hint)
        if reason is not None:
            _add_note(exc, self._summary(reason))
            self._gave_up(reason, exc, None)
            return None
        self._scheduled(delay, exc, None)
        return delay

    def after_result(self, result: Any) -> float:
        """The delay before the next attempt; raises :class:`RetryError` when out of tries."""
        self.attempts += 1
        delay, reason = self._next_delay(None)
        if reason is not None:
            self._gave_up(reason, None, result)
            raise RetryError(
                self._summary(reason)
                + f"; the last result was still rejected: {value_text(result)}",
                last_result=result,
                attempts=self.attempts,
            )
        self._scheduled(delay, None, result)
        return delay

    def _next_delay(
        self, hint: float | None
    ) -> tuple[float, _GaveUp | None]:
        retrier = self.retrier
        if self.attempts > retrier.max_retries:
            return 0.0, "attempts"
        previous = self.delays[-1] if self.delays else retrier.base_delay
        delay = retrier.backoff(self.attempts, previous)
        if hint is not None:
            delay = min(hint, retrier.max_delay)
        remaining = self.remaining()
        if remaining is not None and delay >= remaining:
            return delay, "deadline"
        # The budget comes last: only a retry that would really happen spends from it.
        budget = retrier.budget
        if budget is not None and not budget.try_spend():
            return delay, "budget"
        return delay, None

    def _summary(self, reason: _GaveUp) -> str:
        elapsed = _clock.monotonic() - self.start
        text = (
            f"buttress.retry: {self.function.value}() failed {self.attempts} time(s) "
            f"in {elapsed:.3g}s; slept {_seconds_list(self.delays)} between attempts"
        )
        if reason == "deadline":
            text += (
                f"; gave up because the next wait would pass the "
                f"{self.retrier.deadline:g}s deadline"
            )
        elif reason == "budget":
            text += f"; gave up because the retry budget ({self.retrier.budget}) is spent"
        return text

    def _scheduled(self, delay: float, error: BaseException | None, result: Any) -> None:
        self.delays.append(delay)
        on_retry = self.retrier.on_retry
        if on_retry is None and not events.notable():
            return
        record = RetryScheduled(
            function=self.function.value,
            attempt=self.attempts,
            error=error,
            result=result,
            delay=delay,
            elapsed=_clock.monotonic() - self.start,
        )
        if on_retry is not None:
            on_retry(record)
        if events.notable():
            events.emit(record)

    def _gave_up(
        self,
        reason: _GaveUp,
        error: BaseException | None,
        result: Any,
    ) -> None:
        if events.notable():
            if reason == "budget":
                events.emit(RetryBudgetExhausted(function=self.function.value))
            events.emit(
                RetryGaveUp(
                    function=self.function.value,
                    attempts=self.attempts,
                    reason=reason,
                    error=error,
                    result=result,
                    elapsed=_clock.monotonic() - self.start,
                )
            )


#: Why @retry(attempt_timeout=...) refuses plain functions, and the way out.
_WHY_ASYNC = (
    "attempt_timeout cancels a hung attempt, and a running thread cannot be cancelled. "
    "Drop attempt_timeout, or make the function async"
)


def _sync_shell(retrier: _Retrier) -> WrapperFactory:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        name = stack_name(fn)
        check = retrier.retry_on_result
        budget = retrier.budget

        def retry_wrapper(*args: Any, **kwargs: Any) -> Any:
            start = _clock.monotonic()
            if budget is not None:
                budget.record_call()
            run: _Run | None = None
            while True:
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    if run is None:
                        run = _Run(retrier, name, start)
                    delay = run.after_error(exc)
                    if delay is None:
                        raise
                else:
                    if check is None or not check(result):
                        return result
                    if run is None:
                        run = _Run(retrier, name, start)
                    delay = run.after_result(result)
                _clock.sync_sleep(delay, retrier, name.value, "retry")

        return retry_wrapper

    return build


def _async_shell(retrier: _Retrier) -> WrapperFactory:
    def build(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        name = stack_name(fn)
        check = retrier.retry_on_result
        budget = retrier.budget
        limit = retrier.attempt_timeout

        async def attempt(run: _Run | None, start: float, args: Any, kwargs: Any) -> Any:
            # Only used with attempt_timeout: bound one attempt, clamped to the deadline.
            budget = _attempt_limit(retrier, start)
            with Deadline(max(budget, 0.0)):
                return await fn(*args, **kwargs)
            number = 1 if run is None else run.attempts + 1
            raise AttemptTimeoutError(
                f"attempt {number} of {name.value}() took longer than {budget:.3g}s and was "
                "cancelled"
            )

        async def retry_wrapper(*args: Any, **kwargs: Any) -> Any:
            start = _clock.monotonic()
            if budget is not None:
                budget.record_call()
            run: _Run | None = None
            while True:
                try:
                    if limit is None:
                        result = await fn(*args, **kwargs)
                    else:
                        result = await attempt(run, start, args, kwargs)
                except BaseException as exc:
                    if run is None:
                        run = _Run(retrier, name, start)
                    delay = run.after_error(exc)
                    if delay is None:
                        raise
                else:
                    if check is None or not check(result):
                        return result
                    if run is None:
                        run = _Run(retrier, name, start)
                    delay = run.after_result(result)
                await _clock.async_sleep(delay)

        return retry_wrapper

    return build


# --- streams -------------------------------------------------------------------------


class _StreamRun(Session):
    """One run of a retried stream: retried while no item has reached the caller.

    Once the caller holds an item a failure propagates (a stream cannot be replayed
    silently), unless ``resume`` names the arguments that continue it; a resumed run is
    a retry like any other (it counts against ``max_retries``, the deadline and the
    budget, and waits its backoff).
    """

    __slots__ = ("args", "fresh", "items", "kwargs", "name", "retrier", "run", "signature", "start")

    watches_items = True
    restarts = True

    def __init__(
        self,
        retrier: _Retrier,
        name: StackName,
        signature: CallSignature | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.retrier = retrier
        self.name = name
        self.signature = signature
        self.args = args
        self.kwargs = kwargs
        self.start = _clock.monotonic()
        self.run: _Run | None = None
        self.items = 0  # delivered to the caller, over every attempt
        self.fresh = True  # the current attempt has delivered nothing yet
        budget = retrier.budget
        if budget is not None:
            budget.record_call()

    def item(self, item: Any) -> None:
        self.items += 1
        self.fresh = False

    def failed(self, error: BaseException) -> Restart | None:
        retrier = self.retrier
        args, kwargs = self.args, self.kwargs
        if not self.fresh:
            if not retrier.retriable(error):
                return None
            if retrier.resume is None:
                _add_note(
                    error,
                    f"buttress.retry: {self.name.value}() failed after delivering {self.items} "
                    "item(s), so it was not retried (a stream is not replayed; resume= "
                    "can continue it)",
                )
                return None
            attempt = 1 if self.run is None else self.run.attempts + 1
            args, kwargs = self._resumed(error, attempt)
            if args is None:
                return None
        if self.run is None:
            self.run = _Run(retrier, self.name, self.start)
        delay = self.run.after_error(error)
        if delay is None:
            return None
        self.args, self.kwargs, self.fresh = args, kwargs, True
        return Restart(delay, args, kwargs)

    def _resumed(self, error: BaseException, attempt: int) -> tuple[Any, Any]:
        """The next run's arguments from ``resume``, or ``(None, None)``."""
        resume, signature = self.retrier.resume, self.signature
        assert resume is not None
        assert signature is not None
        # The call fitted (it delivered items), so it binds; defaults are filled in.
        values, extra, extra_keywords = signature.bind(self.args, self.kwargs)
        names = signature.names
        arguments = {
            name: default if value is MISSING else value
            for name, value, default in zip(names, values, signature.defaults, strict=True)
        }
        changes = resume(StreamResume(self.name.value, attempt, self.items, error, dict(arguments)))
        if changes is None:
            return None, None
        unknown = set(changes) - set(arguments)
        if unknown:
            raise TypeError(
                f"@retry(resume=...) for {self.name.value}() returned {sorted(unknown)}, which "
                "names no parameter of the function"
            )
        arguments.update(changes)
        positional = signature.positional
        args = (*(arguments[name] for name in names[:positional]), *extra)
        kwargs = {name: arguments[name] for name in names[positional:]}
        kwargs.update(extra_keywords)
        return args, kwargs


class _TimedStreamRun(_StreamRun):
    """A retried stream with ``attempt_timeout``: it bounds each attempt's first item."""

    __slots__ = ("limited",)

    limits_steps = True

    def limit(self) -> float | None:
        if not self.fresh:
            return None
        self.limited = _attempt_limit(self.retrier, self.start)
        return self.limited

    def expired(self) -> BaseException:
        number = 1 if self.run is None else self.run.attempts + 1
        return AttemptTimeoutError(
            f"attempt {number} of {self.name.value}() delivered no item within "
            f"{max(self.limited, 0.0):.3g}s and was cancelled"
        )


def _attempt_limit(retrier: _Retrier, start: float) -> float:
    """One attempt's time limit: ``attempt_timeout``, clamped to the deadline (maybe < 0)."""
    limit = retrier.attempt_timeout
    assert limit is not None
    deadline = retrier.deadline
    if deadline is not None:
        limit = min(limit, deadline - (_clock.monotonic() - start))
    return limit


def _stream_sessions(
    retrier: _Retrier,
) -> Callable[[Callable[..., Any]], Callable[..., _StreamRun]]:
    """Per stream function: what opens one run of it."""
    kind = _StreamRun if retrier.attempt_timeout is None else _TimedStreamRun

    def sessions(fn: Callable[..., Any]) -> Callable[..., _StreamRun]:
        if retrier.retry_on_result is not None:
            raise TypeError(
                f"@retry(retry_on_result=...) cannot decorate {function_name(fn)}(), a "
                "stream: it has no result to check (check the items in the stream)"
            )
        name = stack_name(fn)
        signature = signature_of(fn) if retrier.resume is not None else None
        return lambda args, kwargs: kind(retrier, name, signature, args, kwargs)

    return sessions


def _async_stream_shell(retrier: _Retrier) -> WrapperFactory:
    sessions = _stream_sessions(retrier)

    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        make = sessions(fn)

        async def open_run(args: tuple[Any, ...], kwargs: dict[str, Any]) -> _StreamRun:
            return make(args, kwargs)

        return async_stream_shell(open_run)(fn)

    return build


def _sync_stream_shell(retrier: _Retrier) -> WrapperFactory:
    sessions = _stream_sessions(retrier)

    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        return sync_stream_shell(sessions(fn))(fn)

    return build


def _calls_only(retrier: _Retrier, factory: WrapperFactory | None) -> WrapperFactory | None:
    """``factory``, refusing functions (not streams) when ``resume`` is set."""
    if factory is None or retrier.resume is None:
        return factory

    def refuse(fn: Callable[..., Any]) -> Callable[..., Any]:
        raise TypeError(
            f"@retry(resume=...) cannot decorate {function_name(fn)}(), which is not a "
            "stream: resume continues a stream that failed after its first item"
        )

    return refuse


# --- blocks --------------------------------------------------------------------------


class Attempt:
    """One attempt of a retried block: use it as ``with attempt:``.

    The ``with`` block catches what the attempt raises: a retriable error is swallowed
    and the loop goes on to the next attempt after the backoff; any other error, or the
    last one, propagates out of the loop (the last with the note ``@retry`` adds).

    Attributes:
        number: this attempt's number, from 1.
        result: what ``retry_on_result`` checks when the block ends without an error;
            set it in the block (``attempt.result = response``). ``None`` by default.
    """

    __slots__ = ("_attempts", "_limit", "_scope", "_state", "number", "result")

    def __init__(self, attempts: _Attempts, number: int) -> None:
        self._attempts = attempts
        self.number = number
        self.result: Any = None
        self._scope: Deadline | None = None
        self._limit = 0.0
        self._state = 0  # 0: new, 1: entered, 2: done

    def __repr__(self) -> str:
        return f"<Attempt {self.number} of {self._attempts.name}>"

    def __enter__(self) -> Attempt:
        if self._state:
            raise RuntimeError("an attempt is entered once; the loop gives the next one")
        self._state = 1
        attempts = self._attempts
        if attempts.timed:
            self._limit = max(_attempt_limit(attempts.retrier, attempts.start), 0.0)
            self._scope = Deadline(self._limit)
            self._scope.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self._state = 2
        scope = self._scope
        if scope is not None:
            self._scope = None
            if scope.__exit__(exc_type, exc, tb) and scope.expired:
                exc = AttemptTimeoutError(
                    f"attempt {self.number} of the block in {self._attempts.name} took "
                    f"longer than {self._limit:.3g}s and was cancelled"
                )
                if self._attempts.ended(self, exc):
                    return True
                raise exc
        return self._attempts.ended(self, exc)


class _Attempts:
    """One run of a retried block: the attempts handed out and what to do next."""

    __slots__ = ("current", "delay", "name", "number", "retrier", "run", "start", "timed")

    def __init__(self, retrier: _Retrier, name: str) -> None:
        self.retrier = retrier
        self.name = name
        self.timed = retrier.attempt_timeout is not None
        self.start = _clock.monotonic()
        self.run: _Run | None = None
        self.number = 0
        self.current: Attempt | None = None
        self.delay: float | None = None  # the wait before the next attempt, if one follows
        budget = retrier.budget
        if budget is not None:
            budget.record_call()

    def next_delay(self) -> float | None:
        """Before handing out an attempt: the wait first, or ``None`` when the loop ends."""
        if self.current is None:
            return 0.0
        delay, self.delay = self.delay, None
        return delay

    def attempt(self) -> Attempt:
        self.number += 1
        self.current = Attempt(self, self.number)
        return self.current

    def ended(self, attempt: Attempt, error: BaseException | None) -> bool:
        """An attempt's block ended: True swallows ``error`` (another attempt follows)."""
        if attempt is not self.current:
            raise RuntimeError("only the latest attempt of a retrying() loop can be used")
        if error is None:
            check = self.retrier.retry_on_result
            if check is None or not check(attempt.result):
                return False
            self.delay = self._run().after_result(attempt.result)  # raises when out of tries
            return False
        delay = self._run().after_error(error)
        if delay is None:
            return False
        self.delay = delay
        return True

    def _run(self) -> _Run:
        if self.run is None:
            self.run = _Run(self.retrier, StackName(self.name), self.start)
        return self.run


class _SyncAttempts(_Attempts):
    __slots__ = ()

    def __iter__(self) -> Iterator[Attempt]:
        return self

    def __next__(self) -> Attempt:
        delay = self.next_delay()
        if delay is None:
            raise StopIteration
        if delay:
            _clock.sync_sleep(delay, self.retrier, self.name, "retry")
        return self.attempt()


class _AsyncAttempts(_Attempts):
    __slots__ = ()

    def __aiter__(self) -> AsyncIterator[Attempt]:
        return self

    async def __anext__(self) -> Attempt:
        delay = self.next_delay()
        if delay is None:
            raise StopAsyncIteration
        if delay:
            await _clock.async_sleep(delay)
        return self.attempt()


class Retrying:
    """Attempts at a block, retried as ``@retry`` retries a call. Iterate it.

    ``for attempt in retrying(...):`` sleeps between attempts with ``time.sleep``;
    ``async for attempt in retrying(...):`` with ``anyio.sleep``. Each loop is a fresh
    run (its own attempts, deadline and backoff), so one object may be shared.
    """

    __slots__ = ("_retrier",)

    def __init__(self, retrier: _Retrier) -> None:
        if retrier.resume is not None:
            raise ConfigurationError("resume applies to decorated streams, not to blocks")
        self._retrier = retrier

    def __repr__(self) -> str:
        return f"<Retrying up to {self._retrier.max_retries} retries>"

    def __iter__(self) -> Iterator[Attempt]:
        if self._retrier.attempt_timeout is not None:
            raise TypeError(
                "retrying(attempt_timeout=...) needs `async for`: attempt_timeout cancels "
                "a hung attempt, and a running thread cannot be cancelled"
            )
        return _SyncAttempts(self._retrier, caller_name())

    def __aiter__(self) -> AsyncIterator[Attempt]:
        return _AsyncAttempts(self._retrier, caller_name())


def _block_form(
    settings: Callable[Q, _Retrier],
) -> Callable[[Callable[[_Retrier], Retrying]], Callable[Q, Retrying]]:
    """Declare :func:`retrying` with ``@retry``'s settings, read off one constructor."""

    def make(build: Callable[[_Retrier], Retrying]) -> Callable[Q, Retrying]:
        signature = inspect.signature(settings)

        def retrying(*args: Q.args, **kwargs: Q.kwargs) -> Retrying:
            try:
                signature.bind(*args, **kwargs)
            except TypeError as exc:  # the message Python gives, naming the function
                raise TypeError(f"retrying(): {exc}") from None
            return build(settings(*args, **kwargs))

        retrying.__doc__ = build.__doc__
        retrying.__module__ = build.__module__
        retrying.__qualname__ = build.__qualname__
        retrying.__signature__ = signature.replace(  # type: ignore[attr-defined]
            return_annotation=Retrying
        )
        return retrying

    return make


@_block_form(_Retrier)
def retrying(retrier: _Retrier) -> Retrying:
    """Retry a block of code, sync or async, exactly as ``@retry`` retries a call.

    ::

        for attempt in retrying(max_retries=3, exceptions=(ConnectionError,)):
            with attempt:
                reply = send(request)

        async for attempt in retrying(deadline=10, on=lambda e: e.status >= 500):
            with attempt:
                reply = await session.get(url)

    Takes ``@retry``'s settings, with the same meaning (``resume`` excepted: it is for
    streams), and makes the same decisions through the same engine: the same backoff,
    deadline, budget, ``Retry-After``, and the same :class:`RetryScheduled` and
    :class:`RetryGaveUp` events, named after the function the loop is written in. An
    error the ``with attempt:`` block raises is swallowed when it will be retried (the
    loop sleeps, then hands out the next attempt); otherwise it propagates out of the
    loop, the last one with the note listing the attempts. With ``retry_on_result``,
    set ``attempt.result`` in the block; a flagged result is retried, and
    :class:`RetryError` is raised when attempts run out. ``attempt_timeout`` needs
    ``async for`` (each attempt's block is then cancelled after it, and retried).

    Raises:
        ConfigurationError: at once, for a setting that cannot work.
        TypeError: iterated with ``for`` while ``attempt_timeout`` is set.
    """
    return Retrying(retrier)


@bare_or_called(_Retrier)
def retry(retrier: _Retrier) -> Decorate:
    """Call the function again when it fails, waiting longer each time.

    Makes ``1 + max_retries`` attempts at most. The wait before retry *k* is
    ``min(max_delay, base_delay * backoff_factor ** (k - 1))``, then jittered:
    ``"full"`` (uniform in ``[0, d]``), ``"equal"`` (``d/2`` plus uniform ``[0, d/2]``),
    ``"decorrelated"`` (uniform in ``[base_delay, 3 * previous wait]``, capped; it ignores
    ``backoff_factor``) or ``None`` (exactly ``d``). Coroutine functions sleep with
    ``anyio.sleep``, so the event loop (asyncio or trio) keeps running; plain functions
    sleep with ``time.sleep``.

    Args:
        max_retries: retries after the first attempt (``0`` disables retrying).
        backoff_factor: growth of the wait per retry, at least 1.
        base_delay: the first wait, in seconds or as a ``timedelta``.
        max_delay: no wait is longer than this.
        exceptions: the exception types worth retrying. Cancellation (asyncio, trio,
            anyio), ``KeyboardInterrupt``, ``SystemExit`` and ``GeneratorExit`` are never
            retried, even with ``(BaseException,)``.
        on: a predicate on an error of those types: only errors it returns true for are
            retried (``on=lambda e: e.status >= 500``, for an HTTP client that raises
            one type for every status). It sees nothing but ``exceptions``' types, so
            it may read their attributes safely; what it raises propagates.
        jitter: ``"full"``, ``"equal"``, ``"decorrelated"`` or ``None``.
        deadline: a total budget from the start of the first attempt. A wait that would
            reach it is not started: the call gives up with the last error instead.
        attempt_timeout: coroutine functions only: each attempt is cancelled after this
            long (less if the deadline is nearer) and raises :class:`AttemptTimeoutError`
            (a ``TimeoutError``), which is always retriable.
        retry_on_result: a predicate; a result it flags is retried like an error. When
            attempts run out on a flagged result, :class:`RetryError` is raised carrying
            ``last_result`` and ``attempts``.
        respect_retry_after: when the error carries an HTTP ``Retry-After`` (a
            ``retry_after`` attribute, aiohttp's ``ClientResponseError.headers`` or an
            httpx-style ``response.headers``), wait that long instead of the backoff,
            capped by ``max_delay``; if it would pass the deadline, give up.
        on_retry: called with a :class:`RetryScheduled` record before each wait. It runs
            inline, so keep it quick; it must be a plain (not async) callable.
        budget: a :class:`RetryBudget` shared with other calls to the same dependency.
            Every call counts toward its recent-call rate; before each retry is scheduled
            (after the attempt and deadline checks) the budget is consulted, and when it
            is spent the call gives up at once with the last error (or
            :class:`RetryError` for a flagged result), emitting
            :class:`RetryBudgetExhausted` and a :class:`RetryGaveUp` whose reason is
            ``"budget"``.
        resume: streams only: called with a :class:`StreamResume` when a stream fails
            after delivering items; it returns the arguments that continue the stream
            (``lambda r: {"offset": r.items}``), by parameter name, or ``None`` to let
            the error propagate. Without it such a failure always propagates.

    Raises:
        ConfigurationError: at decoration, for a setting that cannot work.
        TypeError: at decoration, for ``attempt_timeout`` on a plain function or
            generator, ``retry_on_result`` on a stream, or ``resume`` on a function.

    When attempts run out on an error, that error itself is re-raised, unchanged but for
    a PEP 678 note listing the attempts and the waits.

    Streams (generator and async-generator functions) are retried while no item has
    reached the caller: connecting, waiting for the first chunk. Once the caller holds an
    item, a failure propagates (a stream cannot be replayed silently) unless ``resume``
    continues it. ``attempt_timeout`` bounds each attempt's wait for its first item.
    Cancellation is never retried. The block form is :func:`retrying`.
    """
    # attempt_timeout cancels attempts, which a plain function's thread cannot be.
    timed = retrier.attempt_timeout is not None
    sync = _calls_only(retrier, None if timed else _sync_shell(retrier))
    async_ = _calls_only(retrier, _async_shell(retrier))
    stream = None if timed else _sync_stream_shell(retrier)
    astream = _async_stream_shell(retrier)

    def decorate(target: Callable[..., Any]) -> Any:
        return wrap(
            target,
            "retry",
            sync=sync,
            async_=async_,
            stream=stream,
            astream=astream,
            why=_WHY_ASYNC,
            stream_why=_WHY_ASYNC,
        )

    return decorate
