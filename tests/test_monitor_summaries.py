"""Summaries of values for log records: shape and statistics, never the content."""

from __future__ import annotations

import collections
import dataclasses
import json
import math
from typing import Any

import numpy as np
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from buttress._monitoring._summaries import (
    MAX_KEYS,
    SAMPLE_LIMIT,
    nonfinite,
    summarize,
    type_name,
)


def test_numpy_array_statistics() -> None:
    array = np.array([[1.0, 2.0, np.nan], [np.inf, -4.0, 5.0]], dtype=np.float32)
    summary = summarize(array)
    assert summary == {
        "type": "ndarray",
        "shape": [2, 3],
        "dtype": "float32",
        "nan": 1,
        "inf": 1,
        "min": -4.0,
        "max": 5.0,
        "mean": pytest.approx(1.0),
    }


def test_integer_and_boolean_arrays() -> None:
    assert summarize(np.arange(10, dtype=np.int64).reshape(2, 5)) == {
        "type": "ndarray",
        "shape": [2, 5],
        "dtype": "int64",
        "min": 0,
        "max": 9,
        "mean": 4.5,
    }
    assert summarize(np.array([True, False, True, True])) == {
        "type": "ndarray",
        "shape": [4],
        "dtype": "bool",
        "min": False,
        "max": True,
        "mean": 0.75,
    }


def test_arrays_without_statistics() -> None:
    assert summarize(np.array([], dtype=np.float64)) == {
        "type": "ndarray",
        "shape": [0],
        "dtype": "float64",
    }
    assert summarize(np.array(["a", "b"])) == {"type": "ndarray", "shape": [2], "dtype": "<U1"}
    assert summarize(np.array([1 + 2j])) == {"type": "ndarray", "shape": [1], "dtype": "complex128"}
    # all NaN: counts, but no min/max/mean, and no RuntimeWarning (warnings are errors)
    assert summarize(np.full(3, np.nan)) == {
        "type": "ndarray",
        "shape": [3],
        "dtype": "float64",
        "nan": 3,
        "inf": 0,
    }


def test_huge_arrays_are_sampled() -> None:
    array = np.zeros(SAMPLE_LIMIT * 4 + 3, dtype=np.float32)
    array[::8] = np.nan  # every other sampled element (the sample takes every 5th)
    summary = summarize(array)
    assert summary["sampled"] is True
    assert summary["sample_size"] <= SAMPLE_LIMIT
    assert summary["shape"] == [SAMPLE_LIMIT * 4 + 3]
    assert 0 < summary["nan"] < summary["sample_size"]
    assert summary["min"] == summary["max"] == 0.0


def test_non_contiguous_huge_arrays_are_sampled() -> None:
    array = np.ones((SAMPLE_LIMIT, 4), dtype=np.float64)[:, ::2]
    summary = summarize(array)
    assert summary["sampled"] is True
    assert summary["mean"] == 1.0


def test_numpy_scalars() -> None:
    assert summarize(np.float32(np.nan)) == {"type": "float32", "finite": False}
    assert summarize(np.int16(3)) == {"type": "int16"}


def test_strings_and_bytes_are_lengths() -> None:
    assert summarize("héllo") == {"type": "str", "length": 5}
    assert summarize(b"\x00\x01") == {"type": "bytes", "length": 2}
    assert summarize(bytearray(7)) == {"type": "bytearray", "length": 7}
    assert summarize(memoryview(b"abc")) == {"type": "memoryview", "length": 3}


def test_dicts_are_keys() -> None:
    assert summarize({"text": "secret", 3: [1]}) == {
        "type": "dict",
        "length": 2,
        "keys": ["text", "3"],
    }
    big = {f"k{i}": i for i in range(100)}
    summary = summarize(big)
    assert summary["length"] == 100
    assert len(summary["keys"]) == MAX_KEYS
    long_key = "x" * 500
    assert len(summarize({long_key: 1})["keys"][0]) <= 64
    ordered = collections.OrderedDict(a=1)
    assert summarize(ordered) == {"type": "OrderedDict", "length": 1, "keys": ["a"]}


def test_collections_are_length_and_element_type() -> None:
    assert summarize([1, 2, 3]) == {"type": "list", "length": 3, "element_type": "int"}
    assert summarize(("a", 1)) == {"type": "tuple", "length": 2, "element_type": "mixed"}
    assert summarize(set()) == {"type": "set", "length": 0}
    assert summarize(frozenset({1.5})) == {
        "type": "frozenset",
        "length": 1,
        "element_type": "float",
    }
    assert summarize(collections.deque([b"x"])) == {
        "type": "deque",
        "length": 1,
        "element_type": "bytes",
    }


def test_pydantic_models_and_dataclasses_are_field_names() -> None:
    class Request(pydantic.BaseModel):
        user: str
        features: list[float]

    @dataclasses.dataclass
    class Point:
        x: float
        y: float

    summary = summarize(Request(user="alice", features=[0.5]))
    assert summary == {
        "type": type_name(Request(user="a", features=[])),
        "fields": ["user", "features"],
    }
    assert summarize(Point(1, 2))["fields"] == ["x", "y"]


def test_numbers_none_and_other_objects() -> None:
    assert summarize(None) is None
    assert summarize(3) == {"type": "int"}
    assert summarize(True) == {"type": "bool"}
    assert summarize(2.5) == {"type": "float", "finite": True}
    assert summarize(math.inf) == {"type": "float", "finite": False}
    assert summarize(1j) == {"type": "complex"}

    class Opaque:
        pass

    assert summarize(Opaque())["type"].endswith("Opaque")


def test_array_likes_report_shape_and_dtype() -> None:
    class Tensor:
        shape = (2, 3)
        dtype = "torch.float16"

    assert summarize(Tensor()) == {
        "type": type_name(Tensor()),
        "shape": [2, 3],
        "dtype": "torch.float16",
    }


def test_broken_objects_are_reported_by_type() -> None:
    class Liar(dict):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            raise RuntimeError("no")

    assert summarize(Liar(a=1)) == {"type": type_name(Liar())}


def test_nonfinite_counts() -> None:
    assert nonfinite(float("nan")) == (1, 0)
    assert nonfinite(-math.inf) == (0, 1)
    assert nonfinite(1.0) == (0, 0)
    assert nonfinite("nan") == (0, 0)
    assert nonfinite(np.array([np.nan, np.inf, -np.inf, 1.0])) == (1, 2)
    assert nonfinite(np.array([1, 2])) == (0, 0)
    assert nonfinite(np.float64("nan")) == (1, 0)
    assert nonfinite(np.array([], dtype=float)) == (0, 0)


@given(st.text())
def test_text_content_never_appears(text: str) -> None:
    summary = summarize({"prompt": text, "again": [text]})
    rendered = json.dumps(summarize(text)) + json.dumps(summary)
    if len(text) >= 4:
        assert text not in rendered
    assert json.loads(json.dumps(summarize(text))) == {"type": "str", "length": len(text)}


@given(hnp.arrays(dtype=hnp.floating_dtypes(), shape=hnp.array_shapes(max_dims=3, max_side=6)))
def test_array_summaries_are_json_and_consistent(array: np.ndarray) -> None:
    summary = summarize(array)
    json.dumps(summary)  # JSON-ready
    assert summary["shape"] == list(array.shape)
    nan, inf = nonfinite(array)
    assert (summary["nan"], summary["inf"]) == (nan, inf)
    finite = array[np.isfinite(array)]
    if finite.size:
        assert summary["min"] == float(finite.min())
        assert summary["max"] == float(finite.max())
    else:
        assert "min" not in summary
