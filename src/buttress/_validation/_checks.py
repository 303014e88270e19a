"""Specs compiled into checking closures, and what they find turned into readable problems.

A *check* is ``check(value, dims=None) -> value``: it returns the value the function should
receive (the same object, or a cast array, or a pydantic model) or raises :class:`Failed`
carrying problem tuples. Everything that can be decided once (dtypes, which shape entries
are sizes and which are names, the message fragments) is decided when the check is built;
the closure itself does only the comparisons. Pydantic checks are the validator's own
``validate_python``, called with the value alone.

Values never reach a message in full: :func:`describe` summarises them.

The spec classes (:mod:`._specs`) import this module: their pydantic hooks compile them
here. So this module never imports them; it reads a spec through :class:`ArrayRules` and
:class:`KeyRules`, and recognises one by its base class, :class:`Marker`.
"""

from __future__ import annotations

import math
import operator
import reprlib
import types
import typing
from collections.abc import Callable, Mapping
from types import EllipsisType
from typing import Annotated, Any, Literal, Protocol, get_args, get_origin

import numpy as np
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic.errors import PydanticUserError
from pydantic_core import PydanticCustomError, core_schema

from buttress._errors import ConfigurationError, show_values, value_shape

__all__ = [
    "ArrayRules",
    "Dims",
    "Failed",
    "KeyRules",
    "Marker",
    "Problem",
    "compile_array",
    "compile_keys",
    "compile_pydantic",
    "describe",
    "format_shape",
    "pydantic_problems",
]

#: (path inside the value, expected, found, message)
Problem = tuple[tuple[str | int, ...], str, str, str]
Check = Callable[[Any, "Dims | None"], Any]

#: Arrays up to this many elements are scanned for NaN and inf in one numpy call; larger
#: C-contiguous ones in slices of this size, which keeps the temporary mask small.
_SCAN_CHUNK = 1 << 16
_PYDANTIC_ERROR = "buttress"


class Marker:
    """The base of the spec objects (``ArraySpec``, ``Keys``) that may mark an annotation.

    Annotations holding one are validated with the call's :class:`Dims` as context.
    """

    __slots__ = ()


class ArrayRules(Protocol):
    """What :func:`compile_array` reads of an ``ArraySpec``."""

    @property
    def shape(self) -> tuple[int | str | EllipsisType | None, ...] | None: ...
    @property
    def dtypes(self) -> tuple[np.dtype[Any], ...] | None: ...
    @property
    def ndim(self) -> int | None: ...
    @property
    def finite(self) -> bool | Literal["sample"]: ...
    @property
    def sample_rate(self) -> float | None: ...
    @property
    def min(self) -> float | int | None: ...
    @property
    def max(self) -> float | int | None: ...
    @property
    def cast(self) -> Literal["safe", "same_kind"] | None: ...

    def describe(self) -> str: ...

    def reshaped(self, shape: tuple[Any, ...]) -> ArrayRules:
        """The same rules with another shape."""
        ...


class KeyRules(Protocol):
    """What :func:`compile_keys` reads of a ``Keys``."""

    @property
    def required(self) -> tuple[Any, ...]: ...
    @property
    def optional(self) -> tuple[Any, ...]: ...
    @property
    def allow_unknown(self) -> bool: ...


def format_shape(shape: tuple[Any, ...]) -> str:
    """A shape or a shape spec as Python would write it, with ``...`` for Ellipsis."""
    items = ["..." if entry is Ellipsis else repr(entry) for entry in shape]
    if len(items) == 1:
        return f"({items[0]},)"
    return "(" + ", ".join(items) + ")"


class Failed(Exception):
    """Internal: a value failed its check; ``problems`` says how. Never escapes the package."""

    __slots__ = ("problems",)

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__()
        self.problems = problems


class Dims(dict[str, tuple[int, str]]):
    """The sizes named dimensions took in one call: ``name -> (size, where it was bound)``.

    ``argument`` says which argument is being checked now, for arrays inside pydantic
    annotations, which cannot be told so any other way. (No ``__init__``: creating one
    per call must cost what a dict costs.)
    """

    argument = "another argument"


