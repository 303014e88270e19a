"""The background exporter: a bounded queue drained by one thread.

Monitored calls never do I/O: they append a small item to a bounded deque and return.
One daemon thread (started on first use, so sync code, asyncio and trio are all served
alike) takes the items in batches, turns them into log records for the stdlib logging
handlers, and feeds the metrics sinks that want every call (DogStatsD); every
``interval`` it also lets those sinks send their totals. A slow or stuck handler slows
only this thread: when the queue is full, new items are dropped and counted, and the
caller never waits.

``flush_monitoring()`` waits until everything queued so far has been handled; an atexit
hook does the same at interpreter shutdown (bounded by ``shutdown_timeout``).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from buttress import _settings
from buttress._events import event_log

__all__ = [
    "Exporter",
    "MonitoringStats",
    "Sink",
    "configure_monitoring",
    "exporter",
    "flush_monitoring",
    "monitoring_stats",
]

logger = logging.getLogger("buttress.monitor.exporter")

THREAD_NAME = "buttress-monitor-exporter"
#: Seconds the exporter thread waits, once woken, for more items before handling them.
LINGER = 0.02


class Item(Protocol):
    """Something the exporter hands to the logging handlers in its own thread."""

    def export(self) -> None: ...


class CallOwner(Protocol):
    """What queues a call's data with :meth:`Exporter.put_call` (``@monitor``'s site)."""

    def export(self, data: tuple[Any, ...], arguments: tuple[Any, ...]) -> None:
        """Build and hand on the call's log record (in the exporter thread)."""

    def item(self, data: tuple[Any, ...]) -> Any:
        """The call as the sinks' :meth:`Sink.observe` gets it."""


class Sink(Protocol):
    """A metrics destination fed by the exporter thread (the DogStatsD sink is one)."""

    #: True when the sink wants one item per monitored call, logged or not. A sink may
    #: also set ``wants_observations`` to be handed every value of the event-fed
    #: histograms (``_stats.Observed``).
    wants_calls: bool

    def observe(self, item: Any) -> None:
        """Called in the exporter thread for every queued item."""

    def tick(self) -> None:
        """Called in the exporter thread every interval and on every flush."""

    def close(self) -> None:
        """Called once, in the exporter thread if it runs, when the sink is removed."""


@dataclass(frozen=True, slots=True)
class MonitoringStats:
    """The state of the background exporter.

    Attributes:
        queued: items waiting in the queue now.
        exported: items handed to the handlers and sinks so far.
        dropped: items dropped because the queue was full (also exposed as the
            ``buttress_monitor_dropped_total`` metric).
        queue_size: the queue's capacity.
        running: whether the exporter thread is alive.
    """

    queued: int
    exported: int
    dropped: int
    queue_size: int
    running: bool


