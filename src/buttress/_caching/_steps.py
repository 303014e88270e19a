"""The steps a cache engine asks its driver to carry out: one vocabulary for both engines.

Two engines in this package decide without doing any I/O: the cache engine
(:mod:`._engine`, one call of a decorated function past a fresh hit) and the cross-process
flight of ``RedisStore`` (:mod:`._redis._flight`, who computes a key among the replicas).
Each is a generator that yields a step and is sent the step's reply (or thrown the
exception carrying it out raised), the way httpx's ``auth_flow`` yields a request and is
sent its response. A driver, one blocking and one awaiting per engine, only carries steps
out; it decides nothing.

Both engines speak of the same things with the same words:

* :class:`Read` the stored entry;
* :class:`Lead` the computation of a key beyond this caller (or learn that another caller
  leads it, or that its value has just appeared);
* :class:`Wait` for whoever leads it;
* :class:`Compute` the value;
* :class:`Write` the entry;
* :class:`Release` what leading took.

A step names what to do, never how: the cache engine's ``Read`` is ``store.get_or_lead``
or ``await store.aget_or_lead``; the Redis flight's is a ``GET`` on a sync or an asyncio
client. What each driver sends back is said on each step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, final

if TYPE_CHECKING:
    from ._keys import CacheKey
    from ._store import CacheEntry

__all__ = ["COMPUTE", "Compute", "Lead", "Read", "Release", "Step", "Wait", "Write"]


class Step:
    """What an engine asks its driver to do next."""

    __slots__: tuple[str, ...] = ()

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


@final
class Read(Step):
    """Read the stored entry of ``key``; with ``lead``, when there is none, also take the
    lead of computing it beyond this process in the same operation, if the store can.

    Reply: ``(entry, held)``: the :class:`~buttress.CacheEntry`, of any age, or ``None``;
    and what leading took, as :class:`Lead` replies it (``None``: not leading).
    """

    __slots__ = ("key", "lead")

    def __init__(self, key: CacheKey, lead: bool = False) -> None:
        self.key = key
        self.lead = lead


@final
class Lead(Step):
    """Take the lead of computing ``key`` among the processes that share the store.

    ``current`` is an entry the caller could still serve (stale, or due for an early
    refresh): when someone else already leads, it may be handed back to serve at once.

    Reply: ``(held, found)``. ``held`` is what leading took, to give back with
    :class:`Release` (the cache engine gets the store's entered flight; the Redis flight
    gets whether it took the lock). ``found`` is an entry to serve instead of computing
    (one that appeared meanwhile, or ``current`` handed back), or ``None``. The Redis
    flight's driver adds a third item: the seconds the other leader's lock has left.
    """

    __slots__ = ("current", "key")

    def __init__(self, key: CacheKey, current: CacheEntry | None = None) -> None:
        self.key = key
        self.current = current


@final
class Wait(Step):
    """Wait for the caller that leads the computation.

    ``on`` is what to wait on: the cache engine's in-process flight's event (its
    ``wait()`` returns once the flight settles), or the Redis flight's holder (the driver
    blocks on the holder's wake-up); ``None``: nothing but time. ``timeout`` is the
    longest wait in seconds (``None``: until ``on`` says).

    Reply: ``None``; waiting on the Redis flight's holder, the entry, read the moment the
    wait ended (in the same round trip), or ``None``.
    """

    __slots__ = ("on", "timeout")

    def __init__(self, on: Any = None, timeout: float | None = None) -> None:
        self.on = on
        self.timeout = timeout


@final
class Compute(Step):
    """Run the decorated function with the call's arguments.

    Reply: its result. Use :data:`COMPUTE`: the step carries nothing.
    """

    __slots__ = ()


#: The one :class:`Compute` step.
COMPUTE: Final = Compute()


@final
class Write(Step):
    """Store ``entry`` under ``key`` (for as long as the decorator's retention says).

    Reply: ``None``.
    """

    __slots__ = ("entry", "key")

    def __init__(self, key: CacheKey, entry: CacheEntry) -> None:
        self.key = key
        self.entry = entry


@final
class Release(Step):
    """Give back what :class:`Lead` took; ``error`` is why the computation ended, if it
    raised (or was cancelled).

    Reply: ``None``.
    """

    __slots__ = ("error", "held")

    def __init__(self, held: Any, error: BaseException | None = None) -> None:
        self.held = held
        self.error = error
