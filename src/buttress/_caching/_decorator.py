"""@cache_result: a TTL cache with single-flight, for ``def`` and ``async def``.

The decorator compiles its settings (:class:`._policy.Policy`) and lets ``_wrapping`` pick
a shell (:mod:`._shells`); each call past a fresh hit is decided by the engine
(:mod:`._engine`) over the function's state (:mod:`._core`), and ``fn.cache`` is the
handle (:mod:`._handle`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from buttress._declare import Decorate, declare
from buttress._errors import ConfigurationError, StackingWarning, warn
from buttress._wrapping import function_name, wrap

from ._handle import CachedFunction, CacheHandle
from ._policy import Policy
from ._shells import async_shell, sync_shell

#: Why @cache_result refuses streams, and the way out.
_WHY_STREAM = (
    "a stream is not cached: its items arrive over time and may be abandoned half way, "
    "so there is no whole result to keep, and a replay would not be the stream. Cache "
    "what the stream is made from, or collect its items in a coroutine function and "
    "cache that"
)

__all__ = ["cache_result"]

P = ParamSpec("P")
Q = ParamSpec("Q")
R = TypeVar("R")


class _Decorator(Protocol):
    def __call__(self, fn: Callable[P, R], /) -> CachedFunction[P, R]: ...


class _CacheResult(Protocol[Q]):
    """``@cache_result`` bare, or called with the settings ``Q`` first."""

    # The settings are keyword-only: the two forms never match one call.
    @overload
    def __call__(self, fn: Callable[P, R], /) -> CachedFunction[P, R]: ...  # type: ignore[overload-overlap]

    @overload
    def __call__(self, *args: Q.args, **kwargs: Q.kwargs) -> _Decorator: ...


def _declared(
    settings: Callable[Q, Policy],
) -> Callable[[Callable[[Policy], Decorate]], _CacheResult[Q]]:
    return lambda build: declare(settings, build)


@_declared(Policy)
def cache_result(policy: Policy) -> Decorate:
    """Remember results by arguments for ``ttl`` seconds; compute each key once at a time.

    Arguments are bound to the signature with defaults applied, so ``f(1, b=2)``,
    ``f(1, 2)`` and ``f(b=2, a=1)`` share an entry. Hashable arguments are keyed as they
    are (by ``==``, so ``1``, ``1.0`` and ``True`` are equal, as in ``functools.lru_cache``);
    lists, dicts, sets and tuples by structure; numpy arrays by dtype, shape and a digest
    of their bytes; pydantic models and dataclasses by class and fields. ``self`` is an
    argument like any other: a plain object is keyed by identity, so each instance has its
    own entries (and the cache holds a reference to it until they leave).

    While a key is being computed, other callers of that key wait for that computation
    (coroutines on an ``anyio`` event, threads on a ``threading`` event) and get its result
    or its error. Errors are never cached. If the computing caller is cancelled, one of the
    waiters computes instead; a cancelled waiter disturbs nobody.

    Args:
        ttl: seconds (or a ``timedelta``) an entry stays fresh; ``None``: no expiry;
            ``0``: nothing is kept, concurrent identical calls still share one computation.
        maxsize: at most this many entries; the least recently used is evicted first.
        max_bytes: at most this many bytes (``int`` or ``"512MiB"``), counting numpy
            ``nbytes`` and the length of ``bytes``/``str`` results (through tuples, lists
            and dicts); a result larger than this on its own is returned but not kept.
        key: ``key(*args, **kwargs)`` returns the key in place of the built one (anything
            hashable or canonicalisable as above).
        single_flight: ``False`` lets concurrent misses of one key each compute.
        cache_none: ``False`` does not keep ``None`` results.
        store: a :class:`CacheStore` to keep entries in (``LocalStore`` shared by several
            functions, ``RedisStore`` shared by processes); bounds are then the store's.
        copy_arrays: return private writable copies of cached numpy arrays instead of
            shared read-only views.
        stale_while_revalidate: for this long after expiry, a caller gets the expired value
            at once while the first caller to find it expired refreshes it (and gets the
            new value).
        stale_if_error: for this long after expiry, a refresh that fails is answered with
            the expired value instead of the error (counted in ``stale``, the error
            reported on the ``CacheAccess`` event).
        name: the name a store shared between processes (``RedisStore``) keeps the
            function's entries under, in place of ``module.qualname`` (followed, for a
            function that captured values, by a digest of them). Give one to a closure
            that captured something no other process can compare (a client, a model
            object), which the decorator refuses otherwise: closures made by one factory
            share a qualified name, and must never read each other's entries.

    Raises:
        ConfigurationError: at decoration, for a setting that cannot work, or for a
            function a shared store could not tell from another of the same name
            (see ``name``).
        TypeError: at decoration, for a generator or async-generator function (a
            stream): see below.
        UnkeyableArgumentError: at call time (a ``TypeError``), for an argument that
            cannot be keyed; it names the argument and points at ``key=``.

    The wrapper carries ``fn.cache`` (:class:`CacheHandle`): ``stats()``,
    ``invalidate(*args, **kwargs)``, ``clear()``, their async forms ``ainvalidate`` and
    ``aclear``, and ``bypass(*args, **kwargs)`` to call the function itself once.

    Streams are refused: a stream's items arrive over time and may be abandoned half
    way, so there is no whole result to keep, and replaying a kept one would change
    what a stream means to its caller (its timing, its back-pressure, its errors after
    the first item). Cache what the stream is made from, or collect the items in a
    coroutine function and cache that.
    """
    name = policy.name
    named: list[Any] = []

    def decorate(target: Callable[..., Any]) -> Any:
        if name is not None:
            if named and named[0] is not target:
                raise ConfigurationError(
                    f"name={name!r} names one function, and this @cache_result already "
                    f"caches {function_name(named[0])}: give each function its own "
                    "cache_result(name=...)"
                )
            named.append(target)
        if isinstance(getattr(getattr(target, "__func__", target), "cache", None), CacheHandle):
            _warn_cached_twice(target)
        handle: CacheHandle[Any, Any] = CacheHandle()
        return wrap(
            target,
            "cache_result",
            sync=sync_shell(policy, handle),
            async_=async_shell(policy, handle),
            attributes={"cache": handle},
            stream_why=_WHY_STREAM,
        )

    return decorate


def _warn_cached_twice(target: Any) -> None:
    name = function_name(getattr(target, "__func__", target))
    warn(
        f"@cache_result over {name}(), which is cached already (a @cache_result or "
        "policy(cache=...) below): each result is kept twice, under two TTLs, and "
        f"{name}.cache.invalidate() reaches only the outer cache. Keep one: with "
        "policy(), give its cache= the settings, and drop the other decorator",
        StackingWarning,
    )
