"""Cached values: their size in bytes, numpy arrays made read-only, private copies.

A cached value is shared by every caller that gets it, so a numpy array in it is replaced by
a read-only view once, when it is stored: one caller writing into the array it received
would otherwise corrupt what every later caller gets. Arrays are found at the top level and
inside tuples, lists and dicts (rebuilt only when they hold an array). Other mutable objects
are shared as they are.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["copy_arrays", "freeze"]


def freeze(value: Any) -> tuple[Any, bool, int]:
    """``(value to share, whether it holds numpy arrays, size in bytes)``.

    Size counts numpy ``nbytes`` and the length of ``bytes``, ``bytearray`` and ``str``
    (in characters), summed through tuples, lists and dicts; anything else counts 0.
    """
    kind = type(value)
    if kind is str or kind is bytes or kind is bytearray:
        return value, False, len(value)
    numpy = sys.modules.get("numpy")  # no array can exist unless numpy was imported
    return _freeze(value, numpy)


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
