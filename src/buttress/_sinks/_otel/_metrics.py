"""buttress' metrics through an OpenTelemetry ``Meter``: the families Prometheus sees.

The same names, label keys (as attributes), units and histogram buckets as
:mod:`buttress.metrics` gives Prometheus, so a pipeline that speaks OTLP needs no
Prometheus, and one that converts OTLP to Prometheus gets the same series:

- ``buttress_calls`` (counter: ``function``, ``outcome``, static labels),
  ``buttress_in_flight`` (gauge), ``buttress_circuit_state`` (gauge: ``breaker``,
  ``state``), ``buttress_monitor_dropped`` (counter) and every event counter
  (``buttress_retries``, ``buttress_cache_requests``...) are *observable* instruments:
  their callbacks read the plain-Python totals when the SDK collects, so they cost nothing
  per call.
- ``buttress_call_duration_seconds`` and ``buttress_output`` are histograms with the
  Prometheus buckets given as the advisory boundaries. A histogram cannot be observed, so
  each monitored call's duration is recorded by the exporter thread, as the DogStatsD
  sink does: the call only queues a small item. When that queue is full, samples are
  dropped (and counted in ``buttress_monitor_dropped``) like log records.
- The event-fed histograms (``buttress_batch_size``, ``buttress_batch_wait_seconds``,
  ``buttress_http_request_duration_seconds``) are recorded the same way: while this sink
  runs, each observed value is queued as an ``Observed`` item. The event-fed gauges
  (``buttress_batches_in_flight``) are observable.

Functions with their own ``output_buckets`` share the one ``buttress_output``
instrument, whose advisory boundaries are the default ones; an SDK ``View`` can change
them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from opentelemetry.metrics import CallbackOptions, Histogram, Meter, Observation

from buttress._monitoring._emitter import exporter
from buttress._monitoring._logs import CallItem
from buttress._monitoring._stats import CALLS_FAMILY as _CALLS
from buttress._monitoring._stats import CIRCUIT_FAMILY as _CIRCUIT
from buttress._monitoring._stats import (
    CIRCUIT_STATES,
    FAMILIES,
    GAUGES,
    HISTOGRAMS,
    OUTCOMES,
    OUTPUT_BUCKETS,
    CounterFamily,
    GaugeFamily,
    HistogramFamily,
    Labels,
    Observed,
    counters,
    duration_buckets,
    snapshot,
)
from buttress._monitoring._stats import DROPPED_FAMILY as _DROPPED
from buttress._monitoring._stats import DURATION_FAMILY as _DURATION
from buttress._monitoring._stats import IN_FLIGHT_FAMILY as _IN_FLIGHT
from buttress._monitoring._stats import OUTPUT_FAMILY as _OUTPUT

__all__ = ["OtelMetrics"]

Attributes = dict[str, str]


class OtelMetrics:
    """The instruments on one meter, and the exporter sink that feeds the histograms.

    Create it, then :meth:`start`; :meth:`stop` ends it (OpenTelemetry cannot remove an
    instrument: a stopped sink's callbacks observe nothing).
    """

    #: The exporter hands this sink an item for every monitored call (see ``_emitter``)
    #: and every value of an event-fed histogram.
    wants_calls = True
    wants_observations = True

    def __init__(self, meter: Meter) -> None:
        self.active = False
        self._attributes: dict[tuple[str, Labels], Attributes] = {}
        self._duration = meter.create_histogram(
            _DURATION[0],
            unit="s",
            description=_DURATION[1],
            # the process-wide default when the sink starts (one instrument for all)
            explicit_bucket_boundaries_advisory=duration_buckets(),
        )
        self._output = meter.create_histogram(
            _OUTPUT[0],
            description=_OUTPUT[1],
            explicit_bucket_boundaries_advisory=OUTPUT_BUCKETS,
        )
        meter.create_observable_counter(
            _CALLS[0], callbacks=[self._calls], description=_CALLS[1]
        )
        meter.create_observable_gauge(
            _IN_FLIGHT[0], callbacks=[self._in_flight], description=_IN_FLIGHT[1]
        )
        meter.create_observable_counter(
            _DROPPED[0], callbacks=[self._dropped], description=_DROPPED[1]
        )
        meter.create_observable_gauge(
            _CIRCUIT[0], callbacks=[self._circuits], description=_CIRCUIT[1]
        )
        for family in FAMILIES:
            meter.create_observable_counter(
                family.name, callbacks=[self._family(family)], description=family.documentation
            )
        self._histograms: dict[HistogramFamily, Histogram] = {
            histogram: meter.create_histogram(
                histogram.name,
                unit="s" if histogram.name.endswith("_seconds") else "",
                description=histogram.documentation,
                explicit_bucket_boundaries_advisory=counters.bounds(histogram),
            )
            for histogram in HISTOGRAMS
        }
        for gauge in GAUGES:
            meter.create_observable_gauge(
                gauge.name, callbacks=[self._family(gauge)], description=gauge.documentation
            )

    def __repr__(self) -> str:
        return f"<OtelMetrics {'active' if self.active else 'stopped'}>"

    def start(self) -> None:
        """Count events and receive every call's item from the exporter thread."""
        self.active = True
        counters.acquire()
        exporter.add_sink(self)

    def stop(self) -> None:
        """Stop recording and observing; what was recorded stays with the SDK.

        Calls already queued for the exporter thread are recorded first.
        """
        if not self.active:
            return
        exporter.flush(exporter.shutdown_timeout)
        self.active = False
        exporter.remove_sink(self)
        counters.release()

    # -- attributes --------------------------------------------------------------------

    def _function(self, name: str, labels: Labels) -> Attributes:
        key = (name, labels)
        attributes = self._attributes.get(key)
        if attributes is None:
            attributes = self._attributes[key] = {"function": name, **dict(labels)}
        return attributes

    # -- the exporter thread (Sink) ----------------------------------------------------

    def observe(self, item: Any) -> None:
        if not self.active:
            return
        if type(item) is Observed:
            family = item.family
            self._histograms[family].record(
                item.value, dict(zip(family.labels, item.labels, strict=True))
            )
            return
        if type(item) is not CallItem:
            return
        stats = item.site.stats
        attributes = self._function(stats.name, stats.labels)
        self._duration.record(item.duration, attributes)
        if item.tracked is not None:
            self._output.record(item.tracked, attributes)

    def tick(self) -> None:
        """Nothing to send: the SDK's reader collects on its own schedule."""

    def close(self) -> None:
        self.active = False

    # -- observable instruments (the SDK's collection thread) ----------------------------

    def _calls(self, options: CallbackOptions) -> Iterator[Observation]:
        if not self.active:
            return
        for item in snapshot():
            attributes = self._function(item.name, item.labels)
            for outcome, count in zip(OUTCOMES, item.outcomes, strict=True):
                yield Observation(count, {**attributes, "outcome": outcome})

    def _in_flight(self, options: CallbackOptions) -> Iterator[Observation]:
        if not self.active:
            return
        for item in snapshot():
            yield Observation(item.in_flight, self._function(item.name, item.labels))

    def _dropped(self, options: CallbackOptions) -> Iterator[Observation]:
        if self.active:
            yield Observation(exporter.dropped)

    def _circuits(self, options: CallbackOptions) -> Iterator[Observation]:
        if not self.active:
            return
        for breaker, current in sorted(counters.circuits().items()):
            states = CIRCUIT_STATES if current in CIRCUIT_STATES else (*CIRCUIT_STATES, current)
            for state in states:
                yield Observation(
                    1 if state == current else 0, {"breaker": breaker, "state": state}
                )

    def _family(
        self, family: CounterFamily | GaugeFamily
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            if not self.active:
                return []
            values = (
                counters.values().get(family, {})
                if isinstance(family, CounterFamily)
                else counters.gauges().get(family, {})
            )
            return [
                Observation(value, dict(zip(family.labels, labels, strict=True)))
                for labels, value in sorted(values.items())
            ]

        observe.__name__ = f"observe_{family.name}"
        return observe
