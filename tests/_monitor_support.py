"""Helpers shared by the tests/test_monitor_*.py files (not a test module itself)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client.parser import text_string_to_metric_families

from buttress import configure_monitoring, metrics
from buttress._monitoring import _stats
from buttress._monitoring._emitter import THREAD_NAME, exporter
from buttress._monitoring._stats import counters

MONITOR_LOGGER = logging.getLogger("buttress.monitor")


def exporter_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME and t.is_alive()]


def reset_monitoring() -> None:
    """Stop the exporter thread and sinks, disable metrics, zero every total."""
    metrics.disable()
    metrics.disable_dogstatsd()
    exporter.reset()
    _stats.reset()
    configure_monitoring(queue_size=10_000, interval=1.0, shutdown_timeout=5.0)
    assert not exporter_threads(), "the exporter thread outlived the test"
    assert not counters.listening, "the metrics still listen to events"


@contextmanager
def fresh_monitoring() -> Iterator[None]:
    reset_monitoring()
    try:
        yield
    finally:
        reset_monitoring()


class Records(logging.Handler):
    """Keeps every record it is handed (from the exporter thread)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.threads: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        self.threads.add(threading.current_thread().name)
        self.records.append(record)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> logging.LogRecord:
        return self.records[index]

    def of(self, function: str) -> list[logging.LogRecord]:
        return [r for r in self.records if getattr(r, "function", None) == function]


@contextmanager
def capture(level: int = logging.DEBUG) -> Iterator[Records]:
    """Collect ``buttress.monitor`` records; the logger's level is set for the block."""
    handler = Records()
    previous = MONITOR_LOGGER.level
    MONITOR_LOGGER.setLevel(level)
    MONITOR_LOGGER.addHandler(handler)
    try:
        yield handler
    finally:
        MONITOR_LOGGER.removeHandler(handler)
        MONITOR_LOGGER.setLevel(previous)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str | bytes) -> Samples:
    """Every sample of a Prometheus exposition, keyed by (sample name, labels)."""
    if isinstance(text, bytes):
        text = text.decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample of ``name`` with ``labels``; a static label some other monitor declares
    (which this function carries as ``"none"``) need not be given."""
    found = samples.get((name, frozenset(labels.items())))
    if found is not None:
        return found
    for (sample, have), amount in samples.items():
        if sample != name:
            continue
        extra = dict(have)
        if all(extra.pop(key, None) == wanted for key, wanted in labels.items()) and all(
            rest == "none" for rest in extra.values()
        ):
            return amount
    return None
