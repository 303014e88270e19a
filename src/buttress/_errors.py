"""Every exception and warning type buttress raises.

Each error subclasses :class:`ButtressError` and the builtin that fits, so callers can
catch either the package's errors as a family or the ordinary builtin they already handle.
Each warning subclasses :class:`ButtressWarning` (and the builtin warning that fits), so
``-W error::buttress.ButtressWarning`` turns every guardrail into a failure.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

if sys.version_info < (3, 11):  # pragma: no cover - exercised on 3.10 only
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "AttemptTimeoutError",
    "BatchQueueFullError",
    "BatchResultError",
    "BlockingCallWarning",
    "BulkheadFullError",
    "ButtressError",
    "ButtressWarning",
    "CacheStoreError",
    "CallTimeoutError",
    "CircuitOpenError",
    "ConfigurationError",
    "DataValidationError",
    "InputValidationError",
    "MemoryPressureError",
    "OutputValidationError",
    "RateLimitCostError",
    "RateLimitExceeded",
    "RedisStoreError",
    "RefusedValueError",
    "RejectedError",
    "RetryError",
    "SharedSettingsError",
    "SharedStateError",
    "StackingWarning",
    "StreamTimeoutError",
    "UnencodableResultError",
    "UnkeyableArgumentError",
    "ValidationProblem",
    "format_path",
    "is_fatal",
    "warn",
]


class ButtressError(Exception):
    """Base class of every error raised by buttress itself.

    Every one survives a pickle round trip (errors cross process pools and task queues):
    the default reduction would call the class with its message alone, which fails for
    errors whose facts are keyword-only arguments, so the reduction here rebuilds the
    error from its arguments and its attributes (PEP 678 notes included) without calling
    ``__init__``.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return _reduce_with_facts(self)



class RejectedError(ButtressError):
    """A buttress layer refused to run the call: nothing reached the function.

    The common base of the load-shedding errors (:class:`CircuitOpenError`,
    :class:`BulkheadFullError`, :class:`RateLimitExceeded`, :class:`MemoryPressureError`,
    :class:`BatchQueueFullError`), so a gateway can answer all of them with one fast 503.
    A circuit breaker never counts one as a failure of its dependency: the refusal came
    from this process, not from the dependency.
    """


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


# --- caching -------------------------------------------------------------------------


class UnkeyableArgumentError(ButtressError, TypeError):
    """``@cache_result`` could not build a cache key from one argument.

    Raised at call time, before the function runs. ``argument`` names the parameter (or
    ``"key="`` for the result of a custom key function), ``type_name`` the offending type
    (which may sit deep inside a container). Pass ``key=`` to ``@cache_result`` to build
    keys yourself.
    """

    def __init__(self, message: str, *, function: str, argument: str, type_name: str) -> None:
        super().__init__(message)
        self.function = function
        self.argument = argument
        self.type_name = type_name


class CacheStoreError(ButtressError):
    """A cache store failed and chose to fail closed.

    ``@cache_result`` treats any other exception from a store as a store failure to
    survive (counted, reported as ``CacheStoreFailed``, the call runs uncached); a store
    raises this type (or a subclass) when the caller must see the failure instead.
    """


class RedisStoreError(CacheStoreError):
    """``RedisStore(fail_open=False)`` could not do its part, so the call fails instead.

    Raised when Redis is down, slower than the store's ``timeout``, or answers something
    the store refuses, and when a result cannot be encoded; ``__cause__`` holds the
    underlying failure (a redis-py ``ConnectionError`` or ``TimeoutError``, a
    :class:`RefusedValueError`, an :class:`UnencodableResultError`). Also raised, in
    either mode, for a store that cannot serve a function at all (an async-only client
    given for a plain function).

    Attributes:
        operation: what the store was doing: ``"get"``, ``"set"``, ``"delete"``,
            ``"clear"``, ``"flight"`` or ``"connect"``.
        address: where Redis was expected (``host:port/db``, never a password).
    """

    def __init__(self, message: str, *, operation: str, address: str) -> None:
        super().__init__(message)
        self.operation = operation
        self.address = address


class RefusedValueError(ButtressError, ValueError):
    """A value read from a cache store was refused: it was never decoded into objects.

    Its signature did not verify (tampered with, signed with another key, or copied from
    another key), or its bytes are not what the store writes (garbage, a pickle payload
    where the safe codec is in use, a class the codec may not build). ``@cache_result``
    treats the read as a miss; the next computation overwrites the value.

    Attributes:
        key: the Redis key the value was read from.
        reason: why it was refused.
    """

    def __init__(self, message: str, *, key: str, reason: str) -> None:
        super().__init__(message)
        self.key = key
        self.reason = reason


