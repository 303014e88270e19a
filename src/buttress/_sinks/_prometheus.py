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
from prometheus_client.samples import Exemplar

from buttress._monitoring._emitter import exporter
from buttress._monitoring._stats import CALLS_FAMILY as _CALLS
from buttress._monitoring._stats import CIRCUIT_FAMILY as _CIRCUIT
from buttress._monitoring._stats import (
    CIRCUIT_STATES,
    FAMILIES,
    GAUGES,
    HISTOGRAMS,
    OUTCOMES,
    counters,
    snapshot,
    static_labels,
)
from buttress._monitoring._stats import DROPPED_FAMILY as _DROPPED
from buttress._monitoring._stats import DURATION_FAMILY as _DURATION
from buttress._monitoring._stats import FIRST_ITEM_FAMILY as _FIRST_ITEM
from buttress._monitoring._stats import IN_FLIGHT_FAMILY as _IN_FLIGHT
from buttress._monitoring._stats import ITEMS_FAMILY as _ITEMS
from buttress._monitoring._stats import OUTPUT_FAMILY as _OUTPUT
from buttress._monitoring._stats import Exemplar as TracedCall

__all__ = ["MISSING_LABEL", "ButtressCollector"]

#: The value of a static label for a function that does not set it: the per-function
#: families have one label set, the union of every monitor's static labels, and an empty
#: value would be the same as none to Prometheus (``sum by (route)`` would then show an
#: unnamed group).
MISSING_LABEL = "none"


def _bound(value: float) -> str:
    # The ``le`` label: Prometheus parses it as a float, and spells infinity "+Inf".
    return "+Inf" if value == math.inf else repr(float(value))


def _exemplar(call: TracedCall | None) -> Exemplar | None:
    # The trace of the last sampled call that fell in a bucket (tracing on). Only the
    # OpenMetrics exposition shows exemplars; the classic text format leaves them out.
    if call is None:
        return None
    ids, duration, when = call
    return Exemplar({"trace_id": ids.trace_hex, "span_id": ids.span_hex}, duration, when)


def _histogram(
    metric: Metric,
    labels: dict[str, str],
    bounds: Sequence[float],
    counts: Sequence[int],
    total: float,
    exemplars: Sequence[TracedCall | None] = (),
) -> None:
    """Add one histogram's samples (cumulative buckets, count, sum) to ``metric``."""
    cumulative = 0
    for index, (bound, count) in enumerate(zip((*bounds, math.inf), counts, strict=True)):
        cumulative += count
        metric.add_sample(
            f"{metric.name}_bucket",
            {**labels, "le": _bound(bound)},
            cumulative,
            exemplar=_exemplar(exemplars[index]) if exemplars else None,
        )
    metric.add_sample(f"{metric.name}_count", labels, cumulative)
    metric.add_sample(f"{metric.name}_sum", labels, total)


class ButtressCollector(Collector):
    """Every buttress metric, computed from the in-process totals when collected."""

    def describe(self) -> Iterator[Metric]:
        # Names only: lets a registry detect clashes without running collect().
        yield CounterMetricFamily(*_CALLS, labels=["function", "outcome"])
        yield HistogramMetricFamily(*_DURATION, labels=["function"])
        yield GaugeMetricFamily(*_IN_FLIGHT, labels=["function"])
        yield HistogramMetricFamily(*_OUTPUT, labels=["function"])
        yield CounterMetricFamily(*_ITEMS, labels=["function"])
        yield HistogramMetricFamily(*_FIRST_ITEM, labels=["function"])
        yield CounterMetricFamily(*_DROPPED)
        yield GaugeMetricFamily(*_CIRCUIT, labels=["breaker", "state"])
        for family in FAMILIES:
            yield CounterMetricFamily(family.name, family.documentation, labels=family.labels)
        for histogram in HISTOGRAMS:
            yield HistogramMetricFamily(
                histogram.name, histogram.documentation, labels=histogram.labels
            )
        for gauge in GAUGES:
            yield GaugeMetricFamily(gauge.name, gauge.documentation, labels=gauge.labels)

    def collect(self) -> Iterator[Metric]:
        # Samples are added one by one. One label set per family: every function carries
        # every static label a live monitor declares, MISSING_LABEL where it has none (a
        # function whose monitors are all gone, in tests, keeps its own labels too).
        functions = snapshot()
        static = static_labels()
        calls = Metric(*_CALLS, "counter")
        duration = Metric(*_DURATION, "histogram")
        in_flight = Metric(*_IN_FLIGHT, "gauge")
        output = Metric(*_OUTPUT, "histogram")
        items = Metric(*_ITEMS, "counter")
        first_item = Metric(*_FIRST_ITEM, "histogram")
        for item in functions:
            own = dict(item.labels)
            labels = {"function": item.name}
            for key in static:
                labels[key] = own.get(key, MISSING_LABEL)
            labels.update(own)
            for outcome, count in zip(OUTCOMES, item.outcomes, strict=True):
                calls.add_sample("buttress_calls_total", {**labels, "outcome": outcome}, count)
            _histogram(
                duration, labels, item.bounds, item.buckets, item.total, item.exemplars
            )
            in_flight.add_sample("buttress_in_flight", labels, item.in_flight)
            if item.output_bounds is not None:
                _histogram(
                    output, labels, item.output_bounds, item.output_buckets, item.output_sum
                )
            if item.first_buckets is not None:  # a stream: its items and first items
                items.add_sample("buttress_stream_items_total", labels, item.items)
                _histogram(
                    first_item, labels, item.bounds, item.first_buckets, item.first_total
                )
        yield calls
        yield duration
        yield in_flight
        yield output
        yield items
        yield first_item

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
            for label_values, value in sorted(values_by_family.get(family, {}).items()):
                metric.add_metric(list(label_values), value)
            yield metric
        histograms = counters.histograms()
        for histogram in HISTOGRAMS:
            observed = Metric(histogram.name, histogram.documentation, "histogram")
            bounds, series = histograms.get(histogram, ((), {}))
            for label_values, counts in sorted(series.items()):
                labels = dict(zip(histogram.labels, label_values, strict=True))
                buckets = [int(count) for count in counts[:-1]]
                _histogram(observed, labels, bounds, buckets, counts[-1])
            yield observed
        gauges = counters.gauges()
        for gauge in GAUGES:
            level = GaugeMetricFamily(gauge.name, gauge.documentation, labels=gauge.labels)
            for label_values, value in sorted(gauges.get(gauge, {}).items()):
                level.add_metric(list(label_values), value)
            yield level
