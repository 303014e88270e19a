"""A callable's signature, read once, and what a call's arguments mean under it.

Three decorators look at a call's arguments: ``@cache_result`` builds its key from them,
``@validate_input`` checks them and ``@monitor`` summarises them for its log record. They
all read the signature through :func:`signature_of`, so they agree on what a call means;
each then applies its own policy, written where it is applied.

Read once. ``inspect.signature`` costs tens of microseconds and a stack of decorators
reaches the same function through ``__wrapped__``: :func:`signature_of` follows that chain
as ``inspect.signature`` does and keeps what it read on the innermost callable, so five
stacked decorators read one signature once. Nothing of it runs per call but the binding,
and the consumers' fast paths (a call made with exactly the positional arguments) do not
even bind.

The rules every consumer shares:

* **Binding** follows Python's: positional arguments fill the positional parameters in
  order, the rest go to ``*args``; keywords fill the parameters of that name that can be
  passed by keyword, the rest go to ``**kwargs`` (a positional-only parameter's name given
  as a keyword is such a rest).
* **A call that does not fit the signature** (an argument missing, one too many, an
  unknown keyword, one given twice) is never buttress's to report. Each decorator does
  nothing of its own with it and calls the function, which raises its own ``TypeError``,
  exactly as undecorated: ``@validate_input`` reports no problem with it (no
  ``InputValidationError``, no ``ValidationFailed``), ``@cache_result`` neither reads nor
  stores nor counts it, and ``@monitor`` records it like every call, with the
  ``TypeError`` as its outcome. Only ``fn.cache.invalidate()`` and its kin, which are not
  calls, raise that ``TypeError`` themselves.
* **The receiver.** A function's first parameter is its receiver when the decorator is
  applied on top of ``classmethod`` (whatever its name), or when it is named ``self`` or
  ``cls`` (the convention) and the decorator is not applied on top of ``staticmethod``.
  Bound methods, callable objects and ``functools.partial`` objects of a method have their
  receiver bound already: their signature does not show it.
* **Display names**: a named parameter by its name; an extra positional argument by the
  ``*args`` parameter's name and its index (``rest[0]``); an extra keyword by its own name,
  unless that is also the name of a positional-only parameter (``kwargs['a']``).
* **No readable signature** (some builtins and C extensions): every call fits, positional
  arguments are ``args[0]``, ``args[1]``... and keywords go by their names.

The consumers' policies (each stated again where it is applied):

================  =============  ===================  ========================
consumer          defaults       the receiver         no readable signature
================  =============  ===================  ========================
cache keys        filled in      keyed on             keyed on the raw call
validation        not checked    annotation not read  refused at decoration
monitor inputs    left out       left out             numbered (``args[0]``)
================  =============  ===================  ========================
"""

from __future__ import annotations

import functools
import inspect
import types
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Final, final

__all__ = ["MISSING", "CallSignature", "Misfit", "signature_of"]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<not passed>"


#: Stands for a parameter the call left out, in :meth:`CallSignature.bind`'s values.
MISSING: Final[Any] = _Missing()

#: The conventional names of a receiver.
_RECEIVERS: Final = frozenset({"self", "cls"})

_POSITIONAL: Final = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class Misfit(Exception):
    """The call does not fit the signature: the function itself will say how.

    Internal: never leaves buttress. Whoever catches it calls the function, which raises
    its own ``TypeError``.
    """


#: What :meth:`CallSignature.bind` returns: one value per named parameter (``MISSING``
#: where the call left it out), the extra positional arguments, the extra keywords.
Bound = tuple[list[Any], tuple[Any, ...], dict[str, Any]]