class UnencodableResultError(ButtressError, TypeError):
    """A cached function returned something the store's codec cannot encode.

    The safe codec of ``RedisStore`` encodes ``None``, ``bool``, ``int``, ``float``,
    ``str``, ``bytes``, lists, tuples, dicts of those, numpy arrays and scalars (not of
    Python objects) and pydantic models; exactly those types (a subclass would come back
    as its base). The result is returned uncached.

    Attributes:
        function: the qualified name of the cached function.
        type_name: the type that could not be encoded.
        path: where it sits in the result (``result[0]['scores']``).
    """

    def __init__(self, message: str, *, function: str, type_name: str, path: str) -> None:
        super().__init__(message)
        self.function = function
        self.type_name = type_name
        self.path = path


# --- validation ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ValidationProblem:
    """One thing wrong with one value checked by ``@validate_input`` or ``@validate_output``.

    Holds descriptions only, never the value itself: ``found`` summarises large arrays and
    long strings, so logging a problem never logs a raw payload.

    Attributes:
        argument: the parameter's name; ``"return"`` for the return value.
        path: where inside the value, from the outside in: field names and item indexes
            (``("user", "age")``, ``(0,)``); empty for the value as a whole.
        expected: what the spec asked for (``"shape ('batch', 768)"``).
        found: what was there instead (``"shape (3, 512)"``).
        message: the explanation, as the error's message shows it.
    """

    argument: str
    path: tuple[str | int, ...]
    expected: str
    found: str
    message: str

    @property
    def location(self) -> str:
        """``argument 'x'`` or ``return value``, then `` at user.age`` for a path."""
        where = "return value" if self.argument == "return" else f"argument {self.argument!r}"
        if self.path:
            where += " at " + format_path(self.path)
        return where

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


def format_path(path: tuple[str | int, ...]) -> str:
    """``("user", "tags", 0)`` as ``user.tags[0]``; odd keys as ``['a key']``."""
    parts: list[str] = []
    for item in path:
        if isinstance(item, str) and item.isidentifier():
            parts.append(f".{item}" if parts else item)
        else:
            parts.append(f"[{item!r}]")
    return "".join(parts)


#: Problems listed in an error's message; all of them stay in ``.errors``.
_MAX_LISTED = 20


class DataValidationError(ButtressError, ValueError):
    """A value failed ``@validate_input`` or ``@validate_output``; base of both errors.

    Attributes:
        function: the decorated function's qualified name.
        errors: every :class:`ValidationProblem` found, in argument order.
    """

    def __init__(self, function: str, errors: Sequence[ValidationProblem]) -> None:
        self.function = function
        self.errors: tuple[ValidationProblem, ...] = tuple(errors)
        lines = [f"{function}(): {problem}" for problem in self.errors[:_MAX_LISTED]]
        if len(self.errors) > _MAX_LISTED:
            lines.append(f"{function}(): ... and {len(self.errors) - _MAX_LISTED} more problems")
        super().__init__("\n".join(lines))


class InputValidationError(DataValidationError):
    """Arguments failed ``@validate_input``: the function was not called."""


class OutputValidationError(DataValidationError):
    """A return value failed ``@validate_output``: the function ran, its result is refused."""


# --- memory guard --------------------------------------------------------------------


class MemoryPressureError(RejectedError, MemoryError):
    """``@memory_guard`` refused a call: memory is over its threshold.

    A ``MemoryError`` too, so code that already degrades on running out of memory (a
    smaller batch, a 503) handles it unchanged. The call it guards never started.

    Attributes:
        used: bytes in use (the working set of the binding cgroup, the host's, or the
            GPU's) when the decision was made.
        limit: the bytes ``used`` counts against.
        available: bytes left under ``limit``.
        percent: ``used / limit * 100``.
        source: where the figures came from: ``"cgroup-v2"``, ``"cgroup-v1"``,
            ``"host"``, or ``"gpu <device>"``.
        reason: the threshold crossed: ``"max_percent"``, ``"min_available"``,
            ``"max_rss"`` or ``"gpu_max_percent"``.
        requested: bytes this call asked to reserve.
        reserved: bytes reserved by calls already in flight.
        waited: seconds spent waiting first (``action="wait"``), else 0.
        function: the qualified name of the guarded function.
    """

    def __init__(
        self,
        message: str,
        *,
        used: int,
        limit: int,
        available: int,
        percent: float,
        source: str,
        reason: str,
        requested: int = 0,
        reserved: int = 0,
        waited: float = 0.0,
        function: str = "",
    ) -> None:
        super().__init__(message)
        self.used = used
        self.limit = limit
        self.available = available
        self.percent = percent
        self.source = source
        self.reason = reason
        self.requested = requested
        self.reserved = reserved
        self.waited = waited
        self.function = function

    def __reduce__(self) -> tuple[Any, ...]:
        # Through the constructor: MemoryError has a __new__ of its own, which the
        # generic reduction (ButtressError's) cannot call for a subclass.
        return (_rebuild_memory_pressure, (str(self), dict(self.__dict__)))


