"""Summaries of arguments and results for log records: their shape, never their content.

A monitored function's inputs are images, prompts, feature vectors and user records; a
log line must say what kind of thing went in (and whether it held NaNs) without copying
it. :func:`summarize` turns any value into a small JSON-ready description:

- numpy arrays: shape, dtype, min, max, mean and NaN/inf counts (computed over an evenly
  strided sample of at most :data:`SAMPLE_LIMIT` elements for huge arrays, then marked
  ``"sampled": true``);
- strings and bytes: their length;
- mappings: their length and (the first :data:`MAX_KEYS`) keys;
- lists, tuples, sets: their length and element type;
- pydantic models and dataclasses: their field names;
- other array-likes (torch, jax, cupy): shape and dtype;
- numbers: their type (floats also say whether they are finite);
- anything else: its type name.

numpy and pydantic are only looked up in ``sys.modules``: values of a library that was
never imported cannot exist, so the check costs nothing for them.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Mapping, Sequence, Set
from typing import Any

from buttress._errors import public_type_name

__all__ = [
    "MAX_KEYS",
    "SAMPLE_LIMIT",
    "SCALAR_SUMMARIES",
    "nonfinite",
    "public_type_name",
    "summarize",
    "summarize_scalar",
    "type_name",
]

#: Arrays larger than this many elements are summarised from a strided sample.
SAMPLE_LIMIT = 100_000
#: At most this many mapping keys (and field names) are listed.
MAX_KEYS = 32
#: Keys are cut to this many characters.
_KEY_CHARS = 64
#: How many leading elements decide a collection's element type.
_ELEMENT_PEEK = 16


def type_name(value: object) -> str:
    """The qualified name of ``value``'s type; module-prefixed unless builtin."""
    kind = type(value)
    module = kind.__module__
    if module == "builtins":
        return kind.__qualname__
    return f"{module}.{kind.__qualname__}"


def _length(kind: str) -> Any:
    def summarize_sized(value: Any) -> dict[str, Any]:
        return {"type": kind, "length": len(value)}

    return summarize_sized


def _number(value: Any) -> dict[str, Any]:
    return {"type": type(value).__name__}


def _float(value: float) -> dict[str, Any]:
    return {"type": "float", "finite": math.isfinite(value)}


def _key(key: object) -> str:
    text = key if isinstance(key, str) else repr(key)
    return text if len(text) <= _KEY_CHARS else text[: _KEY_CHARS - 1] + "…"


def _mapping(value: Mapping[Any, Any]) -> dict[str, Any]:
    keys = []
    for index, key in enumerate(value):
        if index == MAX_KEYS:
            break
        keys.append(_key(key))
    return {"type": type(value).__name__, "length": len(value), "keys": keys}


def _collection(value: Any) -> dict[str, Any]:
    summary: dict[str, Any] = {"type": type(value).__name__, "length": len(value)}
    kinds: set[str] = set()
    for index, element in enumerate(value):
        if index == _ELEMENT_PEEK:
            break
        kinds.add(type(element).__name__)
    if kinds:
        summary["element_type"] = kinds.pop() if len(kinds) == 1 else "mixed"
    return summary


_EXACT: dict[type, Any] = {
    bool: _number,
    int: _number,
    float: _float,
    complex: _number,
    str: _length("str"),
    bytes: _length("bytes"),
    bytearray: _length("bytearray"),
    memoryview: _length("memoryview"),
    dict: _mapping,
    list: _collection,
    tuple: _collection,
    set: _collection,
    frozenset: _collection,
}


