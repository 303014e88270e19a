"""Helpers shared by the tests/test_otel_*.py files (not a test module itself).

The OpenTelemetry SDK's own in-memory span exporter and metric reader: each test gets a
TracerProvider (and a MeterProvider) of its own, passed to ``buttress.otel.enable``, so no
test touches the process-wide providers (which OpenTelemetry lets a process set once).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.trace import Tracer

from _monitor_support import fresh_monitoring
from buttress import _tracing, otel
from buttress._events import events


@dataclass
class Telemetry:
    """What one test's providers received."""

    provider: TracerProvider
    exporter: InMemorySpanExporter
    meter_provider: MeterProvider
    reader: InMemoryMetricReader

    @property
    def tracer(self) -> Tracer:
        """The test's own tracer, for spans made "by the user"."""
        return self.provider.get_tracer("tests")

    def spans(self) -> list[ReadableSpan]:
        """Every finished span, in the order they ended."""
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans() if span.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, [span.name for span in self.spans()]
        return found[0]

    def metrics(self) -> dict[str, list[Any]]:
        """Every data point by metric name (one collection)."""
        data = self.reader.get_metrics_data()
        points: dict[str, list[Any]] = {}
        if data is None:
            return points
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    points.setdefault(metric.name, []).extend(metric.data.data_points)
        return points


@contextmanager
def telemetry(
    *, traces: bool = True, metrics: bool = True, sampler: Sampler | None = None
) -> Iterator[Telemetry]:
    """Enable buttress.otel with fresh SDK providers for the block; disable after."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler) if sampler is not None else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    with fresh_monitoring():
        otel.enable(provider, meter_provider, traces=traces, metrics=metrics)
        try:
            yield Telemetry(provider, exporter, meter_provider, reader)
        finally:
            otel.disable()
            provider.shutdown()
            meter_provider.shutdown()
    assert _tracing.tracer is None
    assert not events.active, "something still listens to events after the test"


def events_of(span: ReadableSpan, name: str) -> list[dict[str, Any]]:
    """The attributes of each event called ``name`` on ``span``."""
    return [dict(event.attributes or {}) for event in span.events if event.name == name]


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def ids(spans: Sequence[ReadableSpan]) -> set[int]:
    return {span.context.span_id for span in spans}
