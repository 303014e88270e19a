"""Normalise and check decorator settings once, at decoration time.

Settings accept what people naturally pass (``float`` seconds or ``timedelta``; ``2048``
or ``"2GiB"``) and are turned into one plain form here. Every check raises
:class:`~buttress.ConfigurationError` naming the parameter, so a bad setting fails when the
module defining the decorated function is imported.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from ._errors import ConfigurationError

#: What an ``exceptions=`` setting accepts: one exception class or a tuple of them.
ExceptionTypes = type[BaseException] | tuple[type[BaseException], ...]

__all__ = [
    "ExceptionTypes",
    "byte_size",
    "choice",
    "exception_types",
    "non_negative_int",
    "positive_int",
    "ratio",
    "seconds",
]


def seconds(
    value: object,
    name: str,
    *,
    allow_zero: bool = True,
) -> float:
    """A duration in seconds from a non-negative ``int``, ``float`` or ``timedelta``."""
    if isinstance(value, timedelta):
        result = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        result = float(value)
    else:
        raise ConfigurationError(
            f"{name} must be seconds as a number or a timedelta, got {value!r}"
        )
    if math.isnan(result) or result < 0 or (result == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise ConfigurationError(f"{name} must be {bound}, got {value!r}")
    return result


def optional_seconds(value: object, name: str, *, allow_zero: bool = True) -> float | None:
    """Like :func:`seconds`, with ``None`` passed through (meaning "no limit")."""
    return None if value is None else seconds(value, name, allow_zero=allow_zero)


def _integer(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an int, got {value!r}")
    return value


def non_negative_int(value: object, name: str) -> int:
    result = _integer(value, name)
    if result < 0:
        raise ConfigurationError(f"{name} must be >= 0, got {value!r}")
    return result


def positive_int(value: object, name: str) -> int:
    result = _integer(value, name)
    if result < 1:
        raise ConfigurationError(f"{name} must be >= 1, got {value!r}")
    return result


def number(value: object, name: str, *, minimum: float | None = None) -> float:
    """A finite real number, at least ``minimum`` when given."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum:g}, got {value!r}")
    return float(value)


def ratio(value: object, name: str, *, allow_zero: bool = False) -> float:
    """A fraction in (0, 1], or [0, 1] with ``allow_zero``."""
    result = number(value, name)
    low_ok = result >= 0 if allow_zero else result > 0
    if not (low_ok and result <= 1):
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ConfigurationError(f"{name} must be in {interval}, got {value!r}")
    return result


def choice(value: Any, name: str, options: Iterable[Any]) -> Any:
    """``value`` if it is one of ``options``."""
    allowed = tuple(options)
    if value not in allowed:
        listed = ", ".join(repr(option) for option in allowed)
        raise ConfigurationError(f"{name} must be one of {listed}; got {value!r}")
    return value


def exception_types(value: object, name: str) -> tuple[type[BaseException], ...]:
    """A non-empty tuple of exception classes from one class or an iterable of them."""
    if isinstance(value, type):
        candidates: tuple[object, ...] = (value,)
    elif isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        candidates = tuple(value)
    else:
        raise ConfigurationError(
            f"{name} must be an exception class or a tuple of them, got {value!r}"
        )
    if not candidates:
        raise ConfigurationError(f"{name} must name at least one exception class")
    for candidate in candidates:
        if not (isinstance(candidate, type) and issubclass(candidate, BaseException)):
            raise ConfigurationError(
                f"{name} must contain exception classes only, got {candidate!r}"
            )
    return candidates  # type: ignore[return-value]  # each was checked just above


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def byte_size(value: object, name: str) -> int:
    """A size in bytes from an ``int`` or a string such as ``"512MiB"`` or ``"2GB"``.

    Binary units (KiB, MiB, GiB, TiB, or Kubernetes' Ki, Mi, Gi, Ti) are powers of 1024;
    decimal units (kB, MB, GB, TB) are powers of 1000.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ConfigurationError(f"{name} must be >= 0 bytes, got {value!r}")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match is not None and match.group(2).lower() in _UNITS:
            return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    raise ConfigurationError(
        f"{name} must be a number of bytes or a size such as '512MiB' or '2GB', got {value!r}"
    )
