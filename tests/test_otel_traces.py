"""@monitor's spans: one per call, named after the function, current while it runs.

Checked with the OpenTelemetry SDK's in-memory exporter: names, kinds, attributes, the
outcome as status, recorded exceptions, the span tree (the user's spans and nested
monitored calls as children), sync and async on asyncio and trio, threads, cancellation,
@hedge's attempt spans, and nothing at all once disabled.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import SpanKind, StatusCode

import buttress
from _monitor_support import capture
from _otel_support import Telemetry, attributes, events_of, parent_of, telemetry
from buttress import ConfigurationError, flush_monitoring, hedge, monitor, otel

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def spans() -> Iterator[Telemetry]:
    with telemetry(metrics=False) as recorded:
        yield recorded


# --- one span per call ----------------------------------------------------------------


def test_a_sync_call_makes_one_internal_span_named_after_the_function(
    spans: Telemetry,
) -> None:
    @monitor(labels={"model": "resnet50"})
    def predict(x: int) -> int:
        return x * 2

    assert predict(21) == 42
    span = spans.one("test_a_sync_call_makes_one_internal_span_named_after_the_function"
                     ".<locals>.predict")
    assert span.kind is SpanKind.INTERNAL
    assert span.status.status_code is StatusCode.UNSET  # instrumentation leaves OK unset
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "buttress"
    found = attributes(span)
    assert found["code.function.name"] == f"{__name__}.{predict.__qualname__}"
    assert found["code.file.path"] == __file__
    assert isinstance(found["code.line.number"], int)
    assert found["buttress.function"] == predict.monitor.name
    assert found["buttress.label.model"] == "resnet50"
    assert found["buttress.outcome"] == "ok"
    assert span.parent is None
    assert span.end_time is not None
    assert span.start_time is not None
    assert span.end_time >= span.start_time


def test_the_span_takes_the_monitor_name(spans: Telemetry) -> None:
    @monitor("ranker.score")
    def score() -> float:
        return 0.5

    score()
    assert attributes(spans.one("ranker.score"))["buttress.function"] == "ranker.score"


def test_an_error_is_the_span_status_and_a_recorded_exception(spans: Telemetry) -> None:
    class UpstreamDown(RuntimeError):
        pass

    @monitor("fetch")
    def fetch() -> None:
        raise UpstreamDown("replica 3 refused")

    with pytest.raises(UpstreamDown, match="replica 3 refused") as raised:
        fetch()
    span = spans.one("fetch")
    assert span.status.status_code is StatusCode.ERROR
    qualified = f"{__name__}.{UpstreamDown.__qualname__}"
    assert span.status.description == f"{qualified}: replica 3 refused"
    assert attributes(span)["error.type"] == qualified
    assert attributes(span)["buttress.outcome"] == "error"
    (exception,) = events_of(span, "exception")
    assert exception["exception.type"] == qualified
    assert exception["exception.message"] == "replica 3 refused"
    assert "raise UpstreamDown" in exception["exception.stacktrace"]
    assert raised.value.__traceback__ is not None  # re-raised unchanged


def test_span_kind_is_a_setting(spans: Telemetry) -> None:
    @monitor("call_model", span_kind="client")
    def call_model() -> None:
        pass

    @monitor("consume", span_kind=SpanKind.CONSUMER)
    def consume() -> None:
        pass

    call_model()
    consume()
    assert spans.one("call_model").kind is SpanKind.CLIENT
    assert spans.one("consume").kind is SpanKind.CONSUMER


@pytest.mark.parametrize("bad", ["remote", "", 3, None])
def test_a_bad_span_kind_is_refused_at_decoration(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="span_kind"):
        monitor(span_kind=bad)


def test_the_call_runs_inside_its_span(spans: Telemetry) -> None:
    """The user's spans and the headers an instrumented client would send nest under it."""
    seen: dict[str, Any] = {}

    @monitor("outer")
    def outer() -> None:
        seen["current"] = trace.get_current_span().get_span_context().span_id
        with spans.tracer.start_as_current_span("users own"):
            inner()
        headers: dict[str, str] = {}
        propagate.inject(headers)  # what aiohttp/httpx instrumentation sends along
        seen["traceparent"] = headers["traceparent"]

    @monitor("inner")
    def inner() -> None:
        pass

    with spans.tracer.start_as_current_span("request") as request:
        outer()
        # restored once the call returned
        assert trace.get_current_span() is request
    outer_span, own, inner_span, request_span = (
        spans.one("outer"), spans.one("users own"), spans.one("inner"), spans.one("request")
    )
    assert seen["current"] == outer_span.context.span_id
    assert parent_of(outer_span) == request_span.context.span_id
    assert parent_of(own) == outer_span.context.span_id
    assert parent_of(inner_span) == own.context.span_id
    assert {s.context.trace_id for s in spans.spans()} == {request_span.context.trace_id}
    trace_hex = f"{request_span.context.trace_id:032x}"
    _, trace_id, parent_id, flags = seen["traceparent"].split("-")
    assert (trace_id, parent_id) == (trace_hex, f"{outer_span.context.span_id:016x}")
    assert int(flags, 16) & 1  # sampled