# --- describing values without echoing them ----------------------------------------------


class _Summary(reprlib.Repr):
    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 2
        self.maxstring = 40
        self.maxother = 60
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = self.maxdeque = 6
        self.maxdict = 4
        self.maxlong = 40

    def repr_ndarray(self, value: np.ndarray[Any, Any], level: int) -> str:
        return f"array(shape={format_shape(value.shape)}, dtype={dtype_text(value.dtype)})"

    def repr_int(self, value: int, level: int) -> str:
        if value.bit_length() > 128:  # also avoids int-to-str digit limits
            return f"<int of {value.bit_length()} bits>"
        return super().repr_int(value, level)


_summary = _Summary()


#: Descriptions longer than this are shortened: a message names a value, never dumps it.
_MAX_DESCRIPTION = 100


def dtype_text(dtype: np.dtype[Any]) -> str:
    """A dtype's name; structured dtypes by their field count, not their whole layout."""
    if dtype.names is not None:
        return f"structured ({plural(len(dtype.names), 'field')})"
    return str(dtype)


def describe(value: Any) -> str:
    """A short description of ``value`` for a message: never the whole of a large value.

    By default it names the value's type and size, never its content (messages end up in
    logs); with ``BUTTRESS_SHOW_VALUES=1`` (development) short values are quoted.
    """
    try:
        if isinstance(value, np.ndarray):
            return f"array of shape {format_shape(value.shape)} and dtype {dtype_text(value.dtype)}"
        if not show_values():
            return value_shape(value)
        if isinstance(value, (str, bytes, bytearray)):
            if len(value) <= 40:
                return repr(value)
            unit = "characters" if isinstance(value, str) else "bytes"
            return f"{type(value).__name__} of {len(value)} {unit} starting {value[:20]!r}"
        text = _summary.repr(value)
        if isinstance(value, (list, tuple, dict, set, frozenset)) and (
            "..." in text or len(text) > _MAX_DESCRIPTION
        ):
            return f"{type(value).__name__} of {plural(len(value), 'item')}"
        if len(text) > _MAX_DESCRIPTION:
            return text[: _MAX_DESCRIPTION - 3] + "..."
        return text
    except Exception:  # a value whose repr or len fails: its type must do
        return f"{type(value).__qualname__} object"


def _key_text(key: Any) -> str:
    """A dict key as a message names it: names (str keys) are shown, as in ``@monitor``'s
    summaries; other keys only by type unless values are shown."""
    if isinstance(key, str):
        return repr(key) if len(key) <= 40 else repr(key[:37] + "...")
    return describe(key)


