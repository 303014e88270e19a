"""The public API as a user's code sees it: type-checked (mypy --strict), never executed."""

from __future__ import annotations

import sys

import numpy as np

from buttress import CacheStats, LocalStore, cache_result

if sys.version_info >= (3, 11):
    from typing import assert_type
else:
    from typing_extensions import assert_type


# --- @cache_result ----------------------------------------------------------------------


@cache_result
def tokenize(text: str, lowercase: bool = True) -> list[str]:
    return text.split()


@cache_result(ttl=30, max_bytes="64MiB", stale_while_revalidate=5)
async def embed(text: str) -> np.ndarray:
    return np.zeros(3)


@cache_result(store=LocalStore(maxsize=100), key=lambda user, query: user)
def recommend(user: str, query: object) -> tuple[int, ...]:
    return (1, 2)


class Ranker:
    @cache_result(ttl=None)
    def score(self, item: int) -> float:
        return 1.0

    @cache_result
    async def ascore(self, item: int) -> float:
        return 1.0


async def cache_result_keeps_types() -> None:
    assert_type(tokenize("a b"), list[str])
    assert_type(tokenize("a b", lowercase=False), list[str])
    assert_type(await embed("x"), np.ndarray)
    assert_type(recommend("ann", object()), tuple[int, ...])
    assert_type(tokenize.cache.stats(), CacheStats)
    assert_type(tokenize.cache.invalidate("a b"), bool)
    assert_type(tokenize.cache.bypass("a b"), list[str])
    assert_type(await embed.cache.ainvalidate("x"), bool)
    await embed.cache.aclear()
    embed.cache.clear()
    ranker = Ranker()
    assert_type(ranker.score(3), float)
    assert_type(await ranker.ascore(3), float)
    assert_type(Ranker.score(ranker, 3), float)
    assert_type(ranker.score.cache.stats().hits, int)
    assert_type(Ranker.score.cache.invalidate(ranker, 3), bool)
