"""Properties: whatever a caller passes, the answer is the function's result or
InputValidationError, never another exception; valid values arrive unchanged."""

from __future__ import annotations

from typing import Annotated, Any

import hypothesis.extra.numpy as nps
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from buttress import (
    ArraySpec,
    InputValidationError,
    Keys,
    OutputValidationError,
    validate_input,
    validate_output,
)


class Query(BaseModel):
    text: str
    top_k: int = 5


class HostileArray:
    """Claims to be array-like and then fails."""

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no array for you")


class HostileLength(list):  # type: ignore[type-arg]
    def __len__(self) -> int:
        raise RuntimeError("no length")


class HostileRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@validate_input(
    x=ArraySpec(("batch", 4), "float32", min=-10, max=10),
    mask=ArraySpec(("batch",), "bool"),
    vec=ArraySpec((..., "dim"), "float64", cast="same_kind"),
    ids=ArraySpec(("dim",), "int16", cast="same_kind", min=0),
    rate=ArraySpec(finite="sample", sample_rate=0.5, dtype=("float16", "float32")),
    k=int,
    query=Query,
    payload=Keys(["id"], ["text"]),
    nested=list[Annotated[np.ndarray, ArraySpec(("batch",))]],
)
def target(
    x: Any, mask: Any, vec: Any, ids: Any, rate: Any, k: Any, query: Any, payload: Any, nested: Any
) -> str:
    return "called"


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.complex_numbers(allow_nan=True),
    st.text(max_size=60),
    st.binary(max_size=60),
    st.builds(HostileArray),
    st.builds(HostileLength, st.lists(st.integers(), max_size=2)),
    st.builds(HostileRepr),
    st.builds(object),
    st.just(...),
)

any_array = nps.arrays(
    dtype=st.one_of(
        nps.scalar_dtypes(),
        nps.byte_string_dtypes(),
        nps.unicode_string_dtypes(),
        nps.array_dtypes(allow_subarrays=False),
    ),
    shape=nps.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
)

anything = st.recursive(
    st.one_of(scalars, any_array),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(st.text(max_size=5), st.integers()), inner, max_size=4),
    ),
    max_leaves=12,
)


def good_x(batch: int) -> Any:
    return nps.arrays(
        np.float32, (batch, 4), elements=st.floats(-10, 10, width=32, allow_nan=False)
    )


@st.composite
def calls(draw: st.DrawFn) -> dict[str, Any]:
    """Arguments that are each either valid or anything at all."""
    batch = draw(st.integers(0, 4))
    dim = draw(st.integers(0, 4))
    valid: dict[str, Any] = {
        "x": good_x(batch),
        "mask": nps.arrays(np.bool_, (batch,)),
        "vec": st.lists(st.floats(-1e6, 1e6), min_size=dim, max_size=dim),
        "ids": nps.arrays(np.int64, (dim,), elements=st.integers(0, 30000)),
        "rate": nps.arrays(np.float32, (2,), elements=st.floats(-1, 1, width=32)),
        "k": st.integers(),
        "query": st.fixed_dictionaries({"text": st.text(max_size=10)}),
        "payload": st.fixed_dictionaries({"id": st.integers()}, optional={"text": st.text()}),
        "nested": st.lists(nps.arrays(np.float64, (batch,), elements=st.floats(0, 1)), max_size=3),
    }
    return {name: draw(st.one_of(strategy, anything)) for name, strategy in valid.items()}


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(calls())
def test_bad_input_is_always_an_input_validation_error(arguments: dict[str, Any]) -> None:
    error: InputValidationError | None = None
    try:
        result = target(**arguments)
    except InputValidationError as caught:
        error = caught
    if error is None:
        assert result == "called"
        return
    assert error.errors
    for problem in error.errors:
        assert problem.argument in arguments
        assert len(problem.found) < 400
        assert len(problem.message) < 1000
    assert str(error)


@settings(max_examples=150, deadline=None)
@given(batch=st.integers(0, 6), data=st.data())
def test_valid_input_arrives_unchanged(batch: int, data: st.DataObject) -> None:
    seen: dict[str, Any] = {}

    @validate_input(x=ArraySpec(("batch", 4), "float32", min=-10, max=10), k=int)
    def call(x: Any, k: Any) -> None:
        seen.update(x=x, k=k)

    x = data.draw(good_x(batch))
    k = data.draw(st.integers())
    call(x, k)
    assert seen["x"] is x
    assert seen["k"] == k


@settings(max_examples=200, deadline=None)
@given(value=anything)
def test_bad_output_is_always_an_output_validation_error(value: Any) -> None:
    @validate_output(ArraySpec(("batch", 3), "float32", min=0, max=1))
    def predict() -> Any:
        return value

    error: OutputValidationError | None = None
    try:
        result = predict()
    except OutputValidationError as caught:
        error = caught
    if error is None:
        assert result is value
    else:
        assert error.errors
        assert all(p.argument == "return" for p in error.errors)
