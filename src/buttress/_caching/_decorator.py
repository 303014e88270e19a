"""@cache_result: a TTL cache with single-flight, for ``def`` and ``async def``.

The decorator compiles its settings (:class:`._policy.Policy`) and lets ``_wrapping`` pick
a shell (:mod:`._shells`); each call past a fresh hit is decided by the engine
(:mod:`._engine`) over the function's state (:mod:`._core`), and ``fn.cache`` is the
handle (:mod:`._handle`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar, overload

from buttress._wrapping import wrap

from ._handle import CachedFunction, CacheHandle
from ._policy import Policy
from ._shells import async_shell, sync_shell
from ._store import CacheStore

__all__ = ["cache_result"]

P = ParamSpec("P")
R = TypeVar("R")


@overload
def cache_result(fn: Callable[P, R], /) -> CachedFunction[P, R]: ...


@overload
def cache_result(
    *,
    ttl: float | timedelta | None = 60.0,
    maxsize: int = 10_000,
    max_bytes: int | str | None = None,
    key: Callable[..., Hashable] | None = None,
    single_flight: bool = True,
    cache_none: bool = True,
    store: CacheStore | None = None,
    copy_arrays: bool = False,
    stale_while_revalidate: float | timedelta = 0,
    stale_if_error: float | timedelta = 0,
) -> Callable[[Callable[P, R]], CachedFunction[P, R]]: ...


def cache_result(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    ttl: float | timedelta | None = 60.0,
    maxsize: int = 10_000,
    max_bytes: int | str | None = None,
    key: Callable[..., Hashable] | None = None,
    single_flight: bool = True,
    cache_none: bool = True,
    store: CacheStore | None = None,
    copy_arrays: bool = False,
    stale_while_revalidate: float | timedelta = 0,
    stale_if_error: float | timedelta = 0,
) -> Any:
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

    Raises:
        ConfigurationError: at decoration, for a setting that cannot work.
        TypeError: at decoration, for a generator function.
        UnkeyableArgumentError: at call time (a ``TypeError``), for an argument that
            cannot be keyed; it names the argument and points at ``key=``.

    The wrapper carries ``fn.cache`` (:class:`CacheHandle`): ``stats()``,
    ``invalidate(*args, **kwargs)``, ``clear()``, their async forms ``ainvalidate`` and
    ``aclear``, and ``bypass(*args, **kwargs)`` to call the function itself once.
    """
    policy = Policy(
        ttl=ttl,
        maxsize=maxsize,
        max_bytes=max_bytes,
        key=key,
        single_flight=single_flight,
        cache_none=cache_none,
        store=store,
        copy_arrays=copy_arrays,
        stale_while_revalidate=stale_while_revalidate,
        stale_if_error=stale_if_error,
    )

    def decorate(target: Callable[..., Any]) -> Any:
        handle: CacheHandle[Any, Any] = CacheHandle()
        return wrap(
            target,
            "cache_result",
            sync=sync_shell(policy, handle),
            async_=async_shell(policy, handle),
            attributes={"cache": handle},
        )

    return decorate if fn is None else decorate(fn)