class _Marker:
    """Queued by :meth:`Exporter.flush`: set once everything before it is handled."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class Exporter:
    """A bounded queue and the one thread that drains it."""

    def __init__(self, queue_size: int = 10_000, interval: float = 1.0) -> None:
        #: entries the queue may hold: a call takes three (see :meth:`put_call`)
        self._limit = 3 * queue_size
        self._queue_size = queue_size
        self.interval = interval
        self.shutdown_timeout = 5.0
        #: True while a sink wants an item for every call (read on the hot path).
        self.wants_calls = False
        #: True while a sink wants every value of the event-fed histograms (``Observed``).
        self.wants_observations = False
        self._items: deque[Any] = deque()
        self._wake = threading.Event()
        #: True from a producer's setting ``_wake`` until the thread clears it: read on
        #: the hot path instead of ``_wake.is_set()``, a method call
        self._signalled = False
        #: set with ``_wake`` by a flush or a stop: no lingering then
        self._hurry = threading.Event()
        self._lock = threading.Lock()
        #: held while the queue is drained: one consumer at a time keeps a call's two
        #: entries together (reentrant: a handler may flush from the exporter thread)
        self._draining = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._sinks: tuple[Sink, ...] = ()
        self._closing: list[Sink] = []
        self._dropped = 0
        self._exported = 0
        self._atexit_registered = False
        self._exited = False

    @property
    def queue_size(self) -> int:
        """How many items (calls, records) may wait before new ones are dropped."""
        return self._queue_size

    @queue_size.setter
    def queue_size(self, size: int) -> None:
        self._queue_size = size
        self._limit = 3 * size

    # -- the hot path ------------------------------------------------------------------

    def put(self, item: Any) -> None:
        """Queue ``item`` without waiting; drop and count it when the queue is full."""
        items = self._items
        # len() and append() are each atomic; racing producers may overshoot the bound
        # by a few items, which is harmless, and nobody ever waits.
        if len(items) >= self._limit:
            with self._lock:
                self._dropped += 1
            return
        items.append(item)
        if self._thread is None:
            self._start()
        if not self._signalled:
            self._signalled = True
            self._wake.set()

    def put_call(
        self, data: tuple[Any, ...], arguments: tuple[Any, ...], owner: CallOwner
    ) -> None:
        """Queue a monitored call's ``data`` and the ``arguments`` it still needs (two
        tuples) with the ``owner`` that exports it.

        They take three entries, added by one ``extend`` (atomic: no other thread's entry
        comes between). The two tuples hold only plain values in the common case, side by
        side rather than one in the other, so the garbage collector stops tracking both
        at its first collection; an object holding the owner would stay tracked, and a
        long queue of them would be traversed by every full collection of the heap.
        """
        items = self._items
        if len(items) >= self._limit:
            with self._lock:
                self._dropped += 1
            return
        items.extend((data, arguments, owner))
        if self._thread is None:
            self._start()
        if not self._signalled:
            self._signalled = True
            self._wake.set()

    @property
    def dropped(self) -> int:
        return self._dropped

    # -- sinks -------------------------------------------------------------------------

    def add_sink(self, sink: Sink) -> None:
        with self._lock:
            self._sinks = (*self._sinks, sink)
            self._wants()
        self._start()

    def remove_sink(self, sink: Sink) -> None:
        """Stop feeding ``sink``; it gets a last tick, then is closed."""
        with self._lock:
            if sink not in self._sinks:
                return
            self._sinks = tuple(s for s in self._sinks if s is not sink)
            self._wants()
            self._closing.append(sink)
        self.flush()
        with self._lock:  # the thread did not run (or timed out): close it here
            leftover = sink in self._closing
            if leftover:
                self._closing.remove(sink)
        if leftover:
            _finish(sink)

    def _wants(self) -> None:
        self.wants_calls = any(s.wants_calls for s in self._sinks)
        # Optional for a sink: only OpenTelemetry's records each value of a histogram.
        self.wants_observations = any(
            getattr(s, "wants_observations", False) for s in self._sinks
        )

    # -- control -----------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued before this call has been handled.

        Returns ``False`` if ``timeout`` seconds passed first. Sinks send their totals
        as part of the flush. Called from the exporter thread itself (by a handler), it
        handles the queue inline instead of waiting for itself.
        """
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._drain_inline()
            return True
        if threading.current_thread() is thread:
            self._drain_inline()
            return True
        marker = _Marker()
        self._items.append(marker)  # past the bound on purpose: a flush is never dropped
        self._hurry.set()
        self._wake.set()
        return marker.done.wait(timeout)

    def stop(self, timeout: float | None = None) -> bool:
        """Drain the queue and stop the thread; the next item starts a new one.

        Returns ``False`` if the thread did not finish within ``timeout``.
        """
        with self._lock:
            thread = self._thread
            if thread is None:
                return True
            self._stopping = True
        self._hurry.set()
        self._wake.set()
        if thread is not threading.current_thread():
            thread.join(timeout)
        if thread.is_alive():
            return False
        with self._lock:
            self._thread = None
            self._stopping = False
        if self._items:  # queued while the thread was finishing: handle them here
            self._drain_inline()
        return True

    def stats(self) -> MonitoringStats:
        thread = self._thread
        queued = follow = 0
        for item in list(self._items):
            if follow:  # a call's arguments and owner, after its data
                follow -= 1
            elif type(item) is tuple:
                queued += 1
                follow = 2
            elif type(item) is not _Marker:
                queued += 1
        return MonitoringStats(
            queued=queued,
            exported=self._exported,
            dropped=self._dropped,
            queue_size=self.queue_size,
            running=thread is not None and thread.is_alive(),
        )

    def reset(self) -> None:
        """Stop the thread, close the sinks and forget every count (for tests)."""
        for sink in self._sinks:
            self.remove_sink(sink)
        self.stop()
        with self._lock:
            self._items.clear()
            self._dropped = 0
            self._exported = 0

    # -- the thread --------------------------------------------------------------------

    def _start(self) -> None:
        if self._exited:
            # After the atexit hook (a monitored call in a later hook): a new thread
            # would be killed with the process, so handle the queue right here.
            self._drain_inline()
            return
        with self._lock:
            if self._thread is not None:
                return
            thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
            self._thread = thread
            if not self._atexit_registered:
                atexit.register(self._at_exit)
                self._atexit_registered = True
        try:
            thread.start()
        except RuntimeError:
            # The interpreter is shutting down (a monitored call in a late atexit hook):
            # no thread can start any more, so the queue is handled right here.
            with self._lock:
                self._thread = None
            self._drain_inline()

    def _run(self) -> None:
        next_tick = time.monotonic() + self.interval
        while True:
            try:
                if self._wake.wait(max(0.0, next_tick - time.monotonic())):
                    # Let a burst gather before handling it: one wake-up per burst
                    # rather than per record, while producers find the flag already set
                    # and skip setting it. A flush or a stop cuts the wait short.
                    self._hurry.wait(LINGER)
                self._drain()
                # Cleared only now, and the queue checked again after: an item queued
                # while the flag was still set is never left waiting for the next tick.
                self._wake.clear()
                self._signalled = False
                self._hurry.clear()
                if self._items:
                    self._signalled = True
                    self._wake.set()
                if time.monotonic() >= next_tick:
                    self._tick()
                    next_tick = time.monotonic() + self.interval
                if self._stopping and not self._items:
                    self._tick()
                    self._close_removed()
                    return
            except Exception:  # never let the one exporter thread die of a bug
                logger.exception("buttress.monitor exporter loop failed; continuing")

    def _drain(self) -> None:
        items = self._items
        popleft = items.popleft
        with self._draining:
            while items:
                try:
                    item = popleft()
                    if type(item) is tuple:  # a call's data: its arguments and owner next
                        arguments = popleft()
                        owner = popleft()
                        if self._sinks:
                            self._handle_call(item, arguments, owner)
                            continue
                        try:  # _handle_call without sinks, spelled out
                            owner.export(item, arguments)
                        except Exception:
                            logger.exception("buttress.monitor could not export a log record")
                        self._exported += 1
                        continue
                except IndexError:  # raced with a reset
                    return
                if type(item) is _Marker:
                    self._tick()
                    self._close_removed()
                    item.done.set()
                    continue
                self._handle(item)

    def _drain_inline(self) -> None:
        # No thread (or we are it): do its work here.
        self._drain()
        self._tick()
        self._close_removed()

    def _handle(self, item: Any) -> None:
        try:
            item.export()
        except Exception:
            logger.exception("buttress.monitor could not export a log record")
        for sink in self._sinks:
            try:
                sink.observe(item)
            except Exception:
                logger.exception("buttress.monitor sink %r failed", sink)
        self._exported += 1

    def _handle_call(
        self, data: tuple[Any, ...], arguments: tuple[Any, ...], owner: CallOwner
    ) -> None:
        try:
            owner.export(data, arguments)
        except Exception:
            logger.exception("buttress.monitor could not export a log record")
        sinks = self._sinks
        if sinks:
            try:
                item = owner.item(data)
            except Exception:  # pragma: no cover - a plain constructor
                logger.exception("buttress.monitor could not export a call")
            else:
                for sink in sinks:
                    try:
                        sink.observe(item)
                    except Exception:
                        logger.exception("buttress.monitor sink %r failed", sink)
        self._exported += 1

    def _tick(self) -> None:
        for sink in self._sinks:
            try:
                sink.tick()
            except Exception:
                logger.exception("buttress.monitor sink %r failed to send", sink)

    def _close_removed(self) -> None:
        with self._lock:
            closing, self._closing = self._closing, []
        for sink in closing:
            _finish(sink)

    def _at_exit(self) -> None:
        self.flush(self.shutdown_timeout)
        self.stop(self.shutdown_timeout)
        self._exited = True

    def _after_fork(self) -> None:
        # The thread did not survive the fork, and the parent's queued items are the
        # parent's to export: start afresh.
        self._items = deque()
        self._wake = threading.Event()
        self._signalled = False
        self._hurry = threading.Event()
        self._lock = threading.Lock()
        self._draining = threading.RLock()
        self._thread = None
        self._stopping = False
        self._closing = []
        if self._sinks:
            # A forked worker (gunicorn --preload, multiprocessing) keeps its parent's
            # sinks, which send this process's totals every interval: they must not
            # wait for a logged call to start the thread (metrics-only calls queue
            # nothing), or a worker's totals would never be written. The first tick comes
            # an interval later, after the sinks' own fork hooks have run.
            self._start()


