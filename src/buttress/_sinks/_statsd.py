"""The DogStatsD sink: buttress' metrics sent to Datadog (or any DogStatsD server).

Fed by the same background exporter as the log records: every monitored call queues
one item carrying its duration (and tracked output), which becomes a ``distribution``
sample; every ``interval`` the sink sends the counters' increase since the last send as
``count`` metrics and the in-flight calls and breaker states as gauges, all in one
buffered batch of UDP packets. Tags are in DogStatsD form (``function:predict``).

The ``datadog`` package is imported only when a sink is created without a client.
"""

from __future__ import annotations

import re
from typing import Any

from buttress._monitoring._emitter import exporter
from buttress._monitoring._logs import CallItem
from buttress._monitoring._stats import (
    CIRCUIT_STATES,
    FAMILIES,
    GAUGES,
    HISTOGRAMS,
    OUTCOMES,
    Labels,
    counters,
    snapshot,
)

__all__ = ["DogStatsdSink"]

_UNSAFE = re.compile(r"[^\w\-:./]")
#: Per-call samples kept between two sends at most; beyond this they are sent at once.
_MAX_PENDING = 2_000


def tag(key: str, value: str) -> str:
    """``key:value`` with the characters DogStatsD reserves (``|``, ``,``, ``#``...) replaced."""
    return f"{_UNSAFE.sub('_', key)}:{_UNSAFE.sub('_', value)}"


