"""OpenTelemetry: @monitor's span per call beside the same span made by hand, and what
OpenTelemetry costs a monitored call while it is installed but not enabled.

The hand-written peer is what one writes without buttress: ``with
tracer.start_as_current_span(name, attributes=...)`` around the call, with the same name
and the same attributes @monitor gives its span. Both use one SDK TracerProvider whose
BatchSpanProcessor hands the spans to an exporter that drops them (the export itself is
the application's business, and the same for both). buttress' rows also count the call,
time it and decide about its log record, as @monitor always does (logger below INFO: no
record). The target of issue 17: at most 1.2x the hand-written span.

"Installed, not enabled": the same monitored function timed before OpenTelemetry is
imported, and again after ``buttress.otel.enable()`` then ``disable()``; compare both with
the monitor module's "metrics only" rows.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import buttress
from _harness import Comparison, Timing, missing_from, time_async, time_sync
from bench_monitor import _drained
from buttress import otel

LOGGER = logging.getLogger("buttress.monitor")


def _work(x: int) -> int:
    return x + 1


async def _awork(x: int) -> int:
    return x + 1


#: Interleaved rounds per figure: many short ones, so that a change of load on a shared
#: machine falls on every row alike.
INTERLEAVED_ROUNDS = 81


def _interleaved(
    fns: Sequence[Callable[[], object]], *, quick: bool, calls: int = 200
) -> list[Timing]:
    """ns per call of each of ``fns``, their rounds interleaved (each round times every
    one in turn), so that a burst of other work on the machine hits them alike."""
    rounds = 2 if quick else INTERLEAVED_ROUNDS
    calls = 20 if quick else calls
    results: list[list[float]] = [[] for _ in fns]
    for fn in fns:  # warm up: spans' first calls are slower
        for _ in range(calls // 10):
            fn()
    for _ in range(rounds):
        for fn, found in zip(fns, results, strict=True):
            gc.collect()
            start = time.perf_counter_ns()
            for _ in range(calls):
                fn()
            found.append((time.perf_counter_ns() - start) / calls)
    return [Timing(found) for found in results]


def _interleaved_async(
    fns: Sequence[Callable[[], Awaitable[object]]], *, quick: bool, calls: int = 200
) -> list[Timing]:
    """:func:`_interleaved` for coroutine functions, in one asyncio event loop."""

    async def measure() -> list[Timing]:
        rounds = 2 if quick else INTERLEAVED_ROUNDS
        count = 20 if quick else calls
        results: list[list[float]] = [[] for _ in fns]
        for fn in fns:
            for _ in range(count // 10):
                await fn()
        for _ in range(rounds):
            for fn, found in zip(fns, results, strict=True):
                gc.collect()
                start = time.perf_counter_ns()
                for _ in range(count):
                    await fn()
                found.append((time.perf_counter_ns() - start) / count)
        return [Timing(found) for found in results]

    return asyncio.run(measure())


def _without_tracing_check(fn: Callable[..., Any]) -> Callable[..., Any]:
    """@monitor's sync wrapper as it was before OpenTelemetry support (no read of the
    tracing hook), around the same engine: the floor of the 'not enabled' table."""
    monitored = buttress.monitor("bench_otel_floor")(fn)
    site = monitored.monitor._site  # type: ignore[attr-defined]
    stats, finish = site.stats, site.finish
    lock = stats.lock

    def monitor_wrapper(*args: Any, **kwargs: Any) -> Any:
        lock.acquire()
        stats.in_flight += 1
        lock.release()
        start = buttress._clock.monotonic()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            finish(start, args, kwargs, None, exc)
            raise
        finish(start, args, kwargs, result, None)
        return result

    return monitor_wrapper


def _not_enabled(quick: bool) -> Comparison:
    comparison = Comparison(
        "monitor, OpenTelemetry installed but not enabled, sync function",
        note="Logger below INFO (no record). The floor is @monitor's wrapper without the "
        "read of the tracing hook, timed in rounds interleaved with each buttress row.",
    )
    comparison.add("bare call", time_sync(lambda: _work(1), quick=quick), "bare")
    floor = _without_tracing_check(_work)
    monitored = buttress.monitor("bench_otel_off")(_work)
    before, ours = _interleaved(
        [lambda: floor(1), lambda: monitored(1)], quick=quick, calls=5_000
    )
    otel.enable()  # imports the API, installs the tracer...
    otel.disable()  # ...and removes it again
    again, after = _interleaved(
        [lambda: floor(1), lambda: monitored(1)], quick=quick, calls=5_000
    )
    # The floor was timed beside each buttress row: its rounds from both go in its row.
    comparison.add(
        "@monitor's wrapper without the tracing check",
        Timing((*before.rounds, *again.rounds)),
        "floor",
    )
    comparison.add(
        "buttress.monitor, OpenTelemetry not imported yet",
        ours,
        "ours",
        f"{ours / before:.3f}x the floor in the same rounds",
    )
    comparison.add(
        "buttress.monitor, after otel.enable() and otel.disable()",
        after,
        "ours",
        f"{after / again:.3f}x the floor in the same rounds",
    )
    return comparison


def _spans(quick: bool) -> list[Comparison]:
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
    except ImportError as error:
        missing_from(error)
        return []

    class Discard(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    tracer = provider.get_tracer("bench")
    meter_provider = MeterProvider()  # no reader: recording is what is timed

    sync = buttress.monitor("work")(_work)
    asyn = buttress.monitor("awork")(_awork)
    attributes: dict[str, Any] = dict(sync.monitor._site.span_attributes)  # type: ignore[attr-defined]
    aattributes: dict[str, Any] = dict(asyn.monitor._site.span_attributes)  # type: ignore[attr-defined]

    def by_hand(x: int) -> int:
        with tracer.start_as_current_span("work", attributes=attributes):
            return _work(x)

    async def aby_hand(x: int) -> int:
        with tracer.start_as_current_span("awork", attributes=aattributes):
            return await _awork(x)

    note = (
        "SDK TracerProvider, BatchSpanProcessor, an exporter that drops the spans; "
        "buttress rows: logger below INFO (no record)."
    )
    tables = (
        Comparison("OpenTelemetry: a span per call, sync function", note=note),
        Comparison("OpenTelemetry: a span per call, async function", note=note),
    )
    first, second = tables
    first.add("bare call", time_sync(lambda: _work(1), quick=quick), "bare")
    second.add("bare await", time_async(lambda: _awork(1), quick=quick), "bare")
    otel.enable(provider, meter_provider, metrics=False)
    try:
        # The hand-written span and buttress' in interleaved rounds: on a busy machine
        # rows measured one after the other can differ by 2x for no reason of their own.
        hand, ours = _interleaved([lambda: by_hand(1), lambda: sync(1)], quick=quick)
        ahand, aours = _interleaved_async([lambda: aby_hand(1), lambda: asyn(1)], quick=quick)
        for table, peer, mine in ((first, hand, ours), (second, ahand, aours)):
            table.add(
                "tracer.start_as_current_span by hand (same name and attributes)",
                peer,
                "peer",
                extra={"fastest round": min(peer.rounds)},
            )
            table.add(
                "buttress.monitor, traces on",
                mine,
                "ours",
                f"{mine / peer:.2f}x the hand-written span; fastest rounds: "
                f"{min(mine.rounds) / min(peer.rounds):.2f}x",
                extra={"fastest round": min(mine.rounds)},
            )
        otel.enable(provider, meter_provider)
        first.add(
            "buttress.monitor, traces and metrics on",
            _drained(lambda: sync(1), quick=quick),
            "ours",
            "incl. the exporter thread recording each duration in the OTel histogram",
        )
    finally:
        otel.disable()
        provider.shutdown()
        meter_provider.shutdown()
    return list(tables)


def collect(quick: bool) -> list[Comparison]:
    saved = (LOGGER.level, LOGGER.propagate)
    LOGGER.setLevel(logging.WARNING)
    LOGGER.propagate = False
    try:
        # Not enabled first: OpenTelemetry is not imported until otel.enable() is called.
        return [_not_enabled(quick), *_spans(quick)]
    finally:
        buttress.flush_monitoring()
        LOGGER.setLevel(saved[0])
        LOGGER.propagate = saved[1]
