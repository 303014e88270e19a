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
    "ButtressError",
    "CacheStoreError",
    "ConfigurationError",
    "MemoryPressureError",
    "RedisStoreError",
    "RefusedValueError",
    "RetryError",
    "UnencodableResultError",
    "UnkeyableArgumentError",
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

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_redis_store_error, (str(self), self.operation, self.address))


def _rebuild_redis_store_error(message: str, operation: str, address: str) -> RedisStoreError:
    return RedisStoreError(message, operation=operation, address=address)


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

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_refused, (str(self), self.key, self.reason))


def _rebuild_refused(message: str, key: str, reason: str) -> RefusedValueError:
    return RefusedValueError(message, key=key, reason=reason)


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

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_unencodable,
            (str(self), self.function, self.type_name, self.path),
        )


def _rebuild_unencodable(
    message: str, function: str, type_name: str, path: str
) -> UnencodableResultError:
    return UnencodableResultError(message, function=function, type_name=type_name, path=path)


# --- validation (issue 5) --------------------------------------------------------------


# --- memory guard (issue 6) ------------------------------------------------------------


class MemoryPressureError(ButtressError, MemoryError):
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
        # Keyword-only facts survive pickling (multiprocessing, task queues).
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


# --- policies (issue 8) ----------------------------------------------------------------


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