@final
class CallSignature:
    """One callable's parameters, read once; answers binding, positions and names.

    Attributes:
        readable: whether a signature could be read at all. Without one, every call fits
            and binds as ``(*args, **kwargs)``.
        problem: why it could not be read (``""`` when it could).
        parameters: every parameter, ``*args`` and ``**kwargs`` included, in order.
        names: the named parameters (neither ``*args`` nor ``**kwargs``), in order: the
            positional ones first (:attr:`positional` of them), then the keyword-only.
        positional: how many named parameters can be passed by position.
        defaults: the default of each named parameter, ``MISSING`` when it has none.
        keywords: keyword -> index in :attr:`names`, for parameters passable by keyword.
        positional_only: the names of the positional-only parameters.
        var_positional: the name of the ``*args`` parameter, or ``None``.
        var_keyword: the name of the ``**kwargs`` parameter, or ``None``.
    """

    __slots__ = (
        "_first",
        "_kind",
        "_required",
        "defaults",
        "keywords",
        "names",
        "parameters",
        "positional",
        "positional_only",
        "problem",
        "readable",
        "var_keyword",
        "var_positional",
    )

    def __init__(self, target: Callable[..., Any]) -> None:
        self._kind: str | None = None  # "classmethod" or "staticmethod" once seen as one
        self._first: str | None = None
        self.problem = ""
        self.readable = True
        self.parameters: tuple[inspect.Parameter, ...] = ()
        self.names: tuple[str, ...] = ()
        self.positional = 0
        self.defaults: tuple[Any, ...] = ()
        self.keywords: Mapping[str, int] = {}
        self.positional_only: frozenset[str] = frozenset()
        self.var_positional: str | None = None
        self.var_keyword: str | None = None
        self._required: tuple[int, ...] = ()
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError) as exc:  # some builtins, odd callables
            self.readable = False
            self.problem = str(exc)
            return
        self.parameters = tuple(signature.parameters.values())
        names: list[str] = []
        defaults: list[Any] = []
        keywords: dict[str, int] = {}
        for parameter in self.parameters:
            kind = parameter.kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                self.var_positional = parameter.name
                continue
            if kind is inspect.Parameter.VAR_KEYWORD:
                self.var_keyword = parameter.name
                continue
            if kind in _POSITIONAL:
                self.positional += 1
            if kind is not inspect.Parameter.POSITIONAL_ONLY:
                keywords[parameter.name] = len(names)
            names.append(parameter.name)
            empty = parameter.default is inspect.Parameter.empty
            defaults.append(MISSING if empty else parameter.default)
        self.names = tuple(names)
        self.defaults = tuple(defaults)
        self.keywords = keywords
        self.positional_only = frozenset(
            p.name for p in self.parameters if p.kind is inspect.Parameter.POSITIONAL_ONLY
        )
        self._required = tuple(i for i, d in enumerate(defaults) if d is MISSING)
        # Only a function's own first parameter can be a receiver: the signatures of a
        # class, a bound method or a callable object have theirs bound already.
        if self.positional and isinstance(target, (types.FunctionType, functools.partial)):
            self._first = names[0]

    def __repr__(self) -> str:
        if not self.readable:
            return "<CallSignature (unreadable)>"
        shown = ", ".join(str(p) for p in self.parameters)
        return f"<CallSignature ({shown})>"

    # --- the receiver -------------------------------------------------------------------

    @property
    def receiver(self) -> str | None:
        """The name of the receiver parameter (``self``, ``cls``), or ``None``."""
        if self._kind == "classmethod":
            return self._first
        if self._kind is None and self._first in _RECEIVERS:
            return self._first
        return None

    def _seen_as(self, kind: str) -> None:
        self._kind = kind

    # --- binding ------------------------------------------------------------------------

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Bound:
        """Bind a call: ``(values, extra positional, extra keywords)``.

        ``values`` holds one entry per name in :attr:`names`, ``MISSING`` where the call
        left the parameter out (its default applies). Without a readable signature,
        everything is extra.

        Raises:
            Misfit: the call does not fit the signature.
        """
        if not self.readable:
            return [], args, dict(kwargs)
        positional = self.positional
        extra: tuple[Any, ...] = ()
        if len(args) > positional:
            if self.var_positional is None:
                raise Misfit
            extra = args[positional:]
            args = args[:positional]
        values = list(args)
        values.extend([MISSING] * (len(self.names) - len(args)))
        extra_keywords: dict[str, Any] = {}
        if kwargs:
            index_of = self.keywords
            for name, value in kwargs.items():
                index = index_of.get(name)
                if index is None:
                    if self.var_keyword is None:
                        raise Misfit
                    extra_keywords[name] = value
                elif values[index] is not MISSING:
                    raise Misfit  # got multiple values for one argument
                else:
                    values[index] = value
        for index in self._required:
            if values[index] is MISSING:
                raise Misfit
        return values, extra, extra_keywords

    def fits(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
        """Whether calling the function with these arguments gets past its binding."""
        try:
            self.bind(args, kwargs)
        except Misfit:
            return False
        return True

    # --- positions and names ------------------------------------------------------------

    def position(self, name: str) -> int | None:
        """The position a named parameter is passed at, ``None`` when keyword-only."""
        try:
            index = self.names.index(name)
        except ValueError:
            return None
        return index if index < self.positional else None

    @property
    def var_positional_name(self) -> str:
        """What extra positional arguments are called: ``*args``' name, or ``"args"``."""
        return self.var_positional or "args"

    def argument_name(self, index: int) -> str:
        """The display name of the positional argument at ``index`` (``x``, ``rest[0]``)."""
        if index < self.positional:
            return self.names[index]
        return f"{self.var_positional_name}[{index - self.positional}]"

    def shadows(self, key: str) -> bool:
        """Whether the keyword ``key`` lands in ``**kwargs`` under a positional-only name."""
        return key in self.positional_only and self.var_keyword is not None

    def keyword_name(self, key: str) -> str:
        """The display name of the keyword argument ``key`` (``key``, ``kwargs['a']``)."""
        if self.shadows(key):
            return f"{self.var_keyword}[{key!r}]"
        return key

    def accepts(self, name: str) -> bool:
        """Whether some argument of a call can go by ``name`` (a parameter, or any name
        when there is ``**kwargs`` or no readable signature)."""
        if not self.readable or self.var_keyword is not None:
            return True
        return any(p.name == name for p in self.parameters)


# --- one reading per callable ---------------------------------------------------------

# What was read, by the identity of the innermost callable. Written by hand rather than a
# WeakKeyDictionary, which compares keys with ==: a callable object may define __eq__ (or
# be unhashable), and two equal callables are still two callables. No lock: single dict
# operations are atomic, and the weakref callback may run in any thread (during a garbage
# collection that a lock's holder triggered); a lost race only means a second reading.
_read: dict[int, tuple[weakref.ReferenceType[Any], CallSignature]] = {}


def _stop(candidate: Any) -> bool:
    # Where inspect.signature stops following __wrapped__, so the same signature is read.
    return hasattr(candidate, "__signature__") or isinstance(candidate, types.MethodType)


def _innermost(target: Any) -> Any:
    try:
        return inspect.unwrap(target, stop=_stop)
    except ValueError:  # a __wrapped__ cycle: inspect.signature fails on it too
        return target


def signature_of(target: Any) -> CallSignature:
    """The signature of ``target``, read once for it and every wrapper around it.

    ``target`` may be a ``classmethod`` or ``staticmethod`` object: its function's
    signature is returned, and remembered as that kind of method (which decides the
    receiver). Never raises: a callable without a readable signature gets one with
    ``readable`` false.
    """
    kind = None
    if isinstance(target, (classmethod, staticmethod)):
        kind = type(target).__name__
        target = target.__func__
    source = _innermost(target)
    key = id(source)
    entry = _read.get(key)
    signature = entry[1] if entry is not None and entry[0]() is source else None
    if signature is None:
        signature = CallSignature(source)
        try:
            reference = weakref.ref(source, lambda ref: _forget(key, ref))
        except TypeError:  # not weakly referable: each layer reads it again
            pass
        else:
            _read[key] = (reference, signature)
    if kind is not None:
        signature._seen_as(kind)
    return signature


def _forget(key: int, reference: weakref.ReferenceType[Any]) -> None:
    entry = _read.get(key)
    if entry is not None and entry[0] is reference:
        _read.pop(key, None)
