"""The one place that tells sync from async and builds wrappers.

A decorator in buttress writes its decisions once, as plain code with no I/O and no
waiting (an engine), plus two thin shells that only call, wait or lock: one ``def`` and one
``async def``. :func:`wrap` classifies the target, refuses what the decorator cannot
handle, picks the shell, and makes the wrapper honest (``functools.wraps`` metadata, the
same signature, ``inspect.iscoroutinefunction`` telling the truth, descriptors such as
``classmethod`` kept).

Generator and async-generator functions (streams) are a kind of their own: their body
runs when they are iterated, so a decorator handles them only when it gives a stream
factory (built on :mod:`buttress._streams`), whose wrapper is a generator function of
the same kind; otherwise they are refused, with the reason.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ._errors import StackingWarning, warn
from ._signature import signature_of

__all__ = [
    "StackName",
    "WrapperFactory",
    "check_names",
    "decorated_above",
    "function_module",
    "function_name",
    "is_async_callable",
    "stack_name",
    "stream_kind",
    "warn_decorated_above",
    "wrap",
]

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


def stream_kind(target: Any) -> str | None:
    """``"async"`` for an async-generator function, ``"sync"`` for a generator function.

    ``None`` for anything else. Sees through ``functools.partial``, methods, and objects
    whose class's ``__call__`` is a generator function.
    """
    inner = _unwrap_partial(target)
    if inspect.isasyncgenfunction(inner):
        return "async"
    if inspect.isgeneratorfunction(inner):
        return "sync"
    if inspect.isroutine(inner) or isinstance(inner, type) or not callable(inner):
        return None
    call = type(inner).__call__
    if inspect.isasyncgenfunction(call):
        return "async"
    return "sync" if inspect.isgeneratorfunction(call) else None


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


class StackName:
    """The ``function`` name every buttress layer of one decorated function reports.

    One per stack of decorators, shared by all its layers: ``wrap()`` hangs it on each
    wrapper (``functools.update_wrapper`` then carries it to every wrapper above), and each
    layer reads :attr:`value` when it reports an event, not when it is built. So the name
    ``@monitor`` gives, applied last (outermost), is what the retries, cache lookups and
    timeouts below it report too, and ``policy()`` needs nothing of its own.

    Attributes:
        value: the name: the function's qualified name until a monitor names the stack.
        monitored: a ``@monitor`` layer took the name (then no other may change it).
        named: that monitor was given the name outright (``@monitor("embed")``).
        labels: the monitor's static labels, sorted (they make a series too).
        origin: where the function is defined (module and qualified name, file and line),
            which tells two different functions of one name from one redefined.
    """

    __slots__ = ("__weakref__", "labels", "monitored", "named", "origin", "value")

    def __init__(self, value: str, origin: tuple[str, str, str, int] | None = None) -> None:
        self.value = value
        self.monitored = False
        self.named = False
        self.labels: tuple[tuple[str, str], ...] = ()
        # a name given outright (a retrying block's) comes from nowhere in particular
        self.origin = origin if origin is not None else ("", value, "", 0)

    def __str__(self) -> str:  # messages spell the name as it is now
        return self.value

    def __repr__(self) -> str:
        return f"<StackName {self.value!r}>"


_NAME_ATTRIBUTE = "__buttress_name__"
#: Names made for a target not yet wrapped: the factory asks for it, ``wrap()`` then
#: hangs the same one on the wrapper and forgets it here.
_unclaimed: weakref.WeakKeyDictionary[Any, StackName] = weakref.WeakKeyDictionary()


def _origin(target: Any) -> tuple[str, str, str, int]:
    inner = inspect.unwrap(_unwrap_partial(target))
    code = getattr(inner, "__code__", None)
    return (
        function_module(target),
        function_name(target),
        code.co_filename if code is not None else "",
        code.co_firstlineno if code is not None else 0,
    )


def stack_name(target: Any) -> StackName:
    """The :class:`StackName` of the stack ``target`` belongs to (made for a new stack)."""
    found = getattr(_unwrap_partial(target), _NAME_ATTRIBUTE, None)
    if isinstance(found, StackName):
        return found
    try:
        name = _unclaimed.get(target)
    except TypeError:  # neither hashable nor weakly referenceable: a stack of its own
        return StackName(function_name(target), _origin(target))
    if name is None:
        name = StackName(function_name(target), _origin(target))
        try:
            _unclaimed[target] = name
        except TypeError:
            pass
    return name


def _claim(target: Any) -> StackName:
    """The stack name for ``target``'s new wrapper; a raw function gets a new stack's."""
    name = stack_name(target)
    try:
        _unclaimed.pop(target, None)
    except TypeError:
        pass
    _settle(name)
    return name


# --- two functions under one name ----------------------------------------------------------
#
# Two different functions reporting the same name and labels would share every series (the
# calls of pkg.text.embed and pkg.image.embed, both "embed", added up). A stack's name is
# final only once its outermost layer is applied, and nothing says when that is; but stacks
# are built one after another, so a stack is checked when a layer of another one is applied
# (at import time still), and the last one when the metrics are enabled or read
# (:func:`check_names`).

_collisions = logging.getLogger("buttress.metrics")
_names_lock = threading.Lock()
#: Stacks checked, by the name and labels they had then (looked up by their current ones).
_checked: dict[tuple[str, tuple[tuple[str, str], ...]], list[weakref.ref[StackName]]] = {}
_pending: weakref.ref[StackName] | None = None
_reported: set[tuple[tuple[str, str, str, int], tuple[str, str, str, int]]] = set()


def _settle(name: StackName) -> None:
    """``name``'s stack got a layer: the stack touched before it is complete, check it."""
    global _pending
    with _names_lock:
        previous = _pending() if _pending is not None else None
        _pending = weakref.ref(name)
    if previous is not None and previous is not name:
        _check(previous)


