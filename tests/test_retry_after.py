"""Retry-After: honoured from aiohttp (a real server), httpx-style errors and attributes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any, ClassVar

import aiohttp
import httpx
import pytest
import pytest_asyncio
from aiohttp import web

from buttress import retry
from buttress._retry import retry_after
from buttress.testing import FakeClock


@pytest_asyncio.fixture
async def overloaded_server() -> AsyncIterator[tuple[str, dict[str, int]]]:
    """Answers 503 with Retry-After: 2 twice, then 200."""
    hits = {"count": 0}

    async def handler(request: web.Request) -> web.Response:
        hits["count"] += 1
        if hits["count"] <= 2:
            return web.Response(status=503, headers={"Retry-After": "2"})
        return web.json_response({"vector": [0.1, 0.2]})

    app = web.Application()
    app.router.add_get("/embed", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/embed", hits
    finally:
        await runner.cleanup()


@pytest.mark.asyncio
async def test_aiohttp_retry_after_is_honoured(
    overloaded_server: tuple[str, dict[str, int]], buttress_clock: FakeClock
) -> None:
    url, hits = overloaded_server

    @retry(max_retries=3, base_delay=0.1, jitter=None, exceptions=aiohttp.ClientResponseError)
    async def embed(session: aiohttp.ClientSession) -> list[float]:
        async with session.get(url) as response:
            response.raise_for_status()
            return (await response.json())["vector"]  # type: ignore[no-any-return]

    async with aiohttp.ClientSession() as session:
        assert await embed(session) == [0.1, 0.2]
    assert hits["count"] == 3
    assert buttress_clock.sleeps == [2.0, 2.0]  # the server's wish, not 0.1 and 0.2


def _httpx_error(value: str) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://127.0.0.1/embed")
    response = httpx.Response(503, headers={"Retry-After": value}, request=request)
    return httpx.HTTPStatusError("503", request=request, response=response)


class Throttled(Exception):
    def __init__(self, retry_after: Any) -> None:
        super().__init__("throttled")
        self.retry_after = retry_after


def test_parsing_every_source() -> None:
    assert retry_after(_httpx_error("7")) == 7.0
    assert retry_after(_httpx_error("1.5")) == 1.5
    assert retry_after(Throttled(3)) == 3.0
    assert retry_after(Throttled(timedelta(seconds=4))) == 4.0
    assert retry_after(Throttled("12")) == 12.0
    assert retry_after(Throttled(-4)) == 0.0
    assert retry_after(Throttled("soon")) is None
    assert retry_after(ValueError("no hint")) is None

    class WithDictHeaders(Exception):
        headers: ClassVar[dict[str, str]] = {"retry-after": "9"}

    assert retry_after(WithDictHeaders()) == 9.0


def test_http_date() -> None:
    later = datetime.now(timezone.utc) + timedelta(seconds=30)
    seconds = retry_after(_httpx_error(format_datetime(later, usegmt=True)))
    assert seconds is not None
    assert 27 <= seconds <= 30
    past = datetime.now(timezone.utc) - timedelta(hours=1)
    assert retry_after(_httpx_error(format_datetime(past, usegmt=True))) == 0.0


def test_httpx_style_error_is_honoured_and_capped(buttress_clock: FakeClock) -> None:
    errors = iter([_httpx_error("3"), _httpx_error("100")])

    def call() -> str:
        error = next(errors, None)
        if error is not None:
            raise error
        return "ok"

    assert retry(max_retries=3, max_delay=10, jitter=None)(call)() == "ok"
    assert buttress_clock.sleeps == [3.0, 10.0]


def test_retry_after_past_the_deadline_gives_up(buttress_clock: FakeClock) -> None:
    def call() -> None:
        raise Throttled(10)

    with pytest.raises(Throttled) as info:
        retry(max_retries=3, deadline=5)(call)()
    assert buttress_clock.sleeps == []
    assert "deadline" in info.value.__notes__[0]


def test_retry_after_can_be_ignored(buttress_clock: FakeClock) -> None:
    errors = iter([Throttled(10)])

    def call() -> str:
        error = next(errors, None)
        if error is not None:
            raise error
        return "ok"

    assert retry(jitter=None, respect_retry_after=False)(call)() == "ok"
    assert buttress_clock.sleeps == [0.1]
