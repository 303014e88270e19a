"""RedisStore's codec and envelope, without a server: exact round trips, refusals, signatures."""

from __future__ import annotations

import datetime
import enum
import math
import os
import pickle
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import BaseModel

from buttress import UnencodableResultError
from buttress._caching._codec import Envelope, Refused

NAME = b"buttress:1:mod.f:" + b"0" * 64
KEY = b"k" * 32


class Colour(enum.Enum):
    RED = "red"


class Inner(BaseModel):
    label: str
    score: float


class Prediction(BaseModel):
    id: int
    when: datetime.datetime
    colour: Colour
    inner: Inner
    tags: list[str] = []
    extra: dict[str, tuple[int, int]] = {}


class Pair(NamedTuple):
    a: int
    b: int


def seal(envelope: Envelope, value: Any, name: bytes = NAME) -> bytes:
    return envelope.seal(name, value, stored_wall=1000.0, ttl=30.0, duration=0.5, function="f")


def round_trip(value: Any, envelope: Envelope | None = None) -> Any:
    envelope = envelope or Envelope(None, None)
    decoded, wall, ttl, duration = envelope.open(NAME, seal(envelope, value))
    assert (wall, ttl, duration) == (1000.0, 30.0, 0.5)
    return decoded


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (and floats equal bit for bit)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    return bool(a == b)


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.binary(),
    lambda children: st.lists(children, max_size=4)
    | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=5) | st.integers(), children, max_size=4),
    max_leaves=20,
)


@given(json_like)
def test_json_like_values_round_trip_with_their_exact_types(value: Any) -> None:
    assert same(round_trip(value), value)


def test_edge_values_round_trip() -> None:
    values = [
        -0.0,
        math.inf,
        2**200,
        -(2**63) - 1,
        2**63,
        "lone surrogate \udc80",
        b"",
        {(1, "a"): [None, True]},
        [[[[]]]],
    ]
    for value in values:
        assert same(round_trip(value), value), value


plain_dtypes = (
    hnp.boolean_dtypes()
    | hnp.integer_dtypes(endianness="=")
    | hnp.unsigned_integer_dtypes(endianness=">")
    | hnp.floating_dtypes(endianness="<")
    | hnp.complex_number_dtypes()
    | hnp.datetime64_dtypes()
    | hnp.timedelta64_dtypes()
    | hnp.unicode_string_dtypes()
    | hnp.byte_string_dtypes()
)


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(plain_dtypes, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)))
def test_numpy_arrays_round_trip_exactly_and_read_only(array: np.ndarray) -> None:
    decoded = round_trip(array)
    assert type(decoded) is np.ndarray
    assert decoded.dtype == array.dtype
    assert decoded.shape == array.shape
    assert decoded.tobytes() == array.tobytes()  # bit for bit, NaN payloads included
    assert not decoded.flags.writeable


def test_array_views_and_fortran_order_come_back_as_equal_c_arrays() -> None:
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    for array in (base.T, base[::2, 1::3], np.asfortranarray(base)):
        decoded = round_trip(array)
        assert np.array_equal(decoded, array)
        assert decoded.flags.c_contiguous


def test_array_data_is_aligned_in_the_stored_bytes() -> None:
    envelope = Envelope(None, None)
    for prefix in ("", "x", "xyz" * 7):
        blob = seal(envelope, (prefix, np.arange(5, dtype=np.float64)))
        decoded = envelope.open(NAME, blob)[0][1]
        assert decoded.flags.aligned
        offset = decoded.__array_interface__["data"][0] - _address(blob)
        assert offset % 16 == 0


def _address(blob: bytes) -> int:
    return int(np.frombuffer(blob, dtype=np.uint8).__array_interface__["data"][0])


def test_numpy_scalars_keep_their_type() -> None:
    for scalar in (np.float32(1.5), np.int8(-3), np.bool_(True), np.datetime64("2024-01-02")):
        decoded = round_trip(scalar)
        assert type(decoded) is type(scalar)
        assert decoded == scalar


def test_pydantic_models_round_trip_exactly() -> None:
    model = Prediction(
        id=7,
        when=datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone.utc),
        colour=Colour.RED,
        inner=Inner(label="cat", score=0.875),
        tags=["a", "b"],
        extra={"span": (1, 2)},
    )
    decoded = round_trip({"prediction": model, "models": [model.inner]})
    assert decoded["prediction"] == model
    assert type(decoded["prediction"]) is Prediction
    assert type(decoded["prediction"].inner) is Inner
    assert decoded["prediction"].extra == {"span": (1, 2)}
    assert decoded["models"] == [model.inner]


