"""buttress' metrics, for Prometheus (prometheus-client) and DogStatsD (datadog).

Importing this module imports neither library; the functions that need one import it
when called. ``@monitor`` and the event hook keep plain-Python totals; this module makes
them visible:

- :func:`enable` registers a collector in a prometheus-client registry (the default one
  unless you pass yours) and starts counting what the other decorators report through
  :data:`buttress.events` (retries, cache results, memory-guard decisions, breaker
  states...). Until a metrics sink is enabled nothing subscribes, so the event hook
  costs nothing.
- :func:`generate_latest` renders the exposition text; :func:`render` does it in a worker
  thread (rendering a large registry takes long enough to stall an event loop) and
  negotiates OpenMetrics from an ``Accept`` header. :mod:`buttress.integrations.aiohttp`
  and :mod:`buttress.integrations.fastapi` serve it as ``/metrics``.
- :func:`push_to_gateway` sends it to a Prometheus Pushgateway, for batch jobs that end
  before any scrape.
- :func:`enable_dogstatsd` sends the same metrics to a DogStatsD server from the
  background exporter thread.

Example::

    from buttress import metrics

    metrics.enable()                 # into prometheus_client.REGISTRY
    body = metrics.generate_latest()
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from ._errors import ConfigurationError
from ._monitoring._decorator import histogram_bounds
from ._monitoring._emitter import exporter
from ._monitoring._stats import counters, duration_buckets
from ._monitoring._stats import set_duration_buckets as _set_default_buckets
from ._sinks._statsd import DogStatsdSink, tag
from ._wrapping import check_names

if TYPE_CHECKING:
    from prometheus_client.registry import Collector, CollectorRegistry

    from ._sinks._multiprocess import MultiprocessSink

__all__ = [
    "current_registry",
    "disable",
    "disable_dogstatsd",
    "duration_buckets",
    "enable",
    "enable_dogstatsd",
    "generate_latest",
    "push_to_gateway",
    "push_to_gateway_async",
    "render",
    "set_duration_buckets",
]

_lock = threading.Lock()
_registry: CollectorRegistry | None = None
_collector: Collector | None = None
_dogstatsd: DogStatsdSink | None = None
#: The writer of this process's totals in multiprocess mode (``None`` otherwise).
_multiprocess: MultiprocessSink | None = None


def _prometheus_client() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:  # pragma: no cover - the extra is installed in the tests
        raise ImportError(
            "buttress.metrics needs prometheus-client: pip install 'buttress[prometheus]'"
        ) from exc
    return prometheus_client


def enable(
    registry: CollectorRegistry | None = None, *, multiprocess: bool | None = None
) -> CollectorRegistry:
    """Expose buttress' metrics in ``registry`` and start counting decorator events.

    Args:
        registry: a ``prometheus_client.CollectorRegistry``; ``prometheus_client.REGISTRY``
            (what ``start_http_server`` and most integrations serve) by default, or, in
            multiprocess mode, a new registry holding a ``MultiProcessCollector``.
        multiprocess: for several worker processes behind one port (``uvicorn
            --workers 4``, gunicorn): each process writes its totals into
            prometheus-client's multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``)
            from the exporter thread, and the registry gets a ``MultiProcessCollector``
            that adds up every process's files, so any worker's ``/metrics`` answers
            with the totals of all. ``None`` (the default) turns it on when
            ``PROMETHEUS_MULTIPROC_DIR`` is set. See the fleet guide.

    Returns:
        The registry now holding buttress' collector. Enabling again with another
        registry moves the collector there; with the same one it does nothing.

    Raises:
        ImportError: prometheus-client is not installed.
        ValueError: the registry already has a metric of one of buttress' names.
        ConfigurationError: ``multiprocess=True`` without ``PROMETHEUS_MULTIPROC_DIR``
            naming a directory.
    """
    global _registry, _collector, _multiprocess
    check_names()  # the last function decorated: the others were as the next one began
    client = _prometheus_client()
    from ._sinks._multiprocess import (  # imports prometheus-client
        ENVIRONMENT,
        MultiprocessSink,
        directory_from_environment,
    )
    from ._sinks._prometheus import ButtressCollector  # imports prometheus-client

    directory = directory_from_environment()
    if multiprocess is None:
        multiprocess = directory is not None
    elif multiprocess and (directory is None or not os.path.isdir(directory)):
        raise ConfigurationError(
            f"multiprocess=True needs {ENVIRONMENT} to name an existing directory (the "
            f"one every worker writes to, emptied before they start), got {directory!r}"
        )
    with _lock:
        if (
            _registry is not None
            and (registry is None or _registry is registry)
            and (_multiprocess is not None) == multiprocess
        ):
            return _registry
        collector: Collector
        if multiprocess:
            assert directory is not None
            target: CollectorRegistry = (
                registry if registry is not None else client.CollectorRegistry()
            )
            collector = client.multiprocess.MultiProcessCollector(None, path=directory)
        else:
            target = registry if registry is not None else client.REGISTRY
            collector = ButtressCollector()
        target.register(collector)
        if _registry is not None and _collector is not None:
            _registry.unregister(_collector)
        else:
            counters.acquire()
        _registry, _collector = target, collector
        old, _multiprocess = _multiprocess, (
            MultiprocessSink(directory) if multiprocess and directory is not None else None
        )
        sink = _multiprocess
    if old is not None:
        exporter.remove_sink(old)
    if sink is not None:
        exporter.add_sink(sink)
    return target


def disable() -> None:
    """Remove buttress' collector from its registry and stop counting events for it."""
    global _registry, _collector, _multiprocess
    with _lock:
        registry, collector, sink = _registry, _collector, _multiprocess
        _registry = _collector = _multiprocess = None
        if registry is None or collector is None:
            return
        registry.unregister(collector)
        counters.release()
    if sink is not None:
        exporter.remove_sink(sink)


