"""ArraySpec checks: shapes and names across arguments, dtypes, casting, NaN and inf, ranges."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
import pytest

from buttress import ArraySpec, InputValidationError, validate_input


@pytest.fixture(autouse=True)
def _show_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """These messages are checked as development shows them (values quoted); the
    default, without values, is tested in test_validation_values.py."""
    monkeypatch.setenv("BUTTRESS_SHOW_VALUES", "1")


def problems(call: Any, *args: Any, **kwargs: Any) -> list[str]:
    """The messages of the InputValidationError raised by ``call``."""
    with pytest.raises(InputValidationError) as caught:
        call(*args, **kwargs)
    return [f"{p.argument}: {p.message}" for p in caught.value.errors]


def f32(*shape: int, fill: float = 0.5) -> np.ndarray[Any, Any]:
    return np.full(shape, fill, dtype=np.float32)


@validate_input(x=ArraySpec(("batch", 768), "float32"), mask=ArraySpec(("batch",), "bool"))
def rank(x: Any, mask: Any = None) -> tuple[Any, Any]:
    return x, mask


def test_valid_arrays_reach_the_function_as_they_are() -> None:
    x, mask = f32(3, 768), np.ones(3, dtype=bool)
    got_x, got_mask = rank(x, mask)
    assert got_x is x
    assert got_mask is mask
    got_x, got_mask = rank(mask=mask, x=x)
    assert got_x is x
    assert got_mask is mask


def test_the_issue_message_word_for_word() -> None:
    with pytest.raises(InputValidationError) as caught:
        rank(f32(3, 512))
    assert str(caught.value) == (
        "rank(): argument 'x': shape (3, 512) does not match ('batch', 768): "
        "dimension 1 is 512, expected 768"
    )
    (problem,) = caught.value.errors
    assert problem.argument == "x"
    assert problem.path == ()
    assert problem.expected == "shape ('batch', 768)"
    assert problem.found == "shape (3, 512)"


def test_names_must_agree_across_arguments() -> None:
    assert problems(rank, f32(3, 768), np.ones(4, dtype=bool)) == [
        "mask: shape (4,) does not match ('batch',): dimension 0 is 4, but 'batch' is 3 "
        "(dimension 0 of argument 'x')"
    ]
    # Keyword order does not matter: parameters are checked in signature order.
    assert len(problems(rank, mask=np.ones(2, dtype=bool), x=f32(5, 768))) == 1


def test_a_name_no_other_argument_shares_still_shows_in_messages() -> None:
    @validate_input(x=ArraySpec(("batch", 768)))
    def one(x: Any) -> None: ...

    assert problems(one, f32(3, 512)) == [
        "x: shape (3, 512) does not match ('batch', 768): dimension 1 is 512, expected 768"
    ]
    assert problems(one, f32(512)) == [
        "x: shape (512,) does not match ('batch', 768): expected 2 dimensions, got 1"
    ]


def test_names_agree_within_one_array() -> None:
    @validate_input(m=ArraySpec(("n", "n")))
    def square(m: Any) -> Any:
        return m

    square(f32(4, 4))
    assert problems(square, f32(4, 3)) == [
        "m: shape (4, 3) does not match ('n', 'n'): dimension 1 is 3, but 'n' is 4 "
        "(dimension 0 of argument 'm')"
    ]


def test_names_are_per_call() -> None:
    rank(f32(3, 768), np.ones(3, dtype=bool))
    rank(f32(7, 768), np.ones(7, dtype=bool))  # a new call: batch may differ


def test_names_shared_by_star_args_items() -> None:
    @validate_input(arrays=ArraySpec(("batch", None)))
    def stack(*arrays: Any) -> int:
        return len(arrays)

    assert stack(f32(2, 3), f32(2, 5)) == 2
    with pytest.raises(InputValidationError) as caught:
        stack(f32(2, 3), f32(4, 3))
    (problem,) = caught.value.errors
    assert (problem.argument, problem.path) == ("arrays", (1,))
    assert "but 'batch' is 2" in problem.message


def test_wrong_ndim() -> None:
    assert problems(rank, f32(3, 768, 1)) == [
        "x: shape (3, 768, 1) does not match ('batch', 768): expected 2 dimensions, got 3"
    ]


def test_every_dimension_that_differs_is_named() -> None:
    @validate_input(x=ArraySpec((2, 3, 4)))
    def fixed(x: Any) -> None: ...

    assert problems(fixed, f32(9, 3, 7)) == [
        "x: shape (9, 3, 7) does not match (2, 3, 4): dimension 0 is 9, expected 2; "
        "dimension 2 is 7, expected 4"
    ]
    assert problems(fixed, f32(2, 3)) == [
        "x: shape (2, 3) does not match (2, 3, 4): expected 3 dimensions, got 2"
    ]


def test_none_allows_any_size() -> None:
    @validate_input(x=ArraySpec((None, 3)))
    def any_rows(x: Any) -> Any:
        return x

    any_rows(f32(0, 3))
    any_rows(f32(100, 3))
    assert problems(any_rows, f32(100, 4)) == [
        "x: shape (100, 4) does not match (None, 3): dimension 1 is 4, expected 3"
    ]


def test_ellipsis_allows_any_leading_dimensions() -> None:
    @validate_input(x=ArraySpec((..., "batch", 768)), y=ArraySpec(("batch", ...)))
    def lead(x: Any, y: Any = None) -> Any:
        return x

    lead(f32(2, 768))
    lead(f32(5, 4, 2, 768))
    lead(f32(5, 4, 2, 768), f32(2))
    assert problems(lead, f32(768)) == [
        "x: shape (768,) does not match (..., 'batch', 768): "
        "expected at least 2 dimensions, got 1"
    ]
    assert problems(lead, f32(5, 2, 767)) == [
        "x: shape (5, 2, 767) does not match (..., 'batch', 768): "
        "dimension 2 is 767, expected 768"
    ]
    assert problems(lead, f32(2, 768), f32(3, 1)) == [
        "y: shape (3, 1) does not match ('batch', ...): dimension 0 is 3, but 'batch' is 2 "
        "(dimension 0 of argument 'x')"
    ]


def test_ndim_alone_and_with_ellipsis() -> None:
    @validate_input(x=ArraySpec(ndim=2), y=ArraySpec((..., 3), ndim=3))
    def dims(x: Any, y: Any = None) -> None: ...

    dims(f32(1, 1), f32(1, 2, 3))
    assert problems(dims, f32(1, 1, 1)) == [
        "x: expected 2 dimensions, got 3 (shape (1, 1, 1))"
    ]
    assert problems(dims, f32(1, 1), f32(2, 3)) == [
        "y: shape (2, 3) does not match (..., 3): expected 3 dimensions, got 2"
    ]


def test_exact_dtype() -> None:
    assert problems(rank, np.zeros((3, 768))) == [
        "x: dtype float64 does not match dtype float32"
    ]

    @validate_input(x=ArraySpec(dtype=("float32", "float16")))
    def either(x: Any) -> Any:
        return x

    either(f32(2))
    either(np.zeros(2, np.float16))
    assert problems(either, np.zeros(2, np.int8)) == [
        "x: dtype int8 does not match dtype float32 or float16"
    ]


def test_shape_and_dtype_problems_are_both_reported() -> None:
    assert problems(rank, np.zeros((3, 5))) == [
        "x: shape (3, 5) does not match ('batch', 768): dimension 1 is 5, expected 768",
        "x: dtype float64 does not match dtype float32",
    ]


def test_not_an_array() -> None:
    assert problems(rank, [[0.5] * 768]) == ["x: expected a numpy array, got list of 1 item"]
    assert problems(rank, "text") == ["x: expected a numpy array, got 'text'"]


def test_safe_cast_converts_and_the_function_receives_the_cast_array() -> None:
    @validate_input(x=ArraySpec((None, 2), "float64", cast="safe"))
    def wide(x: Any) -> Any:
        return x

    ints = np.array([[1, 2]], dtype=np.int32)
    got = wide(ints)
    assert got.dtype == np.float64
    assert got.tolist() == [[1.0, 2.0]]
    listed = wide([[1.5, 2.5], [3, 4]])
    assert isinstance(listed, np.ndarray)
    assert listed.dtype == np.float64
    same = np.zeros((1, 2))
    assert wide(same) is same  # already right: no copy
    assert problems(wide, np.zeros((1, 2), np.complex64)) == [
        "x: dtype complex64 cannot be cast to float64 under 'safe' casting"
    ]


def test_safe_cast_follows_numpy_and_refuses_narrowing() -> None:
    @validate_input(x=ArraySpec(dtype="float32", cast="safe"))
    def narrow(x: Any) -> Any:
        return x

    # Python floats become float64, which numpy does not call safe to narrow.
    assert problems(narrow, [0.5, 1.5]) == [
        "x: dtype float64 cannot be cast to float32 under 'safe' casting"
    ]
    assert narrow(np.zeros(2, np.float16)).dtype == np.float32


def test_same_kind_cast_takes_json_floats_into_float32() -> None:
    @validate_input(x=ArraySpec(("batch", 3), "float32", cast="same_kind"))
    def embed(x: Any) -> Any:
        return x

    got = embed([[0.1, 0.2, 0.3]])
    assert got.dtype == np.float32
    assert got.shape == (1, 3)
    assert problems(embed, [[1e300, 0.0, 0.0]]) == [
        "x: dtype float64: values out of range for float32"
    ]
    assert problems(embed, [["a", "b", "c"]]) == [
        "x: dtype <U1 cannot be cast to float32 under 'same_kind' casting"
    ]
    assert problems(embed, [[1.0, 2.0], [3.0]])[0].startswith(
        "x: [[1.0, 2.0], [3.0]] could not be converted to an array (ValueError: "
    )
    assert problems(embed, {"a": 1}) == [
        "x: expected an array or array-like, got {'a': 1}"
    ]


def test_same_kind_integer_narrowing_refuses_overflow() -> None:
    @validate_input(ids=ArraySpec(dtype="int16", cast="same_kind"))
    def tokens(ids: Any) -> Any:
        return ids

    assert tokens(np.array([1, 2, 30000])).dtype == np.int16
    assert problems(tokens, np.array([1, 70000])) == [
        "ids: values from 1 to 70000 do not fit dtype int16 (-32768 to 32767)"
    ]


def test_cast_without_dtype_only_converts() -> None:
    @validate_input(x=ArraySpec((2,), cast="safe"))
    def pair(x: Any) -> Any:
        return x

    assert pair((1, 2)).tolist() == [1, 2]
    assert pair(np.float32(1.0).reshape(1).repeat(2)).dtype == np.float32


@pytest.mark.parametrize(
    ("value", "found"),
    [
        (np.array([1.0, np.nan, 3.0], np.float32), "1 NaN among 3 values, the first at index (1,)"),
        (np.array([np.inf, -np.inf, 0.0]), "2 inf among 3 values, the first at index (0,)"),
        (
            np.array([[0.0, np.nan], [np.inf, np.nan]]),
            "2 NaN and 1 inf among 4 values, the first at index (0, 1)",
        ),
        (np.array([1 + 0j, complex(np.nan, 0)]), "1 NaN among 2 values, the first at index (1,)"),
    ],
)
def test_finite_rejects_nan_and_inf(value: Any, found: str) -> None:
    @validate_input(x=ArraySpec())
    def model(x: Any) -> None: ...

    assert problems(model, value) == [f"x: contains non-finite values: {found}"]


def test_finite_false_allows_nan_and_ints_have_none() -> None:
    @validate_input(x=ArraySpec(finite=False), ids=ArraySpec(dtype="int64"))
    def model(x: Any, ids: Any = None) -> None: ...

    model(np.array([np.nan, np.inf]), np.arange(3))


def test_finite_scans_large_arrays_in_slices() -> None:
    @validate_input(x=ArraySpec(dtype="float32"))
    def model(x: Any) -> None: ...

    big = np.zeros(600_000, np.float32)
    model(big)
    big[-1] = np.nan  # in the last slice
    assert problems(model, big) == [
        "x: contains non-finite values: 1 NaN among 600000 values, the first at index (599999,)"
    ]
    strided = np.zeros((1000, 600), np.float32)[:, ::2]  # not contiguous: one scan
    strided[3, 7] = np.inf
    assert "1 inf among 300000 values, the first at index (3, 7)" in problems(model, strided)[0]


def test_finite_sample_scans_the_first_call_then_a_share() -> None:
    @validate_input(x=ArraySpec(finite="sample", sample_rate=0.25))
    def model(x: Any) -> None: ...

    bad = np.array([np.nan])
    outcomes = []
    for _ in range(12):
        try:
            model(bad)
            outcomes.append(False)
        except InputValidationError:
            outcomes.append(True)
    assert outcomes == [True, False, False, False] * 3


def test_a_sampled_scan_runs_once_per_call_even_when_the_call_fails() -> None:
    @validate_input(x=ArraySpec(finite="sample", sample_rate=0.5), k=int)
    def model(x: Any, k: Any) -> None: ...

    bad = np.array([np.nan])
    with pytest.raises(InputValidationError) as caught:
        model(bad, "not an int")  # scanned (the first call), and k fails too
    assert [p.argument for p in caught.value.errors] == ["x", "k"]
    model(bad, 1)  # not scanned
    with pytest.raises(InputValidationError) as caught:
        model(bad, 1)  # scanned
    assert [p.argument for p in caught.value.errors] == ["x"]


def test_finite_sample_still_catches_nan_found_by_a_range_check() -> None:
    @validate_input(x=ArraySpec(finite="sample", sample_rate=0.01, min=0))
    def model(x: Any) -> None: ...

    model(np.array([1.0]))  # the first call is scanned; the next are not
    assert problems(model, np.array([1.0, np.nan])) == [
        "x: contains non-finite values: 1 NaN among 2 values, the first at index (1,)"
    ]


def test_min_and_max() -> None:
    @validate_input(p=ArraySpec(min=0, max=1))
    def probabilities(p: Any) -> Any:
        return p

    probabilities(np.array([0.0, 0.5, 1.0]))
    probabilities(np.zeros(0))
    assert problems(probabilities, np.array([[0.5, -0.25], [-1.0, 2.0]])) == [
        "p: values must be >= 0: 2 values below it, the smallest -1.0 at index (1, 0)",
        "p: values must be <= 1: 1 value above it, the largest 2.0 at index (1, 1)",
    ]
    assert problems(probabilities, np.array([3], np.uint8)) == [
        "p: values must be <= 1: 1 value above it, the largest 3 at index (0,)"
    ]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_with_both_bounds_the_range_scan_also_finds_nan_and_inf(bad: float) -> None:
    @validate_input(x=ArraySpec(min=float("-inf"), max=float("inf")))
    def model(x: Any) -> None: ...

    @validate_input(x=ArraySpec(min=float("-inf"), max=float("inf"), finite=False))
    def loose(x: Any) -> None: ...

    values = np.array([[0.0, 1.0], [bad, 2.0]], np.float32)
    found = problems(model, values)
    assert len(found) == 1
    assert found[0].startswith("x: contains non-finite values: 1 ")
    assert found[0].endswith("among 4 values, the first at index (1, 0)")
    loose(values)


def test_range_ignores_nan_when_nan_is_allowed() -> None:
    @validate_input(p=ArraySpec(min=0, finite=False))
    def loose(p: Any) -> None: ...

    loose(np.array([np.nan, 1.0]))
    loose(np.array([np.nan]))
    assert problems(loose, np.array([np.nan, -1.0])) == [
        "p: values must be >= 0: 1 value below it, the smallest -1.0 at index (1,)"
    ]


def test_range_on_values_that_have_no_order() -> None:
    @validate_input(p=ArraySpec(min=0))
    def ordered(p: Any) -> None: ...

    assert problems(ordered, np.array([1 + 1j])) == [
        "p: values of dtype complex128 cannot be compared with min/max"
    ]
    assert problems(ordered, np.array(["a"])) == [
        "p: values of dtype <U1 cannot be compared with min/max"
    ]


def test_annotations_with_array_specs() -> None:
    @validate_input
    def model(
        x: Annotated[np.ndarray, ArraySpec(("batch", 4), "float32")],
        typed: npt.NDArray[np.int64],
        plain: np.ndarray,
        mask: Annotated[np.ndarray, ArraySpec(("batch",))] | None = None,
    ) -> int:
        return 1

    model(f32(2, 4), np.arange(3), np.zeros(1))
    model(f32(2, 4), np.arange(3), np.array([np.nan]), np.ones(2))
    assert problems(model, f32(2, 4), np.arange(3, dtype=np.int32), [1]) == [
        "typed: dtype int32 does not match dtype int64",
        "plain: expected a numpy array, got [1]",
    ]
    # The Optional one is validated through pydantic, sharing the call's names.
    found = problems(model, f32(2, 4), np.arange(3), np.zeros(1), np.ones(3))
    assert len(found) == 1
    assert "but 'batch' is 2 (dimension 0 of argument 'x')" in found[0]
