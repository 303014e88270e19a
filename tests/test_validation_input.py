"""@validate_input: annotations and explicit specs, pydantic coercion, keys."""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Literal

import numpy as np
import pytest
from pydantic import BaseModel, Field
from typing_extensions import TypedDict  # pydantic needs it before Python 3.12

from buttress import (
    ArraySpec,
    ButtressError,
    ConfigurationError,
    DataValidationError,
    InputValidationError,
    Keys,
    validate_input,
)


@pytest.fixture(autouse=True)
def _show_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """These messages are checked as development shows them (values quoted); the
    default, without values, is tested in test_validation_values.py."""
    monkeypatch.setenv("BUTTRESS_SHOW_VALUES", "1")


class Query(BaseModel):
    text: str
    top_k: int = Field(default=10, ge=1)


class Filters(TypedDict):
    lang: str
    year: int


def messages(error: DataValidationError) -> list[str]:
    return [str(problem) for problem in error.errors]


def test_bare_checks_every_annotated_parameter_and_coerces() -> None:
    @validate_input
    def search(query: Query, limit: int, ratio: float = 0.5, tag=None) -> tuple[Any, ...]:  # type: ignore[no-untyped-def]
        return query, limit, ratio, tag

    query, limit, ratio, tag = search({"text": "cats", "top_k": "3"}, "7", tag=object)
    assert query == Query(text="cats", top_k=3)
    assert limit == 7
    assert ratio == 0.5
    assert tag is object
    with pytest.raises(InputValidationError) as caught:
        search({"top_k": 0}, "many", ratio="high")
    assert messages(caught.value) == [
        "argument 'query' at text: Field required",
        "argument 'query' at top_k: Input should be greater than or equal to 1, got 0",
        "argument 'limit': Input should be a valid integer, unable to parse string as an "
        "integer, got 'many'",
        "argument 'ratio': Input should be a valid number, unable to parse string as a "
        "number, got 'high'",
    ]


def test_explicit_specs_check_only_the_named_arguments() -> None:
    @validate_input(top_k=int, request=Query)
    def rank(x: str, top_k: Any, request: Any = None) -> tuple[Any, ...]:
        return x, top_k, request

    # x is annotated str but has no spec: it passes untouched.
    assert rank(5, "2") == (5, 2, None)  # type: ignore[arg-type]
    assert rank("q", 1, request={"text": "a"})[2] == Query(text="a")
    model = Query(text="b")
    assert rank("q", 1, model)[2] is model
    with pytest.raises(InputValidationError, match="argument 'top_k'"):
        rank("q", "two")


def test_every_kind_of_spec() -> None:
    @validate_input(
        x=ArraySpec((None, 2), "float32"),
        payload=Keys(["id"], ["text"]),
        filters=Filters,
        mode=Literal["fast", "exact"],
        weights=list[float],
        count=Annotated[int, Field(gt=0)],
        anything=Any,
    )
    def call(
        x: Any, payload: Any, filters: Any, mode: Any, weights: Any, count: Any, anything: Any
    ) -> tuple[Any, ...]:
        return x, payload, filters, mode, weights, count, anything

    x = np.zeros((1, 2), np.float32)
    payload = {"id": 1}
    result = call(x, payload, {"lang": "en", "year": "2024"}, "fast", (1, "2.5"), 3, object())
    assert result[0] is x
    assert result[1] is payload
    assert result[2] == {"lang": "en", "year": 2024}
    assert result[4] == [1.0, 2.5]
    with pytest.raises(InputValidationError) as caught:
        call(x.astype(np.float64), {"text": "t", "extra": 1}, {"lang": "en"}, "slow", [None], 0, 1)
    assert [(p.argument, p.path) for p in caught.value.errors] == [
        ("x", ()),
        ("payload", ("id",)),
        ("payload", ()),
        ("filters", ("year",)),
        ("mode", ()),
        ("weights", (0,)),
        ("count", ()),
    ]
    assert messages(caught.value)[1:3] == [
        "argument 'payload' at id: missing required key 'id'",
        "argument 'payload': unknown keys 'extra' (allowed: 'id', 'text')",
    ]


def test_keys_details() -> None:
    @validate_input(
        strict=Keys(["a", "b"]),
        loose=Annotated[dict, Keys(["a"], allow_unknown=True)],
        typed=Annotated[dict[str, int], Keys(["n"])],
    )
    def call(strict: Any, loose: Any = None, typed: Any = None) -> Any:
        return typed

    call({"a": 1, "b": 2}, {"a": 1, "zzz": 2})
    assert call({"a": 1, "b": 2}, typed={"n": "3"}) == {"n": 3}  # pydantic, then the keys
    with pytest.raises(InputValidationError) as caught:
        call(["a", "b"], {"zzz": 2}, typed={"m": 1})
    assert messages(caught.value) == [
        "argument 'strict': expected a dict, got ['a', 'b']",
        "argument 'loose' at a: missing required key 'a'",
        "argument 'typed' at n: missing required key 'n'",
        "argument 'typed': unknown keys 'm' (allowed: 'n')",
    ]


