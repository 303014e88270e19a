"""The background sync of shared breakers and budgets: one daemon thread per store.

A shared circuit breaker or retry budget decides every call locally, from its own copy
of the fleet's state, so the call path makes no round trip to Redis. Each one keeps a
:class:`Link`: what its calls counted since the last sync (outcomes, retries, a wish for
a half-open trial permit). One thread per store, the :class:`Syncer`, visits every link
every ``interval`` seconds (a few ms) while it has something to send, and every
``idle_interval`` otherwise: one Lua script per link per visit adds the counts to the
fleet's, applies the rules, and returns the fleet's state, which the link copies back.

The thread runs the scripts through the link's :class:`~._fleet.SharedState` on redis-py's
sync client, so no event loop ever waits on Redis. It stops when the store is closed, or
when no link has been alive for a second; a link added later starts it again. In a child
made by ``fork`` it is started again (threads do not survive a fork; redis-py's pools
open new connections in the child by themselves).

When Redis fails, :meth:`SharedState.run <._fleet.SharedState.run>` answers
:data:`~._fleet.LOST` (and reports the outage): each link is told, decides alone, and is
synced again at the next visits, which fail at once until
:data:`~._connection.RETRY_AFTER` has passed; the first that reaches Redis hands the
fleet's state back.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any, Final, Protocol

from buttress._errors import SharedStateError

from ._commands import Script
from ._fleet import LOST, FleetStore, SharedState

__all__ = ["IDLE_INTERVAL", "INTERVAL", "Link", "Syncer", "syncer"]

#: Seconds between two syncs of a link that has something to send (calls counted).
INTERVAL: Final = 0.005
#: Seconds between two syncs of a link whose calls stopped (its state is read this often).
IDLE_INTERVAL: Final = 0.05
#: A link counts as busy for this long after its last call.
_BUSY_FOR: Final = 1.0
#: The thread exits after this long without a live link.
_LINGER: Final = 1.0


class Owner(Protocol):
    """What a link tells its shared object about Redis: answering again (``shared``), or
    not, with the error and whether it is the first since the last success."""

    def _fleet_changed(self, shared: bool, error: BaseException | None, first: bool) -> None: ...


class Link:
    """One shared object's side of the sync. Subclasses say what to send and what to do
    with the answer; every method but :meth:`take` and :meth:`apply` is the syncer's.

    ``take`` runs in the sync thread and returns ``(script, keys, args)`` (the counts it
    returns are forgotten locally: sent, or lost with Redis); ``apply`` gets the script's
    reply; ``lost`` gets what went wrong after every sync that failed, and whether it is
    the first failure since the last success (a connection
    error: decide alone; :class:`~buttress.SharedStateError` with ``fail_open=False``, or
    :class:`~buttress.SharedSettingsError`: raise it to callers), and ``restored`` is
    called on the first sync that succeeds after failures.
    """

    __slots__ = ("__weakref__", "_owner", "busy_until", "next_sync", "shared", "state")

    def __init__(self, state: SharedState, owner: Owner) -> None:
        #: The shared object (held weakly: the link must not keep it alive).
        self._owner: weakref.ref[Owner] = weakref.ref(owner)
        #: The name's keys and scripts in the store.
        self.state = state
        #: Whether the last sync reached Redis (true until a sync fails).
        self.shared = True
        self.next_sync = 0.0
        #: Real time (``time.monotonic``) until which the link syncs every interval.
        self.busy_until = 0.0

    def pending(self) -> bool:
        """Whether something waits to be sent (then the link syncs at the next visit)."""
        raise NotImplementedError

    def take(self) -> tuple[Script, Sequence[str], Sequence[Any]]:
        raise NotImplementedError

    def apply(self, reply: Any) -> None:
        raise NotImplementedError

    def lost(self, error: BaseException, first: bool) -> None:
        owner = self._owner()
        if owner is not None:
            owner._fleet_changed(False, error, first)

    def restored(self) -> None:
        owner = self._owner()
        if owner is not None:
            owner._fleet_changed(True, None, False)


class Syncer:
    """The sync thread of one store's shared breakers and budgets."""

    __slots__ = (
        "__weakref__",
        "_links",
        "_lock",
        "_stop",
        "_thread",
        "address",
        "idle_interval",
        "interval",
        "name",
    )

    def __init__(
        self,
        address: str,
        *,
        interval: float = INTERVAL,
        idle_interval: float = IDLE_INTERVAL,
    ) -> None:
        self.address = address
        self.name = address
        self.interval = interval
        self.idle_interval = idle_interval
        self._links: weakref.WeakSet[Link] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        _syncers.add(self)

    def __repr__(self) -> str:
        running = self._thread is not None
        return f"<Syncer {self.name} {'running' if running else 'stopped'}>"

    @property
    def running(self) -> bool:
        """Whether the sync thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def add(self, link: Link) -> None:
        """Sync ``link`` from now on (until it is garbage), starting the thread if need be."""
        with self._lock:
            self._links.add(link)
            self._start()

    def close(self) -> None:
        """Stop the thread and wait for it (a later :meth:`add` starts it again)."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def sync_now(self) -> None:
        """Sync every link once, in the calling thread (for tests and shutdown)."""
        for link in list(self._links):
            self._sync(link)

    def _start(self) -> None:
        # The lock is held.
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop = threading.Event()
        thread = threading.Thread(
            target=self._run, args=(self._stop,), name=f"buttress-fleet-sync {self.name}"
        )
        thread.daemon = True
        self._thread = thread
        thread.start()

    def _after_fork(self) -> None:
        # In a child made by fork: the parent's thread is not here. Start another one.
        self._lock = threading.Lock()
        self._thread = None
        if len(self._links):
            with self._lock:
                self._start()

    def _run(self, stop: threading.Event) -> None:
        empty_since: float | None = None
        while not stop.is_set():
            now = time.monotonic()
            links = list(self._links)
            if links:
                empty_since = None
                for link in links:
                    if stop.is_set():
                        return
                    if link.next_sync <= now or link.pending():
                        self._sync(link)
            else:
                if empty_since is None:
                    empty_since = now
                elif now - empty_since > _LINGER:
                    with self._lock:
                        if not len(self._links) and self._thread is threading.current_thread():
                            self._thread = None
                            return
            stop.wait(self.interval)

    def _sync(self, link: Link) -> None:
        now = time.monotonic()
        if link.pending():
            link.busy_until = now + _BUSY_FOR
        script, keys, args = link.take()
        error: BaseException
        try:
            reply = link.state.run("sync", script, keys, args)
        except SharedStateError as exc:  # fail_open=False: the owner raises it to callers
            reply, error = LOST, exc
        except Exception as exc:  # a bug must not end the thread
            reply, error = LOST, exc
        else:
            error = ConnectionError(f"Redis at {self.address} is unreachable")
        if reply is LOST:
            first, link.shared = link.shared, False
            link.lost(error, first)
            link.next_sync = now + self.interval
            return
        if not link.shared:
            link.shared = True
            link.restored()
        link.apply(reply)
        busy = link.busy_until > now
        link.next_sync = now + (self.interval if busy else self.idle_interval)


_syncers: weakref.WeakSet[Syncer] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for syncer in list(_syncers):
        syncer._after_fork()


if hasattr(os, "register_at_fork"):  # pragma: no branch - every POSIX system has it
    os.register_at_fork(after_in_child=_after_fork_in_child)


_syncers_lock = threading.Lock()


def syncer(store: FleetStore) -> Syncer:
    """The sync thread of ``store`` (made on first use; :meth:`FleetStore.close` stops it)."""
    with _syncers_lock:
        found = store._syncer
        if not isinstance(found, Syncer):
            found = Syncer(store.address)
            store._syncer = found
        return found
