"""ArraySpec and Keys: what they accept, and bad specs failing when they are built."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from buttress import ArraySpec, ConfigurationError, Keys, validate_input, validate_output


def test_array_spec_normalises_its_settings() -> None:
    spec = ArraySpec(["batch", np.int64(768)], "float32", finite="sample", min=0, max=np.float32(1))
    assert spec.shape == ("batch", 768)
    assert isinstance(spec.shape[1], int)
    assert spec.dtype == np.dtype("float32")
    assert spec.dtypes == (np.dtype("float32"),)
    assert spec.sample_rate == 0.1
    assert spec.max == 1.0
    assert isinstance(spec.max, float)
    several = ArraySpec(dtype=("float32", np.float16))
    assert several.dtype == (np.dtype("float32"), np.dtype("float16"))


def test_array_spec_is_immutable_hashable_and_readable() -> None:
    spec = ArraySpec((..., "batch", 768), "float32", min=0.0, cast="safe")
    assert spec == ArraySpec((..., "batch", 768), np.float32, min=0.0, cast="safe")
    assert spec != ArraySpec((..., "batch", 768), "float64", min=0.0, cast="safe")
    assert len({spec, ArraySpec((..., "batch", 768), "float32", min=0.0, cast="safe")}) == 1
    with pytest.raises(AttributeError):
        spec.dtype = None  # type: ignore[misc]
    assert repr(spec) == (
        "ArraySpec(shape=(..., 'batch', 768), dtype='float32', min=0.0, cast='safe')"
    )
    assert spec.describe() == "array of shape (..., 'batch', 768) and dtype float32"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"dtype": "flaot32"}, "unknown dtype 'flaot32'"),
        ({"dtype": ()}, "at least one dtype"),
        ({"shape": (3, -1)}, "negative dimension -1"),
        ({"shape": (..., 3, ...)}, "at most one ..."),
        ({"shape": "batch 768"}, "must be a tuple"),
        ({"shape": (3, 2.5)}, "2.5 is not a size"),
        ({"shape": (True,)}, "True is not a size"),
        ({"shape": ("",)}, "name is empty"),
        ({"shape": (3, 4), "ndim": 3}, "ndim=3 disagrees"),
        ({"shape": (..., 3, 4), "ndim": 1}, "ndim=1 is fewer"),
        ({"ndim": -1}, "ndim=...) must be an int >= 0"),
        ({"min": 2, "max": 1}, "min (2) is greater than max (1)"),
        ({"min": float("nan")}, "must not be NaN"),
        ({"max": "1"}, "must be a real number"),
        ({"min": True}, "must be a real number"),
        ({"min": 0, "dtype": "complex64"}, "needs real numbers"),
        ({"max": 1, "dtype": "U3"}, "needs real numbers"),
        ({"cast": "unsafe"}, "cast=...) must be None, 'safe' or 'same_kind'"),
        ({"cast": "safe", "dtype": ("float32", "float64")}, "a single dtype"),
        ({"finite": "yes"}, "finite=...) must be True, False or 'sample'"),
        ({"sample_rate": 0.5}, "needs finite='sample'"),
        ({"finite": "sample", "sample_rate": 0}, "(0, 1]"),
        ({"finite": "sample", "sample_rate": 1.5}, "(0, 1]"),
    ],
)
def test_bad_array_specs_fail_when_built(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        ArraySpec(**kwargs)
    assert fragment in str(caught.value)


def test_keys_spec() -> None:
    keys = Keys(["id", "text", "id"], optional=("lang",))
    assert keys.required == ("id", "text")
    assert keys.optional == ("lang",)
    assert keys == Keys(["text", "id"], ["lang"])
    assert keys != Keys(["text", "id"], ["lang"], allow_unknown=True)
    assert hash(keys) == hash(Keys(["text", "id"], ["lang"]))
    assert repr(keys) == "Keys(required=['id', 'text'], optional=['lang'])"
    with pytest.raises(AttributeError):
        keys.required = ()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: Keys("id"), "must be a list of keys"),
        (lambda: Keys(["a"], optional=["a", "b"]), "'a' listed as both"),
        (lambda: Keys([["unhashable"]]), "cannot be a key"),
        (lambda: Keys(required=5), "must be a list of keys"),
    ],
)
def test_bad_keys_specs_fail_when_built(build: Any, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        build()
    assert fragment in str(caught.value)


def test_naming_a_missing_parameter_fails_at_decoration() -> None:
    with pytest.raises(ConfigurationError) as caught:

        @validate_input(x=ArraySpec(), y=int)
        def rank(x: Any, top_k: int) -> None: ...

    message = str(caught.value)
    assert "rank() has no parameter 'y'" in message
    assert "its parameters: x, top_k" in message


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("int", "the string 'int' is not a spec"),
        (5, "pydantic cannot validate 5"),
    ],
)
def test_specs_that_cannot_work_fail_at_decoration(spec: object, fragment: str) -> None:
    def rank(x: Any) -> None: ...

    with pytest.raises(ConfigurationError) as caught:
        validate_input(x=spec)(rank)
    assert fragment in str(caught.value)
    assert "argument 'x' of" in str(caught.value)
    with pytest.raises(ConfigurationError):
        validate_output(spec)(rank)


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"on_error": "default"}, "needs default="),
        ({"on_error": "raise", "default": 0}, "only with on_error='default'"),
        ({"on_error": "ignore"}, "must be 'raise', 'default' or a callable"),
        ({"on_error": 3}, "must be 'raise', 'default' or a callable"),
        ({"on_error": print, "default": 0}, "not both"),
    ],
)
def test_contradictory_error_settings_fail(settings: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        validate_input(**settings)
    assert fragment in str(caught.value)
    with pytest.raises(ConfigurationError):
        validate_output(int, **settings)


def test_async_handler_on_a_plain_function_fails_at_decoration() -> None:
    async def handler(error: Exception) -> None: ...

    def rank(x: int) -> int:
        return x

    with pytest.raises(ConfigurationError, match="on_error is async"):
        validate_input(on_error=handler)(rank)
    with pytest.raises(ConfigurationError, match="on_error is async"):
        validate_output(int, on_error=handler)(rank)


def test_spec_given_twice_fails() -> None:
    with pytest.raises(ConfigurationError, match="both in specs= and as keywords"):
        validate_input(specs={"x": int}, x=int)


def test_output_without_spec_or_annotation_fails() -> None:
    def rank(x):  # type: ignore[no-untyped-def]
        return x

    with pytest.raises(ConfigurationError, match="no return annotation"):
        validate_output(rank)
