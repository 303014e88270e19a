"""A ranking endpoint's core with @validate_input and @validate_output, on asyncio.

    python examples/validated_ranker.py

Bad requests never reach the model (a 422-style answer instead), a NaN from the model
never reaches the client (a fallback ranking instead), and every refusal is counted
through the events hook.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, Field

from buttress import (
    ArraySpec,
    InputValidationError,
    OutputValidationError,
    ValidationFailed,
    events,
    validate_input,
    validate_output,
)

DIM = 8
Embeddings = Annotated[np.ndarray, ArraySpec(("batch", DIM), "float32", cast="same_kind")]
Scores = Annotated[np.ndarray, ArraySpec(("batch",), "float32", min=0, max=1)]


class RankRequest(BaseModel):
    query: str = Field(min_length=1)
    top_k: int = Field(default=3, ge=1, le=100)


def bad_request(error: InputValidationError) -> dict[str, Any]:
    return {"status": 422, "problems": [str(problem) for problem in error.errors]}


def neutral_scores(error: OutputValidationError) -> np.ndarray:
    return np.zeros(0, np.float32)  # rank nothing rather than rank by garbage


@validate_output(Scores, on_error=neutral_scores)
async def model(candidates: np.ndarray, glitch: bool = False) -> np.ndarray:
    await asyncio.sleep(0)  # stands in for a call to a model server, which may glitch
    scores = 1 / (1 + np.exp(-candidates.mean(axis=1)))
    return (scores * np.nan if glitch else scores).astype(np.float32)


@validate_input(on_error=bad_request)
async def rank(request: RankRequest, candidates: Embeddings) -> dict[str, Any]:
    scores = await model(candidates, glitch=request.query == "glitch")
    order = np.argsort(-scores)[: request.top_k]
    return {"status": 200, "query": request.query, "ranking": order.tolist()}


async def main() -> None:
    refusals: Counter[str] = Counter()
    with events.subscribe(lambda e: refusals.update([e.direction]), ValidationFailed):
        rng = np.random.default_rng(0)
        good = rng.random((5, DIM)).tolist()  # JSON-style lists become float32 arrays
        print(await rank({"query": "cats", "top_k": 2}, good))
        print(await rank({"query": "", "top_k": 0}, rng.random((5, DIM + 1))))
        poisoned = rng.random((5, DIM))
        poisoned[2, 3] = np.nan
        print(await rank({"query": "dogs"}, poisoned))  # fails at the door: NaN input
        print(await rank({"query": "glitch"}, good))  # NaN output: the fallback answers
    print("refused:", dict(refusals))


if __name__ == "__main__":
    asyncio.run(main())
