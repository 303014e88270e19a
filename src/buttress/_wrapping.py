"""The one place that tells sync from async and builds wrappers.

A decorator in buttress writes its decisions once, as plain code with no I/O and no
waiting (an engine), plus two thin shells that only call, wait or lock: one ``def`` and one
``async def``. :func:`wrap` classifies the target, refuses what the decorator cannot
handle, picks the shell, and makes the wrapper honest (``functools.wraps`` metadata, the
same signature, ``inspect.iscoroutinefunction`` telling the truth, descriptors such as
``classmethod`` kept).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ._signature import signature_of

__all__ = ["WrapperFactory", "function_module", "function_name", "is_async_callable", "wrap"]

F = TypeVar("F", bound=Callable[..., Any])

#: Builds the wrapper for one target: receives the target, returns the wrapper.
WrapperFactory = Callable[[Callable[..., Any]], Callable[..., Any]]


def _unwrap_partial(target: Any) -> Any:
    while isinstance(target, functools.partial):
        target = target.func
    return target


def is_async_callable(target: Any) -> bool:
    """True when calling ``target`` returns an awaitable coroutine.

    Recognises ``async def`` functions and methods, ``functools.partial`` objects of them,
    functions marked with ``inspect.markcoroutinefunction`` (Python 3.12+), and objects
    whose class defines ``async def __call__``.
    """
    inner = _unwrap_partial(target)
    if inspect.iscoroutinefunction(inner):
        return True
    if inspect.isroutine(inner) or isinstance(inner, type) or not callable(inner):
        return False
    return inspect.iscoroutinefunction(type(inner).__call__)


def function_name(target: Any) -> str:
    """A readable, bounded name for ``target``: its qualified name, for events and errors."""
    inner = _unwrap_partial(target)
    name = getattr(inner, "__qualname__", None)
    if not isinstance(name, str):
        name = type(inner).__qualname__
    return name


def function_module(target: Any) -> str:
    """The module defining ``target`` (through ``functools.partial``), or ``""``."""
    module = getattr(_unwrap_partial(target), "__module__", None)
    return module if isinstance(module, str) else ""


def wrap(
    target: Any,
    decorator: str,
    *,
    sync: WrapperFactory | None,
    async_: WrapperFactory | None,
    attributes: Mapping[str, object] | None = None,
    allow_generators: bool = False,
    why: str = "",
) -> Any:
    """Build ``decorator``'s wrapper around ``target``.

    Args:
        target: what is being decorated: a function, method, ``functools.partial``,
            callable object, or a ``classmethod``/``staticmethod`` (re-wrapped in kind).
        decorator: the decorator's name, for error messages (``"retry"``).
        sync: builds the wrapper of a plain callable; ``None`` when the decorator only
            supports coroutine functions (then plain callables are refused).
        async_: builds the wrapper of a coroutine function; ``None`` when the decorator
            only supports plain callables.
        attributes: set on the wrapper after the metadata is copied (the decorator's
            handle, such as ``cache`` or ``breaker``).
        allow_generators: generator and async-generator functions are refused with a
            ``TypeError`` unless this is true (then they count as plain callables).
        why: when one kind is refused, the reason and the way out, for the message.

    Raises:
        TypeError: ``target`` is not callable, or is of a kind the decorator refuses.
    """
    if isinstance(target, (classmethod, staticmethod)):
        signature_of(target)  # remembers the kind of method, which decides the receiver
        inner = wrap(
            target.__func__,
            decorator,
            sync=sync,
            async_=async_,
            attributes=attributes,
            allow_generators=allow_generators,
            why=why,
        )
        return type(target)(inner)
    if not callable(target):
        raise TypeError(f"@{decorator} needs a callable to decorate, got {target!r}")
    if not allow_generators and (
        inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target)
    ):
        kind = "an async generator" if inspect.isasyncgenfunction(target) else "a generator"
        raise TypeError(
            f"@{decorator} cannot decorate {function_name(target)}(), which is {kind} "
            "function: its body runs when it is iterated, not when it is called"
        )
    is_async = is_async_callable(target)
    factory = async_ if is_async else sync
    if factory is None:
        wanted = "a plain function" if is_async else "a coroutine function (async def)"
        raise TypeError(
            f"@{decorator} needs {wanted}, and {function_name(target)} is not one"
            + (f": {why}" if why else "")
        )
    wrapper = factory(target)
    functools.update_wrapper(wrapper, target)
    if attributes:
        for name, value in attributes.items():
            setattr(wrapper, name, value)
    return wrapper
