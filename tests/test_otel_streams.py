"""A monitored stream's span: one per stream, current while the stream's own code runs.

The stream's steps run in the context of whoever iterates it; between two items that
context is the caller's. So the user's spans made inside the generator (and the events
of decorators below the monitor, such as retries) belong to the stream's span, and the
caller's spans made between items do not.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio
import anyio.lowlevel
import pytest
from opentelemetry.trace import StatusCode

from _otel_support import Telemetry, attributes, events_of, parent_of, telemetry
from buttress import monitor, retry


@pytest.fixture
def spans() -> Iterator[Telemetry]:
    with telemetry(metrics=False) as recorded:
        yield recorded


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_an_async_stream_makes_one_span_holding_its_own_spans_not_the_callers(
    spans: Telemetry, backend: str
) -> None:
    tracer = spans.tracer

    @monitor("llm.tokens")
    async def tokens(n: int) -> AsyncIterator[str]:
        with tracer.start_as_current_span("before-first"):
            pass
        for i in range(n):
            with tracer.start_as_current_span(f"produce-{i}"):
                await anyio.lowlevel.checkpoint()
            yield f"t{i}"

    async def main() -> list[str]:
        seen = []
        with tracer.start_as_current_span("request"):
            async for token in tokens(3):
                with tracer.start_as_current_span(f"consume-{token}"):
                    seen.append(token)
        return seen

    assert anyio.run(main, backend=backend) == ["t0", "t1", "t2"]
    stream = spans.one("llm.tokens")
    request = spans.one("request")
    assert parent_of(stream) == request.context.span_id
    for name in ("before-first", "produce-0", "produce-1", "produce-2"):
        assert parent_of(spans.one(name)) == stream.context.span_id, name
    for token in ("t0", "t1", "t2"):  # the caller's work between items is the caller's
        assert parent_of(spans.one(f"consume-{token}")) == request.context.span_id
    found = attributes(stream)
    assert found["buttress.stream.items"] == 3
    assert found["buttress.stream.ended"] == "completed"
    assert found["buttress.outcome"] == "ok"
    assert isinstance(found["buttress.stream.first_item"], float)
    assert stream.status.status_code is StatusCode.UNSET


def test_a_sync_stream_makes_one_span_too(spans: Telemetry) -> None:
    tracer = spans.tracer

    @monitor("rows")
    def rows() -> Iterator[int]:
        for i in range(2):
            with tracer.start_as_current_span(f"row-{i}"):
                pass
            yield i

    with tracer.start_as_current_span("job"):
        for row in rows():
            with tracer.start_as_current_span(f"use-{row}"):
                pass
    stream, job = spans.one("rows"), spans.one("job")
    assert parent_of(stream) == job.context.span_id
    assert parent_of(spans.one("row-1")) == stream.context.span_id
    assert parent_of(spans.one("use-1")) == job.context.span_id
    assert attributes(stream)["buttress.stream.items"] == 2


@pytest.mark.anyio
async def test_a_failing_stream_is_an_error_span_with_its_retries(spans: Telemetry) -> None:
    calls = 0

    @monitor("flaky.stream")
    @retry(max_retries=2, base_delay=0, jitter=None)
    async def flaky() -> AsyncIterator[int]:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("connect failed")  # before the first item: retried
        yield 1
        raise RuntimeError("broke after the first item")

    with pytest.raises(RuntimeError, match="broke after"):
        async for _ in flaky():
            pass
    stream = spans.one("flaky.stream")
    assert stream.status.status_code is StatusCode.ERROR
    found = attributes(stream)
    assert found["buttress.outcome"] == "error"
    assert found["buttress.stream.ended"] == "failed"
    assert found["buttress.stream.items"] == 1
    assert len(events_of(stream, "buttress.retry")) == 2  # the retries annotate it
    assert [event.name for event in stream.events][-1] == "exception"


@pytest.mark.anyio
async def test_an_abandoned_stream_ends_its_span_as_cancelled(spans: Telemetry) -> None:
    @monitor("endless")
    async def endless() -> AsyncIterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    stream = endless()
    assert await stream.__anext__() == 0
    await stream.aclose()
    span = spans.one("endless")
    found = attributes(span)
    assert found["buttress.outcome"] == "cancelled"
    assert found["buttress.stream.ended"] == "abandoned"
    assert span.status.status_code is StatusCode.UNSET


@pytest.mark.anyio
async def test_values_and_errors_sent_in_reach_the_generator_through_the_span(
    spans: Telemetry,
) -> None:
    received: list[object] = []

    @monitor("echo")
    async def echo() -> AsyncIterator[int]:
        n = 0
        while True:
            try:
                got = yield n
            except KeyError as error:
                received.append(error)
                n = -1
            else:
                received.append(got)
                n += 1

    stream = echo()
    assert await stream.asend(None) == 0
    assert await stream.asend("a") == 1
    assert await stream.athrow(KeyError("k")) == -1
    await stream.aclose()
    assert received[0] == "a"
    assert isinstance(received[1], KeyError)
    assert attributes(spans.one("echo"))["buttress.stream.items"] == 3


@pytest.mark.anyio
async def test_without_tracing_a_stream_makes_no_span() -> None:
    with telemetry(traces=False) as recorded:

        @monitor("quiet")
        async def quiet() -> AsyncIterator[int]:
            yield 1

        assert [item async for item in quiet()] == [1]
        assert recorded.spans() == []
