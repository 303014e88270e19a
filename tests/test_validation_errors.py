"""What failures look like: messages, summaries, records, events and on_error (sync)."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel

from buttress import (
    ArraySpec,
    InputValidationError,
    OutputValidationError,
    ValidationFailed,
    ValidationProblem,
    events,
    validate_input,
    validate_output,
)


@pytest.fixture(autouse=True)
def _show_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """These messages are checked as development shows them (values quoted); the
    default, without values, is tested in test_validation_values.py."""
    monkeypatch.setenv("BUTTRESS_SHOW_VALUES", "1")


class Request(BaseModel):
    prompt: str
    tokens: list[int]


def test_problem_records_and_locations() -> None:
    problem = ValidationProblem("request", ("tokens", 3), "an int", "'x'", "not an int")
    assert problem.location == "argument 'request' at tokens[3]"
    assert str(problem) == "argument 'request' at tokens[3]: not an int"
    odd = ValidationProblem("return", ("a key", 0, "b"), "e", "f", "m")
    assert str(odd) == "return value at ['a key'][0].b: m"


def test_large_values_are_summarised_never_echoed() -> None:
    secret = "s3cr3t-" + "x" * 5000

    @validate_input
    def generate(request: Request, temperature: float) -> None: ...

    with pytest.raises(InputValidationError) as caught:
        generate({"prompt": 7, "tokens": ["a"] * 100_000}, secret)
    text = str(caught.value)
    assert secret not in text
    assert "x" * 100 not in text
    lines = text.splitlines()
    assert len(lines) == 21
    assert all(len(line) < 250 for line in lines)
    last = caught.value.errors[-1]
    assert last.argument == "temperature"
    assert last.found == "str of 5007 characters starting 's3cr3t-xxxxxxxxxxxxx'"
    for problem in caught.value.errors:
        assert len(problem.found) < 200
    assert "'a'" in text  # short items may be shown
    # One problem per bad token, all kept; the message lists the first twenty.
    assert len(caught.value.errors) == 100_002
    assert text.endswith("generate(): ... and 99982 more problems")


def test_arrays_are_described_by_shape_and_dtype() -> None:
    @validate_input(x=ArraySpec((2,), "int8"))
    def call(x: Any) -> None: ...

    with pytest.raises(InputValidationError) as caught:
        call([np.zeros((1000, 1000))])
    (problem,) = caught.value.errors
    assert problem.found == "[array(shape=(1000, 1000), dtype=float64)]"
    huge = 10**5000
    with pytest.raises(InputValidationError) as caught:
        call(huge)
    assert caught.value.errors[0].found == "<int of 16610 bits>"


def test_odd_values_are_described_briefly() -> None:
    @validate_input(x=ArraySpec(dtype="float32"), n=int)
    def call(x: Any, n: Any = 0) -> None: ...

    structured = np.zeros(2, dtype=[("a", "f4"), ("b", "i8"), ("c", "U3")])
    with pytest.raises(InputValidationError) as caught:
        call(structured, n=[{"k" * 30: ["v" * 30] * 3}] * 3)
    x, n = caught.value.errors
    assert x.message == "dtype structured (3 fields) does not match dtype float32"
    assert n.found == "list of 3 items"

    class Verbose:
        def __repr__(self) -> str:
            return "V" * 500

    with pytest.raises(InputValidationError) as caught:
        call(Verbose())
    found = caught.value.errors[0].found
    assert len(found) <= 60
    assert found.startswith("V" * 20)
    assert "..." in found

    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    with pytest.raises(InputValidationError) as caught:
        call(Unprintable())
    assert caught.value.errors[0].found.startswith("<Unprintable instance at 0x")


def test_errors_pickle_with_their_records() -> None:
    @validate_input
    def call(x: int) -> None: ...

    with pytest.raises(InputValidationError) as caught:
        call("x")  # type: ignore[arg-type]
    copy = pickle.loads(pickle.dumps(caught.value))
    assert type(copy) is InputValidationError
    assert copy.errors == caught.value.errors
    assert copy.function == caught.value.function
    assert str(copy) == str(caught.value)


def test_the_error_carries_no_traceback_to_pydantic() -> None:
    @validate_input
    def call(x: int) -> None: ...

    with pytest.raises(InputValidationError) as caught:
        call("x")  # type: ignore[arg-type]
    # Pydantic's error holds the raw input: it must not ride along as a cause.
    assert caught.value.__cause__ is None


def test_on_error_default_returns_the_value_without_calling() -> None:
    calls = []

    @validate_input(default=[])
    def rank(k: int) -> list[int]:
        calls.append(k)
        return [k]

    assert rank("x") == []  # type: ignore[arg-type]
    assert calls == []
    assert rank(3) == [3]

    @validate_input(on_error="default", default=None)
    def explicit(k: int) -> int:
        return k

    assert explicit("x") is None  # type: ignore[arg-type]


def test_on_error_callable_receives_the_error_and_answers() -> None:
    seen: list[InputValidationError] = []

    def answer(error: InputValidationError) -> dict[str, Any]:
        seen.append(error)
        return {"status": 422, "problems": [str(p) for p in error.errors]}

    @validate_input(on_error=answer)
    def rank(k: int) -> Any:
        return k

    assert rank("x") == {  # type: ignore[arg-type]
        "status": 422,
        "problems": [
            "argument 'k': Input should be a valid integer, unable to parse string as an "
            "integer, got 'x'"
        ],
    }
    assert isinstance(seen[0], InputValidationError)


def test_on_error_callable_may_raise_its_own_error() -> None:
    class HTTPError(Exception):
        pass

    def to_http(error: InputValidationError) -> Any:
        raise HTTPError(422) from error

    @validate_input(on_error=to_http)
    def rank(k: int) -> int:
        return k

    with pytest.raises(HTTPError) as caught:
        rank("x")  # type: ignore[arg-type]
    assert isinstance(caught.value.__cause__, InputValidationError)


@pytest.mark.parametrize("on_error", ["raise", "default", "callable"])
def test_every_failure_is_an_event_whatever_on_error_does(on_error: str) -> None:
    settings: dict[str, Any] = {
        "raise": {},
        "default": {"default": 0},
        "callable": {"on_error": lambda error: -1},
    }[on_error]

    @validate_input(**settings)
    def rank(k: int) -> int:
        return k

    @validate_output(int, **settings)
    def broken() -> Any:
        return "not a number"

    received: list[ValidationFailed] = []
    with events.subscribe(received.append, ValidationFailed):
        rank(1)  # valid: no event
        try:
            rank("x")  # type: ignore[arg-type]
        except InputValidationError:
            assert on_error == "raise"
        try:
            broken()
        except OutputValidationError:
            assert on_error == "raise"
    assert [event.direction for event in received] == ["input", "output"]
    first, second = received
    assert first.function.endswith("rank")
    assert second.function.endswith("broken")
    assert [p.argument for p in first.errors] == ["k"]
    assert [p.argument for p in second.errors] == ["return"]
    assert all(isinstance(p, ValidationProblem) for p in first.errors + second.errors)


def test_no_subscriber_no_event_cost_and_no_failure() -> None:
    @validate_input
    def rank(k: int) -> int:
        return k

    assert not events.active
    with pytest.raises(InputValidationError):
        rank("x")  # type: ignore[arg-type]