def set_duration_buckets(buckets: Sequence[float]) -> None:
    """Set the default upper bounds of ``buttress_call_duration_seconds`` (and of
    ``buttress_stream_first_item_seconds``) for every monitored function, and of
    ``buttress_http_request_duration_seconds`` (the integrations' ``http_metrics``).

    Functions given ``@monitor(duration_buckets=...)`` keep their own. Call it at start-up,
    before the first calls (and before :func:`buttress.otel.enable`, whose instruments
    take the buckets as advice when created): the histograms that use the default start
    again in the new buckets (counts cannot be moved from one set of buckets to another).
    :func:`duration_buckets` returns the bounds in force (1 ms to 30 s by default).

    Args:
        buckets: upper bounds in seconds, positive, finite and strictly increasing;
            ``+Inf`` is always added.

    Raises:
        ConfigurationError: for bounds that cannot work.
    """
    _set_default_buckets(histogram_bounds(buckets, "duration_buckets"))


def current_registry() -> CollectorRegistry | None:
    """The registry buttress' metrics are exposed in, or ``None`` before :func:`enable`."""
    return _registry


def _target(registry: CollectorRegistry | None) -> CollectorRegistry:
    check_names()
    if registry is None:
        current = _registry
        registry = current if current is not None else enable()
    sink = _multiprocess
    if sink is not None:  # this process's own totals as of now; the others' lag an interval
        sink.write()
    return registry


def generate_latest(registry: CollectorRegistry | None = None) -> bytes:
    """The Prometheus text exposition of ``registry``, in the calling thread.

    Args:
        registry: what to render; by default the registry given to :func:`enable`
            (which is called with the default registry if it was not yet).
    """
    client = _prometheus_client()
    return client.generate_latest(_target(registry))  # type: ignore[no-any-return]


async def render(
    accept: str | None = None, registry: CollectorRegistry | None = None
) -> tuple[bytes, str]:
    """Render the exposition in a worker thread; return ``(body, content_type)``.

    The event loop (asyncio or trio) keeps serving while a large registry renders.

    Args:
        accept: the scraper's ``Accept`` header; OpenMetrics is rendered when it asks.
        registry: as for :func:`generate_latest`.
    """
    client = _prometheus_client()
    encoder, content_type = client.exposition.choose_encoder(accept or "")
    body = await anyio.to_thread.run_sync(lambda: encoder(_target(registry)))
    return body, content_type


