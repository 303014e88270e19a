"""The demo's stand-in embedding service: seeded faults, each answered as described."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import numpy as np
import pytest

from buttress._demo.upstream import Call, Faults, Upstream, draw_batch, draw_call, vector_for

QUIET = Faults(
    spike_rate=0, error_rate=0, hang_rate=0, nan_rate=0, wrong_dim_rate=0, latency=(0, 0.002)
)


def only(**changes: Any) -> Faults:
    """QUIET with some faults switched on."""
    values = {
        "spike_rate": 0.0,
        "error_rate": 0.0,
        "hang_rate": 0.0,
        "nan_rate": 0.0,
        "wrong_dim_rate": 0.0,
        "latency": (0.0, 0.002),
        "spike_seconds": (0.05, 0.06),
        "hang_seconds": 0.05,
        "retry_after": 0.2,
    }
    values.update(changes)
    return Faults(**values)


@asynccontextmanager
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def ask(session: aiohttp.ClientSession, url: str, text: str) -> tuple[int, Any, str | None]:
    async with session.get(url, params={"text": text}) as response:
        payload = await response.json()
        return response.status, payload, response.headers.get("Retry-After")


def test_a_call_is_a_function_of_seed_text_and_count() -> None:
    faults = Faults(spike_rate=0.2, error_rate=0.2, hang_rate=0.2, nan_rate=0.1, wrong_dim_rate=0)
    keys = [(f"doc-{i}", n) for i in range(50) for n in range(4)]
    first = [draw_call(faults, 7, text, n) for text, n in keys]
    assert first == [draw_call(faults, 7, text, n) for text, n in keys]
    assert first != [draw_call(faults, 8, text, n) for text, n in keys]
    assert {call.fault for call in first} == {"ok", "spike", "unavailable", "hang", "nan"}


def test_fault_frequencies_follow_the_rates() -> None:
    faults = Faults(
        spike_rate=0.1, error_rate=0.2, hang_rate=0.05, nan_rate=0.05, wrong_dim_rate=0.1
    )
    draws = 20_000
    seen = Counter(draw_call(faults, 3, f"t{i}", 0).fault for i in range(draws))
    expected = {**faults.rates(), "ok": 1 - sum(faults.rates().values())}
    for fault, rate in expected.items():
        sigma = math.sqrt(draws * rate * (1 - rate))
        assert abs(seen[fault] - draws * rate) < 5 * sigma, (fault, seen)


def test_delays_match_the_fault() -> None:
    faults = Faults(spike_rate=0.5, hang_rate=0.5, error_rate=0, nan_rate=0, wrong_dim_rate=0)
    for i in range(200):
        call = draw_call(faults, 1, f"t{i}", 0)
        if call.fault == "hang":
            assert call.delay == faults.hang_seconds
        else:
            assert faults.spike_seconds[0] <= call.delay <= faults.spike_seconds[1]


@pytest.mark.parametrize(
    "changes",
    [
        {"error_rate": 0.6, "hang_rate": 0.5},
        {"nan_rate": -0.1},
        {"spike_rate": 1.5},
        {"retry_after": -1},
        {"dim": 1},
    ],
)
def test_impossible_faults_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Faults(**changes)


def test_vectors_depend_only_on_the_text() -> None:
    a = vector_for("hello", 768)
    assert a.shape == (768,)
    assert a.dtype == np.float32
    assert np.isclose(np.linalg.norm(a), 1.0, atol=1e-5)
    assert np.array_equal(a, vector_for("hello", 768))
    assert not np.array_equal(a, vector_for("hello!", 768))


@pytest.mark.asyncio
async def test_same_seed_same_faults_whatever_the_arrival_order() -> None:
    faults = only(spike_rate=0.1, error_rate=0.3, nan_rate=0.1, wrong_dim_rate=0.1)
    texts = [f"doc-{i % 7}" for i in range(60)]

    async def record(seed: int, concurrent: bool) -> list[Call]:
        async with Upstream(faults, seed=seed) as upstream, client() as session:
            if concurrent:
                async with anyio.create_task_group() as group:
                    for text in texts:
                        group.start_soon(ask, session, upstream.url, text)
            else:
                for text in texts:
                    await ask(session, upstream.url, text)
            return upstream.calls

    sequential = await record(5, concurrent=False)
    assert sequential == await record(5, concurrent=False)
    assert sequential != await record(6, concurrent=False)
    # Concurrent calls arrive in another order, but each (text, n) gets the same fault.
    shuffled = await record(5, concurrent=True)
    assert Counter(shuffled) == Counter(sequential)
    expected = [(text, texts[:i].count(text)) for i, text in enumerate(texts)]
    assert [(call.text, call.n) for call in sequential] == expected


@pytest.mark.asyncio
async def test_each_fault_is_answered_as_described() -> None:
    async with client() as session:
        async with Upstream(only(error_rate=1.0, retry_after=0.25)) as upstream:
            status, payload, retry_after = await ask(session, upstream.url, "a")
            assert (status, retry_after) == (503, "0.25")
        async with Upstream(only(nan_rate=1.0)) as upstream:
            status, payload, _ = await ask(session, upstream.url, "a")
            assert status == 200
            assert len(payload["embedding"]) == 768
            assert sum(math.isnan(v) for v in payload["embedding"]) == 3
        async with Upstream(only(wrong_dim_rate=1.0)) as upstream:
            status, payload, _ = await ask(session, upstream.url, "a")
            assert status == 200
            assert len(payload["embedding"]) == 384
        async with Upstream(only(spike_rate=1.0)) as upstream:
            started = time.monotonic()
            status, payload, _ = await ask(session, upstream.url, "a")
            assert time.monotonic() - started >= 0.05
            assert status == 200
            assert np.allclose(payload["embedding"], vector_for("a", 768))
        async with Upstream(only(hang_rate=1.0, hang_seconds=0.05)) as upstream:
            status, payload, _ = await ask(session, upstream.url, "a")
            assert status == 504
        async with Upstream(QUIET) as upstream:
            status, payload, _ = await ask(session, upstream.url, "a")
            assert status == 200
            assert payload["embedding"] == vector_for("a", 768).tolist()
            async with session.get(upstream.url) as response:
                assert response.status == 400
            assert upstream.served == Counter(ok=1)


@pytest.mark.asyncio
async def test_a_hang_lasts_until_released() -> None:
    async with Upstream(only(hang_rate=1.0, hang_seconds=60)) as upstream, client() as session:
        answers: list[int] = []

        async def call() -> None:
            answers.append((await ask(session, upstream.url, "a"))[0])

        async with anyio.create_task_group() as group:
            group.start_soon(call)
            await anyio.sleep(0.3)
            assert answers == []  # still hanging
            upstream.release()
        assert answers == [503]
        assert upstream.served == Counter(hang=1)


@pytest.mark.asyncio
async def test_the_outage_window_fails_everything_without_retry_after() -> None:
    faults = only(outage_start=0.0, outage_length=60.0)
    async with Upstream(faults) as upstream, client() as session:
        assert (await ask(session, upstream.url, "a"))[0] == 200  # the clock has not begun
        upstream.begin()
        status, _, retry_after = await ask(session, upstream.url, "a")
        assert (status, retry_after) == (503, None)
        assert [call.fault for call in upstream.calls] == ["ok", "outage"]
    later = Upstream(only(outage_start=10.0, outage_length=5.0))
    later.begin(origin=100.0)
    outside: Sequence[float] = (100.0, 109.9, 115.0, 200.0)
    assert [later.in_outage(now) for now in outside] == [False, False, False, False]
    assert [later.in_outage(now) for now in (110.0, 114.9)] == [True, True]


def test_url_needs_a_running_server() -> None:
    with pytest.raises(RuntimeError, match="start"):
        Upstream().url  # noqa: B018


# --- batches ---------------------------------------------------------------------------


async def ask_batch(
    session: aiohttp.ClientSession, url: str, texts: Any
) -> tuple[int, Any, str | None]:
    async with session.post(url, json={"texts": texts}) as response:
        payload = await response.json()
        return response.status, payload, response.headers.get("Retry-After")


def test_a_batch_draws_its_request_fault_once_and_vector_faults_per_text() -> None:
    faults = Faults(spike_rate=0.2, error_rate=0.2, hang_rate=0.1, nan_rate=0.2, wrong_dim_rate=0)
    texts = [f"doc-{i}" for i in range(8)]
    draws = [draw_batch(faults, 3, texts, [n] * 8) for n in range(200)]
    assert draws == [draw_batch(faults, 3, texts, [n] * 8) for n in range(200)]
    for calls in draws:
        assert len({call.delay for call in calls}) == 1  # one request, one delay
        kinds = {call.fault for call in calls}
        if kinds & {"unavailable", "hang"}:  # the request failed as a whole
            assert len(kinds) == 1
        else:
            assert kinds <= {"ok", "spike", "nan"}
            assert not ({"ok", "spike"} <= kinds)  # slow or not: the request decides
    failed = sum(1 for calls in draws if calls[0].fault in ("unavailable", "hang"))
    assert 30 < failed < 90  # about 30% of 200 requests, not 1 - 0.7 ** 8 of them
    nan = sum(call.fault == "nan" for calls in draws for call in calls)
    assert nan > 0


@pytest.mark.asyncio
async def test_a_batch_is_answered_one_vector_per_text_in_order() -> None:
    async with Upstream(QUIET) as upstream, client() as session:
        texts = ["a", "bb", "a", "ccc"]
        status, payload, _ = await ask_batch(session, upstream.url, texts)
        assert status == 200
        assert payload["embeddings"] == [vector_for(t, 768).tolist() for t in texts]
        assert (upstream.requests, upstream.total, upstream.batch_sizes) == (1, 1, [4])
        assert [(call.text, call.n) for call in upstream.calls] == [
            ("a", 0), ("bb", 0), ("a", 1), ("ccc", 0)
        ]  # fmt: skip
        await ask(session, upstream.url, "a")  # a GET counts the same texts
        assert upstream.calls[-1].n == 2
        assert upstream.total == 2
        for bad in ([], [""], "abc", [1, 2], None):
            status, _, _ = await ask_batch(session, upstream.url, bad)
            assert status == 400, bad
        async with session.post(upstream.url, data=b"not json") as response:
            assert response.status == 400
        status, _, _ = await ask_batch(session, upstream.url, ["x"] * 513)
        assert status == 413
        assert upstream.total == 2  # refused requests are not counted


@pytest.mark.asyncio
async def test_batch_faults_are_answered_as_described() -> None:
    async with client() as session:
        async with Upstream(only(error_rate=1.0, retry_after=0.25)) as upstream:
            status, _, retry_after = await ask_batch(session, upstream.url, ["a", "b"])
            assert (status, retry_after) == (503, "0.25")
            assert upstream.served == Counter(unavailable=2)
        async with Upstream(only(nan_rate=1.0)) as upstream:
            status, payload, _ = await ask_batch(session, upstream.url, ["a", "b"])
            assert status == 200
            assert [sum(math.isnan(v) for v in vector) for vector in payload["embeddings"]] == [
                3,
                3,
            ]
        async with Upstream(only(wrong_dim_rate=0.5)) as upstream:
            texts = [f"t{i}" for i in range(40)]
            status, payload, _ = await ask_batch(session, upstream.url, texts)
            assert status == 200
            lengths = [len(vector) for vector in payload["embeddings"]]
            assert set(lengths) == {384, 768}  # single vectors are wrong, not the batch
            assert upstream.served["wrong_dim"] == lengths.count(384)
        async with Upstream(only(hang_rate=1.0, hang_seconds=0.05)) as upstream:
            status, _, _ = await ask_batch(session, upstream.url, ["a"])
            assert status == 504
        faults = only(outage_start=0.0, outage_length=60.0)
        async with Upstream(faults) as upstream:
            upstream.begin()
            status, _, retry_after = await ask_batch(session, upstream.url, ["a", "b"])
            assert (status, retry_after) == (503, None)
            assert upstream.served == Counter(outage=2)
