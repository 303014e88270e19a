"""A streaming gateway, end to end over real sockets.

A real aiohttp server streams chunks (and fails before its first chunk, drops the
connection after some, stalls, or streams until its reader goes away). A decorated async
generator consumes it with aiohttp's client, and two gateways forward it: an aiohttp
``StreamResponse`` handler in this event loop, and a FastAPI ``StreamingResponse`` on a
real uvicorn server. Clients read the gateways over HTTP. (aiohttp runs on asyncio only.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, StreamingResponse

from _monitor_support import capture, fresh_monitoring
from _servers import UvicornThread, aiohttp_serving
from buttress import (
    CircuitBreaker,
    RejectedError,
    StreamResume,
    flush_monitoring,
    policy,
)

pytestmark = pytest.mark.asyncio

CHUNKS = 6


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    with fresh_monitoring():
        yield


class Upstream:
    """The model server: ``GET /stream?mode=...&key=...&offset=...`` streams lines.

    Modes: ``ok``; ``fail_first`` (503 before any chunk for the first two requests of a
    key); ``down`` (503 always); ``drop`` (the first request of a key drops the connection
    after 2 chunks); ``stall`` (stops sending after 2 chunks); ``endless`` (a chunk every
    20 ms until the reader goes away).
    """

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.gone: list[str] = []  # keys whose reader went away mid-stream
        self.app = web.Application()
        self.app.router.add_get("/stream", self.stream)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        mode = request.query.get("mode", "ok")
        key = request.query.get("key", "")
        offset = int(request.query.get("offset", "0"))
        self.requests[key] += 1
        seen = self.requests[key]
        if mode == "down" or (mode == "fail_first" and seen <= 2):
            raise web.HTTPServiceUnavailable(text="warming up")
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        try:
            index = offset
            while mode == "endless" or index < CHUNKS:
                if mode == "drop" and seen == 1 and index == 2:
                    assert request.transport is not None
                    request.transport.close()  # mid-stream: the reader gets a payload error
                    return response
                if mode == "stall" and index == 2:
                    await asyncio.sleep(3600)
                await response.write(f"chunk-{index}\n".encode())
                await asyncio.sleep(0.02 if mode == "endless" else 0)
                index += 1
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.gone.append(key)
            raise
        return response


def resume_at(state: StreamResume) -> dict[str, int]:
    return {"offset": state.arguments["offset"] + state.items}


def server_error(error: BaseException) -> bool:
    status = getattr(error, "status", None)
    return status is None or status >= 500  # a dropped connection has no status


def upstream_stream(base: str) -> Any:
    """The gateway's view of the model: a decorated async generator of lines."""

    @policy(
        monitor="upstream",
        timeout={"seconds": 30, "first_item": 5, "idle": 0.5},
        retry={
            "max_retries": 3,
            "base_delay": 0.01,
            "exceptions": (aiohttp.ClientError,),
            "on": server_error,
            "resume": resume_at,
        },
        circuit_breaker={"minimum_calls": 100},
        bulkhead={"max_concurrent": 4},
    )
    async def lines(mode: str, key: str, offset: int = 0) -> AsyncIterator[bytes]:
        params = {"mode": mode, "key": key, "offset": str(offset)}
        async with aiohttp.ClientSession() as session, session.get(
            f"{base}/stream", params=params
        ) as response:
            response.raise_for_status()
            async for line in response.content:
                yield line

    return lines


# --- the aiohttp gateway ---------------------------------------------------------------


def aiohttp_gateway(lines: Any) -> web.Application:
    async def relay(request: web.Request) -> web.StreamResponse:
        stream = lines(request.query["mode"], request.query["key"])
        async with contextlib.aclosing(stream):
            try:  # the first chunk decides the status: nothing is sent before it
                first = await stream.__anext__()
            except RejectedError:
                return web.Response(status=503, text="busy")
            except TimeoutError:
                return web.Response(status=504, text="upstream timed out")
            except aiohttp.ClientError as exc:
                return web.Response(status=502, text=f"upstream failed: {exc}")
            response = web.StreamResponse(headers={"Content-Type": "text/plain"})
            await response.prepare(request)
            await response.write(first)
            async for chunk in stream:  # a later failure cuts the response short
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.router.add_get("/relay", relay)
    return app