def _rebuild_memory_pressure(message: str, facts: dict[str, Any]) -> MemoryPressureError:
    error = MemoryPressureError(
        message,
        **{name: facts.pop(name) for name in _MEMORY_PRESSURE_FACTS if name in facts},
    )
    error.__dict__.update(facts)  # whatever else was attached, such as PEP 678 notes
    return error


_MEMORY_PRESSURE_FACTS = (
    "used",
    "limit",
    "available",
    "percent",
    "source",
    "reason",
    "requested",
    "reserved",
    "waited",
    "function",
)


# --- policies ------------------------------------------------------------------------


class CircuitOpenError(RejectedError, ConnectionError):
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



class StreamTimeoutError(CallTimeoutError):
    """``@timeout`` stopped a stream that ran past one of its limits.

    Raised from the stream (``async for`` gets it) in place of the next item; the
    generator was cancelled where it waited, and closed.

    Attributes:
        seconds: the limit that was reached.
        function: the qualified name of the stream's function.
        limit: which limit: ``"first_item"`` (no item came within ``first_item`` of the
            start), ``"idle"`` (no next item came within ``idle`` of asking for it) or
            ``"total"`` (the stream did not end within ``seconds`` of its start).
        items: items the stream had delivered before it was stopped.
    """

    def __init__(
        self, message: str, *, seconds: float, function: str = "", limit: str, items: int
    ) -> None:
        super().__init__(message, seconds=seconds, function=function)
        self.limit = limit
        self.items = items


class BulkheadFullError(RejectedError, RuntimeError):
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



class RateLimitCostError(ButtressError, ValueError):
    """A call's ``cost`` exceeds its rate limit's ``burst`` (or is not a number >= 0): it
    could never start, so it fails at once instead of waiting forever. Nothing reached
    the function; split the work, or raise ``burst``.

    Attributes:
        cost: the call's cost.
        burst: the most that can start at once.
        function: the qualified name of the refused function.
    """

    def __init__(self, message: str, *, cost: object, burst: int, function: str = "") -> None:
        super().__init__(message)
        self.cost = cost
        self.burst = burst
        self.function = function


class RateLimitExceeded(RejectedError, RuntimeError):
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



# --- shared state ----------------------------------------------------------------------


class SharedStateError(ButtressError, ConnectionError):
    """A :class:`~buttress.FleetStore` with ``fail_open=False`` could not reach Redis, so
    the call that needed the shared state (a shared rate limit's admission...) fails
    instead of falling back to this process' own share; ``__cause__`` holds redis-py's
    error.

    Attributes:
        operation: what the store was doing (``"admit"``, ``"claim"``...).
        address: where Redis was expected (``host:port/db``, never a password).
    """

    def __init__(self, message: str, *, operation: str, address: str) -> None:
        super().__init__(message)
        self.operation = operation
        self.address = address


