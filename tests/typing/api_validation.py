"""The public API as a user's type checker sees it. Type-checked by mypy, never executed.

    mypy --strict tests/typing
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel
from typing_extensions import assert_type

from buttress import (
    ArraySpec,
    InputValidationError,
    Keys,
    OutputValidationError,
    ValidationProblem,
    validate_input,
    validate_output,
)

# --- validation: decorated functions keep parameters and return types --------------------


class Query(BaseModel):
    text: str


Embedding = Annotated[np.ndarray, ArraySpec(("batch", 768), "float32", finite=True)]


@validate_input
def rank(x: Embedding, top_k: int = 10) -> list[int]:
    return [top_k]


@validate_input(x=ArraySpec(("batch", 768), dtype="float32"), payload=Keys(["id"]), query=Query)
async def rank_async(x: Any, payload: dict[str, Any], query: Query) -> float:
    return 0.0


def answer(error: InputValidationError) -> list[int]:
    problems: tuple[ValidationProblem, ...] = error.errors
    return [len(problems)]


@validate_input(on_error=answer, top_k=int)
def handled(top_k: int) -> list[int]:
    return [top_k]


@validate_output(ArraySpec(("batch",), min=0, max=1))
def probabilities(n: int) -> np.ndarray:
    return np.zeros(n)


@validate_output(Query, default=None)
async def parsed(text: str) -> Query | None:
    return Query(text=text)


@validate_output
def annotated() -> Annotated[np.ndarray, ArraySpec((3,))]:
    return np.zeros(3)


@validate_output()
def annotated_called() -> list[int]:
    return [1]


@validate_output(Embedding)
def embedded() -> np.ndarray:
    return np.zeros((1, 768), np.float32)


@validate_output(int | None)
def maybe() -> int | None:
    return None


@validate_output(npt.NDArray[np.float32])
def typed() -> npt.NDArray[np.float32]:
    return np.zeros(1, np.float32)


@validate_output(Keys(["id"]))
def row() -> dict[str, int]:
    return {"id": 1}


def fallback(error: OutputValidationError) -> None:
    assert_type(error.function, str)


@validate_output(list[int], on_error=fallback)
def listed() -> list[int]:
    return [1]


async def use_validation() -> None:
    assert_type(rank(np.zeros((1, 768), np.float32)), list[int])
    assert_type(rank(np.zeros((1, 768), np.float32), top_k=3), list[int])
    assert_type(await rank_async(np.zeros(1), {"id": 1}, Query(text="a")), float)
    assert_type(handled(3), list[int])
    assert_type(probabilities(4), np.ndarray)
    assert_type(await parsed("a"), Query | None)
    assert_type(annotated(), np.ndarray)
    assert_type(annotated_called(), list[int])
    assert_type(listed(), list[int])
    assert_type(embedded(), np.ndarray)
    assert_type(maybe(), int | None)
    assert_type(typed(), npt.NDArray[np.float32])
    assert_type(row(), dict[str, int])
    rank("not an array", top_k="3")  # type: ignore[arg-type]
