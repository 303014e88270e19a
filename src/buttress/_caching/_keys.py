"""Cache keys: arguments bound to the signature, made canonical, optionally encoded as bytes.

Two forms of one key:

* the *local* form, a hashable tuple with one canonical value per parameter, used by the
  in-process store. It is built without ``inspect.Signature.bind``: the signature is
  compiled at decoration, and a call made only with positional arguments that match it
  (the usual case) uses its ``args`` tuple itself as the key;
* the *stable* form, a canonical byte encoding of the local form that is the same in every
  process, on every machine and Python version (never ``hash()``), for stores shared
  between processes (Redis). It is computed only when such a store asks for it.

What is equal (see docs/decorators/cache.md): two calls share an entry when, after binding to
the signature with defaults applied, every argument compares equal under Python's ``==``
with these refinements: lists, tuples, dicts, sets and their contents are compared by
structure (a list never equals a tuple; dict order does not matter); numpy arrays by dtype,
shape and a digest of their bytes; pydantic models and dataclasses by class and field
values; other hashable objects by their own ``__eq__``/``__hash__`` (identity for plain
objects). As with ``functools.lru_cache``, ``1``, ``1.0`` and ``True`` are equal.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import hashlib
import math
import struct
import sys
import uuid
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Final, final

from buttress._errors import UnkeyableArgumentError
from buttress._signature import MISSING, Misfit, signature_of

__all__ = ["CacheKey", "CacheScope", "KeyBuilder", "canonical", "stable_bytes"]


class _Tag:
    """Marks a canonical form made from an unhashable value: ``(_Tag, ...)``.

    Tags are private objects, so no argument a user passes can produce a tuple starting with
    one: a canonical list ``(LIST, 1, 2)`` never equals the tuple ``(1, 2)`` or anything else.
    """

    __slots__ = ("code", "name")

    def __init__(self, name: str, code: bytes) -> None:
        self.name = name
        self.code = code

    def __repr__(self) -> str:
        return f"<{self.name}>"

    def __reduce__(self) -> str:  # pragma: no cover - tags are never pickled on purpose
        raise TypeError("cache key tags are process-local")


LIST: Final = _Tag("list", b"l")
DICT: Final = _Tag("dict", b"d")
ARRAY: Final = _Tag("ndarray", b"a")
MODEL: Final = _Tag("model", b"m")
DATACLASS: Final = _Tag("dataclass", b"D")
VARARGS: Final = _Tag("*args", b"v")
VARKW: Final = _Tag("**kwargs", b"k")
UNBOUND: Final = _Tag("unbound call", b"U")

#: Types whose values are already canonical: hashable, immutable, compared by value.
_ATOMIC: Final = frozenset({int, str, float, bytes, bool, type(None), complex})


class _Unkeyable(Exception):
    """Raised inside :func:`canonical`; the builder turns it into UnkeyableArgumentError."""

    def __init__(self, value: object, reason: str = "") -> None:
        super().__init__(type(value).__qualname__)
        self.value = value
        self.reason = reason


def _array_form(array: Any) -> tuple[Any, ...]:
    if array.dtype.hasobject:
        raise _Unkeyable(array, "a numpy array of Python objects has no canonical bytes")
    data = array if array.flags.c_contiguous else array.copy(order="C")
    digest = hashlib.blake2b(data.data, digest_size=16).digest()
    return (ARRAY, array.dtype, tuple(array.shape), digest)


def canonical(value: Any) -> Hashable:
    """The canonical, hashable form of one argument value.

    A hashable value is its own canonical form (so a call's raw ``args`` tuple is a valid
    key when all of it is hashable); unhashable containers, numpy arrays, pydantic models
    and dataclasses become tagged tuples. Raises ``_Unkeyable`` for anything else.
    """
    kind = type(value)
    if kind in _ATOMIC:
        return value  # type: ignore[no-any-return]
    if kind is list:
        return (LIST, *[canonical(item) for item in value])
    if kind is dict:
        return (DICT, frozenset([(canonical(k), canonical(v)) for k, v in value.items()]))
    if kind is set:
        # set == frozenset in Python, so a set is keyed as the equal frozenset
        return frozenset([canonical(item) for item in value])
    if kind is bytearray:
        return bytes(value)  # bytearray == bytes in Python
    try:
        hash(value)
    except TypeError:
        pass
    else:
        return value  # type: ignore[no-any-return]
    numpy = sys.modules.get("numpy")  # no array can exist unless numpy was imported
    if numpy is not None and isinstance(value, numpy.ndarray):
        return _array_form(value)
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        return (MODEL, kind, tuple([(name, canonical(item)) for name, item in value]))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = tuple(
            [canonical(getattr(value, f.name)) for f in dataclasses.fields(value) if f.compare]
        )
        return (DATACLASS, kind, fields)
    if isinstance(value, tuple):  # a tuple (or NamedTuple) holding something unhashable
        return tuple([canonical(item) for item in value])
    if isinstance(value, list):
        return (LIST, *[canonical(item) for item in value])
    if isinstance(value, Mapping):
        return (DICT, frozenset([(canonical(k), canonical(v)) for k, v in value.items()]))
    if isinstance(value, (set, frozenset)):
        return frozenset([canonical(item) for item in value])
    raise _Unkeyable(value)


# --- the stable byte encoding -----------------------------------------------------------

_FORMAT: Final = b"\x01"  # bumped if the encoding ever changes


def _length(count: int) -> bytes:
    return count.to_bytes(8, "big")


def _class_path(cls: type) -> bytes:
    return f"{cls.__module__}.{cls.__qualname__}".encode()


def _encode_int(value: int, out: bytearray) -> None:
    text = str(value).encode()
    out += b"i" + _length(len(text)) + text


def _encode_float(value: float, out: bytearray) -> None:
    if value.is_integer():  # 2.0 == 2 in Python: keep the two equal here too
        _encode_int(int(value), out)
    elif math.isnan(value):
        out += b"f" + struct.pack(">d", math.nan)
    else:
        out += b"f" + struct.pack(">d", value)


def _encode_str(value: str, out: bytearray) -> None:
    data = value.encode("utf-8", "surrogatepass")
    out += b"s" + _length(len(data)) + data


def _encode_items(code: bytes, items: Any, out: bytearray, *, ordered: bool) -> None:
    encoded = []
    for item in items:
        buffer = bytearray()
        _encode(item, buffer)
        encoded.append(bytes(buffer))
    if not ordered:  # sets and dicts: the order of the encodings, not of iteration
        encoded.sort()
    out += code + _length(len(encoded))
    for chunk in encoded:
        out += chunk


def _encode(value: Any, out: bytearray) -> None:
    # int, float and str subclasses (IntEnum, StrEnum, numpy's float64) compare equal to
    # their plain values, so they are encoded as those values.
    if value is None:
        out += b"N"
    elif isinstance(value, int):
        _encode_int(int(value), out)  # True == 1, IntEnum members equal their values
    elif isinstance(value, float):
        _encode_float(float(value), out)
    elif isinstance(value, str):
        _encode_str(str(value), out)
    elif isinstance(value, bytes):
        data = bytes(value)
        out += b"b" + _length(len(data)) + data
    elif isinstance(value, tuple):
        if value and isinstance(value[0], _Tag):
            _encode_tagged(value, out)
        else:  # tuples and NamedTuples (equal to plain tuples)
            _encode_items(b"t", value, out, ordered=True)
    elif isinstance(value, frozenset):
        _encode_items(b"u", value, out, ordered=False)
    elif isinstance(value, complex):
        if value.imag == 0:
            _encode_float(value.real, out)
        else:
            out += b"c" + struct.pack(">dd", value.real, value.imag)
    else:
        _encode_other(value, out)


def _encode_tagged(value: tuple[Any, ...], out: bytearray) -> None:
    tag = value[0]
    if tag is LIST or tag is VARARGS:
        _encode_items(tag.code, value[1:], out, ordered=True)
    elif tag is DICT or tag is VARKW:
        _encode_items(tag.code, value[1], out, ordered=False)
    elif tag is ARRAY:
        _, dtype, shape, digest = value
        out += b"a"
        _encode_str(dtype.str if dtype.fields is None else repr(dtype.descr), out)
        _encode_items(b"t", shape, out, ordered=True)
        out += _length(len(digest)) + digest
    elif tag is MODEL or tag is DATACLASS:
        _, cls, fields = value
        path = _class_path(cls)
        out += tag.code + _length(len(path)) + path
        _encode_items(b"t", fields, out, ordered=True)
    else:  # UNBOUND
        _encode_items(tag.code, value[1:], out, ordered=True)


def _encode_other(value: Any, out: bytearray) -> None:
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.generic):
        _encode(value.item(), out)  # numpy scalars equal their Python values
        return
    if isinstance(value, enum.Enum):
        path = _class_path(type(value))
        out += b"e" + _length(len(path)) + path
        _encode_str(value.name, out)
        return
    if isinstance(value, type):
        path = _class_path(value)
        out += b"C" + _length(len(path)) + path
        return
    if isinstance(value, (datetime.datetime, datetime.time)) and value.utcoffset() is not None:
        if isinstance(value, datetime.datetime):
            value = value.astimezone(datetime.timezone.utc)  # equal instants, equal keys
        text = value.isoformat()
        out += b"T"
        _encode_str(f"{type(value).__name__}:{text}", out)
        return
    if isinstance(value, (datetime.date, datetime.time)):
        out += b"T"
        _encode_str(f"{type(value).__name__}:{value.isoformat()}", out)
        return
    if isinstance(value, datetime.timedelta):
        out += b"T"
        _encode_str(f"timedelta:{value.days}:{value.seconds}:{value.microseconds}", out)
        return
    if isinstance(value, uuid.UUID):
        out += b"g" + value.bytes
        return
    if isinstance(value, decimal.Decimal):
        if value.is_finite() and value == value.to_integral_value():
            _encode_int(int(value), out)
        else:
            out += b"x"
            _encode_str(str(value.normalize()), out)
        return
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        _encode_tagged((MODEL, type(value), tuple((n, canonical(v)) for n, v in value)), out)
        return
    if dataclasses.is_dataclass(value):
        fields = tuple(
            canonical(getattr(value, f.name)) for f in dataclasses.fields(value) if f.compare
        )
        _encode_tagged((DATACLASS, type(value), fields), out)
        return
    raise _Unkeyable(
        value,
        "it has no encoding that is stable across processes (supported: None, bool, int, "
        "float, complex, str, bytes, tuples, lists, dicts, sets, numpy arrays and scalars, "
        "pydantic models, dataclasses, enums, classes, datetime values, UUID, Decimal)",
    )


def stable_bytes(parts: Hashable) -> bytes:
    """The canonical byte encoding of a local key: equal keys give equal bytes everywhere.

    Raises ``_Unkeyable`` for a value with no stable encoding (such as an object keyed by
    identity); :meth:`CacheKey.stable_bytes` turns that into UnkeyableArgumentError.
    """
    out = bytearray(_FORMAT)
    _encode(parts, out)
    return bytes(out)


# --- keys as stores see them ------------------------------------------------------------


@final
class CacheScope:
    """One decorated function, as the stores see it.

    Attributes:
        function: the function's qualified name (``Model.predict``).
        module: the module defining it (``""`` when unknown). A script's module is
            ``"__main__"`` in every process, including those ``multiprocessing`` spawns
            (which import it as ``__mp_main__``).
        parameters: the parameter names, in key order.

    Compared by identity: two decorated functions that happen to share a qualified name
    are two scopes for an in-process store (a store shared between processes can only go
    by the names, plus the version its user gives it).
    """

    __slots__ = ("_report", "function", "module", "parameters")

    def __init__(
        self,
        function: str,
        parameters: tuple[str, ...] = (),
        report: Callable[[str, int], None] | None = None,
        module: str = "",
    ) -> None:
        self.function = function
        self.parameters = parameters
        self._report = report
        self.module = "__main__" if module == "__mp_main__" else module

    def __repr__(self) -> str:
        return f"CacheScope({self.function!r})"

    @property
    def qualified_name(self) -> str:
        """``module.function``: what a store shared between processes names keys by."""
        return f"{self.module}.{self.function}" if self.module else self.function

    def report_eviction(self, reason: str, count: int = 1) -> None:
        """A store tells the function that ``count`` of its entries left, and why.

        ``reason`` is ``"size"``, ``"bytes"`` or ``"expired"``; the function counts it in
        its stats and emits ``CacheEviction``.
        """
        if self._report is not None:
            self._report(reason, count)


@final
class CacheKey:
    """The key of one call, handed to a :class:`~buttress.CacheStore`.

    Attributes:
        scope: the decorated function (:class:`CacheScope`).
        parts: the local form: a hashable tuple, one canonical value per parameter.

    A store in the same process keys on ``(scope, parts)``; a store shared between
    processes keys on :meth:`digest` with ``scope.function`` and a version of its own.
    """

    __slots__ = ("_stable", "parts", "scope")

    def __init__(self, scope: CacheScope, parts: Hashable) -> None:
        self.scope = scope
        self.parts = parts
        self._stable: bytes | None = None

    def __repr__(self) -> str:
        return f"CacheKey({self.scope.function!r}, {self.parts!r})"

    def stable_bytes(self) -> bytes:
        """The canonical encoding of :attr:`parts`, identical in every process.

        Raises:
            UnkeyableArgumentError: an argument has no stable encoding (an object keyed
                by identity, such as ``self`` of a plain class): pass ``key=``.
        """
        if self._stable is None:
            try:
                self._stable = stable_bytes(self.parts)
            except _Unkeyable as exc:
                raise _unkeyable_error(
                    self.scope.function, self._argument_of(exc.value), exc, stable=True
                ) from None
        return self._stable

    def digest(self) -> str:
        """A hex SHA-256 of :meth:`stable_bytes`: a short, stable name for the arguments."""
        return hashlib.sha256(self.stable_bytes()).hexdigest()

    def _argument_of(self, value: object) -> str:
        names = self.scope.parameters
        parts = self.parts
        if isinstance(parts, tuple) and len(parts) == len(names):
            for name, part in zip(names, parts, strict=True):
                if _contains(part, value):
                    return name
        return "an argument"


def _contains(part: object, value: object) -> bool:
    if part is value:
        return True
    if isinstance(part, (tuple, frozenset)):
        return any(_contains(item, value) for item in part)
    return False


def _unkeyable_error(
    function: str, argument: str, exc: _Unkeyable, *, stable: bool = False
) -> UnkeyableArgumentError:
    type_name = type(exc.value).__qualname__
    where = "the result of key=" if argument == "key=" else f"argument {argument!r}"
    if stable:
        problem = (
            f"a {type_name} in {where} cannot go into a store shared between processes: "
            f"{exc.reason or 'it is compared by identity, which no other process can see'}"
        )
    else:
        problem = exc.reason or "it is not hashable and has no canonical form"
        problem = f"{where} holds a {type_name}, and {problem}"
    return UnkeyableArgumentError(
        f"@cache_result cannot build a cache key for {function}(): {problem}. "
        "Pass key=callable(*args, **kwargs) to @cache_result to build the key yourself.",
        function=function,
        argument=argument,
        type_name=type_name,
    )


# --- binding calls to the signature ---------------------------------------------------

#: Raised by :meth:`KeyBuilder.build` for a call that does not fit the signature.
BindError = Misfit


@final
class KeyBuilder:
    """Turns one call's arguments into its local key; compiled once, at decoration.

    The call is bound by the function's shared :class:`~buttress._signature.CallSignature`;
    what a key is made of is the cache's own policy, all of it here:

    * defaults are filled in: ``f(1)`` and ``f(1, b=2)``, with ``b=2`` the default, are one
      entry (the defaults are made canonical once, at decoration);
    * the receiver (``self``, ``cls``) is an argument like any other: a plain object is
      keyed by identity, so each instance has its own entries (``key=`` says otherwise);
    * a call that does not fit the signature raises :data:`BindError`: the wrapper then
      calls the function uncached, so that it raises its own ``TypeError``;
    * a callable without a readable signature is keyed on the raw call (its positional
      arguments and its keywords, no defaults).

    Attributes:
        arity: when a call passes exactly this many positional arguments and no keyword
            arguments, its key is ``args + tail`` (no binding needed); ``-1`` disables that
            fast path (custom ``key=``, ``*args``/``**kwargs`` in the signature, or a
            required keyword-only parameter).
        tail: the canonical defaults of keyword-only parameters, appended on the fast path.
        names: the parameters, in key order (for error messages).
    """

    __slots__ = ("_custom", "_defaults", "_function", "_signature", "arity", "names", "tail")

    def __init__(
        self,
        target: Callable[..., Any],
        function: str,
        custom: Callable[..., Any] | None = None,
    ) -> None:
        self._function = function
        self._custom = custom
        self.arity = -1
        self.tail: tuple[Any, ...] = ()
        self.names: tuple[str, ...] = ()
        self._defaults: tuple[Any, ...] = ()
        signature = self._signature = signature_of(target)
        if custom is not None:
            self.names = ("key=",)
            return
        if not signature.readable:
            return
        self.names = signature.names
        # MISSING (required), a canonical default, or the _Unkeyable raised if a call
        # ever relies on that default
        self._defaults = tuple(_canonical_default(d) for d in signature.defaults)
        keyword_defaults = self._defaults[signature.positional :]
        if (
            signature.var_positional is None
            and signature.var_keyword is None
            and all(d is not MISSING and not isinstance(d, _Unkeyable) for d in keyword_defaults)
        ):
            self.arity = signature.positional
            self.tail = keyword_defaults

    def build(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        """The local key of a call.

        Raises:
            BindError: the call does not fit the signature (the caller then calls the
                function uncached, so that it raises its own ``TypeError``).
            UnkeyableArgumentError: an argument cannot be keyed.
        """
        if self._custom is not None:
            result = self._custom(*args, **kwargs)
            try:
                return canonical(result)
            except _Unkeyable as exc:
                raise _unkeyable_error(self._function, "key=", exc) from None
        signature = self._signature
        if not signature.readable:
            return self._unbound(args, kwargs)
        values, extra, extra_keywords = signature.bind(args, kwargs)
        defaults = self._defaults
        parts: list[Any] = []
        for position, value in enumerate(values):
            if value is MISSING:
                value = defaults[position]  # canonical since decoration
                if isinstance(value, _Unkeyable):
                    raise _unkeyable_error(self._function, signature.names[position], value)
                parts.append(value)
            else:
                try:
                    parts.append(canonical(value))
                except _Unkeyable as exc:
                    raise self._error(position, exc) from None
        if signature.var_positional is not None:
            parts.append((VARARGS, *self._positional(extra, signature.positional)))
        if signature.var_keyword is not None:
            parts.append((VARKW, frozenset(self._keywords(extra_keywords))))
        return tuple(parts)

    def _positional(self, values: tuple[Any, ...], first: int) -> list[Hashable]:
        """The canonical forms of positional arguments, the first at position ``first``."""
        result = []
        for position, value in enumerate(values, first):
            try:
                result.append(canonical(value))
            except _Unkeyable as exc:
                raise self._error(position, exc) from None
        return result

    def _keywords(self, values: Mapping[str, Any]) -> list[tuple[str, Hashable]]:
        """``(keyword, canonical form)`` pairs of keyword arguments."""
        result = []
        for name, value in values.items():
            try:
                result.append((name, canonical(value)))
            except _Unkeyable as exc:
                raise self._error(name, exc) from None
        return result

    def _error(self, where: int | str, exc: _Unkeyable) -> UnkeyableArgumentError:
        """The error for the argument at a position or keyword, named as displayed."""
        signature = self._signature
        if isinstance(where, int):
            name = signature.argument_name(where)
        else:
            name = signature.keyword_name(where)
        return _unkeyable_error(self._function, name, exc)

    def _unbound(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        return (UNBOUND, tuple(self._positional(args, 0)), frozenset(self._keywords(kwargs)))


def _canonical_default(default: Any) -> Any:
    if default is MISSING:
        return MISSING
    try:
        return canonical(default)
    except _Unkeyable as exc:
        return exc