def check_names() -> None:
    """Check the last stack built (the others were when the next one started)."""
    global _pending
    with _names_lock:
        last = _pending() if _pending is not None else None
        _pending = None
    if last is not None:
        _check(last)


def _check(name: StackName) -> None:
    key = (name.value, name.labels)
    with _names_lock:
        others = [
            other
            for ref in _checked.get(key, ())
            if (other := ref()) is not None
            and other is not name
            and (other.value, other.labels) == key
            and other.origin != name.origin
            and not (other.named and name.named)  # the same name given on purpose
        ]
        if not any(ref() is name for ref in _checked.get(key, ())):
            _checked.setdefault(key, []).append(weakref.ref(name))
        fresh = [
            other
            for other in others
            if (other.origin, name.origin) not in _reported
            and (name.origin, other.origin) not in _reported
        ]
        _reported.update((other.origin, name.origin) for other in fresh)
    for other in fresh:
        _collisions.warning(
            "two different functions report their metrics as function=%r%s: %s and %s; "
            "their series are added up. Give each its own name (@monitor(\"...\") or "
            "policy(monitor=\"...\")), or the same one to both on purpose",
            name.value,
            "".join(f", {key}={value!r}" for key, value in name.labels),
            _where(other.origin),
            _where(name.origin),
        )


def _where(origin: tuple[str, str, str, int]) -> str:
    module, qualname, path, line = origin
    place = f"{module}.{qualname}" if module else qualname
    return f"{place} ({path}:{line})" if path else place


