"""``python -m buttress demo --otlp URL``: the run's traces and metrics reach an OTLP/HTTP
collector (a receiver on 127.0.0.1 decoding the protobuf payloads)."""

from __future__ import annotations

from pathlib import Path

import pytest

from _otel_support import OtlpReceiver
from buttress import otel
from buttress._demo import build_parser as demo_parser
from buttress._demo import options_from_args, run_demo, write_outputs
from test_demo import small


@pytest.mark.asyncio
async def test_the_demo_sends_its_traces_to_an_otlp_endpoint(tmp_path: Path) -> None:
    with OtlpReceiver() as receiver:
        options = small(
            requests=80, seed=3, error_rate=0.3, hang_rate=0.0, outage_length=0.0,
            out=tmp_path, otlp=receiver.url,
        )
        result = await run_demo(options)
        spans = receiver.spans()
        points = receiver.metric_points()
    assert not otel.is_enabled()  # turned off again after the run
    calls = [span for span in spans if span.name == "resilient.embed.one"]
    assert calls, {span.name for span in spans}
    assert {span.service for span in calls} == {"buttress-demo"}
    results = {span.attributes.get("buttress.cache.result") for span in calls}
    assert "miss" in results
    retries = [event for span in calls for event in span.events_named("buttress.retry")]
    tally = result.reports[1].tally
    assert tally is not None
    assert len(retries) == tally.retries > 0
    assert {"function": "resilient.embed.one", "outcome": "ok"} in points["buttress_calls"]
    notes = write_outputs(result, tmp_path)
    assert f"traces and metrics: sent over OTLP/HTTP to {receiver.url}" in notes


def test_the_otlp_option_is_checked() -> None:
    parser = demo_parser()
    options = options_from_args(parser.parse_args(["--otlp", "http://127.0.0.1:4318"]))
    assert options.otlp == "http://127.0.0.1:4318"
    assert options_from_args(parser.parse_args([])).otlp is None
    with pytest.raises(ValueError, match="--otlp must be an http"):
        options_from_args(parser.parse_args(["--otlp", "127.0.0.1:4318"]))
