"""The decisions of ``@batch``, once, as plain code: no I/O, no waiting, no event loop.

:class:`Batcher` holds the open batches (one per event loop and ``key``), the batches
waiting for a slot under ``max_concurrency``, and the counters, all under one
``threading.Lock`` held for a few attribute updates at a time. The shells in
:mod:`._decorator` only wait and call: a caller submits its item and waits on its
:class:`Slot`'s event; each batch has a driver (a task on the caller's event loop, or a
thread) that sleeps until the batch is full or ``max_wait`` is up, asks the engine whether
it may go, calls the function and hands the answer back to the engine, which shares it out.

A batch moves through these states, each change made under the lock::

    OPEN -> (full, or max_wait) -> QUEUED -> (a slot) -> ADMITTED -> SENT -> (answer) DONE
                                                     \\-> (every caller left) DROPPED

A caller that leaves before its batch is SENT takes its item out; after, it only stops
waiting. A batch is SENT once, by its driver, and its items never change after that: no
item is ever in two batches, and none is lost.
"""

from __future__ import annotations

import contextvars
import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from buttress import _clock
from buttress._errors import BatchQueueFullError, BatchResultError
from buttress._events import BatchCompleted, BatchDispatched, BatchRejected, events
from buttress._wrapping import StackName

__all__ = ["Batch", "BatchStats", "Batcher", "Slot"]

# Batch states.
OPEN: Final = 0  # gathering items
QUEUED: Final = 1  # closed, waiting for a slot under max_concurrency
ADMITTED: Final = 2  # closed, holds a slot; its driver is about to send it
SENT: Final = 3  # the function was called with its items
DONE: Final = 4  # answered, the slot given back
DROPPED: Final = 5  # every caller left before it was sent: never sent

# Slot states.
WAITING: Final = 0  # in a batch not yet sent
IN_FLIGHT: Final = 1  # in a sent batch
ANSWERED: Final = 2  # its value or error is set
LEFT: Final = 3  # the caller left (before: its item was taken out; after: it is ignored)


class Wakeable(Protocol):
    """What a caller waits on: an ``anyio.Event`` or a ``threading.Event``."""

    def set(self) -> object: ...


class Slot:
    """One caller's item in a batch, and the answer it waits for."""

    __slots__ = ("batch", "done", "error", "item", "state", "value")

    def __init__(self, batch: Batch, item: Any, done: Wakeable) -> None:
        self.batch = batch
        self.item = item
        self.done = done
        self.state = WAITING
        self.value: Any = None
        self.error: BaseException | None = None


class Batch:
    """Items gathered for one call of the batch function.

    ``home`` is where the batch runs (the event loop of its callers, or ``None`` for
    threads); ``timer`` is whatever its driver sleeps in (a cancel scope, a threading
    event), set by the shell that opened it, so that the engine's caller can wake the
    driver early when the batch fills up.
    """

    __slots__ = (
        "context",
        "home",
        "key",
        "opened",
        "sent",
        "size",
        "slots",
        "state",
        "timer",
        "trigger",
    )

    def __init__(self, key: Hashable, home: Any, opened: float) -> None:
        self.key = key
        self.home = home
        self.opened = opened
        self.slots: list[Slot] = []
        self.state = OPEN
        self.trigger: str = "max_wait"
        self.timer: Any = None
        self.context: Any = None
        self.sent = 0.0
        self.size = 0


@dataclass(frozen=True, slots=True)
class BatchStats:
    """A snapshot of one ``@batch`` (``fn.batcher.stats()``).

    Attributes:
        max_size: items per batch at most.
        max_wait: seconds a batch gathers before it is sent, at most.
        max_concurrency: batches in flight at once at most (``None``: no limit).
        max_queue: items waiting to be sent at most (``None``: no limit).
        queued: items waiting to be sent now (gathering, or in batches waiting for a slot).
        in_flight: batches being called now.
        batches: batches sent since creation.
        items: items sent since creation (``items / batches`` is the mean batch size).
        full: batches sent because they reached ``max_size`` (the others: ``max_wait``).
        rejected: items refused with :class:`BatchQueueFullError`.
        left: items whose callers left (were cancelled) before their batch was sent.
        failed: batches whose call raised, or whose result could not be shared out.
        failed_items: exceptions returned by the function for single items.
    """

    max_size: int
    max_wait: float
    max_concurrency: int | None
    max_queue: int | None
    queued: int
    in_flight: int
    batches: int
    items: int
    full: int
    rejected: int
    left: int
    failed: int
    failed_items: int

    @property
    def mean_size(self) -> float:
        """Items per batch sent, on average (0 before the first batch)."""
        return self.items / self.batches if self.batches else 0.0


