"""Prometheus exemplars: with tracing on, ``buttress_call_duration_seconds`` buckets carry
the trace id of a recent call in the OpenMetrics exposition (parsed with
prometheus-client's own OpenMetrics parser)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import anyio.lowlevel
import pytest
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from _otel_support import telemetry
from buttress import metrics, monitor, otel

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@contextmanager
def exposed() -> Iterator[CollectorRegistry]:
    """buttress' metrics in a registry of their own (inside ``telemetry()``, which starts
    from fresh monitoring)."""
    registry = CollectorRegistry()
    metrics.enable(registry)
    try:
        yield registry
    finally:
        metrics.disable()


async def exposition(registry: CollectorRegistry, accept: str | None) -> str:
    body, _ = await metrics.render(accept, registry)
    return body.decode()


def exemplars(text: str, function: str) -> dict[str, dict[str, str]]:
    """The exemplar labels of each duration bucket of ``function``, by ``le``."""
    found = {}
    for family in text_string_to_metric_families(text):
        if family.name != "buttress_call_duration_seconds":
            continue
        for sample in family.samples:
            if sample.labels.get("function") == function and sample.exemplar is not None:
                found[sample.labels["le"]] = dict(sample.exemplar.labels)
    return found


@pytest.mark.anyio
async def test_the_duration_histogram_carries_the_trace_id() -> None:
    @monitor("embed")
    async def embed() -> None:
        await anyio.lowlevel.checkpoint()

    with telemetry(metrics=False) as spans, exposed() as registry:
        await embed()
        text = await exposition(registry, OPENMETRICS)
        classic = await exposition(registry, None)
        span = spans.one("embed")
    found = exemplars(text, "embed")
    assert len(found) == 1, text
    ((bucket, labels),) = found.items()
    assert labels == {
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
    }
    # the exemplar sits in the bucket its duration fell in, and the classic text
    # format, which has no exemplars, is unchanged
    assert float(bucket) > 0
    assert "trace_id" not in classic


def test_no_exemplar_without_tracing_or_for_unsampled_traces() -> None:
    @monitor("quiet")
    def quiet() -> None:
        pass

    with telemetry(metrics=False, sampler=ALWAYS_OFF) as spans, exposed() as registry:
        quiet()
        assert spans.spans() == []
        otel.disable()
        quiet()
        text = anyio.run(exposition, registry, OPENMETRICS)
    assert exemplars(text, "quiet") == {}
    assert re.search(r'buttress_call_duration_seconds_count\{function="quiet"[^}]*\} 2\.0', text)


def test_the_latest_sampled_call_of_a_bucket_is_its_exemplar() -> None:
    @monitor("fast")
    def fast() -> None:
        pass

    with telemetry(metrics=False) as spans, exposed() as registry:
        for _ in range(5):
            fast()
        traces = [f"{span.context.trace_id:032x}" for span in spans.named("fast")]
        text = anyio.run(exposition, registry, OPENMETRICS)
    shown = [labels["trace_id"] for labels in exemplars(text, "fast").values()]
    assert traces[-1] in shown
    assert set(shown) <= set(traces)
    assert len(shown) < len(traces)  # one per bucket: calls this quick share a bucket
