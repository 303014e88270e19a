"""RedisStore as a user's code sees it: type-checked (mypy --strict), never executed."""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Any

import numpy as np

from buttress import RedisStore, RedisStoreError, RedisStoreStats, cache_result

if sys.version_info >= (3, 11):
    from typing import assert_type
else:
    from typing_extensions import assert_type


class JsonLines:
    """A custom serializer: anything with dumps() and loads() fits."""

    def dumps(self, value: Any) -> bytes:
        return repr(value).encode()

    def loads(self, data: bytes) -> Any:
        return data.decode()


store = RedisStore(
    "redis://cache.internal:6379/0",
    namespace="gateway",
    version=3,
    local_ttl=timedelta(seconds=5),
    timeout=0.1,
    signing_key=b"0123456789abcdef0123456789abcdef",
    early_refresh_beta=1.0,
)


@cache_result(ttl=30, store=store)
async def embed(text: str, model: str = "e5") -> np.ndarray:
    return np.zeros(3)


@cache_result(store=RedisStore(serializer=JsonLines(), fail_open=False, lock_ttl=2))
def label(x: int) -> str:
    return str(x)


async def redis_store_keeps_types() -> None:
    assert_type(await embed("x"), np.ndarray)
    assert_type(await embed("x", model="e5-large"), np.ndarray)
    assert_type(label(1), str)
    assert_type(store.stats(), RedisStoreStats)
    assert_type(store.stats().refused, int)
    await store.aclose()
    store.close()
    try:
        label(2)
    except RedisStoreError as error:
        assert_type(error.operation, str)
    label("1")  # type: ignore[arg-type]
    RedisStore(timeout="fast")  # type: ignore[arg-type]
    RedisStore(serializer=object())  # type: ignore[arg-type]