def plural(count: int, word: str) -> str:
    """``1 value``, ``2 values``."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _exception_text(exc: BaseException) -> str:
    if not show_values():  # the text of a conversion error often quotes the value
        return type(exc).__name__
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if len(text) > 120:
        text = text[:117] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- arrays ------------------------------------------------------------------------------


def _shape_problem(shape: tuple[int, ...], wanted: str, detail: str) -> Problem:
    found = format_shape(shape)
    return (
        (),
        f"shape {wanted}",
        f"shape {found}",
        f"shape {found} does not match {wanted}: {detail}",
    )


def _compile_shape(
    spec: ArrayRules, where: str | None, wanted: str
) -> Callable[[tuple[int, ...], Dims | None], Problem | None] | None:
    """The shape (and ndim) check, or ``None`` when the spec says nothing about shape.

    ``wanted`` is the shape as the user wrote it, for messages.
    """
    shape, ndim = spec.shape, spec.ndim
    if shape is None:
        if ndim is None:
            return None

        def check_ndim(actual: tuple[int, ...], dims: Dims | None) -> Problem | None:
            if len(actual) == ndim:
                return None
            return (
                (),
                f"{ndim} dimensions",
                f"{len(actual)} dimensions",
                f"expected {ndim} dimensions, got {len(actual)} (shape {format_shape(actual)})",
            )

        return check_ndim

    if Ellipsis in shape:
        cut = shape.index(Ellipsis)
        prefix, suffix = shape[:cut], shape[cut + 1 :]
        entries = [*enumerate(prefix), *((j - len(suffix), e) for j, e in enumerate(suffix))]
        least = len(prefix) + len(suffix)
        exactly = ndim  # ndim, when given, fixes how many dimensions "..." stands for
    else:
        entries = list(enumerate(shape))
        least = exactly = len(shape)
    fixed = tuple((i, e) for i, e in entries if isinstance(e, int))
    named = tuple((i, e) for i, e in entries if isinstance(e, str))

    def check_shape(actual: tuple[int, ...], dims: Dims | None) -> Problem | None:
        count = len(actual)
        if (count != exactly) if exactly is not None else (count < least):
            bound = f"{exactly}" if exactly is not None else f"at least {least}"
            return _shape_problem(actual, wanted, f"expected {bound} dimensions, got {count}")
        details: list[str] | None = None
        for i, size in fixed:
            if actual[i] != size:
                details = details or []
                details.append(f"dimension {i % count} is {actual[i]}, expected {size}")
        if named:
            if dims is None:
                dims = Dims()  # names then agree within this value only
            here = where if where is not None else dims.argument
            for i, name in named:
                size = actual[i]
                bound_to = dims.get(name)
                if bound_to is None:
                    dims[name] = (size, f"dimension {i % count} of {here}")
                elif bound_to[0] != size:
                    details = details or []
                    details.append(
                        f"dimension {i % count} is {size}, but {name!r} is {bound_to[0]} "
                        f"({bound_to[1]})"
                    )
        if details is None:
            return None
        return _shape_problem(actual, wanted, "; ".join(details))

    return check_shape


def _first_index(mask: np.ndarray[Any, Any]) -> str:
    """The index of the first true element of ``mask``, as a tuple text."""
    flat = int(np.argmax(mask))
    index = np.unravel_index(flat, mask.shape) if mask.ndim else ()
    return format_shape(tuple(int(i) for i in index))


def _nonfinite_problem(value: np.ndarray[Any, Any]) -> Problem:
    bad = ~np.isfinite(value)
    nans = int(np.count_nonzero(np.isnan(value)))
    infs = int(np.count_nonzero(bad)) - nans
    counts = " and ".join(
        text for text in (f"{nans} NaN" if nans else "", f"{infs} inf" if infs else "") if text
    )
    found = f"{counts} among {value.size} values, the first at index {_first_index(bad)}"
    return ((), "finite values", found, f"contains non-finite values: {found}")


def _all_finite(value: np.ndarray[Any, Any]) -> bool:
    if value.size <= 4 * _SCAN_CHUNK or not value.flags.c_contiguous:
        return bool(np.isfinite(value).all())
    flat = value.reshape(-1)
    isfinite = np.isfinite
    return all(
        isfinite(flat[start : start + _SCAN_CHUNK]).all()
        for start in range(0, flat.size, _SCAN_CHUNK)
    )


def _range_problems(
    value: np.ndarray[Any, Any], low: float | None, high: float | None, finite: bool
) -> list[Problem] | None:
    """Values below ``low`` or above ``high``; NaN is ignored unless ``finite`` asks."""
    kind = value.dtype.kind
    if kind not in "biuf":
        return [
            (
                (),
                "real numbers",
                f"dtype {dtype_text(value.dtype)}",
                f"values of dtype {dtype_text(value.dtype)} cannot be compared with min/max",
            )
        ]
    # min() and max() propagate NaN, and an infinity is an extreme: the common case costs
    # the two reductions, and with both bounds they also settle finiteness.
    smallest = value.min() if low is not None else None
    largest = value.max() if high is not None else None
    if kind == "f" and finite and not all(
        math.isfinite(extreme) for extreme in (smallest, largest) if extreme is not None
    ):
        return [_nonfinite_problem(value)]
    if kind == "f" and (smallest != smallest or largest != largest):  # NaN != NaN
        data = value[~np.isnan(value)]
        if not data.size:
            return None
        smallest = data.min() if low is not None else None
        largest = data.max() if high is not None else None
    problems: list[Problem] = []
    if low is not None and smallest is not None and smallest < low:
        count = int(np.count_nonzero(value < low))  # NaN compares false: not counted
        at = _first_index(value == smallest)
        shown = f" {smallest}" if show_values() else ""
        found = f"{plural(count, 'value')} below it, the smallest{shown} at index {at}"
        problems.append(((), f"values >= {low}", found, f"values must be >= {low}: {found}"))
    if high is not None and largest is not None and largest > high:
        count = int(np.count_nonzero(value > high))
        at = _first_index(value == largest)
        shown = f" {largest}" if show_values() else ""
        found = f"{plural(count, 'value')} above it, the largest{shown} at index {at}"
        problems.append(((), f"values <= {high}", found, f"values must be <= {high}: {found}"))
    return problems or None


def _converter(spec: ArrayRules) -> Callable[[Any], np.ndarray[Any, Any]]:
    """What turns a non-array into an array, or refuses it (``cast=None``)."""
    cast = spec.cast
    if cast is None:

        def refuse(value: Any) -> np.ndarray[Any, Any]:
            found = describe(value)
            raise Failed([((), "a numpy array", found, f"expected a numpy array, got {found}")])

        return refuse

    expected = f"an array or array-like (cast={cast!r})"
    scalars = (bool, int, float, complex, np.generic)

    def convert(value: Any) -> np.ndarray[Any, Any]:
        array_like = isinstance(value, (list, tuple, *scalars)) or (
            hasattr(value, "__array__") or hasattr(value, "__array_interface__")
        )
        if not array_like or isinstance(value, (str, bytes, Mapping)):
            found = describe(value)
            raise Failed([((), expected, found, f"expected an array or array-like, got {found}")])
        try:
            return np.asarray(value)
        except Exception as exc:  # ragged lists, overflowing ints, broken __array__
            found = describe(value)
            raise Failed(
                [
                    (
                        (),
                        expected,
                        found,
                        f"{found} could not be converted to an array ({_exception_text(exc)})",
                    )
                ]
            ) from None

    return convert


def _caster(
    spec: ArrayRules,
) -> Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]] | None:
    """Casts an array of the wrong dtype to ``spec.dtype``, or raises :class:`Failed`."""
    cast = spec.cast
    if cast is None or spec.dtypes is None:
        return None
    target = spec.dtypes[0]

    def convert(value: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        source = value.dtype
        if not np.can_cast(source, target, casting=cast):
            found = f"dtype {dtype_text(source)}"
            raise Failed(
                [
                    (
                        (),
                        f"dtype {target}",
                        found,
                        f"{found} cannot be cast to {target} under {cast!r} casting",
                    )
                ]
            )
        if cast == "safe":
            return value.astype(target)
        # "same_kind" may narrow: refuse values the target cannot hold rather than wrap
        # integers around or turn floats into inf.
        if target.kind in "iu" and source.kind in "biu" and value.size:
            info = np.iinfo(target)
            low, high = value.min(), value.max()
            if low < info.min or high > info.max:
                found = f"values from {low} to {high}"
                raise Failed(
                    [
                        (
                            (),
                            f"values that fit {target}",
                            found,
                            f"{found} do not fit dtype {target} ({info.min} to {info.max})",
                        )
                    ]
                )
            return value.astype(target)
        try:
            with np.errstate(over="raise", invalid="raise"):
                return value.astype(target)
        except FloatingPointError:
            found = f"values out of range for {target}"
            raise Failed(
                [((), f"values that fit {target}", found, f"dtype {dtype_text(source)}: {found}")]
            ) from None

    return convert


def compile_array(spec: ArrayRules, where: str | None, bind_names: bool = True) -> Check:
    """The check for one array: ``where`` (``"argument 'x'"``) names it in messages.

    ``where`` is ``None`` for arrays inside pydantic annotations; they read the argument
    from the call's :class:`Dims`. With ``bind_names`` false, dimension names are treated
    as ``None`` (any size): the caller knows no other value shares them.
    """
    ndarray = np.ndarray
    isfinite = np.isfinite
    convert = _converter(spec)
    recast = _caster(spec)
    dtypes = spec.dtypes
    target = dtypes[0] if dtypes is not None else None
    accepted = dtypes or ()
    wanted_dtype = "dtype " + " or ".join(str(one) for one in dtypes) if dtypes else ""

    # The shape, decided as far as possible now. Without "...", the common case, the
    # call compares the length and the fixed sizes in one go, then binds names.
    shape = spec.shape
    wanted_shape = format_shape(shape) if shape is not None else ""  # as the user wrote it
    if shape is not None and not bind_names:
        shape = tuple(None if isinstance(entry, str) else entry for entry in shape)
        spec = spec.reshaped(shape)
    exact = shape if shape is not None and all(isinstance(e, int) for e in shape) else None
    count: int | None = None
    pick: Callable[[tuple[int, ...]], Any] | None = None
    sizes: Any = None
    named = False
    if exact is None and shape is not None and Ellipsis not in shape:
        count = len(shape)
        fixed = [(i, e) for i, e in enumerate(shape) if isinstance(e, int)]
        if fixed:
            pick = operator.itemgetter(*(i for i, _ in fixed))
            sizes = fixed[0][1] if len(fixed) == 1 else tuple(e for _, e in fixed)
        named = any(isinstance(e, str) for e in shape)
    shape_check = None if exact is not None else _compile_shape(spec, where, wanted_shape)

    # Finiteness: decided by the dtype when the spec fixes it (or casts to it).
    finite = spec.finite is not False
    kinds = {one.kind for one in dtypes} if dtypes is not None else None
    low, high = spec.min, spec.max
    ranged = low is not None or high is not None
    if not finite or (kinds is not None and not kinds & {"f", "c"}):
        scan_always = scan_by_kind = False
    elif low is not None and high is not None:
        # min() and max() find NaN and inf themselves (complex dtypes cannot have a range).
        scan_always = scan_by_kind = False
    elif kinds is not None and kinds <= {"f", "c"}:
        scan_always, scan_by_kind = True, False
    else:
        scan_always, scan_by_kind = False, True
    rate = spec.sample_rate
    credit = 1.0 - rate if rate is not None else 0.0
    big = 4 * _SCAN_CHUNK

    def check_array(value: Any, dims: Dims | None = None) -> Any:
        nonlocal credit
        if not isinstance(value, ndarray):
            value = convert(value)
        try:
            problems: list[Problem] | None = None
            actual = value.shape
            if exact is not None:
                if actual != exact:
                    problems = [_exact_shape_problem(actual, exact, wanted_shape)]
            elif count is not None:
                if len(actual) != count or (pick is not None and pick(actual) != sizes):
                    problems = [shape_check(actual, dims)]  # type: ignore[misc, list-item]
                elif named:
                    problem = shape_check(actual, dims)  # type: ignore[misc]
                    if problem is not None:
                        problems = [problem]
            elif shape_check is not None:
                problem = shape_check(actual, dims)
                if problem is not None:
                    problems = [problem]
            if target is not None:
                dtype = value.dtype
                if dtype is not target and dtype not in accepted:
                    if recast is None:
                        found = f"dtype {dtype_text(dtype)}"
                        problems = problems or []
                        problems.append(
                            ((), wanted_dtype, found, f"{found} does not match {wanted_dtype}")
                        )
                    else:
                        try:
                            value = recast(value)
                        except Failed as failed:
                            problems = (problems or []) + failed.problems
            if problems is not None:
                raise Failed(problems)
            if scan_always or (scan_by_kind and value.dtype.kind in "fc"):
                scan = True
                if rate is not None:
                    credit += rate
                    scan = credit >= 1.0
                    if scan:
                        credit -= 1.0
                if scan and not (
                    isfinite(value).all() if value.size <= big else _all_finite(value)
                ):
                    raise Failed([_nonfinite_problem(value)])
            if ranged and value.size:
                found_problems = _range_problems(value, low, high, finite)
                if found_problems is not None:
                    raise Failed(found_problems)
            return value
        except Failed:
            raise
        except Exception as exc:  # an odd subclass or dtype numpy cannot compare
            found = describe(value)
            raise Failed(
                [((), spec.describe(), found, f"could not be checked: {_exception_text(exc)}")]
            ) from None

    return check_array


def _exact_shape_problem(
    actual: tuple[int, ...], exact: tuple[Any, ...], wanted: str
) -> Problem:
    if len(actual) != len(exact):
        return _shape_problem(
            actual, wanted, f"expected {len(exact)} dimensions, got {len(actual)}"
        )
    details = [
        f"dimension {i} is {got}, expected {size}"
        for i, (got, size) in enumerate(zip(actual, exact, strict=True))
        if got != size
    ]
    return _shape_problem(actual, wanted, "; ".join(details))


# --- dict keys ---------------------------------------------------------------------------


def _listing(keys: Any, limit: int = 8) -> str:
    items = [_short(_key_text(key)) for key in list(keys)[:limit]]
    extra = len(keys) - limit
    return ", ".join(items) + (f" and {extra} more" if extra > 0 else "")


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def compile_keys(spec: KeyRules) -> Check:
    """The check for one dict: required keys present, no unknown key unless allowed."""
    required = frozenset(spec.required)
    allowed = frozenset(spec.required + spec.optional)
    strict = not spec.allow_unknown
    order = spec.required
    allowed_text = _listing(spec.required + spec.optional) or "none"

    def check_keys(value: Any, dims: Dims | None = None) -> Any:
        if not isinstance(value, Mapping):
            found = describe(value)
            raise Failed([((), "a dict", found, f"expected a dict, got {found}")])
        try:
            keys = value.keys()
            if (not required or keys >= required) and (not strict or allowed.issuperset(keys)):
                return value
            problems: list[Problem] = [
                ((key,), "present", "missing", f"missing required key {_key_text(key)}")
                for key in order
                if key not in keys
            ]
            if strict:
                unknown = [key for key in keys if key not in allowed]
                if unknown:
                    found = _listing(unknown)
                    problems.append(
                        (
                            (),
                            f"only the keys {allowed_text}",
                            found,
                            f"unknown keys {found} (allowed: {allowed_text})",
                        )
                    )
        except Exception as exc:  # a Mapping whose keys() or __contains__ fails
            found = describe(value)
            raise Failed(
                [((), "a dict", found, f"could not be checked: {_exception_text(exc)}")]
            ) from None
        raise Failed(problems)

    return check_keys


# --- pydantic ----------------------------------------------------------------------------


def _custom_error(failed: Failed) -> PydanticCustomError:
    return PydanticCustomError(
        _PYDANTIC_ERROR,
        "{detail}",
        {
            "detail": "; ".join(problem[3] for problem in failed.problems),
            "problems": tuple(failed.problems),
        },
    )


def _dims_of(context: Any) -> Dims | None:
    return context if isinstance(context, Dims) else None


def pydantic_array_schema(spec: ArrayRules) -> core_schema.CoreSchema:
    """The pydantic core schema of an ArraySpec used inside an annotation."""
    check = compile_array(spec, None)

    def validate(value: Any, info: core_schema.ValidationInfo) -> Any:
        try:
            return check(value, _dims_of(info.context))
        except Failed as failed:
            raise _custom_error(failed) from None

    return core_schema.with_info_plain_validator_function(validate)


def pydantic_keys_schema(spec: KeyRules, inner: core_schema.CoreSchema) -> core_schema.CoreSchema:
    """The pydantic core schema of Keys used inside an annotation: after ``inner``."""
    check = compile_keys(spec)

    def validate(value: Any) -> Any:
        try:
            return check(value, None)
        except Failed as failed:
            raise _custom_error(failed) from None

    return core_schema.no_info_after_validator_function(validate, inner)


#: pydantic error types whose message is a custom validator's free text.
_QUOTING = frozenset({"value_error", "assertion_error"})


def pydantic_problems(error: ValidationError) -> list[Problem]:
    """Pydantic's errors as problems, with inputs summarised rather than echoed."""
    problems: list[Problem] = []
    for item in error.errors(include_url=False):
        loc = tuple(item.get("loc", ()))
        context = item.get("ctx") or {}
        ours = context.get("problems") if item["type"] == _PYDANTIC_ERROR else None
        if ours:
            problems.extend((loc + path, *rest) for path, *rest in ours)
            continue
        message = item["msg"]
        if item["type"] in _QUOTING and not show_values():
            # A custom validator's own text ("Value error, bad token 'hunter2'"): the
            # kind of failure stays, the text that may quote the value goes.
            message = message.split(",", 1)[0]
        if item["type"] == "missing":
            problems.append((loc, message, "missing", message))
        else:
            found = describe(item.get("input"))
            problems.append((loc, message, found, f"{message}, got {found}"))
    return problems


