"""HTTP-level metrics for the integrations' middlewares: one recorder for aiohttp and ASGI.

A middleware created with ``http_metrics=True`` reads :func:`_clock.monotonic` when a
request arrives and calls :func:`record_request` once when its response is over. That
adds one to ``buttress_http_requests_total`` and observes the duration in
``buttress_http_request_duration_seconds`` in the plain-Python totals of
:data:`~buttress._monitoring._stats.counters` (one short lock, no I/O), which every
metrics sink reads as it reads the other event-fed families: the Prometheus collector,
the multiprocess writer (so the totals of several workers add up), DogStatsD and
OpenTelemetry.

Every label has a bounded set of values, so a scan of random URLs or methods cannot
grow the series without limit:

- ``method``: one of :data:`METHODS`, else :data:`OTHER_METHOD`;
- ``route``: the matched route's template (``/items/{item_id}``), never the raw path;
  :data:`UNMATCHED` for a request no route matched (a 404, a 405 from the router);
- ``status_class``: ``"1xx"`` to ``"5xx"``, :data:`OTHER_STATUS` for a status outside
  100-599. A request whose handler raised before an answer began counts as ``"5xx"``:
  the server answers 500.
"""

from __future__ import annotations

from buttress import _clock

from ._stats import HTTP_DURATION, HTTP_REQUESTS, counters

__all__ = [
    "METHODS",
    "OTHER_METHOD",
    "OTHER_STATUS",
    "UNMATCHED",
    "http_metrics_option",
    "method_label",
    "record_request",
    "start",
    "status_class",
]

#: The request methods that keep their name as the ``method`` label (RFC 9110 and PATCH).
METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)
#: The ``method`` of any other request method (OpenTelemetry's spelling).
OTHER_METHOD = "_OTHER"
#: The ``route`` of a request that matched no route.
UNMATCHED = "unmatched"
#: The ``status_class`` of a status code outside 100-599.
OTHER_STATUS = "other"

_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def http_metrics_option(value: object) -> bool:
    """Check the middlewares' ``http_metrics`` argument.

    Raises:
        TypeError: it is not a bool.
    """
    if not isinstance(value, bool):
        raise TypeError(f"http_metrics must be True or False, got {value!r}")
    return value


def method_label(method: str) -> str:
    """``method`` if it is a known request method, else :data:`OTHER_METHOD`."""
    return method if method in METHODS else OTHER_METHOD


def status_class(status: int) -> str:
    """``"2xx"`` for 200-299 and so on; :data:`OTHER_STATUS` outside 100-599."""
    return _CLASSES[status // 100 - 1] if 100 <= status <= 599 else OTHER_STATUS


def start() -> float:
    """The clock reading a request's duration starts from."""
    return _clock.monotonic()


def record_request(method: str, route: str | None, status: int, started: float) -> None:
    """Count one answered request and its duration since ``started`` (from :func:`start`).

    Args:
        method: the request method as received.
        route: the matched route's template, ``None`` when no route matched.
        status: the status code the server answered with (500 for a handler that raised
            before answering).
        started: what :func:`start` returned when the request arrived.
    """
    seconds = max(0.0, _clock.monotonic() - started)
    labels = (method_label(method), UNMATCHED if route is None else route, status_class(status))
    counters.add_observed(HTTP_REQUESTS, HTTP_DURATION, labels, seconds)