def test_unknown_keys_are_listed_boundedly() -> None:
    @validate_input(d=Keys([]))
    def call(d: Any) -> None: ...

    with pytest.raises(InputValidationError) as caught:
        call({f"k{i}": i for i in range(30)})
    assert messages(caught.value) == [
        "argument 'd': unknown keys 'k0', 'k1', 'k2', 'k3', 'k4', 'k5', 'k6', 'k7' and 22 "
        "more (allowed: none)"
    ]


def test_keys_of_a_broken_mapping_become_a_problem() -> None:
    class Broken(dict):  # type: ignore[type-arg]
        def keys(self):  # type: ignore[no-untyped-def, override]
            raise RuntimeError("no keys today")

    @validate_input(d=Keys(["a"]))
    def call(d: Any) -> None: ...

    with pytest.raises(InputValidationError) as caught:
        call(Broken())
    assert messages(caught.value) == [
        "argument 'd': could not be checked: RuntimeError: no keys today"
    ]


def test_wrapper_is_honest() -> None:
    def original(x: int, *, flag: bool = False) -> int:
        """Docs."""
        return x

    wrapped = validate_input(original)
    assert wrapped.__name__ == "original"
    assert wrapped.__doc__ == "Docs."
    assert inspect.signature(wrapped) == inspect.signature(original)
    assert wrapped.__wrapped__ is original  # type: ignore[attr-defined]
    assert not inspect.iscoroutinefunction(wrapped)

    async def coroutine(x: int) -> int:
        return x

    assert inspect.iscoroutinefunction(validate_input(coroutine))


class Later(BaseModel):
    name: str


def test_forward_references_to_local_and_later_classes() -> None:
    class Local(BaseModel):
        value: int

    @validate_input
    def local(item: Local) -> Local:
        return item

    assert local({"value": "3"}) == Local(value=3)

    @validate_input
    def later(item: NotYetDefined) -> Any:  # defined below this function
        return item

    assert later({"size": "2"}).size == 2

    @validate_input
    def missing(item: NeverDefined) -> Any:  # type: ignore[name-defined]  # noqa: F821
        return item

    with pytest.raises(ConfigurationError, match="names something undefined"):
        missing(1)


class NotYetDefined(BaseModel):
    size: int


def test_specs_mapping_for_names_that_clash_with_the_decorators_keywords() -> None:
    @validate_input(specs={"default": int, "on_error": str}, x=float)
    def call(default: Any, on_error: Any, x: Any) -> Any:
        return default, on_error, x

    assert call("1", "a", "2") == (1, "a", 2.0)
    with pytest.raises(InputValidationError, match="argument 'default'"):
        call("one", "a", 2)


def test_nothing_to_check_still_wraps() -> None:
    @validate_input
    def untyped(x, y=1):  # type: ignore[no-untyped-def]
        return x, y

    assert untyped("a") == ("a", 1)
    assert untyped.__wrapped__ is not None  # type: ignore[attr-defined]


def test_arbitrary_classes_are_checked_by_isinstance() -> None:
    class Session:
        pass

    @validate_input
    def fetch(session: Session) -> Session:
        return session

    session = Session()
    assert fetch(session) is session
    with pytest.raises(InputValidationError, match="argument 'session'"):
        fetch("not a session")  # type: ignore[arg-type]


def test_input_validation_error_is_a_value_error_and_a_buttress_error() -> None:
    @validate_input
    def call(x: int) -> int:
        return x

    with pytest.raises(ValueError) as caught:
        call("x")  # type: ignore[arg-type]
    assert isinstance(caught.value, ButtressError)
    assert isinstance(caught.value, DataValidationError)
    assert caught.value.function.endswith("call")


def test_generator_functions_are_checked_as_streams() -> None:
    def gen(x: int) -> Any:
        yield x

    checked = validate_input(gen)
    assert list(checked("3")) == [3]
    stream = checked("three")
    with pytest.raises(InputValidationError):
        next(stream)


def test_a_parameter_named_fn_can_have_a_spec() -> None:
    @validate_input(fn=int)
    def call(fn: Any) -> Any:
        return fn

    assert call("3") == 3


def test_keywords_coerce_and_every_problem_is_found_after_the_first() -> None:
    @validate_input
    def call(a: int, b: float, c: Query, d: int = 0) -> tuple[Any, ...]:
        return a, b, c, d

    assert call(c={"text": "q"}, b="1.5", a="2") == (2, 1.5, Query(text="q"), 0)
    assert call("2", b="1.5", c={"text": "q"}, d="4") == (2, 1.5, Query(text="q"), 4)
    with pytest.raises(InputValidationError) as caught:
        call(a="2", b="x", c={}, d="y")
    assert [(p.argument, p.path) for p in caught.value.errors] == [
        ("b", ()),
        ("c", ("text",)),
        ("d", ()),
    ]
