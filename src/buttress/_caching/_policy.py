"""The compiled settings of one ``@cache_result``, and what an entry is worth now.

Decisions only: no I/O, no waiting. :meth:`Policy.state` judges an entry (fresh, stale but
servable, a fallback on error, absent, or due for an early refresh); the engine acts on it.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Hashable
from datetime import timedelta
from typing import Final, final

from buttress import _settings
from buttress._errors import ConfigurationError

from ._store import CacheEntry, CacheStore, Entry

__all__ = [
    "ABSENT",
    "EARLY",
    "FALLBACK",
    "FRESH",
    "STALE",
    "Freshness",
    "Policy",
    "refresh_early",
]


class Freshness(enum.Enum):
    """What an entry is worth now."""

    FRESH = "fresh"  # serve it
    STALE = "stale"  # expired, within stale_while_revalidate: serve it unless nobody refreshes
    FALLBACK = "fallback"  # expired, within stale_if_error only: compute, serve it if that fails
    ABSENT = "absent"  # nothing usable
    EARLY = "early"  # fresh, but this caller refreshes it early (XFetch); others serve it


# Module-level names: the engine compares them by identity many times per call.
FRESH: Final = Freshness.FRESH
STALE: Final = Freshness.STALE
FALLBACK: Final = Freshness.FALLBACK
ABSENT: Final = Freshness.ABSENT
EARLY: Final = Freshness.EARLY


def refresh_early(now: float, expires: float, duration: float, beta: float, draw: float) -> bool:
    """XFetch (Vattani, Chierichetti and Lowenstein, VLDB 2015): refresh a fresh entry now?

    True when ``now - duration * beta * ln(u) >= expires`` with ``u = 1 - draw`` uniform
    in ``(0, 1]``: the probability, ``exp(-(expires - now) / (duration * beta))``, rises
    as expiry nears, and faster for a value that takes long to compute, so one caller
    among many refreshes it shortly before it expires and nobody waits for it.
    """
    if duration <= 0.0:
        return False
    return now - duration * beta * math.log(1.0 - draw) >= expires


@final
class Policy:
    """The compiled settings of one ``@cache_result``: decisions only, no I/O, no waiting.

    Its constructor is the one declaration of ``@cache_result``'s settings (see
    :func:`~buttress.cache_result` for what each means).
    """

    __slots__ = (
        "cache_none",
        "copy_arrays",
        "early_refresh_beta",
        "keep",
        "key",
        "max_bytes",
        "maxsize",
        "name",
        "single_flight",
        "stale_if_error",
        "stale_while_revalidate",
        "store",
        "ttl",
    )

    def __init__(
        self,
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
        name: str | None = None,
    ) -> None:
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ConfigurationError(f"name must be a non-empty str, got {name!r}")
        self.name = name
        self.ttl = _settings.optional_seconds(ttl, "ttl")
        self.maxsize = _settings.positive_int(maxsize, "maxsize")
        self.max_bytes = (
            None if max_bytes is None else _settings.byte_size(max_bytes, "max_bytes")
        )
        if self.max_bytes == 0:
            raise ConfigurationError("max_bytes must be positive (or None for no byte bound)")
        if key is not None and not callable(key):
            raise ConfigurationError(f"key must be a callable building the key, got {key!r}")
        self.key = key
        if store is not None and not isinstance(store, CacheStore):
            raise ConfigurationError(
                f"store must be a buttress CacheStore (LocalStore, RedisStore), got {store!r}"
            )
        if store is not None and max_bytes is not None:
            raise ConfigurationError(
                "max_bytes bounds the default in-process table; with store=, give the "
                "store its own bounds (LocalStore(max_bytes=...))"
            )
        self.store = store
        # XFetch weight: only entries of a store that offers it are refreshed early
        self.early_refresh_beta = 0.0 if store is None else float(store.early_refresh_beta)
        self.single_flight = bool(single_flight)
        self.cache_none = bool(cache_none)
        self.copy_arrays = bool(copy_arrays)
        self.stale_while_revalidate = _settings.seconds(
            stale_while_revalidate, "stale_while_revalidate"
        )
        self.stale_if_error = _settings.seconds(stale_if_error, "stale_if_error")
        if self.ttl is None and (self.stale_while_revalidate or self.stale_if_error):
            raise ConfigurationError(
                "stale_while_revalidate and stale_if_error need a ttl: with ttl=None "
                "entries never expire, so they are never stale"
            )
        # how long an entry stays useful: fresh, then servable while stale
        self.keep: float | None = (
            None
            if self.ttl is None
            else self.ttl + max(self.stale_while_revalidate, self.stale_if_error)
        )

    def state(self, entry: Entry | None, now: float) -> Freshness:
        if entry is None:
            return ABSENT
        if now < entry.expires:
            beta = self.early_refresh_beta
            if (
                beta
                and isinstance(entry, CacheEntry)  # entries of a store: the table's have beta 0
                and refresh_early(now, entry.expires, entry.duration, beta, random.random())
            ):
                return EARLY
            return FRESH
        late = now - entry.expires
        if late < self.stale_while_revalidate:
            return STALE
        if late < self.stale_if_error:
            return FALLBACK
        return ABSENT

    @staticmethod
    def fresh(entry: Entry, now: float) -> bool:
        return now < entry.expires

    def can_fall_back(self, entry: Entry | None, now: float) -> bool:
        """Whether a failed computation may be answered with ``entry`` instead."""
        return entry is not None and now - entry.expires < self.stale_if_error

    def storable(self, value: object) -> bool:
        return (value is not None or self.cache_none) and self.keep != 0
