"""Ready-made glue for web frameworks.

- :mod:`buttress.integrations.aiohttp`: a ``/metrics`` handler and a middleware.
- :mod:`buttress.integrations.fastapi`: a ``/metrics`` route or ASGI app, and an ASGI
  middleware that binds a request id.

Both middlewares count HTTP requests by method, route template and status class when
given ``http_metrics=True``.

Each submodule imports its framework; this package imports nothing.
"""
