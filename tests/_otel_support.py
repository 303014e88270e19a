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


# --- a small OTLP/HTTP receiver: the real wire format, decoded ---------------------------


@dataclass
class WireSpan:
    """One span as it arrived over OTLP (decoded from the protobuf payload)."""

    service: str
    scope: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status: int

    def events_named(self, name: str) -> list[dict[str, Any]]:
        return [attrs for event, attrs in self.events if event == name]


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind is not None else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


class OtlpReceiver:
    """An OTLP/HTTP endpoint on 127.0.0.1 (a thread), keeping every export it is sent.

    ``with OtlpReceiver() as receiver:`` serves on ``receiver.url``; :meth:`spans` and
    :meth:`metric_names` decode what arrived with ``opentelemetry-proto``.
    """

    def __init__(self) -> None:
        import gzip
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self.traces: list[Any] = []
        self.metrics: list[Any] = []
        self.paths: list[str] = []
        receiver = self
        kinds = {
            "/v1/traces": (
                trace_service_pb2.ExportTraceServiceRequest,
                trace_service_pb2.ExportTraceServiceResponse,
                self.traces,
            ),
            "/v1/metrics": (
                metrics_service_pb2.ExportMetricsServiceRequest,
                metrics_service_pb2.ExportMetricsServiceResponse,
                self.metrics,
            ),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.paths.append(self.path)
                known = kinds.get(self.path)
                if known is None or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_error(404 if known is None else 415)
                    return
                request_type, response_type, kept = known
                kept.append(request_type.FromString(body))
                answer = response_type().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="otlp-receiver")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> OtlpReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def spans(self) -> list[WireSpan]:
        return [
            WireSpan(
                service=resource.get("service.name", ""),
                scope=scope_spans.scope.name,
                name=span.name,
                kind=span.kind,
                trace_id=span.trace_id.hex(),
                span_id=span.span_id.hex(),
                parent_span_id=span.parent_span_id.hex(),
                attributes=_attributes(span.attributes),
                events=[(event.name, _attributes(event.attributes)) for event in span.events],
                status=span.status.code,
            )
            for request in list(self.traces)
            for resource_spans in request.resource_spans
            for resource in [_attributes(resource_spans.resource.attributes)]
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]

    def metric_points(self) -> dict[str, list[dict[str, Any]]]:
        """The attributes of every data point received, by metric name."""
        found: dict[str, list[dict[str, Any]]] = {}
        for request in list(self.metrics):
            for resource_metrics in request.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        data = getattr(metric, metric.WhichOneof("data"))
                        found.setdefault(metric.name, []).extend(
                            _attributes(point.attributes) for point in data.data_points
                        )
        return found
