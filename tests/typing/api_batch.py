"""@batch as a user's type checker sees it. Type-checked by mypy, never executed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from typing_extensions import assert_type

from buttress import (
    AsyncBatchedFunction,
    BatchedFunction,
    Batcher,
    BatchStats,
    batch,
    policy,
)


@batch(max_size=64, max_wait=0.005)
async def embed_many(texts: list[str]) -> list[np.ndarray]:
    return [np.zeros(3) for _ in texts]


@batch(max_size=8, key=lambda item: item[0], max_concurrency=2, max_queue=100)
async def score_many(pairs: list[tuple[str, int]]) -> list[float | Exception]:
    return [float(n) for _, n in pairs]


@batch()
async def embed_matrix(texts: list[str]) -> npt.NDArray[np.float32]:
    return np.zeros((len(texts), 3), dtype=np.float32)


@batch(max_size=16)
def parse_many(lines: list[bytes]) -> tuple[int, ...]:
    return tuple(len(line) for line in lines)


async def batch_callers() -> None:
    assert_type(await embed_many.one("hello"), np.ndarray)
    assert_type(await score_many.one(("m", 1)), float)
    assert_type(await embed_matrix.one("x"), npt.NDArray[np.float32])
    assert_type(parse_many.one(b"x"), int)
    direct = await embed_many(["a", "b"])
    assert_type(direct, Sequence[np.ndarray | BaseException])
    assert_type(embed_many.batcher.stats(), BatchStats)
    assert_type(embed_many.batch, Batcher)
    assert_type(parse_many.batcher.stats().mean_size, float)
    as_protocol: AsyncBatchedFunction[str, np.ndarray] = embed_many
    sync_protocol: BatchedFunction[bytes, int] = parse_many
    await embed_many.one(3)  # type: ignore[arg-type]
    parse_many.one("text")  # type: ignore[arg-type]
    await score_many.one("m")  # type: ignore[arg-type]
    del as_protocol, sync_protocol


def batch_refusals() -> None:
    def two(a: list[int], b: int) -> list[int]:
        return a

    batch()(two)  # type: ignore[arg-type]
    batch(max_size="8")  # type: ignore[arg-type]


@policy(cache=60, batch={"max_size": 32}, retry=2)
async def embed_with_policy(texts: list[str]) -> list[np.ndarray]:
    return [np.zeros(3) for _ in texts]


async def policy_batch_callers() -> None:
    assert_type(await embed_with_policy(["a"]), list[np.ndarray])  # the batch call
    await embed_with_policy.one("a")  # the single-item call (typed loosely)
    assert_type(embed_with_policy.batch.stats(), BatchStats)
    assert_type(embed_with_policy.batcher, Batcher)
