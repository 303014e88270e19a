"""Where buttress' metrics go: the Prometheus collector and the DogStatsD sink.

Both read the plain-Python totals that ``@monitor`` and the event counters keep in
:mod:`buttress._monitoring`; nothing in monitoring imports them. :mod:`buttress.metrics`
is their only user and the public way to switch them on.

Layout:
    _prometheus  the prometheus-client collector (imports prometheus-client: imported by
                 buttress.metrics only when enabled)
    _statsd      the DogStatsD sink, fed by the exporter thread
"""