def push_to_gateway(
    gateway: str,
    job: str,
    *,
    registry: CollectorRegistry | None = None,
    grouping_key: Mapping[str, Any] | None = None,
    replace: bool = True,
    timeout: float | None = 30,
    handler: Callable[..., Any] | None = None,
) -> None:
    """Push the metrics to a Prometheus Pushgateway (for batch jobs that end before a scrape).

    Args:
        gateway: the Pushgateway's address, ``"pushgateway:9091"`` or a URL.
        job: the ``job`` label the metrics are grouped under.
        registry: as for :func:`generate_latest`. A dedicated registry keeps the process
            and platform collectors of the default one out of the push.
        grouping_key: more grouping labels (an instance, a shard).
        replace: ``True`` replaces the group's metrics (HTTP PUT, ``push_to_gateway``);
            ``False`` replaces only metrics of the same names (POST, ``pushadd``).
        timeout: seconds for the HTTP request.
        handler: a prometheus-client push handler (for authentication).

    Raises:
        OSError: the gateway could not be reached or refused the push (prometheus-client
            raises ``urllib.error.URLError``/``HTTPError``).

    It blocks while the request runs; from async code use :func:`push_to_gateway_async`.
    """
    client = _prometheus_client()
    push = client.push_to_gateway if replace else client.pushadd_to_gateway
    options: dict[str, Any] = {"grouping_key": dict(grouping_key or {}), "timeout": timeout}
    if handler is not None:
        options["handler"] = handler
    push(gateway, job=job, registry=_target(registry), **options)


async def push_to_gateway_async(
    gateway: str,
    job: str,
    *,
    registry: CollectorRegistry | None = None,
    grouping_key: Mapping[str, Any] | None = None,
    replace: bool = True,
    timeout: float | None = 30,  # noqa: ASYNC109 - the HTTP request's own timeout
    handler: Callable[..., Any] | None = None,
) -> None:
    """:func:`push_to_gateway` in a worker thread, so the event loop keeps running."""
    await anyio.to_thread.run_sync(
        functools.partial(
            push_to_gateway,
            gateway,
            job,
            registry=registry,
            grouping_key=grouping_key,
            replace=replace,
            timeout=timeout,
            handler=handler,
        )
    )


def enable_dogstatsd(
    host: str = "127.0.0.1",
    port: int = 8125,
    *,
    client: Any = None,
    prefix: str = "buttress",
    tags: Mapping[str, str] | None = None,
) -> DogStatsdSink:
    """Send buttress' metrics to DogStatsD (the Datadog agent) from the exporter thread.

    Every monitored call becomes a ``<prefix>.call_duration_seconds`` distribution sample
    (and ``<prefix>.output`` for ``track_output``); every exporter interval (see
    :func:`buttress.configure_monitoring`), the increase of ``<prefix>.calls`` and of
    the event counters (``<prefix>.retries``, ``<prefix>.cache_requests``...) is sent as
    counts, ``<prefix>.in_flight`` and ``<prefix>.circuit_state`` as gauges. Tags are in
    DogStatsD form: ``function:predict``, ``outcome:ok``.

    Args:
        host: the DogStatsD server (ignored with ``client``).
        port: its UDP port (ignored with ``client``).
        client: a ``datadog.dogstatsd.DogStatsd`` of your own (for a Unix socket,
            origin detection or other options); it is not closed by buttress.
        prefix: the first part of every metric name.
        tags: tags added to every metric (``{"service": "ranker"}``).

    Returns:
        The sink; :func:`disable_dogstatsd` stops it. Enabling again replaces it.

    Raises:
        ImportError: no ``client`` was given and the datadog package is not installed.

    Per-call samples travel through the exporter's bounded queue: when it is full they
    are dropped (and counted) like log records. Counts never are.
    """
    global _dogstatsd
    owns = client is None
    if client is None:
        try:
            from datadog.dogstatsd.base import DogStatsd
        except ImportError as exc:  # pragma: no cover - the extra is installed in the tests
            raise ImportError(
                "enable_dogstatsd needs the datadog package: pip install 'buttress[datadog]'"
            ) from exc
        client = DogStatsd(host=host, port=port, disable_telemetry=True)
    sink = DogStatsdSink(
        client,
        prefix=prefix,
        tags=[tag(key, value) for key, value in (tags or {}).items()],
        owns_client=owns,
    )
    disable_dogstatsd()
    with _lock:
        counters.acquire()
        _dogstatsd = sink
    exporter.add_sink(sink)
    return sink


def disable_dogstatsd() -> None:
    """Send what is pending and stop the DogStatsD sink (if one is enabled)."""
    global _dogstatsd
    with _lock:
        sink, _dogstatsd = _dogstatsd, None
    if sink is None:
        return
    exporter.remove_sink(sink)
    counters.release()