#: What :meth:`Batcher.submit` tells the shell to do besides waiting.
NOTHING: Final = 0
START: Final = 1  # a new batch: start its driver
WAKE: Final = 2  # the batch just filled up: wake its driver now


class Batcher:
    """The queue, the open batches and the counters of one ``@batch``; reach it as
    ``fn.batcher``.

    Thread safe and loop-agnostic: it keeps event loops only as keys, to tell whose
    batch is whose, and only while a batch of theirs is open. :meth:`stats` returns a
    snapshot; the other methods are what the shells call.
    """

    __slots__ = (
        "_batches",
        "_failed",
        "_failed_items",
        "_full",
        "_in_flight",
        "_items",
        "_left",
        "_lock",
        "_open",
        "_queued",
        "_ready",
        "_rejected",
        "key",
        "max_concurrency",
        "max_queue",
        "max_size",
        "max_wait",
        "name",
    )

    @property
    def function(self) -> str:
        """The name the batch function's events report."""
        return self.name.value

    def __init__(
        self,
        *,
        max_size: int,
        max_wait: float,
        key: Callable[[Any], Hashable] | None,
        max_concurrency: int | None,
        max_queue: int | None,
    ) -> None:
        self.max_size = max_size
        self.max_wait = max_wait
        self.key = key
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        #: The batch function's stack name (see ``_wrapping.StackName``), set when it is
        #: decorated; read when reported, so a monitor above names it.
        self.name = StackName("")
        self._lock = threading.Lock()
        self._open: dict[tuple[Any, Hashable], Batch] = {}
        self._ready: deque[Batch] = deque()  # closed batches waiting for a slot, in order
        self._in_flight = 0  # ADMITTED and SENT batches
        self._queued = 0  # items in OPEN and QUEUED batches
        self._batches = self._items = self._full = 0
        self._rejected = self._left = self._failed = self._failed_items = 0

    def __repr__(self) -> str:
        return (
            f"<Batcher max_size={self.max_size} max_wait={self.max_wait:g}s: "
            f"{self._queued} queued, {self._in_flight} in flight>"
        )

    def stats(self) -> BatchStats:
        """A frozen snapshot of the settings and the counts."""
        with self._lock:
            return BatchStats(
                max_size=self.max_size,
                max_wait=self.max_wait,
                max_concurrency=self.max_concurrency,
                max_queue=self.max_queue,
                queued=self._queued,
                in_flight=self._in_flight,
                batches=self._batches,
                items=self._items,
                full=self._full,
                rejected=self._rejected,
                left=self._left,
                failed=self._failed,
                failed_items=self._failed_items,
            )

    # --- callers --------------------------------------------------------------------------

    def submit(
        self, item: Any, home: Any, done: Wakeable, timer: Callable[[], Any]
    ) -> tuple[Slot, int]:
        """Put ``item`` in the open batch of ``home`` and its key (opening one if needed).

        A new batch gets ``timer()`` (what its driver will sleep in) and a copy of the
        caller's context (what it will run in).

        Returns the caller's slot and what the shell must do: :data:`START` the new
        batch's driver, :data:`WAKE` the driver of the batch this item filled, or
        :data:`NOTHING`.

        Raises:
            BatchQueueFullError: ``max_queue`` items already wait; nothing was queued.
            Exception: whatever ``key(item)`` raised.
        """
        key = self.key(item) if self.key is not None else None
        with self._lock:
            if self.max_queue is not None and self._queued >= self.max_queue:
                self._rejected += 1
                refused, in_flight = self._queued, self._in_flight
            else:
                batch = self._open.get((home, key))
                action = NOTHING
                if batch is None:
                    batch = self._open[home, key] = Batch(key, home, _clock.monotonic())
                    batch.timer = timer()
                    batch.context = contextvars.copy_context()
                    action = START
                slot = Slot(batch, item, done)
                batch.slots.append(slot)
                self._queued += 1
                if len(batch.slots) >= self.max_size:
                    batch.trigger = "full"
                    self._close(batch)
                    if action == NOTHING:
                        action = WAKE
                return slot, action
        raise self._refusal(refused, in_flight)

    def leave(self, slot: Slot) -> bool:
        """The caller of ``slot`` stops waiting (it was cancelled, or interrupted).

        Returns True when its item was taken out of a batch not yet sent (and the batch
        dropped if it was the last item: its driver then finds nothing to send), False
        when the batch was already sent (its answer for this item will be ignored) or
        the answer had already arrived.
        """
        with self._lock:
            state = slot.state
            slot.state = LEFT
            if state != WAITING:
                return False
            batch = slot.batch
            batch.slots.remove(slot)
            if batch.state != ADMITTED:
                self._queued -= 1
            self._left += 1
            if not batch.slots:
                if batch.state == OPEN:
                    del self._open[batch.home, batch.key]
                    batch.state = DROPPED
                elif batch.state == QUEUED:
                    self._ready.remove(batch)
                    batch.state = DROPPED
                # ADMITTED: its driver is about to send it, finds it empty and gives the
                # slot on (see due).
            return True

    # --- drivers --------------------------------------------------------------------------

    def due(self, batch: Batch) -> tuple[list[Any] | None, list[Batch]]:
        """The driver of ``batch`` woke (``max_wait`` is up, or the batch filled up), or a
        batch that waited for a slot got one (see :meth:`finish`).

        Closes the batch if it is still open. Returns its items if it may be sent now (it
        then counts as sent), ``None`` if it waits for a slot (whoever frees one starts
        it) or every caller left; and the batches that a slot it gave back went to, which
        the shell must start.
        """
        with self._lock:
            if batch.state == OPEN:
                self._close(batch)
            if batch.state != ADMITTED:
                return None, []
            if not batch.slots:  # its callers left after it filled up
                return None, self._release(batch)
            items = self._send(batch)
            in_flight = self._in_flight
        self._dispatched(batch, in_flight)
        return items, []

    def abandon(self, batch: Batch) -> list[Batch]:
        """A batch given a slot cannot be started (its event loop is gone): drop it.

        Its callers were on that loop, so none of them is waiting any more. Returns the
        batches the freed slot was given to.
        """
        with self._lock:
            for slot in batch.slots:
                slot.state = LEFT
            self._left += len(batch.slots)
            batch.slots = []
            return self._release(batch)

    def finish(
        self, batch: Batch, result: Any, error: BaseException | None
    ) -> tuple[list[Slot], list[Batch]]:
        """The call of ``batch`` returned ``result`` or raised ``error``: share it out.

        Returns the slots to wake (their value or error is set) and the batches the freed
        slot was given to, which the shell must start.
        """
        size = batch.size
        failed_items = 0
        if error is None:
            results, error = self._results(result, size)
        if error is not None:
            results = [error] * size
        outcome = "ok" if error is None else "error"
        if (
            error is not None
            and isinstance(error, BatchResultError)
            and (error.reason == "cancelled")
        ):
            outcome = "cancelled"
        woken: list[Slot] = []
        with self._lock:
            batch.state = DONE
            for slot, answer in zip(batch.slots, results, strict=True):
                if error is None and isinstance(answer, Exception):
                    failed_items += 1
                if slot.state != IN_FLIGHT:
                    continue  # its caller left
                if isinstance(answer, Exception):
                    slot.error = answer
                else:
                    slot.value = answer
                slot.state = ANSWERED
                woken.append(slot)
            if outcome == "error":
                self._failed += 1
            self._failed_items += failed_items
            started = self._release(batch)
            in_flight = self._in_flight
        if events.active:
            events.emit(
                BatchCompleted(
                    function=self.function,
                    size=size,
                    seconds=_clock.monotonic() - batch.sent,
                    outcome=outcome,  # type: ignore[arg-type]
                    failed_items=failed_items,
                    in_flight=in_flight,
                )
            )
        return woken, started

    def cancelled(self, batch: Batch) -> BatchResultError:
        """The error the callers of ``batch`` get when its call was cancelled."""
        return BatchResultError(
            f"@batch of {self.function}(): the batch call was cancelled (its event loop is "
            "shutting down) before it answered",
            reason="cancelled",
            expected=batch.size,
            returned=None,
            function=self.function,
        )

    # --- under the lock -------------------------------------------------------------------

    def _close(self, batch: Batch) -> None:
        """No more items for ``batch``: give it a slot, or queue it for one."""
        del self._open[batch.home, batch.key]
        if not batch.slots:
            batch.state = DROPPED
        elif not self._ready and (
            self.max_concurrency is None or self._in_flight < self.max_concurrency
        ):
            self._admit(batch)
        else:
            batch.state = QUEUED
            self._ready.append(batch)

    def _send(self, batch: Batch) -> list[Any]:
        batch.state = SENT
        slots = batch.slots
        size = batch.size = len(slots)
        for slot in slots:
            slot.state = IN_FLIGHT
        self._batches += 1
        self._items += size
        if batch.trigger == "full":
            self._full += 1
        batch.sent = _clock.monotonic()
        return [slot.item for slot in slots]

    def _dispatched(self, batch: Batch, in_flight: int) -> None:
        # Emitted outside the lock: a subscriber may read stats().
        if events.active:
            events.emit(
                BatchDispatched(
                    function=self.function,
                    size=batch.size,
                    waited=batch.sent - batch.opened,
                    trigger=batch.trigger,  # type: ignore[arg-type]
                    in_flight=in_flight,
                )
            )

    def _release(self, batch: Batch) -> list[Batch]:
        """``batch`` gives its slot back: to the batches queued for one, in order."""
        if batch.state != DONE:
            batch.state = DROPPED
        self._in_flight -= 1
        started: list[Batch] = []
        while self._ready and (
            self.max_concurrency is None or self._in_flight < self.max_concurrency
        ):
            waiting = self._ready.popleft()
            self._admit(waiting)
            started.append(waiting)
        return started

    def _admit(self, batch: Batch) -> None:
        """``batch`` takes a slot: its items no longer wait in the queue."""
        batch.state = ADMITTED
        self._in_flight += 1
        self._queued -= len(batch.slots)

    def _results(self, result: Any, size: int) -> tuple[list[Any], BatchResultError | None]:
        """The per-item answers of a batch call, or the error that replaces them all."""
        if isinstance(result, (str, bytes, bytearray, Mapping)) or result is None:
            return [], self._wrong_result(size, None, f"returned {type(result).__name__}")
        try:
            count = len(result)
        except TypeError:
            if not isinstance(result, Iterable):
                return [], self._wrong_result(size, None, f"returned {type(result).__name__}")
            result = list(result)  # a generator: its items, once
            count = len(result)
        if count != size:
            return [], self._wrong_result(size, count, f"returned {count} results")
        # A sequence (list, tuple, numpy array...): one result per item, in order.
        return [result[index] for index in range(size)], None

    def _wrong_result(self, size: int, count: int | None, what: str) -> BatchResultError:
        return BatchResultError(
            f"@batch of {self.function}(): the batch function {what} for {size} item(s); "
            "it must return one result (or exception) per item, in the items' order",
            reason="type" if count is None else "length",
            expected=size,
            returned=count,
            function=self.function,
        )

    def _refusal(self, queued: int, in_flight: int) -> BatchQueueFullError:
        assert self.max_queue is not None
        if events.active:
            events.emit(BatchRejected(function=self.function, queued=queued))
        limit = "no limit" if self.max_concurrency is None else str(self.max_concurrency)
        return BatchQueueFullError(
            f"@batch of {self.function}(): {queued} item(s) already wait to be sent "
            f"(max_queue={self.max_queue}, {in_flight} batch(es) in flight, "
            f"max_concurrency={limit}); the item was not queued",
            max_queue=self.max_queue,
            max_concurrency=self.max_concurrency,
            in_flight=in_flight,
            function=self.function,
        )