def test_the_context_is_restored_after_an_error(spans: Telemetry) -> None:
    @monitor("fails")
    def fails() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        fails()
    assert not trace.get_current_span().get_span_context().is_valid


def test_threads_have_their_own_spans(spans: Telemetry) -> None:
    @monitor("work")
    def work(n: int) -> int:
        return n

    with spans.tracer.start_as_current_span("main"):
        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    worked = spans.named("work")
    assert len(worked) == 4
    # A new thread starts with an empty context: its calls are roots of their own traces.
    assert all(span.parent is None for span in worked)
    assert len({span.context.trace_id for span in worked}) == 4


def test_methods_classmethods_and_partials(spans: Telemetry) -> None:
    class Model:
        @monitor
        def predict(self, x: int) -> int:
            return x

        @classmethod
        @monitor
        def load(cls) -> str:
            return "loaded"

    assert Model().predict(3) == 3
    assert Model.load() == "loaded"
    names = {span.name for span in spans.spans()}
    assert names == {Model.predict.monitor.name, Model.load.monitor.name}
    assert all(attributes(s)["code.function.name"].startswith(__name__) for s in spans.spans())


# --- async, on asyncio and trio ---------------------------------------------------------


@pytest.mark.anyio
async def test_an_async_call_runs_in_its_span(spans: Telemetry) -> None:
    @monitor("embed")
    async def embed(text: str) -> int:
        await anyio.lowlevel.checkpoint()
        with spans.tracer.start_as_current_span("tokenize"):
            await anyio.lowlevel.checkpoint()
        return len(text)

    with spans.tracer.start_as_current_span("request") as request:
        assert await embed("hello") == 5
        assert trace.get_current_span() is request
    embed_span = spans.one("embed")
    assert parent_of(embed_span) == request.get_span_context().span_id
    assert parent_of(spans.one("tokenize")) == embed_span.context.span_id
    assert attributes(embed_span)["buttress.outcome"] == "ok"


@pytest.mark.anyio
async def test_concurrent_calls_each_have_their_own_span(spans: Telemetry) -> None:
    seen: dict[int, int] = {}

    @monitor("fetch")
    async def fetch(n: int) -> None:
        await anyio.sleep(0.01 * (5 - n))  # finish in the reverse order
        with spans.tracer.start_as_current_span(f"child {n}"):
            seen[n] = trace.get_current_span().get_span_context().span_id

    with spans.tracer.start_as_current_span("batch") as batch:
        async with anyio.create_task_group() as group:
            for n in range(5):
                group.start_soon(fetch, n)
    fetches = spans.named("fetch")
    assert len(fetches) == 5
    assert {parent_of(span) for span in fetches} == {batch.get_span_context().span_id}
    fetch_ids = {span.context.span_id for span in fetches}
    for n in range(5):
        child = spans.one(f"child {n}")
        assert child.context.span_id == seen[n]
        assert parent_of(child) in fetch_ids


