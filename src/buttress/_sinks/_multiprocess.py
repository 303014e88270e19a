"""Prometheus' multiprocess mode: every worker writes its totals, any worker serves the sum.

Several worker processes (``uvicorn --workers 4``, gunicorn) each keep their own totals,
and a scrape reaches one of them. prometheus-client's answer is its multiprocess mode: each
process writes its values into memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR``, and
the process that answers a scrape reads and adds up the files of all of them
(``MultiProcessCollector``). Here buttress does the writing side without touching the hot
path: :class:`MultiprocessSink`, run by the exporter thread every interval (and by the
answering process right before it renders), writes what :class:`ButtressCollector`
computes from this process's totals into this process's files, in prometheus-client's
format. Counters and histograms add up across processes (those of exited workers too,
so totals never go back); gauges (calls in flight, breaker states) are written in the
``livesum`` mode: the sum over the processes alive, a worker's files being removed when
it exits (and by ``multiprocess.mark_process_dead`` from gunicorn's ``child_exit``).

Importing this module imports prometheus-client; only :mod:`buttress.metrics` does.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import multiprocess
from prometheus_client.mmap_dict import MmapedDict as _MmapedDict
from prometheus_client.mmap_dict import mmap_key

from ._prometheus import ButtressCollector

__all__ = ["ENVIRONMENT", "MultiprocessSink", "directory_from_environment"]

#: The environment variable prometheus-client reads (its older lower-case spelling too).
ENVIRONMENT = "PROMETHEUS_MULTIPROC_DIR"

# The file format's own writer (MultiProcessCollector reads what it writes), and the
# clean-up of a process's gauges; both untyped in prometheus-client.
MmapedDict: Any = _MmapedDict
mark_process_dead: Any = multiprocess.mark_process_dead

#: The mode of every gauge: the sum over live processes.
_GAUGE_MODE = "livesum"


def directory_from_environment() -> str | None:
    """The multiprocess directory prometheus-client would use, or ``None``."""
    return os.environ.get(ENVIRONMENT) or os.environ.get(ENVIRONMENT.lower()) or None


class MultiprocessSink:
    """Writes this process's buttress totals into the multiprocess directory.

    An exporter sink (see ``_monitoring._emitter.Sink``): :meth:`tick` runs in the
    exporter thread every interval; :meth:`write` may also be called by any thread (the
    one rendering a scrape). Values are written whole, not added: a file holds this
    process's totals as of the last write.
    """

    wants_calls = False

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._collector = ButtressCollector()
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._files: dict[str, Any] = {}
        self._closed = False
        atexit.register(self.close)

    def __repr__(self) -> str:
        return f"<MultiprocessSink {self.directory!r}>"

    def observe(self, item: Any) -> None:
        """Nothing per call: the totals are read when written."""

    def tick(self) -> None:
        self.write()

    def _file(self, kind: str) -> Any:
        pid = os.getpid()
        if pid != self._pid:  # a forked child writes files of its own
            self._files = {}
            self._pid = pid
        found = self._files.get(kind)
        if found is None:
            path = os.path.join(self.directory, f"{kind}_{pid}.db")
            found = self._files[kind] = MmapedDict(path)
        return found

    def write(self) -> None:
        """Write this process's totals now."""
        with self._lock:
            if self._closed:
                return
            for metric in self._collector.collect():
                if metric.type == "counter":
                    self._write(self._file("counter"), metric, metric.samples)
                elif metric.type == "gauge":
                    self._write(self._file(f"gauge_{_GAUGE_MODE}"), metric, metric.samples)
                elif metric.type == "histogram":
                    self._write(self._file("histogram"), metric, _per_bucket(metric.samples))

    @staticmethod
    def _write(file: Any, metric: Any, samples: Iterable[Any]) -> None:
        for sample in samples:
            labels = sample.labels
            key = mmap_key(
                metric.name, sample.name, list(labels), list(labels.values()), metric.documentation
            )
            file.write_value(key, float(sample.value), 0.0)

    def close(self) -> None:
        """A last write; then this process's gauges leave the sum (its counters stay)."""
        if self._closed:
            return
        self.write()
        with self._lock:
            self._closed = True
            files, self._files = self._files, {}
            mine = self._pid == os.getpid()
        for file in files.values():
            file.close()
        if mine:
            mark_process_dead(os.getpid(), self.directory)
        atexit.unregister(self.close)


def _per_bucket(samples: Iterable[Any]) -> Iterable[Any]:
    """A histogram's samples as the files hold them: a count per bucket (not cumulative),
    and the sum; the count is what the reader adds up from the buckets."""
    previous: dict[tuple[tuple[str, str], ...], float] = {}
    for sample in samples:
        if sample.name.endswith("_bucket"):
            series = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
            below = previous.get(series, 0.0)
            previous[series] = sample.value
            yield sample._replace(value=sample.value - below, exemplar=None)
        elif sample.name.endswith("_sum"):
            yield sample