def wrap(
    target: Any,
    decorator: str,
    *,
    sync: WrapperFactory | None,
    async_: WrapperFactory | None,
    stream: WrapperFactory | None = None,
    astream: WrapperFactory | None = None,
    attributes: Mapping[str, object] | None = None,
    allow_generators: bool = False,
    why: str = "",
    stream_why: str = "",
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
        stream: builds the wrapper of a generator function (a generator function
            itself); ``None`` refuses them.
        astream: builds the wrapper of an async-generator function (an async-generator
            function itself); ``None`` refuses them.
        attributes: set on the wrapper after the metadata is copied (the decorator's
            handle, such as ``cache`` or ``breaker``).
        allow_generators: generator and async-generator functions without a stream
            factory count as plain callables instead of being refused.
        why: when one kind is refused, the reason and the way out, for the message.
        stream_why: when a stream is refused, the reason and the way out.

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
            stream=stream,
            astream=astream,
            attributes=attributes,
            allow_generators=allow_generators,
            why=why,
            stream_why=stream_why,
        )
        return type(target)(inner)
    if not callable(target):
        raise TypeError(f"@{decorator} needs a callable to decorate, got {target!r}")
    kind = stream_kind(target)
    factory = None if kind is None else astream if kind == "async" else stream
    if factory is None and kind is not None and not allow_generators:
        described = "an async generator" if kind == "async" else "a generator"
        raise TypeError(
            f"@{decorator} cannot decorate {function_name(target)}(), which is {described} "
            "function: "
            + (stream_why or "its body runs when it is iterated, not when it is called")
        )
    if factory is None:
        is_async = is_async_callable(target)
        factory = async_ if is_async else sync
        if factory is None:
            wanted = "a plain function" if is_async else "a coroutine function (async def)"
            raise TypeError(
                f"@{decorator} needs {wanted}, and {function_name(target)} is not one"
                + (f": {why}" if why else "")
            )
    wrapper = factory(target)
    if wrapper is not target:  # a factory may hand the target back as it is
        functools.update_wrapper(wrapper, target)
    setattr(wrapper, _NAME_ATTRIBUTE, _claim(target))
    if attributes:
        for name, value in attributes.items():
            setattr(wrapper, name, value)
    _decorators[wrapper] = decorator
    return wrapper


# --- decorators above a route decorator ----------------------------------------------------

#: Every wrapper :func:`wrap` made, with its decorator's name; held weakly.
_decorators: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def decorated_above(endpoint: object) -> tuple[str, ...]:
    """The buttress decorators applied *above* the route decorator that registered ``endpoint``.

    A route decorator (``@app.get(...)``, aiohttp's ``@routes.get(...)``) registers the
    function it receives and returns it unchanged, so a decorator written above it wraps
    a function the framework never calls. Seen from the registered ``endpoint``: its
    module binds its name to something else, whose ``__wrapped__`` chain reaches
    ``endpoint`` through buttress wrappers. Those decorators' names come back, outermost
    first; ``()`` when there are none, or when ``endpoint`` cannot be found by name (a
    function defined inside another function, a lambda, a callable object).
    """
    module = sys.modules.get(getattr(endpoint, "__module__", None) or "")
    qualname = getattr(endpoint, "__qualname__", None)
    if module is None or not isinstance(qualname, str) or "<" in qualname:
        return ()
    bound: Any = module
    for part in qualname.split("."):
        bound = inspect.getattr_static(bound, part, None)
        if bound is None:
            return ()
    bound = getattr(bound, "__func__", bound)  # a classmethod or staticmethod
    names: list[str] = []
    for _ in range(100):  # a __wrapped__ cycle must not hang an app's start
        if bound is endpoint:
            return tuple(names)
        name = _decorators.get(bound) if _weakrefable(bound) else None
        if name is not None:
            names.append(name)
        bound = getattr(bound, "__wrapped__", None)
        if bound is None:
            return ()
    return ()


def _weakrefable(value: object) -> bool:
    try:
        weakref.ref(value)
    except TypeError:
        return False
    return True


def warn_decorated_above(route: str, endpoint: object, framework: str, example: str) -> bool:
    """Warn (:class:`~buttress.StackingWarning`) when buttress decorators sit above a route.

    ``route`` names the route for the message (``"GET /embed"``), ``framework`` the
    framework and ``example`` its route decorator (``"@app.get(...)"``). The warning
    points at the endpoint's definition. Returns whether it warned.
    """
    names = decorated_above(endpoint)
    if not names:
        return False
    listed = ", ".join(f"@{name}" for name in names)
    function = function_name(endpoint)
    warn(
        f"{listed} above the route decorator of {route}: {framework} registered "
        f"{function}() as it was below {listed}, so {listed} never runs for a request to "
        f"{route} (no record, no metric, no retry). Put buttress decorators below the "
        f"route decorator, which goes on top ({example})",
        StackingWarning,
        at=endpoint,
    )
    return True
