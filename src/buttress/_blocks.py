"""Blocks: a decorator's engine used as a context manager (``async with breaker:``).

Two things every block form needs and no decorator has: a name for its events and
errors (a decorator has its function's; a block is named after the function it is
written in), and somewhere to keep what one entry took until its exit (a breaker's
ticket, a timeout's cancel scope) when one object is entered by many callers at once.

Why the frame: the object cannot keep an entry's state on itself (other tasks and
threads enter it meanwhile), and a context variable cannot either: a ``with`` inside an
async generator runs in its caller's context, and when the garbage collector finalises
that generator its exit runs in another task, whose context never saw the entry. A
``with`` statement, though, enters and exits from one frame, whichever task or thread
runs it and wherever the generator holding it is finalised; so an entry is filed under
the frame that runs the statement (under the ``ExitStack`` for entries made through one),
and taken back by the frame that exits. Entries are last in, first out per frame.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from types import FrameType
from typing import Generic, TypeVar

__all__ = ["Entries", "caller_name"]

V = TypeVar("V")

# The frames of contextlib's exit stacks, which enter and exit on the user's behalf: an
# entry made through one is filed under the stack, the name comes from the frame above.
_STACK_CODES = frozenset(
    method.__code__
    for cls in (contextlib.ExitStack, contextlib.AsyncExitStack)
    for name in ("enter_context", "enter_async_context", "__exit__", "__aexit__")
    if (method := getattr(cls, name, None)) is not None
)


def _frame(depth: int) -> FrameType:
    return sys._getframe(depth + 1)  # the one way to see the caller


def caller_name(depth: int = 1) -> str:
    """The qualified name of the function ``depth`` frames above the caller of this.

    ``caller_name()`` called in ``__enter__`` names the function running the ``with``.
    """
    frame = _frame(depth + 1)
    if frame.f_code in _STACK_CODES and frame.f_back is not None:
        frame = frame.f_back
    code = frame.f_code
    name: str = getattr(code, "co_qualname", code.co_name)  # co_qualname: 3.11+
    return name


def _key(frame: FrameType) -> object:
    if frame.f_code in _STACK_CODES:
        return frame.f_locals.get("self", frame)
    return frame


class Entries(Generic[V]):
    """What each open entry of one context manager took, filed by the frame that entered.

    Thread safe; the lock is held for a dict update only.
    """

    __slots__ = ("_lock", "_open")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[object, list[V]] = {}

    def __len__(self) -> int:
        with self._lock:
            return sum(len(stack) for stack in self._open.values())

    def push(self, value: V, depth: int = 1) -> None:
        """File ``value`` for the ``with`` statement ``depth`` frames above the caller."""
        key = _key(_frame(depth + 1))
        with self._lock:
            stack = self._open.get(key)
            if stack is None:
                self._open[key] = [value]
            else:
                stack.append(value)

    def pop(self, depth: int = 1) -> V:
        """Take back the latest entry of the ``with`` statement ``depth`` frames above.

        When that frame holds none (``__enter__`` and ``__exit__`` called by hand from
        two functions), the latest entry of any frame is taken, so that every exit
        still balances one entry.

        Raises:
            RuntimeError: nothing is open: an exit without an entry.
        """
        key = _key(_frame(depth + 1))
        with self._lock:
            stack = self._open.get(key)
            if stack is None:
                if not self._open:
                    raise RuntimeError("exited a block that was never entered")
                key = next(reversed(self._open))
                stack = self._open[key]
            value = stack.pop()
            if not stack:
                del self._open[key]
            return value
