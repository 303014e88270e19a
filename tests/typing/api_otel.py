"""buttress.otel as a user's code sees it: type-checked by mypy, never executed."""

from __future__ import annotations

import logging

import structlog
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind
from typing_extensions import assert_type

from buttress import monitor, otel

otel.enable()
otel.enable(TracerProvider(), MeterProvider())
otel.enable(tracer_provider=TracerProvider(), metrics=False)
otel.enable(meter_provider=MeterProvider(), traces=False)
otel.enable(traces="yes")  # type: ignore[arg-type]
otel.enable(tracer_provider=MeterProvider())  # type: ignore[arg-type]
assert_type(otel.is_enabled(), bool)
otel.disable()

handler = logging.StreamHandler()
handler.addFilter(otel.LogCorrelationFilter())
structlog.configure(processors=[otel.add_correlation_ids, structlog.processors.JSONRenderer()])


@monitor(span_kind="client")
async def call_model(prompt: str) -> str:
    return prompt


@monitor("consume", span_kind=SpanKind.CONSUMER)
def consume(message: bytes) -> int:
    return len(message)


assert_type(consume(b"x"), int)
assert_type(consume.monitor.name, str)
monitor(span_kind=3)  # type: ignore[call-overload]
