"""@monitor and everything behind it: summaries, the exporter thread, the totals.

Layout:
    _decorator   @monitor: the per-function engine (Site) and its sync/async shells
    _summaries   shape-not-content summaries of arguments and results
    _logs        the queued call records, request context and the JSON formatter
    _emitter     the bounded queue and the exporter thread (flush, atexit, drops)
    _stats       the plain-Python totals and the counters fed by events
    _http        the integrations' HTTP request counts and durations (labels bounded)

The metrics sinks that read these totals (Prometheus, DogStatsD) are in
:mod:`buttress._sinks`, above this package: monitoring imports no sink and no other
feature (it reads live breakers through :mod:`buttress._registry`).
"""

from __future__ import annotations

from ._decorator import MonitoredFunction as MonitoredFunction
from ._decorator import MonitorHandle as MonitorHandle
from ._decorator import monitor as monitor
from ._emitter import MonitoringStats as MonitoringStats
from ._emitter import configure_monitoring as configure_monitoring
from ._emitter import flush_monitoring as flush_monitoring
from ._emitter import monitoring_stats as monitoring_stats
from ._logs import JsonFormatter as JsonFormatter
from ._logs import request_context as request_context
from ._logs import request_scope as request_scope
from ._stats import CallStats as CallStats

__all__ = [
    "CallStats",
    "JsonFormatter",
    "MonitorHandle",
    "MonitoredFunction",
    "MonitoringStats",
    "configure_monitoring",
    "flush_monitoring",
    "monitor",
    "monitoring_stats",
    "request_context",
    "request_scope",
]
