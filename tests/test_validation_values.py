"""Error messages describe values without their content, unless BUTTRESS_SHOW_VALUES."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from typing import Annotated, Any

import numpy as np
import pytest
from pydantic import BaseModel, field_validator

from _monitor_support import capture, fresh_monitoring
from buttress import (
    ArraySpec,
    InputValidationError,
    Keys,
    RetryError,
    cache_result,
    flush_monitoring,
    monitor,
    retry,
    validate_input,
)

SECRET = "hunter2-SECRETVALUE"


@pytest.fixture(autouse=True)
def _defaults(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("BUTTRESS_SHOW_VALUES", raising=False)
    with fresh_monitoring():
        yield


class Login(BaseModel):
    user: str
    pin: int

    @field_validator("user")
    @classmethod
    def no_spaces(cls, value: str) -> str:
        if " " in value:
            raise ValueError(f"no spaces allowed in {value!r}")
        return value


@validate_input
def login(token: int, scores: Annotated[Any, ArraySpec((3,), "float64", min=0)],
          body: Annotated[dict[str, Any], Keys(required=["id"])], who: Login) -> None:
    """Every argument is wrong in one call below."""


def failure() -> str:
    with pytest.raises(InputValidationError) as caught:
        login(
            SECRET,  # type: ignore[arg-type]
            np.array([1.5, -7.25, 2.0]),
            {"sekrit-key": 1},
            {"user": "alice smith-SECRETVALUE", "pin": "not-a-pin-SECRETVALUE"},
        )
    # What a server's error log shows of it too: the traceback, with its chained causes.
    shown = "".join(traceback.format_exception(caught.value))
    return str(caught.value) + "".join(str(p.found) for p in caught.value.errors) + shown


def test_messages_describe_values_by_default() -> None:
    text = failure()
    assert "SECRETVALUE" not in text
    assert "-7.25" not in text
    assert "got str of 19 characters" in text
    assert "the smallest at index (1,)" in text
    assert "missing required key 'id'" in text
    assert "unknown keys 'sekrit-key'" in text  # key names are shown, as in summaries
    assert "Value error" in text


@pytest.mark.parametrize("arity", [1, 2])
def test_the_traceback_holds_no_value_of_a_model_either(arity: int) -> None:
    # pydantic's own error quotes the input (input_value=...): it must not ride along as
    # the chained context a server's error log prints.
    @validate_input
    def one(who: Login) -> None: ...

    @validate_input
    def two(who: Login, n: int) -> None: ...

    who: Any = {"user": "alice", "pin": SECRET}
    with pytest.raises(InputValidationError) as caught:
        one(who) if arity == 1 else two(who, 1)
    shown = "".join(traceback.format_exception(caught.value))
    assert "pin" in shown
    assert "SECRETVALUE" not in shown


def test_values_are_quoted_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUTTRESS_SHOW_VALUES", "1")
    text = failure()
    assert f"got '{SECRET}'" in text
    assert "the smallest -7.25 at index (1,)" in text
    assert "no spaces allowed in 'alice smith-SECRETVALUE'" in text


def test_a_monitor_record_of_a_rejected_call_holds_no_value() -> None:
    @monitor("route")
    @validate_input
    def route(token: int) -> int:
        return token

    with capture() as records:
        with pytest.raises(InputValidationError):
            route(SECRET)  # type: ignore[arg-type]
        assert flush_monitoring()
    (record,) = records.of("route")
    shown = record.getMessage() + str(vars(record))
    if record.exc_info:
        shown += "".join(traceback.format_exception(*record.exc_info))
    assert "SECRETVALUE" not in shown
    assert record.levelno == logging.WARNING


def test_other_messages_that_quote_arguments_follow_the_switch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    @retry(max_retries=0, retry_on_result=lambda result: True)
    def fetch() -> str:
        return SECRET

    @cache_result
    def cached(x: int) -> int:
        return x

    with pytest.raises(RetryError) as caught:
        fetch()
    assert "SECRETVALUE" not in str(caught.value)
    assert "str of 19 characters" in str(caught.value)
    with pytest.raises(TypeError) as misfit:
        cached.cache.invalidate(SECRET, SECRET)  # type: ignore[attr-defined]
    assert "SECRETVALUE" not in str(misfit.value)

    monkeypatch.setenv("BUTTRESS_SHOW_VALUES", "true")
    with pytest.raises(RetryError, match="SECRETVALUE"):
        fetch()


def test_arrays_are_still_described_by_shape() -> None:
    with pytest.raises(InputValidationError, match=r"shape \(2,\)"):
        login(1, np.zeros(2), {"id": 1}, {"user": "a", "pin": 1})
