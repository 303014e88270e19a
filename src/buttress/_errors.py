"""Every exception type buttress raises.

Each subclasses :class:`ButtressError` and the builtin that fits, so callers can catch
either the package's errors as a family or the ordinary builtin they already handle.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

if sys.version_info < (3, 11):  # pragma: no cover - exercised on 3.10 only
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "AttemptTimeoutError",
    "BulkheadFullError",
    "ButtressError",
    "CallTimeoutError",
    "CircuitOpenError",
    "ConfigurationError",
    "RateLimitExceeded",
    "RetryError",
    "is_fatal",
]


class ButtressError(Exception):
    """Base class of every error raised by buttress itself."""


class ConfigurationError(ButtressError, ValueError):
    """A decorator was given settings that cannot work.

    Raised at decoration time, naming the parameter, so a bad setting fails when the
    module is imported rather than on the first request.
    """


# --- retry ---------------------------------------------------------------------------


class RetryError(ButtressError):
    """Retries ran out while ``retry_on_result`` still flagged the result.

    Errors are never wrapped in this type: when attempts run out on an exception, the
    last exception itself is re-raised. This type exists for results, which have no
    exception of their own to re-raise.
    """

    def __init__(self, message: str, *, last_result: Any, attempts: int) -> None:
        super().__init__(message)
        self.last_result = last_result
        self.attempts = attempts


class AttemptTimeoutError(ButtressError, TimeoutError):
    """One attempt ran past ``attempt_timeout`` and was cancelled; always retriable."""


# --- caching (issues 3 and 4) ----------------------------------------------------------


# --- validation (issue 5) --------------------------------------------------------------


# --- memory guard (issue 6) ------------------------------------------------------------


# --- policies (issue 8) ----------------------------------------------------------------


class CircuitOpenError(ButtressError, ConnectionError):
    """``@circuit_breaker`` refused a call without making it: the circuit is open.

    A ``ConnectionError`` too: an open circuit refuses to reach the dependency, as a
    refused connection would, so code that already handles ``ConnectionError`` (a
    fallback, a 503, a retry filter) handles it unchanged.

    Attributes:
        breaker: the breaker's name.
        state: ``"open"``, or ``"half_open"`` when every trial permit is taken.
        retry_after: seconds until the breaker admits a trial call, or ``None`` when
            unknown (half-open with its trials in flight, or forced open). ``@retry``
            reads this attribute like an HTTP ``Retry-After``.
        retry_at: the same moment as a ``buttress`` clock reading (monotonic seconds),
            or ``None``.
        function: the qualified name of the refused function.
    """

    def __init__(
        self,
        message: str,
        *,
        breaker: str,
        state: str,
        retry_after: float | None,
        retry_at: float | None,
        function: str = "",
    ) -> None:
        super().__init__(message)
        self.breaker = breaker
        self.state = state
        self.retry_after = retry_after
        self.retry_at = retry_at
        self.function = function

    def __reduce__(self) -> tuple[Any, ...]:
        return _reduce_with_facts(self)


class CallTimeoutError(ButtressError, TimeoutError):
    """``@timeout`` cancelled a call that ran past its limit.

    Attributes:
        seconds: the limit that was reached.
        function: the qualified name of the cancelled function.
    """

    def __init__(self, message: str, *, seconds: float, function: str = "") -> None:
        super().__init__(message)
        self.seconds = seconds
        self.function = function

    def __reduce__(self) -> tuple[Any, ...]:
        return _reduce_with_facts(self)


class BulkheadFullError(ButtressError, RuntimeError):
    """``@bulkhead`` refused a call: every slot was busy and no wait was possible.

    Attributes:
        max_concurrent: the bulkhead's number of slots.
        max_waiting: how many callers may wait for a slot.
        reason: ``"full"`` (no room to wait) or ``"timeout"`` (waited ``waited`` seconds,
            the ``wait_timeout``, without getting a slot).
        waited: seconds spent waiting before the refusal (0 for ``"full"``).
        function: the qualified name of the refused function.
    """

    def __init__(
        self,
        message: str,
        *,
        max_concurrent: int,
        max_waiting: int,
        reason: str,
        waited: float = 0.0,
        function: str = "",
    ) -> None:
        super().__init__(message)
        self.max_concurrent = max_concurrent
        self.max_waiting = max_waiting
        self.reason = reason
        self.waited = waited
        self.function = function

    def __reduce__(self) -> tuple[Any, ...]:
        return _reduce_with_facts(self)


class RateLimitExceeded(ButtressError, RuntimeError):
    """``@rate_limit`` refused a call rather than make it wait (``wait=False`` or a wait
    longer than ``max_wait``).

    Attributes:
        rate: calls allowed per ``per`` seconds.
        per: the period, in seconds.
        retry_after: seconds until the call would have been admitted. ``@retry`` reads
            this attribute like an HTTP ``Retry-After``.
        retry_at: the same moment as a ``buttress`` clock reading (monotonic seconds).
        function: the qualified name of the refused function.
    """

    def __init__(
        self,
        message: str,
        *,
        rate: float,
        per: float,
        retry_after: float,
        retry_at: float,
        function: str = "",
    ) -> None:
        super().__init__(message)
        self.rate = rate
        self.per = per
        self.retry_after = retry_after
        self.retry_at = retry_at
        self.function = function

    def __reduce__(self) -> tuple[Any, ...]:
        return _reduce_with_facts(self)


def _reduce_with_facts(error: BaseException) -> tuple[Any, ...]:
    # Keyword-only facts survive pickling (multiprocessing, task queues): the default
    # reduction would call the class with the message alone and fail.
    return (_rebuild_with_facts, (type(error), str(error), dict(error.__dict__)))


def _rebuild_with_facts(
    cls: type[BaseException], message: str, facts: dict[str, Any]
) -> BaseException:
    error = cls.__new__(cls, message)
    BaseException.__init__(error, message)
    error.__dict__.update(facts)
    return error


# --- helpers ---------------------------------------------------------------------------


#: Cancellation and interpreter exits; trio's ``Cancelled`` is checked beside these.
_FATAL = (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit)


def is_fatal(exc: BaseException) -> bool:
    """True for cancellation (asyncio, trio, anyio) and interpreter exits, also in groups.

    Such an exception is never retried, cached, counted as a failure or turned into
    another error.
    """
    if isinstance(exc, _FATAL):
        return True
    trio = sys.modules.get("trio")  # imported by whoever runs trio; never by us
    if trio is not None and isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(is_fatal(inner) for inner in exc.exceptions)
    return False