def _finish(sink: Sink) -> None:
    try:
        sink.tick()
    except Exception:
        logger.exception("buttress.monitor sink %r failed to send", sink)
    try:
        sink.close()
    except Exception:
        logger.exception("buttress.monitor sink %r failed to close", sink)


#: The process-wide exporter every monitored function queues to.
exporter = Exporter()


class Deferred:
    """A record to build in the exporter thread: a ``buttress.events`` record, say."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], None]) -> None:
        self.make = make

    def export(self) -> None:
        self.make()


def _defer(make: Callable[[], None]) -> None:
    exporter.put(Deferred(make))


# The event log's records are built and handled here too, off the caller's path.
event_log.defer = _defer

if hasattr(os, "register_at_fork"):  # pragma: no branch - absent on Windows only
    os.register_at_fork(after_in_child=exporter._after_fork)


def flush_monitoring(timeout: float | timedelta | None = 10.0) -> bool:
    """Hand every queued log record to the handlers (and sinks) and wait until done.

    Call it before a batch job exits or after a test, to be sure records were written.
    It blocks the calling thread; from async code run it in a worker thread
    (``await anyio.to_thread.run_sync(flush_monitoring)``). An atexit hook flushes too.

    Args:
        timeout: seconds (or a ``timedelta``) to wait at most; ``None`` waits as long as
            it takes.

    Returns:
        ``True`` when everything was handled, ``False`` if the timeout passed first.
    """
    limit = _settings.optional_seconds(timeout, "timeout")
    return exporter.flush(limit)


def monitoring_stats() -> MonitoringStats:
    """The background exporter's queue length, exported and dropped counts."""
    return exporter.stats()


def configure_monitoring(
    *,
    queue_size: int | None = None,
    interval: float | timedelta | None = None,
    shutdown_timeout: float | timedelta | None = None,
) -> None:
    """Tune the background exporter; settings left as ``None`` keep their value.

    Args:
        queue_size: how many log records (and per-call metric samples) may wait for the
            exporter thread before new ones are dropped and counted (default 10,000).
        interval: seconds between two sends of the metrics sinks' totals (DogStatsD);
            default 1.
        shutdown_timeout: how long the atexit hook waits for the queue to drain
            (default 5 seconds).

    Raises:
        ConfigurationError: for a setting that cannot work.
    """
    if queue_size is not None:
        exporter.queue_size = _settings.positive_int(queue_size, "queue_size")
    if interval is not None:
        exporter.interval = _settings.seconds(interval, "interval", allow_zero=False)
    if shutdown_timeout is not None:
        exporter.shutdown_timeout = _settings.seconds(shutdown_timeout, "shutdown_timeout")
