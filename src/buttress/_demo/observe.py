"""What the demo's decorators tell the world during a run: monitor records and metrics.

:func:`observe_run` sets both up for one run and puts everything back afterwards:

- ``@monitor``'s records (one JSON line per call of the resilient gateway's fetch) go to
  a file, or nowhere, but never to the terminal, where they would bury the progress bar
  and the report;
- :mod:`buttress.metrics` is enabled in a registry of the run's own, so that the
  exposition written at the end (``metrics.prom``) holds what the real decorators
  counted: calls, retries, cache requests, breaker states, validation failures...

:func:`export_otlp` sends the run's traces and metrics to an OpenTelemetry collector
(``--otlp URL``), through the OpenTelemetry SDK and its OTLP/HTTP exporters, which the
demo imports only then.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread

from buttress import JsonFormatter, flush_monitoring, metrics, monitoring_stats, otel
from buttress._monitoring import _stats
from buttress._monitoring._emitter import exporter

__all__ = ["OTLP_HINT", "RunObservation", "export_otlp", "observe_run", "otlp_missing"]

#: How to get what ``--otlp`` needs.
OTLP_HINT = "pip install 'buttress[otel]' opentelemetry-sdk opentelemetry-exporter-otlp-proto-http"
#: The resource's ``service.name`` of everything the demo exports.
SERVICE = "buttress-demo"

MONITOR_LOGGER = "buttress.monitor"


@dataclass
class RunObservation:
    """Filled in by :func:`observe_run`.

    Attributes:
        metrics_text: buttress's own metrics at the end of the run, in the Prometheus text
            format; ``None`` without prometheus-client.
        monitor_log: the file the monitor records went to, if any.
    """

    metrics_text: str | None = None
    monitor_log: Path | None = None
    _registry: Any = None

    def capture(self) -> None:
        """Render the run's metrics now (call it when the gateways are idle)."""
        if self._registry is not None:
            self.metrics_text = metrics.generate_latest(self._registry).decode()


def _new_registry() -> Any:
    """A fresh prometheus-client registry, or ``None`` without prometheus-client."""
    try:
        from prometheus_client import CollectorRegistry
    except ImportError:
        return None
    return CollectorRegistry()


@asynccontextmanager
async def observe_run(monitor_log: Path | None = None) -> AsyncIterator[RunObservation]:
    """Route monitor records and enable metrics for the ``async with`` block.

    Args:
        monitor_log: write each ``@monitor`` record there as a JSON line (the file is
            replaced); ``None`` drops them.

    Unless the process already exposes buttress's metrics somewhere (then that registry is
    used, its totals untouched), the totals are zeroed and enabled in a fresh registry,
    so that the exposition holds this run's figures only; they are disabled at the end.
    The monitor's exporter thread is stopped at the end if the run started it.
    """
    observation = RunObservation(monitor_log=monitor_log)
    logger = logging.getLogger(MONITOR_LOGGER)
    saved = (logger.level, logger.propagate)
    handler: logging.Handler | None = None
    if monitor_log is not None:
        monitor_log.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(monitor_log, mode="w", encoding="utf-8", delay=True)
        handler.setFormatter(JsonFormatter(static_fields={"service": "buttress-demo"}))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    else:
        # Above every level: @monitor does not even queue a record.
        logger.setLevel(logging.CRITICAL + 1)
    logger.propagate = False
    exporter_was_running = monitoring_stats().running

    owned = False
    registry = _new_registry()
    if registry is not None:
        current = metrics.current_registry()
        if current is None:
            _stats.reset()
            observation._registry = metrics.enable(registry)
            owned = True
        else:
            observation._registry = current
    try:
        yield observation
    finally:
        if owned:
            metrics.disable()
        # Blocking waits for the exporter thread: in a worker thread, off the event loop.
        await anyio.to_thread.run_sync(flush_monitoring)
        if not exporter_was_running:
            await anyio.to_thread.run_sync(exporter.stop, 10.0)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        if handler is not None:
            logger.removeHandler(handler)
            handler.close()


def otlp_missing() -> str | None:
    """Why ``--otlp`` cannot work here (a missing package, and how to get it), or ``None``."""
    for module in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"--otlp needs {module} (the OpenTelemetry SDK and OTLP exporter): {OTLP_HINT}"
    return None


@asynccontextmanager
async def export_otlp(endpoint: str | None) -> AsyncIterator[None]:
    """Send the run's traces and metrics over OTLP/HTTP to ``endpoint`` during the block.

    ``endpoint`` is a collector's base URL (``http://127.0.0.1:4318``): spans go to
    ``/v1/traces``, metrics to ``/v1/metrics``, with ``service.name`` ``buttress-demo``.
    Every call of the resilient gateway's ``@monitor`` becomes a span carrying what the
    other decorators did (retries, cache results, refusals). At the end, what is still
    buffered is sent (in a worker thread: the event loop keeps running) and
    OpenTelemetry is turned off again. ``None`` does nothing.
    """
    if endpoint is None:
        yield
        return
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    base = endpoint.rstrip("/")
    resource = Resource.create({"service.name": SERVICE})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(f"{base}/v1/traces")))
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(f"{base}/v1/metrics"))
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    otel.enable(tracer_provider, meter_provider)
    try:
        yield
    finally:
        # Durations reach the meter through the exporter thread: let it catch up, then
        # collect while buttress still reports (disabled, its instruments observe nothing).
        await anyio.to_thread.run_sync(flush_monitoring)
        await anyio.to_thread.run_sync(meter_provider.force_flush)
        otel.disable()
        await anyio.to_thread.run_sync(tracer_provider.shutdown)
        await anyio.to_thread.run_sync(meter_provider.shutdown)