@pytest.mark.parametrize(
    ("value", "type_name", "path"),
    [
        (object(), "object", "result"),
        ({"a": [1, {2, 3}]}, "set", "result['a'][1]"),
        ((1, Pair(1, 2)), "Pair", "result[1]"),  # a tuple subclass would come back a tuple
        (OrderedDict(a=1), "OrderedDict", "result"),
        ([Colour.RED], "Colour", "result[0]"),
        (np.array([object()]), "ndarray", "result"),
        (np.zeros(2, dtype=[("a", "i4")]), "ndarray", "result"),
        (np.ma.masked_array([1, 2]), "MaskedArray", "result"),
    ],
)
def test_what_the_safe_codec_refuses_to_encode(value: Any, type_name: str, path: str) -> None:
    with pytest.raises(UnencodableResultError) as info:
        seal(Envelope(None, None), value)
    assert (info.value.type_name, info.value.path, info.value.function) == (type_name, path, "f")
    assert "serializer=" in str(info.value)


def test_a_model_defined_in_a_function_is_refused_at_encoding() -> None:
    class Local(BaseModel):
        x: int

    with pytest.raises(UnencodableResultError, match="cannot be found by name"):
        seal(Envelope(None, None), Local(x=1))


class _Boom:
    """Unpickling this creates a directory: the side effect the tests watch for."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


def test_a_pickle_payload_is_never_unpickled_by_the_safe_codec(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    payload = pickle.dumps(_Boom(marker))
    pickle.loads(payload)  # the payload works: unpickling it has the side effect
    assert marker.exists()
    marker.rmdir()
    envelope = Envelope(None, None)
    # raw, and dressed up in a real envelope that claims to hold pickle
    disguised = bytearray(seal(envelope, 1))
    disguised[4] = 1  # the codec byte: pickle
    disguised[30:] = payload
    for blob in (payload, bytes(disguised)):
        with pytest.raises(Refused):
            envelope.open(NAME, blob)
    assert not marker.exists()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_is_refused_and_nothing_else_escapes(garbage: bytes) -> None:
    envelope = Envelope(None, None)
    header = seal(envelope, None)[:30]
    for blob in (garbage, header + garbage):
        try:
            envelope.open(NAME, blob)
        except Refused:
            pass


def test_signed_pickle_round_trips_any_picklable_value() -> None:
    envelope = Envelope("pickle", KEY)
    value = {"pair": Pair(1, 2), "set": {1, 2}, "ordered": OrderedDict(a=1)}
    decoded = round_trip(value, envelope)
    assert decoded == value
    assert type(decoded["pair"]) is Pair


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_any_change_to_a_signed_value_is_refused(data: st.DataObject) -> None:
    envelope = Envelope("pickle", KEY)
    blob = bytearray(seal(envelope, {"value": [1, 2, 3]}))
    index = data.draw(st.integers(0, len(blob) - 1))
    blob[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(Refused):
        envelope.open(NAME, bytes(blob))


def test_foreign_values_are_refused(tmp_path: Path) -> None:
    ours = Envelope("pickle", KEY)
    theirs = Envelope("pickle", b"another key, 32 bytes long......")
    marker = tmp_path / "executed"
    blob = seal(ours, 42)
    with pytest.raises(Refused, match="signature"):
        ours.open(NAME.replace(b"mod.f", b"mod.g"), blob)  # copied from another entry
    with pytest.raises(Refused, match="signature"):
        ours.open(NAME, seal(theirs, _Boom(marker)))  # signed with another key
    with pytest.raises(Refused, match="unsigned"):
        ours.open(NAME, seal(Envelope(None, None), 42))
    with pytest.raises(Refused, match="no signing_key"):
        Envelope(None, None).open(NAME, blob)
    assert not marker.exists()


def test_a_custom_serializer_is_used_and_its_failures_refused() -> None:
    class Upper:
        def dumps(self, value: Any) -> bytes:
            return str(value).upper().encode()

        def loads(self, data: bytes) -> Any:
            if data == b"BAD":
                raise ValueError("bad")
            return data.decode()

    envelope = Envelope(Upper(), None)
    assert round_trip("abc", envelope) == "ABC"
    with pytest.raises(Refused, match="custom serializer"):
        envelope.open(NAME, seal(envelope, "bad"))
