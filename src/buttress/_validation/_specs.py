"""The public spec objects: :class:`ArraySpec` for numpy arrays, :class:`Keys` for dicts.

Both are plain, immutable descriptions, checked for sense when they are built (a bad spec
fails at import time, naming the setting). They are compiled into checking closures by
:mod:`._checks` when a function is decorated, and they also work as pydantic annotations
(``Annotated[np.ndarray, ArraySpec(...)]`` inside a model or a ``list[...]``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import EllipsisType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from buttress._errors import ConfigurationError
from buttress._settings import ratio

from ._checks import Marker, format_shape, pydantic_array_schema, pydantic_keys_schema

if TYPE_CHECKING:
    from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
    from pydantic.json_schema import JsonSchemaValue
    from pydantic_core import CoreSchema

__all__ = ["ArraySpec", "Cast", "Dimension", "Keys"]

#: One entry of a shape: a size, ``None`` (any size), a name, or ``...`` (any leading dims).
Dimension = int | str | None | EllipsisType
Cast = Literal["safe", "same_kind"]
_CASTS: tuple[Cast | None, ...] = (None, "safe", "same_kind")

#: The sample rate ``finite="sample"`` uses when none is given.
DEFAULT_SAMPLE_RATE = 0.1


def _dtype(value: object, name: str) -> np.dtype[Any]:
    if value is None:  # np.dtype(None) would quietly mean float64
        raise ConfigurationError(f"{name}: None is not a dtype")
    try:
        return np.dtype(value)  # type: ignore[call-overload, no-any-return]
    except Exception as exc:  # numpy raises TypeError or ValueError, by version
        raise ConfigurationError(f"{name}: unknown dtype {value!r} ({exc})") from None


def _bound(value: object, name: str) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise ConfigurationError(f"ArraySpec({name}=...) must be a real number, got {value!r}")
    if isinstance(value, np.complexfloating):
        raise ConfigurationError(f"ArraySpec({name}=...) must be a real number, got {value!r}")
    number = value.item() if isinstance(value, np.generic) else value
    if isinstance(number, float) and math.isnan(number):
        raise ConfigurationError(f"ArraySpec({name}=...) must not be NaN")
    return number


class ArraySpec(Marker):
    """What a numpy array must look like: shape, dtype, finiteness and value range.

    Use it as a spec (``@validate_input(x=ArraySpec(("batch", 768), "float32"))``), or as
    metadata in an annotation (``x: Annotated[np.ndarray, ArraySpec(...)]``), also inside
    pydantic models and containers.

    Args:
        shape: the expected shape, or ``None`` for any. Entries are sizes (``768``),
            ``None`` (any size), names (``"batch"``) or one ``...`` (any number of
            dimensions there, usually leading: ``(..., 768)``). A name must have the same
            size everywhere it appears in one call: ``x: ("batch", 768)`` and
            ``mask: ("batch",)`` agree on ``batch``.
        dtype: the exact dtype (``"float32"``, ``np.int64``...), a tuple of accepted
            dtypes, or ``None`` for any.
        ndim: the number of dimensions, when ``shape`` does not say it already.
        finite: ``True`` (the default) rejects NaN and infinities in floating and complex
            arrays (other dtypes cannot hold them); ``False`` allows them; ``"sample"``
            scans only a share of calls (``sample_rate``): the first call, then about one
            in ``1 / sample_rate``. Scanning reads every element, the one check whose
            cost grows with the array.
        sample_rate: the share of calls ``finite="sample"`` scans, in (0, 1]; 0.1 if
            not given.
        min: every value must be ``>= min``.
        max: every value must be ``<= max``.
        cast: ``None`` (the default) wants exactly ``dtype`` and a numpy array.
            ``"safe"`` or ``"same_kind"`` also accept other dtypes that numpy's casting
            rule of that name allows, and lists, tuples and other array-likes, which are
            converted with ``numpy.asarray`` (Python floats become float64, so turning a
            JSON list of floats into float32 needs ``"same_kind"``). The function then
            receives the converted array. ``"same_kind"`` refuses values that would
            overflow the target dtype.

    Raises:
        ConfigurationError: for a spec that cannot work: an unknown dtype, a negative
            size, two ``...``, ``ndim`` disagreeing with ``shape``, ``min > max``,
            ``cast`` with several dtypes, a range on complex or non-numeric dtypes.
    """

    __slots__ = (
        "cast",
        "dtype",
        "dtypes",
        "finite",
        "max",
        "min",
        "ndim",
        "sample_rate",
        "shape",
    )

    shape: tuple[Dimension, ...] | None
    dtype: np.dtype[Any] | tuple[np.dtype[Any], ...] | None
    dtypes: tuple[np.dtype[Any], ...] | None
    ndim: int | None
    finite: bool | Literal["sample"]
    sample_rate: float | None
    min: float | int | None
    max: float | int | None
    cast: Cast | None

    def __init__(
        self,
        shape: Iterable[Dimension] | None = None,
        dtype: Any = None,
        *,
        ndim: int | None = None,
        finite: bool | Literal["sample"] = True,
        sample_rate: float | None = None,
        min: float | None = None,
        max: float | None = None,
        cast: Cast | None = None,
    ) -> None:
        set_ = object.__setattr__
        set_(self, "shape", self._shape(shape))
        set_(self, "ndim", self._ndim(ndim))
        dtypes = self._dtypes(dtype)
        set_(self, "dtypes", dtypes)
        set_(self, "dtype", None if dtypes is None else dtypes[0] if len(dtypes) == 1 else dtypes)
        if cast not in _CASTS:
            raise ConfigurationError(
                f"ArraySpec(cast=...) must be None, 'safe' or 'same_kind'; got {cast!r}"
            )
        if cast is not None and dtypes is not None and len(dtypes) > 1:
            raise ConfigurationError("ArraySpec(cast=...) needs a single dtype to cast to")
        set_(self, "cast", cast)
        if finite not in (True, False, "sample") or isinstance(finite, np.bool_):
            raise ConfigurationError(
                f"ArraySpec(finite=...) must be True, False or 'sample'; got {finite!r}"
            )
        set_(self, "finite", finite)
        if sample_rate is not None and finite != "sample":
            raise ConfigurationError("ArraySpec(sample_rate=...) needs finite='sample'")
        if finite == "sample":
            rate = DEFAULT_SAMPLE_RATE if sample_rate is None else sample_rate
            set_(self, "sample_rate", ratio(rate, "ArraySpec(sample_rate=...)"))
        else:
            set_(self, "sample_rate", None)
        low, high = _bound(min, "min"), _bound(max, "max")
        if low is not None and high is not None and low > high:
            raise ConfigurationError(f"ArraySpec: min ({low!r}) is greater than max ({high!r})")
        if (low is not None or high is not None) and dtypes is not None:
            for one in dtypes:
                if one.kind not in "biuf":
                    raise ConfigurationError(
                        f"ArraySpec(min=..., max=...) needs real numbers; dtype {one} has none"
                    )
        set_(self, "min", low)
        set_(self, "max", high)

    @staticmethod
    def _shape(shape: Iterable[Dimension] | None) -> tuple[Dimension, ...] | None:
        if shape is None:
            return None
        if isinstance(shape, (str, bytes)) or not isinstance(shape, Iterable):
            raise ConfigurationError(
                f"ArraySpec(shape=...) must be a tuple such as ('batch', 768), got {shape!r}"
            )
        entries = tuple(shape)
        for entry in entries:
            if entry is None or entry is Ellipsis:
                continue
            if isinstance(entry, str):
                if not entry:
                    raise ConfigurationError("ArraySpec(shape=...): a dimension name is empty")
                continue
            if isinstance(entry, (bool, np.bool_)) or not isinstance(entry, (int, np.integer)):
                raise ConfigurationError(
                    f"ArraySpec(shape=...): {entry!r} is not a size, a name, None or ..."
                )
            if entry < 0:
                raise ConfigurationError(
                    f"ArraySpec(shape=...): negative dimension {int(entry)} in "
                    f"{format_shape(entries)}"
                )
        if sum(entry is Ellipsis for entry in entries) > 1:
            raise ConfigurationError("ArraySpec(shape=...) may hold at most one ...")
        return tuple(int(e) if isinstance(e, np.integer) else e for e in entries)

    def _ndim(self, ndim: int | None) -> int | None:
        if ndim is None:
            return None
        if isinstance(ndim, bool) or not isinstance(ndim, int) or ndim < 0:
            raise ConfigurationError(f"ArraySpec(ndim=...) must be an int >= 0, got {ndim!r}")
        shape = self.shape
        if shape is not None:
            if Ellipsis in shape:
                if ndim < len(shape) - 1:
                    raise ConfigurationError(
                        f"ArraySpec: ndim={ndim} is fewer than shape "
                        f"{format_shape(shape)} needs"
                    )
            elif ndim != len(shape):
                raise ConfigurationError(
                    f"ArraySpec: ndim={ndim} disagrees with shape {format_shape(shape)}"
                )
        return ndim

    @staticmethod
    def _dtypes(dtype: Any) -> tuple[np.dtype[Any], ...] | None:
        if dtype is None:
            return None
        if isinstance(dtype, (tuple, list, set, frozenset)):
            if not dtype:
                raise ConfigurationError("ArraySpec(dtype=...) must name at least one dtype")
            return tuple(_dtype(one, "ArraySpec(dtype=...)") for one in dtype)
        return (_dtype(dtype, "ArraySpec(dtype=...)"),)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"ArraySpec is immutable; cannot set {name!r}")

    def reshaped(self, shape: tuple[Dimension, ...]) -> ArraySpec:
        """The same spec with another ``shape``."""
        return ArraySpec(
            shape,
            self.dtypes,
            ndim=self.ndim,
            finite=self.finite,
            sample_rate=self.sample_rate,
            min=self.min,
            max=self.max,
            cast=self.cast,
        )

    def _key(self) -> tuple[Any, ...]:
        return (
            self.shape,
            self.dtypes,
            self.ndim,
            self.finite,
            self.sample_rate,
            self.min,
            self.max,
            self.cast,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ArraySpec):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        parts = []
        if self.shape is not None:
            parts.append(f"shape={format_shape(self.shape)}")
        if self.dtypes is not None:
            names = [str(one) for one in self.dtypes]
            parts.append(f"dtype={names[0]!r}" if len(names) == 1 else f"dtype={tuple(names)!r}")
        for name in ("ndim", "min", "max", "cast"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value!r}")
        if self.finite is not True:
            parts.append(f"finite={self.finite!r}")
        if self.sample_rate is not None:
            parts.append(f"sample_rate={self.sample_rate!r}")
        return f"ArraySpec({', '.join(parts)})"

    def describe(self) -> str:
        """A short human description: ``array of shape ('batch', 768) and dtype float32``."""
        text = "array"
        details = []
        if self.shape is not None:
            details.append(f"shape {format_shape(self.shape)}")
        elif self.ndim is not None:
            details.append(f"{self.ndim} dimensions")
        if self.dtypes is not None:
            details.append("dtype " + " or ".join(str(one) for one in self.dtypes))
        if details:
            text += " of " + " and ".join(details)
        return text

    # pydantic integration: an ArraySpec anywhere inside an annotation pydantic validates
    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return pydantic_array_schema(self)

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        item: dict[str, Any] = {"type": "number"}
        if self.dtypes is not None and all(one.kind in "biu" for one in self.dtypes):
            item = {"type": "integer"}
        if self.min is not None:
            item["minimum"] = self.min
        if self.max is not None:
            item["maximum"] = self.max
        dims = self.shape if self.shape is not None and Ellipsis not in self.shape else None
        count = len(dims) if dims is not None else self.ndim
        if count is None:
            return {"type": "array"}
        result: dict[str, Any] = item
        for position in reversed(range(count)):
            result = {"type": "array", "items": result}
            size = dims[position] if dims is not None else None
            if isinstance(size, int):
                result["minItems"] = result["maxItems"] = size
        return result


class Keys(Marker):
    """Which keys a plain dict must have, and which it may have.

    Args:
        required: keys that must be present.
        optional: keys that may be present.
        allow_unknown: when false (the default), any other key is an error.

    Values are not checked (use a pydantic model or ``TypedDict`` for that); the dict
    reaches the function as it was passed.

    Raises:
        ConfigurationError: a key listed as both required and optional, or a string
            where a list of keys belongs (``required="id"`` would mean ``"i", "d"``).
    """

    __slots__ = ("allow_unknown", "optional", "required")

    required: tuple[Any, ...]
    optional: tuple[Any, ...]
    allow_unknown: bool

    def __init__(
        self,
        required: Iterable[Any] = (),
        optional: Iterable[Any] = (),
        *,
        allow_unknown: bool = False,
    ) -> None:
        set_ = object.__setattr__
        set_(self, "required", self._keys(required, "required"))
        set_(self, "optional", self._keys(optional, "optional"))
        both = set(self.required) & set(self.optional)
        if both:
            listed = ", ".join(sorted(repr(key) for key in both))
            raise ConfigurationError(f"Keys: {listed} listed as both required and optional")
        set_(self, "allow_unknown", bool(allow_unknown))

    @staticmethod
    def _keys(keys: Iterable[Any], name: str) -> tuple[Any, ...]:
        if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
            raise ConfigurationError(
                f"Keys({name}=...) must be a list of keys such as ['id', 'text'], got {keys!r}"
            )
        unique: dict[Any, None] = {}
        for key in keys:
            try:
                unique[key] = None
            except TypeError:
                raise ConfigurationError(f"Keys({name}=...): {key!r} cannot be a key") from None
        return tuple(unique)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Keys is immutable; cannot set {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Keys):
            return NotImplemented
        return (set(self.required), set(self.optional), self.allow_unknown) == (
            set(other.required),
            set(other.optional),
            other.allow_unknown,
        )

    def __hash__(self) -> int:
        return hash((frozenset(self.required), frozenset(self.optional), self.allow_unknown))

    def __repr__(self) -> str:
        text = f"Keys(required={list(self.required)!r}, optional={list(self.optional)!r}"
        if self.allow_unknown:
            text += ", allow_unknown=True"
        return text + ")"

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return pydantic_keys_schema(self, handler(source))
