"""End to end, on the real wire format: examples/fastapi_gateway.py served by uvicorn, its
traces and metrics exported by the OpenTelemetry SDK's OTLP/HTTP exporters to a small
receiver on 127.0.0.1 that decodes the protobuf payloads (``opentelemetry-proto``).

A request carrying a ``traceparent`` produces spans of that trace: the server span, the
monitored endpoint's span with the upstream client's retries as span events and the cache
result as an attribute; a second request for the same text is a cache hit.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import httpx
import pytest

from _monitor_support import fresh_monitoring
from _otel_support import OtlpReceiver
from _servers import UvicornThread, example_module, upstream_in_a_thread
from buttress import otel
from buttress._demo.upstream import Faults, draw_call

DIM = 384
FLAKY = Faults(
    dim=DIM,
    error_rate=0.3,
    retry_after=0.01,
    nan_rate=0.1,
    wrong_dim_rate=0.0,
    spike_rate=0.0,
    hang_rate=0.0,
    latency=(0.0, 0.003),
)
SEED = 11
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
SERVER, INTERNAL = 2, 1  # OTLP's Span.SpanKind numbers


@pytest.fixture
def example() -> Iterator[ModuleType]:
    with example_module("fastapi_gateway") as module:
        yield module


def retried_once(text: str) -> bool:
    """The seeded upstream fails ``text``'s first call and serves its second."""
    first, second = (draw_call(FLAKY, SEED, text, n).fault for n in range(2))
    return first != "ok" and second == "ok"


def test_a_traced_request_reaches_the_collector_with_retries_and_the_cache_result(
    example: ModuleType,
) -> None:
    text = next(f"query {n}" for n in range(1000) if retried_once(f"query {n}"))
    with fresh_monitoring(), OtlpReceiver() as receiver:
        tracer_provider, meter_provider = example.export_otlp(receiver.url, "gateway-under-test")
        try:
            with upstream_in_a_thread(FLAKY, seed=SEED) as upstream, UvicornThread(
                example.create_app(upstream.url)
            ) as url, httpx.Client(base_url=url, timeout=30) as client:
                traced = client.get(
                    "/embed",
                    params={"text": text},
                    headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
                )
                again = client.get("/embed", params={"text": text})
            assert traced.status_code == 200, traced.text
            assert again.status_code == 200, again.text
            assert tracer_provider.force_flush(10_000)
            assert meter_provider.force_flush(10_000)
        finally:
            otel.disable()
            tracer_provider.shutdown()
            meter_provider.shutdown()
        spans = receiver.spans()
        metric_points = receiver.metric_points()
    assert {"/v1/traces", "/v1/metrics"} <= set(receiver.paths)

    ours = [span for span in spans if span.trace_id == TRACE_ID]
    (server,) = [span for span in ours if span.kind == SERVER]
    assert server.name == "GET /embed"
    assert server.parent_span_id == PARENT_ID
    assert server.service == "gateway-under-test"
    assert server.scope == "buttress"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["buttress.request_id"] == traced.headers["X-Request-ID"]
    (endpoint,) = [span for span in ours if span.name == "http.embed"]
    assert endpoint.kind == INTERNAL
    assert endpoint.parent_span_id == server.span_id
    assert endpoint.attributes["buttress.cache.result"] == "miss"
    (retry,) = endpoint.events_named("buttress.retry")
    assert retry["buttress.function"] == "EmbeddingClient.embed"
    assert retry["buttress.retry.attempt"] == 1
    assert retry["error.type"] in ("aiohttp.client_exceptions.ClientResponseError",
                                   "buttress._errors.OutputValidationError")
    assert endpoint.attributes["code.function.name"].endswith("create_app.<locals>.embed")

    # the second request: another trace, answered from the cache, with no retry
    (hit,) = [span for span in spans if span.name == "http.embed" and span.trace_id != TRACE_ID]
    assert hit.attributes["buttress.cache.result"] == "hit"
    assert not hit.events_named("buttress.retry")

    # and the metrics, over OTLP too
    calls = metric_points["buttress_calls"]
    assert {"function": "http.embed", "outcome": "ok"} in calls
    assert {"function": "EmbeddingClient.embed"} in metric_points["buttress_retries"]
    assert {"function": "http.embed"} in metric_points["buttress_call_duration_seconds"]