@pytest.mark.anyio
async def test_an_async_error_is_recorded(spans: Telemetry) -> None:
    @monitor("load")
    async def load() -> None:
        await anyio.lowlevel.checkpoint()
        raise KeyError("model")

    with pytest.raises(KeyError):
        await load()
    span = spans.one("load")
    assert span.status.status_code is StatusCode.ERROR
    assert attributes(span)["error.type"] == "KeyError"
    assert len(events_of(span, "exception")) == 1


@pytest.mark.anyio
async def test_a_cancelled_call_is_no_error(spans: Telemetry) -> None:
    started = anyio.Event()

    @monitor("slow")
    async def slow() -> None:
        started.set()
        await anyio.sleep(60)

    async with anyio.create_task_group() as group:
        group.start_soon(slow)
        await started.wait()
        group.cancel_scope.cancel()
    span = spans.one("slow")
    assert span.status.status_code is StatusCode.UNSET
    assert attributes(span)["buttress.outcome"] == "cancelled"
    assert "error.type" not in attributes(span)
    assert not events_of(span, "exception")


@pytest.mark.anyio
async def test_sync_functions_called_from_async_code_nest_too(spans: Telemetry) -> None:
    @monitor("parse")
    def parse(raw: str) -> list[str]:
        return raw.split()

    @monitor("handle")
    async def handle(raw: str) -> int:
        return len(parse(raw))

    assert await handle("a b c") == 3
    assert parent_of(spans.one("parse")) == spans.one("handle").context.span_id


# --- hedged attempts: a span each --------------------------------------------------------


@pytest.mark.anyio
async def test_each_raced_attempt_of_a_hedge_has_its_own_span(spans: Telemetry) -> None:
    calls = 0

    @monitor("lookup")
    @hedge(0.05)
    async def lookup() -> str:
        nonlocal calls
        calls += 1
        number = calls
        with spans.tracer.start_as_current_span(f"request {number}"):
            if number == 1:
                await anyio.sleep(30)  # the slow replica: the hedge wins
            return f"answer {number}"

    assert await lookup() == "answer 2"
    parent = spans.one("lookup")
    attempts = spans.named("lookup attempt")  # named after the stack: its monitor's name
    assert len(attempts) == 2
    by_number = {attributes(span)["buttress.hedge.attempt"]: span for span in attempts}
    assert set(by_number) == {1, 2}
    assert all(parent_of(span) == parent.context.span_id for span in attempts)
    assert attributes(by_number[1])["buttress.outcome"] == "cancelled"
    assert attributes(by_number[2])["buttress.outcome"] == "ok"
    # each attempt's own work nests under its attempt
    assert parent_of(spans.one("request 1")) == by_number[1].context.span_id
    assert parent_of(spans.one("request 2")) == by_number[2].context.span_id
    # the call's span says who won
    assert attributes(parent)["buttress.hedge.winner"] == 2
    assert attributes(parent)["buttress.hedge.attempts"] == 2
    (started,) = events_of(parent, "buttress.hedge.started")
    assert started["buttress.hedge.attempt"] == 2


# --- log correlation: @monitor's own records ---------------------------------------------


def test_monitor_records_carry_the_ids_of_their_span(spans: Telemetry) -> None:
    @monitor("scored")
    def scored() -> float:
        return 1.0

    with capture(logging.INFO) as records:
        scored()
        flush_monitoring()
    (record,) = records.of("scored")
    span = spans.one("scored")
    assert record.trace_id == f"{span.context.trace_id:032x}"  # type: ignore[attr-defined]
    assert record.span_id == f"{span.context.span_id:016x}"  # type: ignore[attr-defined]


def test_without_otel_records_have_no_trace_fields() -> None:
    @monitor("plain")
    def plain() -> None:
        pass

    with capture(logging.INFO) as records:
        plain()
        flush_monitoring()
    (record,) = records.of("plain")
    assert not hasattr(record, "trace_id")
    assert not hasattr(record, "span_id")