class DogStatsdSink:
    """Sends buttress' metrics to a DogStatsD client from the exporter thread.

    Create it with :func:`buttress.metrics.enable_dogstatsd` rather than directly.

    Args:
        client: a ``datadog.dogstatsd.DogStatsd`` (or anything with its ``increment``,
            ``gauge``, ``distribution``, ``open_buffer`` and ``close_buffer`` methods).
        prefix: the first part of every metric name (``buttress.calls``).
        tags: tags added to every metric, as ``"key:value"`` strings.
        owns_client: close the client's socket when the sink is closed.
    """

    wants_calls = True

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "buttress",
        tags: list[str] | None = None,
        owns_client: bool = False,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.tags = list(tags or [])
        self.owns_client = owns_client
        self._function_tags: dict[tuple[str, Labels], list[str]] = {}
        self._samples: list[tuple[str, float, list[str]]] = []
        self._last: dict[Any, float] = {}
        self._baseline()

    def __repr__(self) -> str:
        return f"<DogStatsdSink prefix={self.prefix!r}>"

    def _tags_of(self, name: str, labels: Labels) -> list[str]:
        key = (name, labels)
        tags = self._function_tags.get(key)
        if tags is None:
            tags = [*self.tags, tag("function", name), *(tag(k, v) for k, v in labels)]
            self._function_tags[key] = tags
        return tags

    def _baseline(self) -> None:
        # Counts before the sink existed are history, not this interval's increase.
        for item in snapshot():
            for outcome, count in zip(OUTCOMES, item.outcomes, strict=True):
                self._last[(item.name, item.labels, outcome)] = count
            self._last[(item.name, item.labels, "items")] = item.items
        for family, values in counters.values().items():
            for labels, value in values.items():
                self._last[(family.name, labels)] = value
        for histogram, (_, series) in counters.histograms().items():
            for labels, counts in series.items():
                self._last[(histogram.name, labels, "count")] = sum(counts[:-1])
                self._last[(histogram.name, labels, "sum")] = counts[-1]
        self._last["dropped"] = exporter.dropped

    def _delta(self, key: Any, value: float) -> float:
        previous = self._last.get(key, 0)
        self._last[key] = value
        return value - previous if value >= previous else 0  # below: totals were reset

    # -- exporter thread ---------------------------------------------------------------

    def observe(self, item: Any) -> None:
        if type(item) is not CallItem:
            return
        stats = item.site.stats
        function_tags = self._tags_of(stats.name, stats.labels)
        tags = [*function_tags, tag("outcome", OUTCOMES[item.outcome])]
        self._samples.append((f"{self.prefix}.call_duration_seconds", item.duration, tags))
        if item.tracked is not None:
            self._samples.append((f"{self.prefix}.output", item.tracked, function_tags))
        if item.stream is not None and item.stream[1] is not None:
            first = item.stream[1]
            self._samples.append((f"{self.prefix}.stream_first_item_seconds", first, function_tags))
        if len(self._samples) >= _MAX_PENDING:
            self.tick(totals=False)

    def tick(self, totals: bool = True) -> None:
        """Send the pending samples and, with ``totals``, the counters and gauges."""
        client = self.client
        prefix = self.prefix
        samples, self._samples = self._samples, []
        client.open_buffer()
        try:
            for metric, value, tags in samples:
                client.distribution(metric, value, tags=tags)
            if totals:
                self._send_totals(client, prefix)
        finally:
            client.close_buffer()

    def _send_totals(self, client: Any, prefix: str) -> None:
        for item in snapshot():
            tags = self._tags_of(item.name, item.labels)
            for outcome, count in zip(OUTCOMES, item.outcomes, strict=True):
                delta = self._delta((item.name, item.labels, outcome), count)
                if delta:
                    client.increment(
                        f"{prefix}.calls", delta, tags=[*tags, tag("outcome", outcome)]
                    )
            client.gauge(f"{prefix}.in_flight", item.in_flight, tags=tags)
            if item.first_buckets is not None:
                delta = self._delta((item.name, item.labels, "items"), item.items)
                if delta:
                    client.increment(f"{prefix}.stream_items", delta, tags=tags)
        values = counters.values()
        for family in FAMILIES:
            metric = f"{prefix}.{family.name.removeprefix('buttress_')}"
            for labels, value in values.get(family, {}).items():
                delta = self._delta((family.name, labels), value)
                if delta:
                    named = zip(family.labels, labels, strict=True)
                    tags = [*self.tags, *(tag(key, value) for key, value in named)]
                    client.increment(metric, delta, tags=tags)
        # Event-fed histograms travel as the increase of their count and sum (DogStatsD
        # distributions need every sample, which only the event itself had), gauges as is.
        histograms = counters.histograms()
        for histogram in HISTOGRAMS:
            metric = f"{prefix}.{histogram.name.removeprefix('buttress_')}"
            for labels, counts in histograms.get(histogram, ((), {}))[1].items():
                named = zip(histogram.labels, labels, strict=True)
                tags = [*self.tags, *(tag(key, value) for key, value in named)]
                observed = self._delta((histogram.name, labels, "count"), sum(counts[:-1]))
                if observed:
                    client.increment(f"{metric}.count", observed, tags=tags)
                    total = self._delta((histogram.name, labels, "sum"), counts[-1])
                    client.increment(f"{metric}.sum", total, tags=tags)
        gauges = counters.gauges()
        for gauge in GAUGES:
            metric = f"{prefix}.{gauge.name.removeprefix('buttress_')}"
            for labels, level in gauges.get(gauge, {}).items():
                named = zip(gauge.labels, labels, strict=True)
                client.gauge(
                    metric, level, tags=[*self.tags, *(tag(key, value) for key, value in named)]
                )
        for breaker, current in counters.circuits().items():
            states = CIRCUIT_STATES if current in CIRCUIT_STATES else (*CIRCUIT_STATES, current)
            for state in states:
                client.gauge(
                    f"{prefix}.circuit_state",
                    1 if state == current else 0,
                    tags=[*self.tags, tag("breaker", breaker), tag("state", state)],
                )
        dropped = self._delta("dropped", exporter.dropped)
        if dropped:
            client.increment(f"{prefix}.monitor_dropped", dropped, tags=self.tags)

    def close(self) -> None:
        if self.owns_client:
            self.client.close_socket()
