"""Cached values: their size in bytes, numpy arrays made read-only, private copies.

A cached value is shared by every caller that gets it, so a numpy array in it is replaced by
a read-only view once, when it is stored: one caller writing into the array it received
would otherwise corrupt what every later caller gets. Arrays are found at the top level and
inside tuples, lists and dicts (rebuilt only when they hold an array). Other mutable objects
are shared as they are.

An array the function returned and nobody else holds (a fresh result, the common case) is
made read-only in place instead (:func:`seal`): nobody can tell, and the entry saves the
view (an ndarray object, over a hundred bytes).
"""

from __future__ import annotations

import sys
from typing import Any, Final

__all__ = ["copy_arrays", "freeze", "seal"]


def _references(value: Any) -> int:
    return sys.getrefcount(value)


def _through(value: Any) -> int:
    return _references(value)  # the shape of seal(): one frame between


def _alone() -> int:
    value = object()
    return _through(value)


#: What ``_references`` counts for an object that only a local of seal()'s caller holds,
#: measured once in this interpreter (the count depends on how it passes references).
_ALONE: Final = _alone()

#: Sizes already seen, shared by the entries of every cache: an embedding's ``nbytes`` is
#: the same int for each entry instead of an int object each (bounded).
_SIZES: dict[int, int] = {}
_SIZES_KEPT: Final = 1024


def seal(value: Any) -> None:
    """Make ``value`` read-only in place if it is a numpy array held by nobody else.

    Call it as ``seal(result)`` with ``result`` a local of the caller's that holds the
    only reference to what the function returned: then no one but the cache can ever see
    the array, and freezing it in place spares :func:`freeze` a view. An array held
    anywhere else (the function's own table, a view of it) is left alone.
    """
    numpy = sys.modules.get("numpy")
    if (
        numpy is not None
        and type(value) is numpy.ndarray
        and value.flags.writeable
        and _references(value) == _ALONE
    ):
        value.flags.writeable = False


def freeze(value: Any) -> tuple[Any, bool, int]:
    """``(value to share, whether it holds numpy arrays, size in bytes)``.

    Size counts numpy ``nbytes`` and the length of ``bytes``, ``bytearray`` and ``str``
    (in characters), summed through tuples, lists and dicts; anything else counts 0.
    """
    kind = type(value)
    if kind is str or kind is bytes or kind is bytearray:
        frozen, arrays, size = value, False, len(value)
    else:
        numpy = sys.modules.get("numpy")  # no array can exist unless numpy was imported
        frozen, arrays, size = _freeze(value, numpy)
    if size > 256:  # smaller ints are shared by Python already
        known = _SIZES.get(size)
        if known is not None:
            size = known
        elif len(_SIZES) < _SIZES_KEPT:
            _SIZES[size] = size
    return frozen, arrays, size


def _freeze(value: Any, numpy: Any) -> tuple[Any, bool, int]:
    if isinstance(value, (str, bytes, bytearray)):
        return value, False, len(value)
    if numpy is not None and isinstance(value, numpy.ndarray):
        if value.flags.writeable:
            view = value.view()
            view.flags.writeable = False
            return view, True, int(value.nbytes)
        return value, True, int(value.nbytes)
    if isinstance(value, (tuple, list)):
        items = [_freeze(item, numpy) for item in value]
        size = sum(item[2] for item in items)
        if not any(item[1] for item in items):
            return value, False, size
        frozen = [item[0] for item in items]
        return _rebuild(value, frozen), True, size
    if isinstance(value, dict):
        pairs = {key: _freeze(item, numpy) for key, item in value.items()}
        size = sum(item[2] for item in pairs.values())
        if not any(item[1] for item in pairs.values()):
            return value, False, size
        return _rebuild_dict(value, {k: v[0] for k, v in pairs.items()}), True, size
    return value, False, 0


def _rebuild(original: Any, items: list[Any]) -> Any:
    kind = type(original)
    if kind is tuple or kind is list:
        return kind(items)
    if isinstance(original, tuple) and hasattr(original, "_fields"):  # a NamedTuple
        return kind(*items)
    try:
        return kind(items)
    except Exception:  # a container we cannot rebuild: share it as it is
        return original


def _rebuild_dict(original: dict[Any, Any], items: dict[Any, Any]) -> dict[Any, Any]:
    if type(original) is dict:
        return items
    try:
        rebuilt = original.copy()
        rebuilt.update(items)
        return rebuilt
    except Exception:  # a mapping we cannot rebuild: share it as it is
        return original


def copy_arrays(value: Any) -> Any:
    """``value`` with every numpy array in it replaced by a private, writable copy."""
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return value
    return _copy(value, numpy)


def _copy(value: Any, numpy: Any) -> Any:
    if isinstance(value, numpy.ndarray):
        return value.copy()
    if isinstance(value, (tuple, list)):
        return _rebuild(value, [_copy(item, numpy) for item in value])
    if isinstance(value, dict):
        return _rebuild_dict(value, {k: _copy(v, numpy) for k, v in value.items()})
    return value
