"""The OpenTelemetry sink: spans, span annotations, metrics and server spans.

Every module here imports ``opentelemetry`` (the API only, never the SDK);
:mod:`buttress.otel` imports them when it is enabled, and nothing else does, so
``import buttress`` never loads OpenTelemetry.

Layout:
    _spans        the tracer features open spans through (installed in ``_tracing``)
    _annotations  the events subscriber that annotates the current span
    _metrics      buttress' metric families through an OpenTelemetry Meter
    _http         server spans for the aiohttp and ASGI integrations (W3C propagation)
"""
