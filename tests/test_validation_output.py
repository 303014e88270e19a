"""@validate_output: the same specs for return values (sync; async lives in its own file)."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import pytest
from pydantic import BaseModel

from buttress import ArraySpec, Keys, OutputValidationError, validate_input, validate_output


@pytest.fixture(autouse=True)
def _show_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """These messages are checked as development shows them (values quoted); the
    default, without values, is tested in test_validation_values.py."""
    monkeypatch.setenv("BUTTRESS_SHOW_VALUES", "1")

Probabilities = Annotated[np.ndarray, ArraySpec(("batch", 3), "float32", min=0, max=1)]


class Prediction(BaseModel):
    label: str
    score: float


def test_no_nan_probabilities() -> None:
    @validate_output(ArraySpec(("batch", 3), "float32", min=0, max=1))
    def predict(values: Any) -> Any:
        return np.asarray(values, dtype=np.float32)

    good = predict([[0.2, 0.3, 0.5]])
    assert good.shape == (1, 3)
    with pytest.raises(OutputValidationError) as caught:
        predict([[0.2, np.nan, 0.5]])
    assert str(caught.value).endswith(
        "predict(): return value: contains non-finite values: 1 NaN among 3 values, "
        "the first at index (0, 1)"
    )
    (problem,) = caught.value.errors
    assert problem.argument == "return"
    assert problem.location == "return value"
    with pytest.raises(OutputValidationError, match=r"values must be <= 1: 1 value above"):
        predict([[0.2, 1.3, 0.5]])
    with pytest.raises(OutputValidationError, match=r"dimension 1 is 2, expected 3"):
        predict([[0.5, 0.5]])


def test_bare_uses_the_return_annotation() -> None:
    @validate_output
    def predict(values: Any) -> Probabilities:
        return values

    assert predict(np.zeros((2, 3), np.float32)).shape == (2, 3)
    with pytest.raises(OutputValidationError, match="dtype float64 does not match"):
        predict(np.zeros((2, 3)))

    @validate_output()
    def label() -> Prediction:
        return {"label": "cat", "score": "0.9"}  # type: ignore[return-value]

    assert label() == Prediction(label="cat", score=0.9)


def test_the_caller_receives_the_validated_value() -> None:
    @validate_output(Prediction)
    def label() -> Any:
        return {"label": "cat", "score": "0.9"}

    assert label() == Prediction(label="cat", score=0.9)

    @validate_output(ArraySpec(dtype="float64", cast="safe"))
    def widened() -> Any:
        return [1, 2]

    assert widened().dtype == np.float64


def test_names_agree_within_the_return_value() -> None:
    Batch = Annotated[np.ndarray, ArraySpec(("batch",))]

    @validate_output(tuple[Batch, Batch])
    def pair(a: int, b: int) -> Any:
        return np.zeros(a), np.zeros(b)

    pair(2, 2)
    with pytest.raises(OutputValidationError) as caught:
        pair(2, 3)
    (problem,) = caught.value.errors
    assert problem.path == (1,)
    assert "dimension 0 is 3, but 'batch' is 2" in problem.message


def test_keys_and_plain_types() -> None:
    @validate_output(Keys(["id", "score"]))
    def row(extra: bool) -> dict[str, Any]:
        return {"id": 1, "score": 0.5, **({"debug": True} if extra else {})}

    assert row(False) == {"id": 1, "score": 0.5}
    with pytest.raises(OutputValidationError, match="unknown keys 'debug'"):
        row(True)

    @validate_output(list[int])
    def ids() -> Any:
        return ["1", "x"]

    with pytest.raises(OutputValidationError) as caught:
        ids()
    assert [str(p) for p in caught.value.errors] == [
        "return value at [1]: Input should be a valid integer, unable to parse string as "
        "an integer, got 'x'"
    ]


def test_on_error_variants() -> None:
    @validate_output(ArraySpec(min=0), default=None)
    def defaulted(x: float) -> Any:
        return np.array([x])

    assert defaulted(1.0) is not None
    assert defaulted(-1.0) is None

    seen = []

    def fallback(error: OutputValidationError) -> Any:
        seen.append(error)
        return np.zeros(1)

    @validate_output(ArraySpec(min=0), on_error=fallback)
    def handled(x: float) -> Any:
        return np.array([x])

    assert handled(-1.0).tolist() == [0.0]
    assert isinstance(seen[0], OutputValidationError)


def test_the_function_runs_before_output_is_checked() -> None:
    calls = []

    @validate_output(int)
    def side_effect() -> Any:
        calls.append(1)
        return "x"

    with pytest.raises(OutputValidationError):
        side_effect()
    assert calls == [1]


def test_errors_raised_by_the_function_pass_through() -> None:
    @validate_output(int)
    def boom() -> int:
        raise KeyError("inner")

    with pytest.raises(KeyError, match="inner"):
        boom()


def test_stacked_with_validate_input() -> None:
    @validate_input
    @validate_output(ArraySpec(("n",), min=0))
    def relu(x: Annotated[np.ndarray, ArraySpec(("n",))]) -> np.ndarray:
        return np.maximum(x, 0) if x.size < 3 else -np.ones(x.size)

    assert relu(np.array([-1.0, 2.0])).tolist() == [0.0, 2.0]
    with pytest.raises(OutputValidationError):
        relu(np.ones(3))
    with pytest.raises(ValueError, match="argument 'x'"):
        relu(np.array([np.nan]))


def test_any_output_spec_checks_nothing() -> None:
    @validate_output(Any)
    def anything() -> Any:
        return object

    assert anything() is object


def test_return_annotations_naming_local_and_later_classes() -> None:
    class Local(BaseModel):
        value: int

    @validate_output
    def local() -> Local:
        return {"value": "1"}  # type: ignore[return-value]

    assert local() == Local(value=1)

    @validate_output
    def later() -> LaterResult:
        return {"size": "2"}  # type: ignore[return-value]

    assert later().size == 2

    @validate_output
    def missing() -> NeverDefined:  # type: ignore[name-defined]  # noqa: F821
        return 1

    with pytest.raises(Exception, match="names something undefined"):
        missing()


class LaterResult(BaseModel):
    size: int
