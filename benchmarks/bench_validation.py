"""@validate_input and @validate_output beside hand-written numpy checks and pydantic.

Every row calls the same trivial function; the overhead column is what the checking costs.
The floor is the same checks written by hand with numpy (isinstance, shape, dtype,
``np.isfinite(x).all()``). Peers: pydantic's ``validate_call`` (arrays through an
``AfterValidator`` running the hand-written checks), and where installed beartype and
jaxtyping (which check types, shapes and dtypes but not NaN, and never coerce).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, validate_call

import buttress
from _harness import Comparison, missing_from, time_async, time_sync

try:
    from beartype import beartype
except ImportError as error:  # an optional peer
    missing_from(error)
    beartype = None
try:
    from jaxtyping import Float32, jaxtyped
except ImportError as error:  # an optional peer
    missing_from(error)
    jaxtyped = None

ARRAYS = {"(64, 768)": (64, 768), "(1, 768)": (1, 768)}


def hand_checks(x: Any) -> Any:
    """What one writes without a library: the floor every row is compared with."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy array, not {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != 768:
        raise ValueError(f"x has shape {x.shape}, expected (batch, 768)")
    if x.dtype != np.float32:
        raise ValueError(f"x has dtype {x.dtype}, expected float32")
    if not np.isfinite(x).all():
        raise ValueError("x contains NaN or inf")
    return x


def work(x: Any) -> int:
    return 1


async def awork(x: Any) -> int:
    return 1


#: At module level: pydantic before 2.7 resolves a signature's string annotations in the
#: function's globals only.
PydanticArray = Annotated[np.ndarray, AfterValidator(hand_checks)]


def _array_rows(asynchronous: bool) -> list[tuple[str, str, Callable[..., Any], str]]:
    """(name, kind, checked function, note) for every implementation installed."""
    spec = buttress.ArraySpec(("batch", 768), "float32", finite=True)
    body = awork if asynchronous else work
    rows: list[tuple[str, str, Callable[..., Any], str]] = []
    if asynchronous:

        async def hand_async(x: Any) -> int:
            return await awork(hand_checks(x))

        rows.append(("hand-written numpy checks", "floor", hand_async, ""))
    else:

        def hand(x: Any) -> int:
            return work(hand_checks(x))

        rows.append(("hand-written numpy checks", "floor", hand, ""))
    rows.append(("buttress.validate_input", "ours", buttress.validate_input(x=spec)(body), ""))

    arbitrary = ConfigDict(arbitrary_types_allowed=True)
    if asynchronous:

        async def pydantic_async(x: PydanticArray) -> int:  # type: ignore[valid-type]
            return 1

        checked = validate_call(config=arbitrary)(pydantic_async)
    else:

        def pydantic_sync(x: PydanticArray) -> int:  # type: ignore[valid-type]
            return 1

        checked = validate_call(config=arbitrary)(pydantic_sync)
    rows.append(("pydantic validate_call", "peer", checked, "AfterValidator, same checks"))

    if jaxtyped is not None and beartype is not None and not asynchronous:

        def jax_sync(x: Float32[np.ndarray, "batch 768"]) -> int:  # noqa: F722  # jaxtyping dims
            return 1

        rows.append(
            (
                "jaxtyping + beartype",
                "peer",
                jaxtyped(typechecker=beartype)(jax_sync),
                "no NaN check",
            )
        )
    return rows


def _arrays(quick: bool) -> list[Comparison]:
    found = []
    for label, shape in ARRAYS.items():
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        sync = Comparison(f"validate_input: {label} float32, shape + dtype + finite, sync")
        sync.add("bare call", time_sync(lambda x=x: work(x), quick=quick), "bare")
        for name, kind, fn, note in _array_rows(asynchronous=False):
            sync.add(name, time_sync(lambda fn=fn, x=x: fn(x), quick=quick), kind, note)
        found.append(sync)
    x = np.random.default_rng(0).random((1, 768), dtype=np.float32)
    asyn = Comparison("validate_input: (1, 768) float32, shape + dtype + finite, async")
    asyn.add("bare await", time_async(lambda: awork(x), quick=quick), "bare")
    for name, kind, fn, note in _array_rows(asynchronous=True):
        asyn.add(name, time_async(lambda fn=fn: fn(x), quick=quick), kind, note)
    found.append(asyn)
    return found


def _scalars(quick: bool) -> Comparison:
    def rank(query: str, top_k: int, threshold: float) -> int:
        return top_k

    def hand(query: Any, top_k: Any, threshold: Any) -> int:
        if not isinstance(query, str):
            raise TypeError("query")
        if not isinstance(top_k, int) or isinstance(top_k, bool):
            raise TypeError("top_k")
        if not isinstance(threshold, (int, float)):
            raise TypeError("threshold")
        return rank(query, top_k, float(threshold))

    table = Comparison("validate_input: three scalars (str, int, float), sync")
    table.add("bare call", time_sync(lambda: rank("cats", 10, 0.5), quick=quick), "bare")
    rows: list[tuple[str, str, Callable[..., int], str]] = [
        ("hand-written isinstance checks", "floor", hand, "no coercion"),
        ("buttress.validate_input", "ours", buttress.validate_input(rank), ""),
        ("pydantic validate_call", "peer", validate_call(rank), ""),
    ]
    if beartype is not None:
        rows.append(("beartype", "peer", beartype(rank), "no coercion"))
    for name, kind, fn, note in rows:
        table.add(name, time_sync(lambda fn=fn: fn("cats", 10, 0.5), quick=quick), kind, note)
    return table


class Query(BaseModel):
    text: str
    top_k: int = 10
    filters: dict[str, str] = {}


def _models(quick: bool) -> list[Comparison]:
    def search(query: Query, limit: int) -> int:
        return limit

    ours = buttress.validate_input(search)
    theirs = validate_call(search)
    found = []
    payload = {"text": "cats", "top_k": 5, "filters": {"lang": "en"}}
    model = Query(text="cats", top_k=5)
    for label, value in (("a dict", payload), ("a model instance", model)):
        table = Comparison(f"validate_input: a pydantic model given as {label}, plus an int")
        table.add(
            "bare call", time_sync(lambda value=value: search(value, 3), quick=quick), "bare"
        )
        table.add(
            "buttress.validate_input",
            time_sync(lambda value=value: ours(value, 3), quick=quick),
            "ours",
        )
        table.add(
            "pydantic validate_call",
            time_sync(lambda value=value: theirs(value, 3), quick=quick),
            "peer",
        )
        found.append(table)
    return found


def _output(quick: bool) -> Comparison:
    probabilities = np.full((64, 10), 0.1)

    def predict() -> Any:
        return probabilities

    def hand() -> Any:
        result = predict()
        if result.ndim != 2 or result.shape[1] != 10:
            raise ValueError("shape")
        if not np.isfinite(result).all():
            raise ValueError("NaN")
        if result.min() < 0 or result.max() > 1:
            raise ValueError("range")
        return result

    ours = buttress.validate_output(buttress.ArraySpec(("batch", 10), min=0, max=1))(predict)
    table = Comparison("validate_output: (64, 10) probabilities, shape + finite + [0, 1]")
    table.add("bare call", time_sync(predict, quick=quick), "bare")
    table.add("hand-written numpy checks", time_sync(hand, quick=quick), "floor")
    table.add("buttress.validate_output", time_sync(ours, quick=quick), "ours")
    return table


def collect(quick: bool) -> list[Comparison]:
    return [*_arrays(quick), _scalars(quick), *_models(quick), _output(quick)]
