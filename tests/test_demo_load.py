"""The demo's load generator: the seeded plan, the progress bar, and sending over HTTP."""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import AsyncIterator

import anyio
import pytest
import pytest_asyncio
from aiohttp import web

from buttress._demo.load import (
    Outcome,
    Planned,
    Progress,
    drive,
    is_valid_vector,
    plan_traffic,
)


def test_the_plan_is_repeatable_and_bounded() -> None:
    plan = plan_traffic(requests=500, duration=10.0, concurrency=16, seed=3)
    assert plan == plan_traffic(requests=500, duration=10.0, concurrency=16, seed=3)
    assert plan != plan_traffic(requests=500, duration=10.0, concurrency=16, seed=4)
    assert len(plan) == 500
    times = [planned.at for planned in plan]
    assert times == sorted(times)
    assert times[0] >= 0.0
    assert times[-1] <= 10.0


def test_texts_follow_a_zipf_law() -> None:
    plan = plan_traffic(requests=5000, duration=10.0, concurrency=16, seed=1)
    counts = Counter(planned.text for planned in plan).most_common()
    assert counts[0][0] == "doc-00000"  # the most popular document
    top_ten = sum(count for _, count in counts[:10])
    assert top_ten > 0.3 * len(plan)  # a few texts take much of the traffic...
    assert len(counts) > 300  # ...while many are asked for rarely
    assert counts[0][1] > 5 * counts[9][1]


def test_part_of_the_traffic_comes_in_bursts() -> None:
    plan = plan_traffic(requests=1000, duration=10.0, concurrency=20, seed=2)
    bursty = [planned for planned in plan if planned.burst]
    assert len(bursty) == (1000 * 3 // 10) // 20 * 20
    # Somewhere, `concurrency` requests are planned within 20 ms.
    times = [planned.at for planned in plan]
    assert any(times[i + 19] - times[i] <= 0.02 for i in range(len(times) - 19))
    single = plan_traffic(requests=50, duration=1.0, concurrency=1, seed=2)
    assert not any(planned.burst for planned in single)


def test_half_of_each_burst_stampedes_on_one_new_text() -> None:
    plan = plan_traffic(requests=1000, duration=10.0, concurrency=20, seed=5)
    trending = Counter(planned.text for planned in plan if planned.text.startswith("trend-"))
    bursts = (1000 * 3 // 10) // 20
    assert len(trending) == bursts  # one new text per burst...
    assert set(trending.values()) == {10}  # ...asked for by half of it
    for text in trending:
        moments = [planned.at for planned in plan if planned.text == text]
        assert all(planned.burst for planned in plan if planned.text == text)
        assert max(moments) - min(moments) <= 0.02  # at once
    assert all(
        planned.text.startswith("doc-") for planned in plan if not planned.burst
    )
    none = plan_traffic(requests=100, duration=1.0, concurrency=8, seed=5, trending_share=0.0)
    assert not any(planned.text.startswith("trend-") for planned in none)


def test_valid_vectors() -> None:
    assert is_valid_vector([0.5, 1, -2.0], 3)
    assert not is_valid_vector([0.5, 1.0], 3)
    assert not is_valid_vector([0.5, math.nan, 1.0], 3)
    assert not is_valid_vector([0.5, "1", 1.0], 3)
    assert not is_valid_vector(None, 3)


def outcome(kind: str) -> Outcome:
    return Outcome("t", 0.0, 0.01, 200, kind)  # type: ignore[arg-type]


def test_progress_in_a_log_writes_a_line_per_quarter() -> None:
    stream = io.StringIO()
    progress = Progress(8, ["plain", "resilient"], stream=stream, live=False)
    for i in range(8):
        # plain: 1 and 3 succeed, 5 and 7 fail; resilient: all succeed.
        progress.done("plain" if i % 2 else "resilient", outcome("error" if i in (5, 7) else "ok"))
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[-1].startswith("[" + "#" * 28 + "] 100.0%  8/8 answered")
    assert "plain ok  50.0%" in lines[-1]
    assert "resilient ok 100.0%" in lines[-1]


def test_progress_on_a_terminal_redraws_one_line() -> None:
    stream = io.StringIO()
    progress = Progress(4, ["plain"], stream=stream, live=True)
    for _ in range(4):
        progress.done("plain", outcome("ok"))
    progress.finish()
    text = stream.getvalue()
    assert text.startswith("\r[")
    assert text.count("\n") == 1
    assert text.rstrip("\n").rsplit("\r", 1)[-1].startswith("[" + "#" * 28 + "] 100.0%")


@pytest_asyncio.fixture
async def target() -> AsyncIterator[str]:
    """Answers by text: 'good' a vector, 'nan' a NaN one, 'busy' 503, 'slow' after 10 s."""

    async def handler(request: web.Request) -> web.Response:
        text = request.query["text"]
        if text == "busy":
            return web.Response(status=503)
        if text == "slow":
            await anyio.sleep(10)
        vector = [0.1, 0.2, math.nan if text == "nan" else 0.3]
        return web.json_response({"embedding": vector})

    app = web.Application()
    app.router.add_get("/embed", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/embed"
    finally:
        await runner.cleanup()


@pytest.mark.asyncio
async def test_drive_sends_the_plan_to_every_target(target: str) -> None:
    plan = [
        Planned(0.0, "good"),
        Planned(0.01, "nan"),
        Planned(0.02, "busy"),
        Planned(0.03, "slow"),
        Planned(0.05, "good"),
    ]
    stream = io.StringIO()
    progress = Progress(len(plan) * 2, ["a", "b"], stream=stream, live=False)
    results = await drive(
        plan, {"a": target, "b": target}, concurrency=4, patience=0.5, dim=3, progress=progress
    )
    for name in ("a", "b"):
        kinds = {o.text: o.kind for o in results[name] if o.text != "good"}
        assert kinds == {"nan": "invalid", "busy": "error", "slow": "timeout"}
        assert [o.kind for o in results[name] if o.text == "good"] == ["ok", "ok"]
        slow = next(o for o in results[name] if o.text == "slow")
        assert 0.4 <= slow.latency < 5.0  # gave up at its patience, not after 10 s
        assert slow.status == 0
    assert progress.answered == 10
