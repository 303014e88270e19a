"""@retry: exponential backoff with jitter, a deadline, attempt timeouts and Retry-After.

The engine (:class:`_Retrier`, whose constructor declares the settings) and one call's
state (:class:`_Run`) are plain code: they decide whether to try again and how long to
wait. The two shells at the bottom only call, catch and sleep. Nothing is allocated for a
call that succeeds first time but the clock reading that anchors its deadline.

The retry budget is a policy (:mod:`buttress._policies._budget`) that ``@retry`` consults:
this feature imports that one, never the other way.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import anyio

from . import _clock, _settings
from ._declare import Decorate, bare_or_called
from ._errors import AttemptTimeoutError, ConfigurationError, RetryError, is_fatal
from ._events import RetryBudgetExhausted, RetryGaveUp, RetryScheduled, events
from ._policies._budget import RetryBudget
from ._settings import ExceptionTypes
from ._wrapping import WrapperFactory, function_name, wrap

__all__ = ["Jitter", "retry", "retry_after"]

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
        "on_retry",
        "respect_retry_after",
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
        jitter: Jitter | None = "full",
        deadline: float | timedelta | None = None,
        attempt_timeout: float | timedelta | None = None,
        retry_on_result: Callable[[Any], bool] | None = None,
        respect_retry_after: bool = True,
        on_retry: Callable[[RetryScheduled], object] | None = None,
        budget: RetryBudget | None = None,
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
        for name, hook in (("retry_on_result", retry_on_result), ("on_retry", on_retry)):
            if hook is not None and not callable(hook):
                raise ConfigurationError(f"{name} must be callable, got {hook!r}")
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
        if isinstance(exc, AttemptTimeoutError):
            return True
        return isinstance(exc, self.exceptions) and not is_fatal(exc)


class _Run:
    """The retry state of one call, created when its first attempt fails."""

    __slots__ = ("attempts", "delays", "function", "retrier", "start")

    def __init__(self, retrier: _Retrier, function: str, start: float) -> None:
        self.retrier = retrier
        self.function = function
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
                self._summary(reason) + f"; the last result was still rejected: {result!r:.200}",
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
            f"buttress.retry: {self.function}() failed {self.attempts} time(s) "
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
        if on_retry is None and not events.active:
            return
        record = RetryScheduled(
            function=self.function,
            attempt=self.attempts,
            error=error,
            result=result,
            delay=delay,
            elapsed=_clock.monotonic() - self.start,
        )
        if on_retry is not None:
            on_retry(record)
        if events.active:
            events.emit(record)

    def _gave_up(
        self,
        reason: _GaveUp,
        error: BaseException | None,
        result: Any,
    ) -> None:
        if events.active:
            if reason == "budget":
                events.emit(RetryBudgetExhausted(function=self.function))
            events.emit(
                RetryGaveUp(
                    function=self.function,
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
        name = function_name(fn)
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
                _clock.sleep(delay)

        return retry_wrapper

    return build


def _async_shell(retrier: _Retrier) -> WrapperFactory:
    def build(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        name = function_name(fn)
        check = retrier.retry_on_result
        budget = retrier.budget
        limit = retrier.attempt_timeout

        async def attempt(run: _Run | None, start: float, args: Any, kwargs: Any) -> Any:
            # Only used with attempt_timeout: bound one attempt, clamped to the deadline.
            assert limit is not None
            deadline = retrier.deadline
            budget = limit
            if deadline is not None:
                budget = min(limit, deadline - (_clock.monotonic() - start))
            with anyio.move_on_after(max(budget, 0.0)):
                return await fn(*args, **kwargs)
            number = 1 if run is None else run.attempts + 1
            raise AttemptTimeoutError(
                f"attempt {number} of {name}() took longer than {budget:.3g}s and was cancelled"
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

    Raises:
        ConfigurationError: at decoration, for a setting that cannot work.
        TypeError: at decoration, for a generator function, or ``attempt_timeout`` on a
            plain function.

    When attempts run out on an error, that error itself is re-raised, unchanged but for
    a PEP 678 note listing the attempts and the waits.
    """
    # attempt_timeout cancels attempts, which a plain function's thread cannot be.
    sync = _sync_shell(retrier) if retrier.attempt_timeout is None else None
    async_ = _async_shell(retrier)

    def decorate(target: Callable[..., Any]) -> Any:
        return wrap(target, "retry", sync=sync, async_=async_, why=_WHY_ASYNC)

    return decorate
