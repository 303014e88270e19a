"""Normalise and check decorator settings once, at decoration time.

Settings accept what people naturally pass (``float`` seconds or ``timedelta``; ``2048``
or ``"2GiB"``) and are turned into one plain form here. Every check raises
:class:`~buttress.ConfigurationError` naming the parameter, so a bad setting fails when the
module defining the decorated function is imported.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Final

from ._errors import ConfigurationError

#: What an ``exceptions=`` setting accepts: one exception class or a tuple of them.
ExceptionTypes = type[BaseException] | tuple[type[BaseException], ...]

__all__ = [
    "ABSENT",
    "Difference",
    "ExceptionTypes",
    "byte_size",
    "choice",
    "compared_fields",
    "differences",
    "exception_types",
    "name_conflict",
    "nearest",
    "non_negative_int",
    "positive_int",
    "ratio",
    "seconds",
    "shown",
    "unexpected_keyword",
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


# --- names that are not settings ----------------------------------------------------------


def unexpected_keyword(where: str, keyword: str, accepted: Iterable[str]) -> TypeError:
    """The error for ``keyword``, which ``where`` does not take: the near names suggested.

    ``where`` names the call (``"retry()"``, ``"policy(retry={...})"``). The suggestion
    comes from :func:`difflib.get_close_matches`; without a near name, the accepted ones
    are listed. A ``TypeError``, as Python's own for an unexpected keyword.
    """
    names = sorted(accepted)
    near = nearest(keyword, names)
    if near is not None:
        hint = f"did you mean {near!r}?"
    else:
        hint = "it takes " + ", ".join(names) if names else "it takes no keywords"
    return TypeError(f"{where}: got an unexpected keyword argument {keyword!r}; {hint}")


def nearest(word: str, names: Iterable[str]) -> str | None:
    """The one of ``names`` that ``word`` is most likely a typo of, if any is close."""
    near = difflib.get_close_matches(word, list(names), n=1, cutoff=0.6)
    return near[0] if near else None


# --- one name, two sets of settings ---------------------------------------------------------

#: Stands for a setting one side of a comparison does not have.
ABSENT: Final = type("Absent", (), {"__repr__": lambda self: "ABSENT"})()


@dataclasses.dataclass(frozen=True, slots=True)
class Difference:
    """One setting that differs between what a name already has and what is now given.

    ``recorded`` or ``given`` is :data:`ABSENT` when that side lacks the setting.
    """

    setting: str
    recorded: object
    given: object


def shown(value: object) -> str:
    """A setting's value as a message shows it: classes by name, numbers as written."""
    if value is ABSENT:
        return "no such setting"
    if isinstance(value, type):
        return value.__qualname__
    if isinstance(value, tuple):
        inner = ", ".join(shown(item) for item in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, float):
        return f"{value:g}" if value.is_integer() or abs(value) >= 1e-4 else repr(value)
    return repr(value)


def compared_fields(settings: object) -> dict[str, object]:
    """The fields of a settings dataclass that take part in its equality, by name."""
    return {
        field.name: getattr(settings, field.name)
        for field in dataclasses.fields(settings)  # type: ignore[arg-type]
        if field.compare
    }


def differences(recorded: Mapping[str, object], given: Mapping[str, object]) -> list[Difference]:
    """Every setting whose value differs, in ``recorded``'s order, then ``given``'s new ones."""
    names = list(recorded) + [name for name in given if name not in recorded]
    found = []
    for name in names:
        before, now = recorded.get(name, ABSENT), given.get(name, ABSENT)
        if before is not now and before != now:
            found.append(Difference(name, before, now))
    return found


def _setting(name: str, value: object) -> str:
    return f"no {name}" if value is ABSENT else f"{name}={shown(value)}"


def name_conflict(
    kind: str,
    name: str,
    found: Sequence[Difference],
    *,
    where: str = "in this process",
    remedy: str = "",
) -> str:
    """The message for a ``name`` already used by a ``kind`` with other settings.

    It names the first setting that differs with both values, and the others that
    differ too; ``where`` says where the first settings live, ``remedy`` what to do
    (by default: another name, or the same settings).
    """
    first = found[0]
    others = [difference.setting for difference in found[1:]]
    also = f" (also different: {', '.join(others)})" if others else ""
    return (
        f"name={name!r}: a {kind} of this name exists {where} with "
        f"{_setting(first.setting, first.recorded)}, and this one has "
        f"{_setting(first.setting, first.given)}{also}. One name means one {kind} with one "
        "state, so every use of it "
        "must give the same settings; "
        + (remedy or "give these settings another name, or give the same ones")
    )