def mentions_markers(annotation: Any, seen: set[int] | None = None) -> bool:
    """Whether an ArraySpec or Keys hides anywhere inside ``annotation``.

    Such annotations are validated with the call's :class:`Dims` as pydantic context, so
    dimension names agree with the other arguments.
    """
    seen = set() if seen is None else seen
    if id(annotation) in seen:
        return False
    seen.add(id(annotation))
    if isinstance(annotation, Marker):
        return True
    if get_origin(annotation) is Annotated:
        if any(isinstance(meta, Marker) for meta in annotation.__metadata__):
            return True
        return mentions_markers(annotation.__origin__, seen)
    if any(mentions_markers(arg, seen) for arg in get_args(annotation)):
        return True
    if not _is_class(annotation):
        return False
    if issubclass(annotation, BaseModel):
        for field in annotation.model_fields.values():
            if any(isinstance(meta, Marker) for meta in field.metadata):
                return True
            if mentions_markers(field.annotation, seen):
                return True
        return False
    if hasattr(annotation, "__dataclass_fields__") or typing.is_typeddict(annotation):
        try:
            hints = typing.get_type_hints(annotation, include_extras=True)
        except Exception:  # unresolvable hints: names then agree within the value only
            return False
        return any(mentions_markers(hint, seen) for hint in hints.values())
    return False


