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

A worker forked from a process that had enabled the mode (gunicorn ``--preload``, a
``multiprocessing`` pool on fork) inherits that process's totals with its memory. Those
are the parent's, written in the parent's files already, so the worker writes only what
it counted since the fork: the totals at the fork (taken in the parent just before it)
are subtracted from its counters, histograms and in-flight gauges. Its exporter thread
starts again at once (see ``Exporter._after_fork``).

Importing this module imports prometheus-client; only :mod:`buttress.metrics` does.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections.abc import Iterable, Iterator
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

#: A value as written: (file kind, metric, sample), the sample's value per file format.
_Written = tuple[str, Any, Any]
#: A series: (sample name, its labels in order).
_Series = tuple[str, tuple[tuple[str, str], ...]]


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
        #: the totals inherited at a fork, subtracted from what this process writes
        self._inherited: dict[_Series, float] = {}
        #: the totals taken in the parent just before a fork (see ``_before_fork``)
        self._at_fork: dict[_Series, float] | None = None
        atexit.register(self.close)
        _sinks.add(self)

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
            inherited = self._inherited
            for kind, metric, sample in self._values():
                labels = sample.labels
                key = mmap_key(
                    metric.name,
                    sample.name,
                    list(labels),
                    list(labels.values()),
                    metric.documentation,
                )
                amount = float(sample.value)
                if inherited:
                    amount -= inherited.get((sample.name, tuple(labels.items())), 0.0)
                self._file(kind).write_value(key, amount, 0.0)

    def _values(self) -> Iterator[_Written]:
        """Every value to write, in the files' format (a count per bucket)."""
        for metric in self._collector.collect():
            if metric.type == "counter":
                yield from (("counter", metric, sample) for sample in metric.samples)
            elif metric.type == "gauge":
                kind = f"gauge_{_GAUGE_MODE}"
                yield from ((kind, metric, sample) for sample in metric.samples)
            elif metric.type == "histogram":
                yield from (("histogram", metric, s) for s in _per_bucket(metric.samples))

    def _before_fork(self) -> None:
        # In the parent, where every lock works: what a child will inherit. Gauges
        # other than calls in flight (a breaker's state) are the child's state too.
        if self._closed:
            return
        self._at_fork = {
            (sample.name, tuple(sample.labels.items())): float(sample.value)
            for kind, metric, sample in self._values()
            if not kind.startswith("gauge") or metric.name.endswith("_in_flight")
        }

    def _after_fork(self, child: bool) -> None:
        taken, self._at_fork = self._at_fork, None
        if child:
            self._lock = threading.Lock()  # it may have been held by a parent's thread
            if taken is not None:  # absolute totals: a grandchild's replace a child's
                self._inherited = taken

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


#: Every sink alive, for the fork hooks.
_sinks: weakref.WeakSet[MultiprocessSink] = weakref.WeakSet()


def _before_fork() -> None:
    for sink in list(_sinks):
        sink._before_fork()


def _after_fork(child: bool) -> None:
    for sink in list(_sinks):
        sink._after_fork(child)


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent on Windows only
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=lambda: _after_fork(False),
        after_in_child=lambda: _after_fork(True),
    )


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
