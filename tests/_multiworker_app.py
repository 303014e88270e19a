"""The app served by several uvicorn workers in tests/test_metrics_multiprocess.py.

Each ``GET /work`` makes one monitored call (with a retry below it that retries the first
attempt of every third call) and answers with the worker's pid; ``/metrics`` answers
with the totals of every worker (buttress' multiprocess mode, on by
``PROMETHEUS_MULTIPROC_DIR``), the HTTP-level request counts included.
"""

from __future__ import annotations

import itertools
import os

from fastapi import FastAPI

from buttress import configure_monitoring, monitor, retry
from buttress.integrations.fastapi import RequestContextMiddleware, add_metrics_route

configure_monitoring(interval=0.2)  # the workers write their totals five times a second
app = FastAPI()
add_metrics_route(app)
app.add_middleware(RequestContextMiddleware, http_metrics=True)
_calls = itertools.count()


@monitor("mw.work")
@retry(max_retries=1, base_delay=0, exceptions=(ConnectionError,))
async def work(first: list[bool]) -> int:
    if first and first.pop():
        raise ConnectionError("the first attempt fails")
    return os.getpid()


@app.get("/work")
async def serve() -> dict[str, int]:
    flaky = next(_calls) % 3 == 0
    return {"pid": await work([True] if flaky else []), "retried": int(flaky)}
