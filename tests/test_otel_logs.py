"""Log correlation: request ids and trace/span ids on the user's own log records.

``LogCorrelationFilter`` for stdlib logging and ``add_correlation_ids`` for structlog,
with real handlers and a real structlog pipeline.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import anyio
import pytest
import structlog

from _monitor_support import capture
from _otel_support import Telemetry, telemetry
from buttress import flush_monitoring, monitor, otel, request_scope

APP_LOGGER = logging.getLogger("tests.app")


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(otel.LogCorrelationFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Iterator[Kept]:
    handler = Kept()
    APP_LOGGER.addHandler(handler)
    APP_LOGGER.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        APP_LOGGER.removeHandler(handler)
        APP_LOGGER.setLevel(logging.NOTSET)


@pytest.fixture
def spans() -> Iterator[Telemetry]:
    with telemetry(metrics=False) as recorded:
        yield recorded


def test_the_filter_adds_the_request_id_and_the_current_ids(
    kept: Kept, spans: Telemetry
) -> None:
    APP_LOGGER.info("before")
    with request_scope(request_id="req-7"), spans.tracer.start_as_current_span("handler") as span:
        APP_LOGGER.info("inside")
    before, inside = kept.records
    assert (before.request_id, before.trace_id, before.span_id) == (None, None, None)  # type: ignore[attr-defined]
    context = span.get_span_context()
    assert inside.request_id == "req-7"  # type: ignore[attr-defined]
    assert inside.trace_id == f"{context.trace_id:032x}"  # type: ignore[attr-defined]
    assert inside.span_id == f"{context.span_id:016x}"  # type: ignore[attr-defined]


def test_records_made_inside_a_monitored_call_carry_its_span(
    kept: Kept, spans: Telemetry
) -> None:
    @monitor("rank")
    def rank() -> None:
        APP_LOGGER.warning("ranking")

    rank()
    (record,) = kept.records
    assert record.span_id == f"{spans.one('rank').context.span_id:016x}"  # type: ignore[attr-defined]


def test_format_strings_always_find_the_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(otel.LogCorrelationFilter())
    handler.setFormatter(logging.Formatter("%(message)s rid=%(request_id)s tid=%(trace_id)s"))
    APP_LOGGER.addHandler(handler)
    try:
        APP_LOGGER.warning("plain")
        with request_scope(request_id="r1"):
            APP_LOGGER.warning("scoped")
    finally:
        APP_LOGGER.removeHandler(handler)
    assert stream.getvalue().splitlines() == ["plain rid=None tid=None", "scoped rid=r1 tid=None"]


def test_monitor_records_keep_their_own_ids_through_the_filter(spans: Telemetry) -> None:
    """@monitor's records are made in the exporter thread: the filter must not replace
    the call's ids and request id with that thread's (empty) ones."""

    @monitor("served")
    def served() -> None:
        pass

    with capture(logging.INFO) as records:
        records.addFilter(otel.LogCorrelationFilter())
        with request_scope(request_id="req-9"):
            served()
        flush_monitoring()
    (record,) = records.of("served")
    assert record.request_id == "req-9"  # type: ignore[attr-defined]
    assert record.span_id == f"{spans.one('served').context.span_id:016x}"  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_each_task_logs_its_own_request_and_span(kept: Kept, spans: Telemetry) -> None:
    @monitor("handle")
    async def handle(request_id: str) -> None:
        with request_scope(request_id=request_id):
            await anyio.sleep(0.01)
            APP_LOGGER.info("handled %s", request_id)

    async with anyio.create_task_group() as group:
        for n in range(3):
            group.start_soon(handle, f"req-{n}")
    by_request = {record.request_id: record for record in kept.records}  # type: ignore[attr-defined]
    assert set(by_request) == {"req-0", "req-1", "req-2"}
    span_ids = {f"{span.context.span_id:016x}" for span in spans.named("handle")}
    assert {record.span_id for record in kept.records} == span_ids  # type: ignore[attr-defined]


# --- structlog -------------------------------------------------------------------------------


@pytest.fixture
def structlog_lines() -> Iterator[io.StringIO]:
    out = io.StringIO()
    structlog.configure(
        processors=[otel.add_correlation_ids, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    try:
        yield out
    finally:
        structlog.reset_defaults()


def test_the_structlog_processor(structlog_lines: io.StringIO, spans: Telemetry) -> None:
    log = structlog.get_logger()
    log.info("outside")
    with request_scope(request_id="req-3"), spans.tracer.start_as_current_span("work") as span:
        log.info("inside")
        log.info("given", request_id="mine")
    outside, inside, given = (json.loads(line) for line in structlog_lines.getvalue().splitlines())
    assert outside == {"event": "outside"}  # nothing unknown is added
    context = span.get_span_context()
    assert inside == {
        "event": "inside",
        "request_id": "req-3",
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
    }
    assert given["request_id"] == "mine"  # kept
