"""The Prometheus side: a collector that reads buttress' totals at scrape time.

Importing this module imports prometheus-client; only :mod:`buttress.metrics` does, and
only when asked to. Nothing here runs per call: monitored calls add to plain-Python
totals, and :class:`ButtressCollector` turns a consistent copy of them into metric
families whenever a registry is collected (a scrape, ``generate_latest()``, a push).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ._emitter import exporter
from ._stats import (
    CIRCUIT_STATES,
    DURATION_BUCKETS,
    FAMILIES,
    OUTCOMES,
    FunctionSnapshot,
    counters,
    snapshot,
)

__all__ = ["ButtressCollector"]

_CALLS = ("buttress_calls", "Finished calls of monitored functions, by outcome.")
_DURATION = (
    "buttress_call_duration_seconds",
    "Duration of monitored calls (coroutines: from start to completion), in seconds.",
)
_IN_FLIGHT = ("buttress_in_flight", "Calls of monitored functions running now.")
_OUTPUT = ("buttress_output", "Values of track_output, the tracked outputs of a function.")
_DROPPED = (
    "buttress_monitor_dropped",
    "Log records (and per-call samples) dropped because the exporter queue was full.",
)
_CIRCUIT = ("buttress_circuit_state", "1 for the current state of each circuit breaker.")


def _bound(value: float) -> str:
    # The ``le`` label: Prometheus parses it as a float, and spells infinity "+Inf".
    return "+Inf" if value == math.inf else repr(float(value))


def _cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    total = 0
    buckets = []
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        total += count
        buckets.append((_bound(bound), float(total)))
    return buckets


class ButtressCollector(Collector):
    """Every buttress metric, computed from the in-process totals when collected."""

    def describe(self) -> Iterator[Metric]:
        # Names only: lets a registry detect clashes without running collect().
        yield CounterMetricFamily(*_CALLS, labels=["function", "outcome"])
        yield HistogramMetricFamily(*_DURATION, labels=["function"])
        yield GaugeMetricFamily(*_IN_FLIGHT, labels=["function"])
        yield HistogramMetricFamily(*_OUTPUT, labels=["function"])
        yield CounterMetricFamily(*_DROPPED)
        yield GaugeMetricFamily(*_CIRCUIT, labels=["breaker", "state"])
        for family in FAMILIES:
            yield CounterMetricFamily(family.name, family.documentation, labels=family.labels)

    def collect(self) -> Iterator[Metric]:
        functions = snapshot()
        extra = sorted({key for item in functions for key, _ in item.labels})

        def label_values(item: FunctionSnapshot) -> list[str]:
            given = dict(item.labels)
            return [item.name, *(given.get(key, "") for key in extra)]

        names = ["function", *extra]
        calls = CounterMetricFamily(*_CALLS, labels=[*names, "outcome"])
        duration = HistogramMetricFamily(*_DURATION, labels=names)
        in_flight = GaugeMetricFamily(*_IN_FLIGHT, labels=names)
        output = HistogramMetricFamily(*_OUTPUT, labels=names)
        for item in functions:
            values = label_values(item)
            for outcome, count in zip(OUTCOMES, item.outcomes, strict=True):
                calls.add_metric([*values, outcome], count)
            duration.add_metric(values, _cumulative(DURATION_BUCKETS, item.buckets), item.total)
            in_flight.add_metric(values, item.in_flight)
            if item.output_bounds is not None:
                output.add_metric(
                    values,
                    _cumulative(item.output_bounds, item.output_buckets),
                    item.output_sum,
                )
        yield calls
        yield duration
        yield in_flight
        yield output

        yield CounterMetricFamily(*_DROPPED, value=exporter.dropped)
        circuit = GaugeMetricFamily(*_CIRCUIT, labels=["breaker", "state"])
        for breaker, current in sorted(counters.circuits().items()):
            states = CIRCUIT_STATES if current in CIRCUIT_STATES else (*CIRCUIT_STATES, current)
            for state in states:
                circuit.add_metric([breaker, state], 1.0 if state == current else 0.0)
        yield circuit
        values_by_family = counters.values()
        for family in FAMILIES:
            metric = CounterMetricFamily(
                family.name, family.documentation, labels=family.labels
            )
            for labels, value in sorted(values_by_family.get(family, {}).items()):
                metric.add_metric(list(labels), value)
            yield metric
