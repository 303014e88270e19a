"""OpenTelemetry: @monitor's span per call beside the same span made by hand, and what
OpenTelemetry costs a monitored call while it is installed but not enabled.

The hand-written peer is what one writes without buttress: ``with
tracer.start_as_current_span(name, attributes=...)`` around the call, with the same name
and the same attributes @monitor gives its span. Both use one SDK TracerProvider whose
BatchSpanProcessor hands the spans to an exporter that drops them (the export itself is
the application's business, and the same for both). buttress' rows also count the call,
time it and decide about its log record, as @monitor always does (logger below INFO: no
record). The target of issue 17: at most 1.2x the hand-written span.

"Installed, not enabled": the same monitored function timed before OpenTelemetry is
imported, and again after ``buttress.otel.enable()`` then ``disable()``; compare both with
the monitor module's "metrics only" rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import buttress
from _harness import Comparison, missing_from, time_async, time_sync
from bench_monitor import _drained
from buttress import otel

LOGGER = logging.getLogger("buttress.monitor")


def _work(x: int) -> int:
    return x + 1


async def _awork(x: int) -> int:
    return x + 1


def _not_enabled(quick: bool) -> Comparison:
    comparison = Comparison(
        "monitor, OpenTelemetry installed but not enabled, sync function",
        note="Logger below INFO (no record). Compare with the monitor module's "
        "'metrics only' row: tracing off costs one attribute read per call.",
    )
    comparison.add("bare call", time_sync(lambda: _work(1), quick=quick), "bare")
    monitored = buttress.monitor("bench_otel_off")(_work)
    comparison.add(
        "buttress.monitor, OpenTelemetry not imported yet",
        time_sync(lambda: monitored(1), quick=quick),
        "ours",
    )
    otel.enable()  # imports the API, installs the tracer...
    otel.disable()  # ...and removes it again
    comparison.add(
        "buttress.monitor, after otel.enable() and otel.disable()",
        time_sync(lambda: monitored(1), quick=quick),
        "ours",
    )
    return comparison


def _spans(quick: bool) -> list[Comparison]:
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
    except ImportError as error:
        missing_from(error)
        return []

    class Discard(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    tracer = provider.get_tracer("bench")
    meter_provider = MeterProvider()  # no reader: recording is what is timed

    sync = buttress.monitor("work")(_work)
    asyn = buttress.monitor("awork")(_awork)
    attributes: dict[str, Any] = dict(sync.monitor._site.span_attributes)  # type: ignore[attr-defined]
    aattributes: dict[str, Any] = dict(asyn.monitor._site.span_attributes)  # type: ignore[attr-defined]

    def by_hand(x: int) -> int:
        with tracer.start_as_current_span("work", attributes=attributes):
            return _work(x)

    async def aby_hand(x: int) -> int:
        with tracer.start_as_current_span("awork", attributes=aattributes):
            return await _awork(x)

    note = (
        "SDK TracerProvider, BatchSpanProcessor, an exporter that drops the spans; "
        "buttress rows: logger below INFO (no record)."
    )
    tables = (
        Comparison("OpenTelemetry: a span per call, sync function", note=note),
        Comparison("OpenTelemetry: a span per call, async function", note=note),
    )
    first, second = tables
    first.add("bare call", time_sync(lambda: _work(1), quick=quick), "bare")
    second.add("bare await", time_async(lambda: _awork(1), quick=quick), "bare")
    hand = first.add(
        "tracer.start_as_current_span by hand (same name and attributes)",
        time_sync(lambda: by_hand(1), quick=quick),
        "peer",
    )
    ahand = second.add(
        "tracer.start_as_current_span by hand (same name and attributes)",
        time_async(lambda: aby_hand(1), quick=quick),
        "peer",
    )
    otel.enable(provider, meter_provider, metrics=False)
    try:
        ours = time_sync(lambda: sync(1), quick=quick)
        first.add(
            "buttress.monitor, traces on",
            ours,
            "ours",
            f"{ours / hand.value:.2f}x the hand-written span",
        )
        aours = time_async(lambda: asyn(1), quick=quick)
        second.add(
            "buttress.monitor, traces on",
            aours,
            "ours",
            f"{aours / ahand.value:.2f}x the hand-written span",
        )
        otel.enable(provider, meter_provider)
        first.add(
            "buttress.monitor, traces and metrics on",
            _drained(lambda: sync(1), quick=quick),
            "ours",
            "incl. the exporter thread recording each duration in the OTel histogram",
        )
    finally:
        otel.disable()
        provider.shutdown()
        meter_provider.shutdown()
    return list(tables)


def collect(quick: bool) -> list[Comparison]:
    saved = (LOGGER.level, LOGGER.propagate)
    LOGGER.setLevel(logging.WARNING)
    LOGGER.propagate = False
    try:
        # Not enabled first: OpenTelemetry is not imported until otel.enable() is called.
        return [_not_enabled(quick), *_spans(quick)]
    finally:
        buttress.flush_monitoring()
        LOGGER.setLevel(saved[0])
        LOGGER.propagate = saved[1]