def _sample(array: Any) -> tuple[Any, bool]:
    """The array itself, or an evenly strided 1-D sample when it is huge."""
    size = int(array.size)
    if size <= SAMPLE_LIMIT:
        return array, False
    step = -(-size // SAMPLE_LIMIT)
    return array.flat[::step], True


def _array(np: Any, array: Any) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "type": "ndarray",
        "shape": list(array.shape),
        "dtype": str(array.dtype),
    }
    kind = array.dtype.kind
    if array.size == 0 or kind not in "biuf":
        return summary
    sample, sampled = _sample(array)
    if sampled:
        summary["sampled"] = True
        summary["sample_size"] = int(sample.size)
    values = sample
    if kind == "f":
        finite = np.isfinite(sample)
        finite_count = int(np.count_nonzero(finite))
        nan = int(np.count_nonzero(np.isnan(sample))) if finite_count < sample.size else 0
        summary["nan"] = nan
        summary["inf"] = int(sample.size) - finite_count - nan
        if finite_count < sample.size:
            values = sample[finite]
        if values.size == 0:
            return summary
    with np.errstate(all="ignore"):  # a mean may overflow; the log line must not warn
        if kind == "b":
            summary["min"] = bool(values.min())
            summary["max"] = bool(values.max())
        elif kind == "f":
            summary["min"] = float(values.min())
            summary["max"] = float(values.max())
        else:
            summary["min"] = int(values.min())
            summary["max"] = int(values.max())
        summary["mean"] = float(values.mean(dtype=np.float64))
    return summary


def _fields(value: Any, names: Any) -> dict[str, Any]:
    fields = [str(name) for name in list(names)[:MAX_KEYS]]
    return {"type": type_name(value), "fields": fields}


def _none(value: None) -> None:
    return None


def _int(value: int) -> dict[str, Any]:
    return {"type": "int"}


def _bool(value: bool) -> dict[str, Any]:
    return {"type": "bool"}


#: The summariser of each scalar type (the types whose values never change); what
#: :func:`summarize` does for them, without its checks.
SCALAR_SUMMARIES: dict[type, Callable[[Any], Any]] = {
    bool: _bool,
    int: _int,
    float: _float,
    str: _EXACT[str],
    bytes: _EXACT[bytes],
    type(None): _none,
}


def summarize_scalar(value: Any) -> Any:
    """:func:`summarize` for a value whose type is int, bool, float, str, bytes or None."""
    return SCALAR_SUMMARIES[type(value)](value)


def summarize(value: Any) -> Any:
    """A small JSON-ready description of ``value`` that never contains its content.

    ``None`` stays ``None``; everything else becomes a dict with at least ``"type"``.
    Never raises: a value that cannot be described is reported by its type alone.
    """
    if value is None:
        return None
    exact = _EXACT.get(type(value))
    try:
        if exact is not None:
            return exact(value)
        np = sys.modules.get("numpy")
        if np is not None:
            if isinstance(value, np.ndarray):
                return _array(np, value)
            if isinstance(value, np.generic):
                summary: dict[str, Any] = {"type": str(value.dtype)}
                if value.dtype.kind in "fc":
                    summary["finite"] = bool(np.isfinite(value))
                return summary
        pydantic = sys.modules.get("pydantic")
        if pydantic is not None and isinstance(value, pydantic.BaseModel):
            return _fields(value, type(value).model_fields)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return _fields(value, (field.name for field in dataclasses.fields(value)))
        if isinstance(value, Mapping):
            return _mapping(value)
        if isinstance(value, (str, bytes, bytearray)):
            return {"type": type_name(value), "length": len(value)}
        if isinstance(value, (Sequence, Set)):
            return _collection(value)
        shape = getattr(value, "shape", None)
        dtype = getattr(value, "dtype", None)
        if shape is not None and dtype is not None and not isinstance(value, type):
            return {"type": type_name(value), "shape": list(shape), "dtype": str(dtype)}
    except Exception:  # a broken __len__ or shape: the type alone still says something
        pass
    return {"type": type_name(value)}


def nonfinite(value: Any) -> tuple[int, int]:
    """``(nan, inf)`` counts of a float or a numpy array of floats; ``(0, 0)`` otherwise.

    Huge arrays are checked through the same strided sample as :func:`summarize`.
    """
    kind = type(value)
    if kind is float:
        if value != value:
            return 1, 0
        return (0, 1) if value in (math.inf, -math.inf) else (0, 0)
    if kind in _EXACT or value is None:
        return 0, 0
    np = sys.modules.get("numpy")
    if np is None or not isinstance(value, (np.ndarray, np.generic)):
        return 0, 0
    if value.dtype.kind not in "fc" or value.size == 0:
        return 0, 0
    sample, _ = _sample(value) if isinstance(value, np.ndarray) else (value, False)
    finite = np.isfinite(sample)
    if finite.all():
        return 0, 0
    nan = int(np.count_nonzero(np.isnan(sample)))
    return nan, int(np.size(sample)) - int(np.count_nonzero(finite)) - nan