def _is_class(annotation: Any) -> bool:
    # On Python 3.10 ``list[int]`` passes ``isinstance(..., type)`` but not ``issubclass``.
    return isinstance(annotation, type) and not isinstance(annotation, types.GenericAlias)


_ARBITRARY = ConfigDict(arbitrary_types_allowed=True)


def type_adapter(annotation: Any, what: str) -> TypeAdapter[Any]:
    """A TypeAdapter for ``annotation``, allowing arbitrary classes (checked by isinstance)."""
    try:
        try:
            return TypeAdapter(annotation, config=_ARBITRARY)
        except PydanticUserError as exc:
            # Models, dataclasses and TypedDicts carry their own config.
            if exc.code != "type-adapter-config-unused":
                raise
            return TypeAdapter(annotation)
    except Exception as exc:
        raise ConfigurationError(
            f"{what}: pydantic cannot validate {annotation!r}: {_exception_text(exc)}"
        ) from None


def compile_pydantic(
    annotation: Any, where: str, what: str
) -> tuple[Callable[..., Any], bool]:
    """A pydantic check and whether it takes the call's dims (only when markers hide inside).

    Without markers the check is the validator's own ``validate_python``, called with the
    value alone: the cheapest way into pydantic-core.
    """
    validate = type_adapter(annotation, what).validator.validate_python
    if not mentions_markers(annotation):
        return validate, False

    def check_nested(value: Any, dims: Dims | None) -> Any:
        if dims is not None:
            dims.argument = where
        return validate(value, context=dims)

    return check_nested, True
