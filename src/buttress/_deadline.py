"""The one deadline every async layer bounds its waits with: native on asyncio, anyio elsewhere.

``with Deadline(seconds) as limit: ...`` inside a coroutine cancels the code in the block
when ``seconds`` pass and swallows that cancellation at the block's end, where
``limit.expired`` tells whether it happened: ``anyio.move_on_after`` with the same
semantics, and the same code at every user (``@timeout``, ``@retry(attempt_timeout=...)``).

On trio (or with no running asyncio task) it *is* ``anyio.move_on_after``. On asyncio an
anyio cancel scope costs more than the cancellation it arranges, so the deadline is kept
the way ``asyncio.timeout`` keeps its own, one timer on the loop, while keeping anyio's
cancel semantics:

- level-triggered, as anyio's scopes (and trio's) are: once expired, the task is cancelled
  at every wait until it leaves the block, not once;
- a shield (``anyio.CancelScope(shield=True)``) entered inside the block holds the
  cancellation off until the shield's block ends;
- a task about to resume with a result (its awaited future done) is not cancelled in that
  instant, so the result is not lost; it is cancelled at its next wait;
- only its own cancellation is swallowed: a cancellation from outside that lands before or
  with it propagates unchanged (on Python 3.11+, counted through ``Task.cancelling()`` as
  ``asyncio.timeout`` does; Python 3.10 cannot tell the two apart, so there an asyncio
  ``Task.cancel()`` landing in the same instant as the deadline is taken for it, while an
  anyio cancellation is delivered again at the next wait, as anyio always does).
"""

from __future__ import annotations

import asyncio
import math
import sys
from types import TracebackType
from typing import Any

import anyio

__all__ = ["Deadline"]

_get_running_loop = asyncio.events._get_running_loop
_current_task = asyncio.current_task
_CancelledError = asyncio.CancelledError
_UNCANCEL = sys.version_info >= (3, 11)
_MESSAGE = "buttress deadline expired"
#: How often a deadline held off by a shield checks whether the shield has gone, seconds.
_SHIELD_POLL = 0.001


def _anyio_scope(task: Any) -> Any:
    """The innermost anyio cancel scope of an asyncio task, or ``None``.

    anyio keeps it in its asyncio backend's per-task state (a private table: if a future
    anyio moves it, no shield is seen, and the deadline behaves like ``asyncio.timeout``).
    Without the backend loaded, no anyio scope exists at all.
    """
    backend = sys.modules.get("anyio._backends._asyncio")
    states = getattr(backend, "_task_states", None)
    if states is None:
        return None
    state = states.get(task)
    return None if state is None else getattr(state, "cancel_scope", None)


class Deadline:
    """Cancel the enclosed code of the current task after ``seconds``; see the module.

    ``seconds`` may be ``math.inf``: then only :meth:`cancel` expires it.
    """

    __slots__ = (
        "_cancelling",
        "_delivered",
        "_handle",
        "_loop",
        "_outer",
        "_scope",
        "_task",
        "expired",
        "seconds",
    )

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        #: Whether the deadline passed and its cancellation was swallowed at the exit.
        self.expired = False
        self._scope: anyio.CancelScope | None = None
        self._task: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.Handle | None = None

    def __enter__(self) -> Deadline:
        loop = _get_running_loop()
        task: Any = None if loop is None else _current_task(loop)
        if loop is None or task is None:  # trio, or no asyncio task: anyio's cancel scope
            scope = self._scope = anyio.move_on_after(self.seconds)
            scope.__enter__()
            return self
        self._loop = loop
        self._task = task
        self._delivered = 0
        self._cancelling = task.cancelling() if _UNCANCEL else 0
        # The anyio scope the block sits in: a shield between it and the innermost scope
        # at expiry was entered inside the block.
        self._outer = _anyio_scope(task)
        if self.seconds != math.inf:
            self._handle = loop.call_at(loop.time() + self.seconds, self._deliver)
        return self

    def cancel(self) -> None:
        """Expire now: called from another task (or a callback) of the same event loop."""
        scope = self._scope
        if scope is not None:
            scope.cancel()
            return
        loop = self._loop
        if self._task is None or loop is None:  # not entered, or already left
            return
        if self._handle is not None:
            self._handle.cancel()
        self._handle = loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        # A loop callback: first at the deadline, then every loop iteration (or, behind a
        # shield, every millisecond) until the task leaves the block.
        self._handle = None
        task = self._task
        if task is None or task.done():
            return
        loop = self._loop
        assert loop is not None
        if self._shielded():
            self._handle = loop.call_later(_SHIELD_POLL, self._deliver)
            return
        if not task._must_cancel:
            waiter = task._fut_waiter
            if waiter is None or not waiter.done():
                self._delivered += 1
                task.cancel(_MESSAGE)
        self._handle = loop.call_soon(self._deliver)

    def _shielded(self) -> bool:
        scope = _anyio_scope(self._task)
        outer = self._outer
        while scope is not None and scope is not outer:
            if scope.shield:
                return True
            scope = scope._parent_scope
        return False

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        scope = self._scope
        if scope is not None:
            swallowed = bool(scope.__exit__(exc_type, exc, tb))
            self.expired = scope.cancelled_caught
            return swallowed
        handle = self._handle
        if handle is not None:
            handle.cancel()
            self._handle = None
        task, self._task = self._task, None
        delivered = self._delivered
        if not delivered:
            return False
        ours = exc_type is not None and issubclass(exc_type, _CancelledError)
        if _UNCANCEL:
            for _ in range(delivered):
                left = task.uncancel()
            # More requests than when the block began: one came from outside. Let it go.
            ours = ours and left <= self._cancelling
        self.expired = ours
        return ours
