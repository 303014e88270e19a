"""The public API as a user's code sees it: type-checked by mypy, never executed."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from typing_extensions import assert_type

import buttress
from buttress import metrics

# --- monitor -------------------------------------------------------------------------


@buttress.monitor
def embed(text: str, *, normalize: bool = True) -> list[float]:
    return [float(len(text))]


@buttress.monitor(
    "rank",
    log_level="DEBUG",
    sample_rate=0.1,
    slow_threshold=timedelta(milliseconds=250),
    track_output=lambda scores: max(scores),
    redact={"query": "[redacted]"},
    labels={"model": "bm25"},
)
async def rank(query: str, k: int = 10) -> list[float]:
    return [0.5] * k


class Model:
    @buttress.monitor
    def predict(self, x: int) -> int:
        return x


assert_type(embed("a", normalize=False), list[float])
assert_type(Model().predict(1), int)


async def use() -> None:
    assert_type(await rank("q", k=3), list[float])
    with buttress.request_scope(request_id="r1") as fields:
        assert_type(fields, Mapping[str, Any])
    body, content_type = await metrics.render("text/plain")
    assert_type(body, bytes)
    assert_type(content_type, str)


assert_type(buttress.flush_monitoring(timeout=1.0), bool)
assert_type(buttress.monitoring_stats(), buttress.MonitoringStats)
buttress.configure_monitoring(queue_size=1000, interval=timedelta(seconds=5))
logging.getLogger().handlers[0].setFormatter(buttress.JsonFormatter())
assert_type(metrics.generate_latest(), bytes)
