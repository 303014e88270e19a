"""What a decorated function offers besides the call: ``fn.cache``, and its static types.

:class:`CacheHandle` is hung on every ``@cache_result`` wrapper as ``.cache`` (statistics,
invalidation, a way around the cache). :class:`CachedFunction` and :class:`CachedMethod`
are how type checkers see the wrapper: the same call, plus that handle.
"""

from __future__ import annotations

from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    ParamSpec,
    Protocol,
    TypeVar,
    final,
    overload,
)

from ._core import CacheCore
from ._stats import CacheStats

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["CacheHandle", "CachedFunction", "CachedMethod"]

P = ParamSpec("P")
P2 = ParamSpec("P2")
PH = ParamSpec("PH")
R2 = TypeVar("R2")
R_co = TypeVar("R_co", covariant=True)
S = TypeVar("S")


@final
class CacheHandle(Generic[P, R_co]):
    """What ``fn.cache`` offers: statistics, invalidation and a way around the cache.

    For a method, reach it through the class or an instance (``Model.predict.cache`` or
    ``model.predict.cache``) and pass ``self`` explicitly: ``invalidate(model, x)``.
    """

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: CacheCore | None = None

    def _bind(self, cache: CacheCore) -> None:
        self._cache = cache

    @property
    def _core(self) -> CacheCore:
        if self._cache is None:  # pragma: no cover - bound as soon as the wrapper exists
            raise RuntimeError("this cache handle is not attached to a function")
        return self._cache

    def __repr__(self) -> str:
        cache = self._cache
        return "<CacheHandle (unbound)>" if cache is None else f"<CacheHandle of {cache.name}>"

    @property
    def function(self) -> str:
        """The cached function's qualified name."""
        return self._core.name

    def stats(self) -> CacheStats:
        """A frozen snapshot of the counters and of the current size."""
        return self._core.stats()

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Drop the entry these arguments map to; return whether there was one.

        The key is built exactly as for a call (defaults applied; ``key=`` if given). A
        computation of any key already running when this is called will not store its
        result (it may have read what the invalidation is about). With a remote store from
        async code, use :meth:`ainvalidate`.

        Raises:
            TypeError: the arguments do not fit the function's signature.
            UnkeyableArgumentError: an argument cannot be keyed.
        """
        core = self._core
        key = core.bound_key(args, kwargs)
        found = core.invalidate(key)
        if found is not None:
            return found
        assert core.store is not None
        return core.store.delete(core.store_key(key))

    async def ainvalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """:meth:`invalidate` through the store's async interface."""
        core = self._core
        key = core.bound_key(args, kwargs)
        found = core.invalidate(key)
        if found is not None:
            return found
        assert core.store is not None
        return await core.store.adelete(core.store_key(key))

    def clear(self) -> None:
        """Drop every entry of this function (counters are kept)."""
        core = self._core
        if not core.clear():
            assert core.store is not None
            core.store.clear(core.scope)

    async def aclear(self) -> None:
        """:meth:`clear` through the store's async interface."""
        core = self._core
        if not core.clear():
            assert core.store is not None
            await core.store.aclear(core.scope)

    def bypass(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        """Call the function itself for this one call: no lookup, nothing stored.

        For a coroutine function this returns the coroutine to await, as a call would.
        """
        return self._core.fn(*args, **kwargs)  # type: ignore[no-any-return]


class CachedFunction(Protocol[P, R_co]):
    """A function decorated with ``@cache_result``: the same call, plus ``.cache``.

    Looked up on an instance, a decorated method is a :class:`CachedMethod`: called
    without ``self``, while its ``.cache`` still takes ``self`` first.
    """

    @property
    def cache(self) -> CacheHandle[P, R_co]: ...

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None, /) -> Self: ...

    @overload
    def __get__(
        self: CachedFunction[Concatenate[S, P2], R2],
        instance: S,
        owner: type[Any] | None = None,
        /,
    ) -> CachedMethod[P2, R2, Concatenate[S, P2]]: ...


class CachedMethod(Protocol[P, R_co, PH]):
    """A decorated method looked up on an instance (``model.predict``)."""

    @property
    def cache(self) -> CacheHandle[PH, R_co]: ...

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...
