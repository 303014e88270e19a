"""The name a function's entries go by in a store shared between processes.

A store in this process tells decorated functions apart by identity. A store shared
between processes (``RedisStore``) can only go by names: ``module.qualname``. Two
different functions may share one, and must never share entries:

* closures made by one factory (``make("model-A")``, ``make("model-B")``) share the
  factory's ``make.<locals>.embed``, and so do ``functools.partial`` objects of one
  function, bound methods of one method and instances of one callable class;
* what tells them apart is what they captured: closure variables, a partial's arguments,
  the bound ``self``, the callable object.

So the name is ``module.qualname``, followed, when the function captured anything, by a
digest of what it captured (``make.<locals>.embed[1f0c...]``): equal captured values give
equal names in every process, different ones different names. A captured value that has
no encoding stable across processes (a client, a lock, a model object) cannot be told
apart that way: the decorator refuses the function, and asks for ``name=``, a name the
user makes distinct (``name=f"embed:{model}"``).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import types
from collections.abc import Callable, Iterator
from typing import Any, Final

from buttress._errors import ConfigurationError, UnkeyableArgumentError
from buttress._wrapping import function_module, function_name

from ._keys import CacheKey, CacheScope, KeyBuilder

__all__ = ["shared_name"]

#: Captured functions are followed into their own captured values this deep.
_DEPTH: Final = 4
_VARIANT_LENGTH: Final = 12


def shared_name(
    fn: Callable[..., Any], name: str | None, decorator: str = "cache_result"
) -> tuple[str, str]:
    """``(function, module)`` for the :class:`CacheScope` of ``fn`` in a shared store
    (also the default name of a shared ``@rate_limit``: ``decorator`` names the one the
    message tells to give a ``name=``).

    Raises:
        ConfigurationError: ``fn`` captured a value with no stable encoding, and no
            ``name`` was given.
    """
    if name is not None:
        return name, ""
    qualname, module = function_name(fn), function_module(fn)
    digest = hashlib.sha256()
    captured = False
    for label, value in _captured(fn, fn, 0):
        captured = True
        try:
            encoded = _stable(value)
        except UnkeyableArgumentError:
            raise ConfigurationError(
                f"{qualname} keeps state in a store shared between processes, which knows "
                f"functions by name, and it captured {label} (a {type(value).__qualname__}) "
                "that no other process can compare: another function of the same name "
                "(made by the same factory with another value) could share its state. "
                f"Give it a name of its own: @{decorator}(name='...', store=...)"
            ) from None
        digest.update(label.encode() + b"\0" + encoded + b"\0")
    if not captured:
        return qualname, module
    return f"{qualname}[{digest.hexdigest()[:_VARIANT_LENGTH]}]", module


def _captured(fn: Any, root: Any, depth: int) -> Iterator[tuple[str, Any]]:
    """``(label, value)`` of everything ``fn`` captured that may change what it returns."""
    target = fn
    while isinstance(target, functools.partial):
        for position, value in enumerate(target.args):
            yield f"the partial's argument {position}", value
        for keyword, value in sorted(target.keywords.items()):
            yield f"the partial's argument {keyword!r}", value
        target = target.func
    if inspect.ismethod(target):
        yield "self", target.__self__
        target = target.__func__
    if isinstance(target, types.FunctionType):
        cells = target.__closure__ or ()
        for variable, cell in zip(target.__code__.co_freevars, cells, strict=True):
            try:
                value = cell.cell_contents
            except ValueError:  # empty: its own name, bound once decorated
                continue
            if value is root or getattr(value, "__wrapped__", None) is root:
                continue  # itself (a recursive function)
            yield f"the variable {variable!r}", _nominal(value, root, depth)
    elif not inspect.isroutine(target) and not isinstance(target, type):
        yield "the callable object", target


def _nominal(value: Any, root: Any, depth: int) -> Any:
    """What stands for a captured value: modules, classes and functions by name, with what
    a nested function captured in turn and the object a method is bound to; anything else
    as it is."""
    if isinstance(value, types.ModuleType):
        return ("module", value.__name__)
    if isinstance(value, types.MethodType):
        return ("method", _nominal(value.__func__, root, depth), value.__self__)
    if isinstance(value, types.BuiltinFunctionType):
        bound = value.__self__
        if bound is None or isinstance(bound, types.ModuleType):
            return ("builtin", value.__module__ or "", value.__qualname__)
        return ("method", value.__qualname__, bound)  # such as some_list.append
    if isinstance(value, functools.partial):
        arguments = tuple(value.args), tuple(sorted(value.keywords.items()))
        return ("partial", _nominal(value.func, root, depth), *arguments)
    if isinstance(value, (type, types.FunctionType)):
        qualname, module = value.__qualname__, value.__module__
        if "<locals>" not in qualname:
            return ("global", module, qualname)  # importable: the same in every process
        if depth < _DEPTH and isinstance(value, types.FunctionType):
            inner = [item for pair in _captured(value, root, depth + 1) for item in pair]
            return ("local", module, qualname, *inner)
    return value


_SCOPE: Final = CacheScope("<captured>")


def _stable(value: Any) -> bytes:
    """The encoding of ``value`` that is the same in every process (raises
    UnkeyableArgumentError when there is none), as cache keys encode arguments."""
    parts = KeyBuilder(_identity, "<captured>", lambda: value).build((), {})
    return CacheKey(_SCOPE, parts).stable_bytes()


def _identity() -> None:  # pragma: no cover - the signature KeyBuilder reads, never called
    return None
