"""What the demo's decorators tell the world during a run: monitor records and metrics.

:func:`observe_run` sets both up for one run and puts everything back afterwards:

- ``@monitor``'s records (one JSON line per call of the resilient gateway's fetch) go to
  a file, or nowhere, but never to the terminal, where they would bury the progress bar
  and the report;
- :mod:`buttress.metrics` is enabled in a registry of the run's own, so that the
  exposition written at the end (``metrics.prom``) holds what the real decorators
  counted: calls, retries, cache requests, breaker states, validation failures...
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread

from buttress import JsonFormatter, flush_monitoring, metrics, monitoring_stats
from buttress._monitoring import _stats
from buttress._monitoring._emitter import exporter

__all__ = ["RunObservation", "observe_run"]

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