class SharedSettingsError(ConfigurationError):
    """Another process already uses this shared name with other settings.

    Names are the contract of state shared through a :class:`~buttress.FleetStore`: the
    first process to use a name records its settings in Redis, and a process that uses
    the name with different ones is refused (two limits under one name would each
    believe the other's counts). Give the new settings a new name, or drop the record
    with ``FleetStore.forget(kind, name)`` once no process uses the old ones.

    Attributes:
        kind: what is shared (``"rate_limit"``, ``"circuit_breaker"``...).
        name: the shared name.
        setting: the first setting that differs.
        recorded: its value recorded in Redis (``None``: the record lacks it).
        given: its value in this process (``None``: this process lacks it).
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        name: str,
        setting: str,
        recorded: str | None,
        given: str | None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.name = name
        self.setting = setting
        self.recorded = recorded
        self.given = given


# --- batching --------------------------------------------------------------------------


class BatchQueueFullError(RejectedError, RuntimeError):
    """``@batch`` refused an item: ``max_queue`` items already wait to be sent.

    Raised by ``fn.one(item)`` at once, before the item joins any batch; like
    :class:`BulkheadFullError`, a load-shedding refusal a gateway can answer with a 503.

    Attributes:
        max_queue: the items that may wait to be sent (gathering into a batch, or in
            batches waiting for one of ``max_concurrency`` slots).
        max_concurrency: batches that may be in flight at once (``None``: no limit).
        in_flight: batches in flight when the item was refused.
        function: the qualified name of the batch function.
    """

    def __init__(
        self,
        message: str,
        *,
        max_queue: int,
        max_concurrency: int | None,
        in_flight: int,
        function: str = "",
    ) -> None:
        super().__init__(message)
        self.max_queue = max_queue
        self.max_concurrency = max_concurrency
        self.in_flight = in_flight
        self.function = function

    def __reduce__(self) -> tuple[Any, ...]:
        return _reduce_with_facts(self)


class BatchResultError(ButtressError, ValueError):
    """A ``@batch`` function's answer cannot be shared out among its callers.

    Every caller of the batch receives it (the same instance): nobody can tell which
    result belongs to which item.

    Attributes:
        reason: ``"length"`` (the result holds ``returned`` results for ``expected``
            items), ``"type"`` (the result is not a sequence: ``None``, a dict, a
            string...) or ``"cancelled"`` (the batch call was cancelled before it
            answered: its event loop is shutting down).
        expected: the number of items in the batch.
        returned: the number of results, or ``None`` when the result has no length.
        function: the qualified name of the batch function.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        expected: int,
        returned: int | None,
        function: str = "",
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.expected = expected
        self.returned = returned
        self.function = function

    def __reduce__(self) -> tuple[Any, ...]:
        return _reduce_with_facts(self)


def _reduce_with_facts(error: BaseException) -> tuple[Any, ...]:
    # Keyword-only facts survive pickling (multiprocessing, task queues): the default
    # reduction would call the class with the message alone and fail.
    return (_rebuild_with_facts, (type(error), error.args, dict(error.__dict__)))


def _rebuild_with_facts(
    cls: type[BaseException], args: tuple[Any, ...], facts: dict[str, Any]
) -> BaseException:
    error = cls.__new__(cls, *args)
    BaseException.__init__(error, *args)
    error.__dict__.update(facts)
    return error


# --- warnings --------------------------------------------------------------------------


class ButtressWarning(UserWarning):
    """Base class of every warning buttress gives.

    A warning names a mistake that lets the code run but makes it do less than it seems
    to (a decorator that never sees a call, a cache kept twice, an event loop blocked).
    Each is given once per function (or per route), at the line of your code that did it.
    """


class BlockingCallWarning(ButtressWarning, RuntimeWarning):
    """A plain (``def``) decorated function is about to wait on a thread running an event loop.

    A retry backoff, a memory-guard wait, a bulkhead or rate-limit wait in the ``def``
    form sleeps the thread; on the event loop's thread nothing else on the loop runs
    meanwhile. Make the function ``async def`` (the coroutine form waits without blocking
    the loop), or call it off the loop (``await anyio.to_thread.run_sync(fn)``).
    """


class StackingWarning(ButtressWarning):
    """Decorators stacked so that one does nothing, or the same thing twice.

    ``@monitor`` above ``@app.get(...)`` (the framework registered the function below
    it, so the monitor never sees a request), or ``@cache_result`` over a function that
    is cached already (two caches, each with its own TTL and invalidation).
    """


#: Where buttress' own modules live: a warning is shown at the first frame outside.
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str, category: type[Warning], *, at: object = None) -> None:
    """Give a warning at the line of the user's code that caused it.

    Without ``at``, that is the innermost frame outside buttress on the stack (the call
    or the decoration). With ``at``, the definition of that function (for a mistake found
    later, as a web app starts), reached through ``__wrapped__`` and
    ``functools.partial``.
    """
    if at is not None:
        code = _code_of(at)
        if code is not None:
            module = getattr(at, "__module__", None) or "buttress"
            warnings.warn_explicit(
                message, category, code.co_filename, code.co_firstlineno, module=module
            )
            return
    frame = sys._getframe(1)
    level = 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)


def _code_of(fn: object) -> Any:
    seen = 0
    while seen < 100:  # a __wrapped__ cycle must not hang a warning
        seen += 1
        inner = fn.func if isinstance(fn, functools.partial) else getattr(fn, "__wrapped__", None)
        if inner is None:
            break
        fn = inner
    return getattr(getattr(fn, "__func__", fn), "__code__", None)


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
