"""Live objects that one part of buttress reads without importing the part that made them.

A feature registers what it creates (every circuit breaker adds itself to
:data:`breakers`); a reader lists what is alive (the metrics report each breaker's state,
even one that never changed state and so never sent an event). Both sides import only this
core module: monitoring never imports a feature. Readers see objects through the
protocols below, which say exactly what they may read.

Entries are held weakly: an object leaves its registry when nothing else uses it.
Registering and listing are thread safe; neither happens on a call's hot path (a breaker
registers when it is created, the metrics list at scrape or export time).
"""

from __future__ import annotations

import threading
import weakref
from typing import Generic, Protocol, TypeVar

__all__ = ["LiveBreaker", "Registry", "breakers"]

T = TypeVar("T")


class LiveBreaker(Protocol):
    """What a reader may ask a registered circuit breaker."""

    @property
    def name(self) -> str:
        """The breaker's name (shared by every function decorated with it)."""
        ...

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"``, as the next call would find it."""
        ...


class Registry(Generic[T]):
    """The live objects of one kind, held weakly."""

    __slots__ = ("_items", "_lock", "kind")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: weakref.WeakSet[T] = weakref.WeakSet()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Registry of {len(self.live())} {self.kind}>"

    def add(self, item: T) -> None:
        """Register ``item`` until it is garbage (its class needs a ``__weakref__`` slot)."""
        with self._lock:
            self._items.add(item)

    def live(self) -> list[T]:
        """Every registered object still alive, in no particular order."""
        with self._lock:
            return list(self._items)


#: Every circuit breaker alive; ``CircuitBreaker.__init__`` registers itself.
breakers: Registry[LiveBreaker] = Registry("circuit breakers")