async def read_all(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with session.get(url) as response:
        return response.status, await response.read()


def expected(offset: int = 0) -> bytes:
    return b"".join(f"chunk-{i}\n".encode() for i in range(offset, CHUNKS))


async def eventually(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


async def read_until_cut(
    session: aiohttp.ClientSession, url: str
) -> tuple[int, bytes, BaseException | None]:
    """Status, what arrived, and the error that cut the body short (if one did)."""
    received = b""
    async with session.get(url) as response:
        try:
            async for chunk in response.content.iter_any():
                received += chunk
        except aiohttp.ClientPayloadError as exc:
            return response.status, received, exc
        return response.status, received, None


async def test_the_aiohttp_gateway_relays_retries_resumes_and_reports() -> None:
    upstream = Upstream()
    async with aiohttp_serving(upstream.app) as model:
        lines = upstream_stream(model)
        breaker: CircuitBreaker = lines.circuit_breaker
        async with (
            aiohttp_serving(aiohttp_gateway(lines)) as gateway,
            aiohttp.ClientSession() as client,
        ):
            with capture() as records:
                # Healthy: every chunk, in order.
                assert await read_all(client, f"{gateway}/relay?mode=ok&key=a") == (
                    200,
                    expected(),
                )
                # Two 503s before the first chunk: retried, the caller sees none.
                assert await read_all(client, f"{gateway}/relay?mode=fail_first&key=b") == (
                    200,
                    expected(),
                )
                assert upstream.requests["b"] == 3
                # Always down: retries run out before any chunk: an honest 502.
                status, body = await read_all(client, f"{gateway}/relay?mode=down&key=c")
                assert (status, upstream.requests["c"]) == (502, 4)
                assert b"503" in body
                # Dropped after two chunks: resumed from the third, seamlessly.
                assert await read_all(client, f"{gateway}/relay?mode=drop&key=d") == (
                    200,
                    expected(),
                )
                assert upstream.requests["d"] == 2
                # Stalled after two chunks: the idle limit cuts the response short.
                status, received, cut = await read_until_cut(
                    client, f"{gateway}/relay?mode=stall&key=e"
                )
                assert (status, received) == (200, b"chunk-0\nchunk-1\n")
                assert cut is not None
                flush_monitoring()
            ended = {r.stream["ended"] for r in records.of("upstream")}  # type: ignore[attr-defined]
            assert ended == {"completed", "failed"}
            assert len(records.of("upstream")) == 5  # one record per relayed stream
            # Failed attempts: 2 (b) + 4 (c) + 1 (d); completed: a, b, d. The stall
            # (e) was cut by the timeout layer, above the breaker: to the breaker, a
            # cancellation, which counts as neither (attempt_timeout would count it).
            stats = breaker.stats()
            assert (stats.calls, stats.failures) == (10, 7)
            assert lines.bulkhead.stats().running == 0


async def test_a_client_leaving_the_aiohttp_gateway_frees_the_slot_and_the_upstream() -> None:
    upstream = Upstream()
    async with aiohttp_serving(upstream.app) as model:
        lines = upstream_stream(model)
        async with (
            aiohttp_serving(aiohttp_gateway(lines)) as gateway,
            aiohttp.ClientSession() as client,
        ):
            async with client.get(f"{gateway}/relay?mode=endless&key=z") as response:
                assert await response.content.readline() == b"chunk-0\n"
                assert lines.bulkhead.stats().running == 1
                response.close()  # the client goes away mid-stream
            await eventually(lambda: lines.bulkhead.stats().running == 0)
            await eventually(lambda: "z" in upstream.gone)
            assert lines.circuit_breaker.stats().calls == 0  # abandoned: neither


# --- the FastAPI gateway on uvicorn -------------------------------------------------------


def fastapi_gateway(base: str) -> tuple[FastAPI, dict[str, Any]]:
    app = FastAPI()
    made: dict[str, Any] = {}

    @app.get("/relay")
    async def relay(mode: str, key: str) -> Any:
        lines = made.setdefault("lines", upstream_stream(base))
        stream = lines(mode, key)
        try:
            first = await stream.__anext__()
        except aiohttp.ClientError as exc:
            await stream.aclose()
            return PlainTextResponse(f"upstream failed: {exc}", status_code=502)

        async def body() -> AsyncIterator[bytes]:
            async with contextlib.aclosing(stream):
                yield first
                async for chunk in stream:
                    yield chunk

        return StreamingResponse(body(), media_type="text/plain")

    return app, made


async def test_the_fastapi_gateway_relays_and_frees_its_slot_when_the_client_leaves() -> None:
    upstream = Upstream()
    async with aiohttp_serving(upstream.app) as model:
        app, made = fastapi_gateway(model)
        with UvicornThread(app) as gateway:
            async with aiohttp.ClientSession() as client:
                assert await read_all(client, f"{gateway}/relay?mode=fail_first&key=f") == (
                    200,
                    expected(),
                )
                assert await read_all(client, f"{gateway}/relay?mode=drop&key=g") == (
                    200,
                    expected(),
                )
                status, _ = await read_all(client, f"{gateway}/relay?mode=down&key=h")
                assert status == 502
                status, received, cut = await read_until_cut(
                    client, f"{gateway}/relay?mode=stall&key=i"
                )
                assert (status, received, cut is not None) == (
                    200,
                    b"chunk-0\nchunk-1\n",
                    True,
                )
                async with client.get(f"{gateway}/relay?mode=endless&key=j") as response:
                    assert await response.content.readline() == b"chunk-0\n"
                    response.close()
                lines = made["lines"]
                await eventually(lambda: "j" in upstream.gone)
                await eventually(lambda: lines.bulkhead.stats().running == 0)
                assert upstream.requests["f"] == 3
                assert upstream.requests["g"] == 2