# --- off, and robust ----------------------------------------------------------------------


def test_no_span_once_disabled_nor_with_traces_off() -> None:
    @monitor("quiet")
    def quiet() -> None:
        pass

    with telemetry(metrics=False) as recorded:
        otel.disable()
        quiet()
        assert recorded.spans() == []
        assert not otel.is_enabled()
    with telemetry(traces=False) as recorded:
        quiet()
        assert recorded.spans() == []
        assert otel.is_enabled()


def test_enabling_twice_moves_the_spans_to_the_new_provider() -> None:
    @monitor("moved")
    def moved() -> None:
        pass

    with telemetry(metrics=False) as first, telemetry(metrics=False) as second:
        moved()
        assert first.spans() == []
        assert len(second.named("moved")) == 1


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="tracer_provider"):
        otel.enable(tracer_provider="not a provider")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="meter_provider"):
        otel.enable(meter_provider=42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="both False"):
        otel.enable(traces=False, metrics=False)
    assert not otel.is_enabled()


class _Broken(SpanProcessor):
    def on_end(self, span: ReadableSpan) -> None:
        raise RuntimeError("the exporter fell over")


def test_a_broken_span_processor_never_breaks_the_call(
    spans: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    spans.provider.add_span_processor(_Broken())

    @monitor("sturdy")
    def sturdy() -> str:
        return "fine"

    with caplog.at_level(logging.ERROR, logger="buttress.otel"):
        assert sturdy() == "fine"
    assert sturdy.monitor.stats().ok == 1
    assert not trace.get_current_span().get_span_context().is_valid
    assert "ending the span" in caplog.text


def test_installed_but_not_enabled_imports_nothing_of_opentelemetry() -> None:
    """``import buttress``, every decorator, ``buttress.otel`` and its log filter: no
    ``opentelemetry`` module is loaded until ``enable()`` is called."""
    code = textwrap.dedent(
        """
        import logging, sys
        import anyio
        import buttress
        from buttress import otel, metrics, monitor, policy, hedge
        from buttress.integrations import fastapi, aiohttp

        @policy(monitor=True, retry=2, cache=True, circuit_breaker=True, bulkhead=4,
                rate_limit={"rate": 1000}, timeout=5, fallback=lambda *a, **k: 0)
        async def f(x):
            return x

        @monitor
        @hedge(0.5)
        async def g():
            return 1

        async def main():
            assert await f(1) == 1 and await g() == 1

        anyio.run(main)
        record = logging.LogRecord("x", logging.INFO, "", 0, "m", (), None)
        otel.LogCorrelationFilter().filter(record)
        assert record.trace_id is None
        loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
        assert not loaded, loaded
        otel.enable()
        assert "opentelemetry.trace" in sys.modules
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_enable_without_providers_follows_the_global_ones_set_later() -> None:
    code = textwrap.dedent(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )
        from buttress import monitor, otel

        otel.enable(metrics=False)

        @monitor("early")
        def early():
            pass

        early()  # no provider yet: a no-op span
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        early()
        print([span.name for span in exporter.get_finished_spans()])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['early']"


def test_the_otel_module_is_public() -> None:
    assert buttress.otel is otel
    assert set(otel.__all__) == {
        "LogCorrelationFilter", "add_correlation_ids", "disable", "enable", "is_enabled"
    }


class _BrokenOnStart(SpanProcessor):
    def on_start(self, span: Any, parent_context: Any = None) -> None:
        raise RuntimeError("the processor fell over")


def test_a_span_that_cannot_start_never_breaks_the_call(
    spans: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    spans.provider.add_span_processor(_BrokenOnStart())

    @monitor("sturdy_start")
    async def sturdy() -> str:
        return "fine"

    with caplog.at_level(logging.ERROR, logger="buttress.otel"):
        assert anyio.run(sturdy) == "fine"
    assert sturdy.monitor.stats().ok == 1
    assert "starting the span" in caplog.text
