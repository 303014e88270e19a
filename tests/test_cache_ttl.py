"""@cache_result expiry and bounds, on the fake clock: TTL, LRU, bytes, purging, arrays."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from buttress import CacheEviction, ConfigurationError, cache_result, events
from buttress.testing import FakeClock


def test_an_entry_older_than_ttl_is_never_served(buttress_clock: FakeClock) -> None:
    calls: list[int] = []

    @cache_result(ttl=10)
    def f(x: int) -> int:
        calls.append(x)
        return len(calls)

    assert f(1) == 1
    buttress_clock.advance(9.999)
    assert f(1) == 1
    buttress_clock.advance(0.001)  # exactly ttl old: expired
    assert f(1) == 2
    assert f.cache.stats().hits == 1
    assert f.cache.stats().misses == 2


@pytest.mark.anyio
async def test_async_ttl(buttress_clock: FakeClock) -> None:
    calls: list[int] = []

    @cache_result(ttl=timedelta(seconds=5))
    async def f(x: int) -> int:
        calls.append(x)
        return len(calls)

    assert await f(1) == 1
    buttress_clock.advance(4)
    assert await f(1) == 1
    buttress_clock.advance(2)
    assert await f(1) == 2


def test_ttl_none_never_expires(buttress_clock: FakeClock) -> None:
    calls: list[int] = []

    @cache_result(ttl=None)
    def f(x: int) -> int:
        calls.append(x)
        return x

    f(1)
    buttress_clock.advance(10**9)
    f(1)
    assert len(calls) == 1


def test_ttl_zero_keeps_nothing(buttress_clock: FakeClock) -> None:
    calls: list[int] = []

    @cache_result(ttl=0)
    def f(x: int) -> int:
        calls.append(x)
        return x

    f(1)
    f(1)
    assert len(calls) == 2
    assert f.cache.stats().size == 0


def test_least_recently_used_is_evicted_first(buttress_clock: FakeClock) -> None:
    calls: list[int] = []

    @cache_result(maxsize=3)
    def f(x: int) -> int:
        calls.append(x)
        return x

    for x in (1, 2, 3):
        f(x)
    f(1)  # 1 is now the most recent; 2 the least
    f(4)  # evicts 2
    assert f.cache.stats().size == 3
    assert f.cache.stats().evictions == 1
    calls.clear()
    f(1)
    f(3)
    f(4)
    assert calls == []
    f(2)
    assert calls == [2]


def test_byte_bound_counts_array_nbytes_and_string_lengths(buttress_clock: FakeClock) -> None:
    evicted: list[CacheEviction] = []

    @cache_result(max_bytes="4KiB")
    def embed(seed: int) -> np.ndarray:
        return np.full(256, seed, dtype=np.float32)  # 1 KiB each

    with events.subscribe(evicted.append, CacheEviction):
        for seed in range(6):
            embed(seed)
    stats = embed.cache.stats()
    assert stats.size == 4
    assert stats.bytes == 4096
    assert stats.evictions == 2
    assert [e.reason for e in evicted] == ["bytes", "bytes"]

    @cache_result(max_bytes=10)
    def text(n: int) -> Any:
        return ("x" * n, b"y" * n)

    text(3)
    text(2)
    assert text.cache.stats().bytes == 10
    text(1)
    assert text.cache.stats().bytes == 6  # the least recent (3 + 3 bytes) went


def test_a_result_larger_than_max_bytes_is_returned_but_not_kept(
    buttress_clock: FakeClock,
) -> None:
    calls: list[int] = []

    @cache_result(max_bytes=100)
    def big(n: int) -> bytes:
        calls.append(n)
        return b"x" * n

    assert big(1000) == b"x" * 1000
    assert big(1000) == b"x" * 1000
    assert len(calls) == 2
    assert big.cache.stats().size == 0
    assert big.cache.stats().evictions == 2


def test_expired_entries_do_not_pile_up(buttress_clock: FakeClock) -> None:
    expired: list[CacheEviction] = []

    @cache_result(ttl=1)
    def f(x: int) -> int:
        return x

    with events.subscribe(expired.append, CacheEviction):
        for x in range(100):
            f(x)
        buttress_clock.advance(2)
        f(1000)  # any write drops what has expired
        stats = f.cache.stats()
    assert stats.size == 1
    assert stats.expirations == 100
    assert sum(e.count for e in expired if e.reason == "expired") == 100
    buttress_clock.advance(2)
    assert f.cache.stats().size == 0  # stats() purges too


def test_rewritten_keys_leave_no_garbage_behind(buttress_clock: FakeClock) -> None:
    @cache_result(ttl=1, maxsize=10)
    def f(x: int) -> int:
        return x

    for _ in range(2000):
        f(0)
        buttress_clock.advance(1.5)
    table = f.cache._core.table
    assert table is not None
    assert table._records < 100  # records of replaced entries are dropped
    assert len(table) <= 1


def test_cached_arrays_are_read_only(buttress_clock: FakeClock) -> None:
    @cache_result
    def embed(x: int) -> np.ndarray:
        return np.arange(4.0) * x

    first = embed(2)
    with pytest.raises(ValueError, match="read-only"):
        first[0] = 99
    again = embed(2)
    assert not again.flags.writeable
    assert again.tolist() == [0.0, 2.0, 4.0, 6.0]


def test_the_functions_own_array_is_not_made_read_only(buttress_clock: FakeClock) -> None:
    table = np.zeros(3)

    @cache_result
    def view() -> np.ndarray:
        return table

    result = view()
    assert not result.flags.writeable
    assert table.flags.writeable  # only the shared view is frozen


def test_arrays_inside_tuples_lists_and_dicts_are_read_only(buttress_clock: FakeClock) -> None:
    @cache_result
    def batch(n: int) -> tuple[np.ndarray, list[np.ndarray], dict[str, np.ndarray]]:
        return np.ones(n), [np.ones(n)], {"scores": np.ones(n)}

    a, b, c = batch(2)
    assert not a.flags.writeable
    assert not b[0].flags.writeable
    assert not c["scores"].flags.writeable
    assert batch.cache.stats().bytes == 3 * 16


@pytest.mark.anyio
async def test_copy_arrays_returns_private_writable_copies(buttress_clock: FakeClock) -> None:
    @cache_result(copy_arrays=True)
    async def embed(x: int) -> np.ndarray:
        return np.arange(3.0) * x

    first = await embed(1)
    first[0] = 42  # a private copy: nobody else sees this
    second = await embed(1)
    assert second.flags.writeable
    assert second.tolist() == [0.0, 1.0, 2.0]
    assert second is not first


@pytest.mark.parametrize(
    ("settings", "parameter"),
    [
        ({"ttl": -1}, "ttl"),
        ({"ttl": "1s"}, "ttl"),
        ({"maxsize": 0}, "maxsize"),
        ({"max_bytes": "lots"}, "max_bytes"),
        ({"max_bytes": 0}, "max_bytes"),
        ({"key": 3}, "key"),
        ({"store": object()}, "store"),
        ({"stale_while_revalidate": -1}, "stale_while_revalidate"),
        ({"ttl": None, "stale_if_error": 5}, "stale_if_error"),
    ],
)
def test_bad_settings_fail_at_decoration(settings: dict[str, Any], parameter: str) -> None:
    with pytest.raises(ConfigurationError, match=parameter):
        cache_result(**settings)
