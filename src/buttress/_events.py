"""The in-process hook that decorators report what they do to.

Decorators emit typed, frozen event records (subclasses of :class:`Event`); monitoring,
metrics and users' own code subscribe. With no subscriber, emitting costs one attribute
read: decorators write ``if events.active: events.emit(SomeEvent(...))`` so that not even
the record is built.

Subscribers run synchronously, in the thread and task of the decorated call, so they
must be quick and must not block (queue the event and do I/O elsewhere, as
``@monitor`` does). A subscriber that raises is logged and skipped; it never breaks the
decorated call.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

__all__ = ["Event", "EventBus", "Subscription", "events"]

logger = logging.getLogger("buttress.events")

E = TypeVar("E", bound="Event")


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event: which decorated function it concerns (its qualified name)."""

    function: str


class Subscription(Generic[E]):
    """A live subscription; ``cancel()`` it, or use it as a context manager."""

    __slots__ = ("_bus", "callback", "kinds")

    def __init__(
        self, bus: EventBus, callback: Callable[[E], object], kinds: tuple[type[E], ...]
    ) -> None:
        self._bus = bus
        self.callback = callback
        self.kinds = kinds

    def cancel(self) -> None:
        """Stop receiving events. Cancelling twice is harmless."""
        self._bus._remove(self)

    def __enter__(self) -> Subscription[E]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()


class EventBus:
    """Fan-out of events to subscribers; thread-safe, copy-on-write."""

    __slots__ = ("_lock", "_subscriptions", "active")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: tuple[Subscription[Event], ...] = ()
        #: True while anyone listens; decorators test it before building an event.
        self.active = False

    def subscribe(
        self,
        callback: Callable[[E], object],
        kinds: type[E] | tuple[type[E], ...] = Event,  # type: ignore[assignment]
    ) -> Subscription[E]:
        """Call ``callback(event)`` for every event that is an instance of ``kinds``.

        Returns a :class:`Subscription`; cancel it (or leave its ``with`` block) to stop.
        """
        wanted = kinds if isinstance(kinds, tuple) else (kinds,)
        subscription: Subscription[E] = Subscription(self, callback, wanted)
        with self._lock:
            self._subscriptions = (*self._subscriptions, subscription)  # type: ignore[arg-type]
            self.active = True
        return subscription

    def _remove(self, subscription: Subscription[E]) -> None:
        with self._lock:
            self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)
            self.active = bool(self._subscriptions)

    def emit(self, event: Event) -> None:
        """Deliver ``event`` to every matching subscriber, in subscription order."""
        for subscription in self._subscriptions:
            if isinstance(event, subscription.kinds):
                try:
                    subscription.callback(event)
                except Exception:
                    logger.exception("buttress event subscriber %r failed", subscription.callback)


#: The process-wide bus every decorator reports to.
events = EventBus()
