"""Expose buttress's metrics for Prometheus, then read them back as Prometheus would.

    python examples/prometheus_metrics.py                   # a workload, one scrape, a summary
    python examples/prometheus_metrics.py --serve --port 9100   # keep /metrics up (Ctrl-C ends)

What it shows:

- ``metrics.enable()`` and ``metrics_handler()`` serving ``/metrics`` from aiohttp (the
  exposition is rendered in a worker thread, so a scrape never stalls the event loop);
- what the decorators count: ``buttress_calls_total`` and ``buttress_call_duration_seconds``
  from ``@monitor``, ``buttress_retries_total``, ``buttress_cache_requests_total``,
  ``buttress_circuit_state`` and the rest from the other decorators' events;
- reading an exposition with ``prometheus_client.parser`` and estimating a percentile from
  histogram buckets the way PromQL's ``histogram_quantile`` does. In Prometheus itself:

      sum by (function) (rate(buttress_calls_total{outcome="error"}[5m]))
      histogram_quantile(0.99,
        sum by (le, function) (rate(buttress_call_duration_seconds_bucket[5m])))
      sum(rate(buttress_cache_requests_total{result="hit"}[5m]))
        / sum(rate(buttress_cache_requests_total[5m]))
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import random
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Sequence

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from buttress import metrics, monitor, policy
from buttress.integrations.aiohttp import metrics_handler

rng = random.Random(0)
#: While True, the feature store is down: every lookup fails, and the breaker opens.
outage = False


@policy(
    monitor="features",
    cache={"ttl": 60},
    # CircuitOpenError is a ConnectionError: retried after the breaker's retry_after,
    # unless that would pass the deadline.
    retry={"max_retries": 3, "base_delay": 0.001, "deadline": 0.5, "exceptions": ConnectionError},
    circuit_breaker={"name": "feature-store", "minimum_calls": 20, "window": 0.25, "open_for": 0.1},
)
async def features(user_id: int) -> list[float]:
    """A feature-store lookup that drops one call in ten (and all of them in an outage)."""
    await asyncio.sleep(rng.uniform(0.001, 0.01))
    if outage or rng.random() < 0.1:
        raise ConnectionError("feature store dropped the connection")
    return [user_id % 7 / 7, user_id % 11 / 11]


@monitor("score", track_output=lambda score: score)
async def score(user_id: int) -> float:
    """A model scoring one user: its output feeds the buttress_output histogram."""
    values = await features(user_id)
    await asyncio.sleep(rng.uniform(0.0, 0.005))
    return sum(values) / len(values)


#: How long the outage lasts: longer than the breaker's window, so that however fast or
#: slow this machine runs the calls, one whole window sees nothing but failures.
OUTAGE_SECONDS = 0.4


async def workload(calls: int, *, with_outage: bool = True) -> None:
    """``calls`` scorings, 16 at a time; a third of them for a few returning users, and
    the feature store down for ``OUTAGE_SECONDS`` once 40% of them have started."""
    global outage
    users = [
        int(rng.paretovariate(1.0)) if rng.random() < 0.3 else rng.randrange(10, 100_000)
        for _ in range(calls)
    ]
    limit = asyncio.Semaphore(16)
    started = 0
    outage_ends: float | None = None

    async def one(user: int) -> None:
        global outage
        nonlocal started, outage_ends
        async with limit:
            started += 1
            now = time.monotonic()
            if with_outage and outage_ends is None and started >= 0.4 * calls:
                outage_ends = now + OUTAGE_SECONDS
            outage = outage_ends is not None and now < outage_ends
            try:
                await score(user)
            except ConnectionError:
                pass  # counted as an error by @monitor, which is the point

    await asyncio.gather(*(one(user) for user in users))
    outage = False


Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by sample name: ``[(labels, value), ...]``."""
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for have, v in samples.get(name, []) if labels.items() <= have.items())


def histogram_quantile(q: float, samples: Samples, name: str, **labels: str) -> float:
    """The ``q`` quantile of a histogram, interpolated within its bucket (as PromQL does)."""
    buckets = sorted(
        (float(have["le"]), value)
        for have, value in samples.get(f"{name}_bucket", [])
        if labels.items() <= have.items()
    )
    if not buckets or buckets[-1][1] == 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def summary(samples: Samples) -> str:
    """What a dashboard would show, computed from one scrape."""
    lines = []
    for function in ("score", "features"):
        ok = total(samples, "buttress_calls_total", function=function, outcome="ok")
        errors = total(samples, "buttress_calls_total", function=function, outcome="error")
        p50, p99 = (
            histogram_quantile(q, samples, "buttress_call_duration_seconds", function=function)
            for q in (0.5, 0.99)
        )
        lines.append(
            f"{function:<9} calls ok {ok:.0f}, errors {errors:.0f}; "
            f"latency p50 {1000 * p50:.1f} ms, p99 {1000 * p99:.1f} ms"
        )
    retries = total(samples, "buttress_retries_total")
    lines.append(f"retries   {retries:.0f}")
    hits, misses, joins = (
        total(samples, "buttress_cache_requests_total", result=result)
        for result in ("hit", "miss", "join")
    )
    lookups = hits + misses + joins
    ratio = (hits + joins) / lookups if lookups else 0.0
    lines.append(
        f"cache     hits {hits:.0f}, joins {joins:.0f}, misses {misses:.0f} "
        f"(served without a call: {100 * ratio:.0f}%)"
    )
    states = [
        labels["state"]
        for labels, value in samples.get("buttress_circuit_state", [])
        if labels.get("breaker") == "feature-store" and value == 1
    ]
    openings = total(samples, "buttress_circuit_transitions_total", to="open")
    refused = total(samples, "buttress_circuit_rejections_total")
    state = states[0] if states else "closed (never moved)"
    lines.append(
        f"breaker   feature-store {state} now; opened {openings:.0f} times, "
        f"refused {refused:.0f} calls"
    )
    count = total(samples, "buttress_output_count", function="score")
    mean = total(samples, "buttress_output_sum", function="score") / count if count else math.nan
    lines.append(f"output    score: {count:.0f} values, mean {mean:.3f}")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> None:
    metrics.enable()  # into prometheus_client's default registry
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
    try:
        await workload(args.calls)
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            text = await response.text()  # a scrape, as Prometheus does it
        print(f"scraped {url}: {len(text.splitlines())} lines", flush=True)
        print(summary(parse(text)), flush=True)
        if args.serve:
            # Ctrl-C cancels this task, as asyncio.run does from Python 3.11 on (before,
            # a KeyboardInterrupt raised wherever the loop was could hang the cleanup).
            with contextlib.suppress(NotImplementedError):  # Windows: KeyboardInterrupt
                main_task = asyncio.current_task()
                assert main_task is not None
                asyncio.get_running_loop().add_signal_handler(signal.SIGINT, main_task.cancel)
            print(f"serving {url} for Prometheus; Ctrl-C to stop", flush=True)
            while True:  # keep the numbers moving for a live scraper
                await workload(max(1, args.calls // 10), with_outage=False)
                await asyncio.sleep(1.0)
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="scorings in the workload")
    parser.add_argument("--port", type=int, default=0, help="for /metrics; 0 picks a free one")
    parser.add_argument("--serve", action="store_true", help="keep serving /metrics")
    args = parser.parse_args(argv)
    # This example is about metrics: keep @monitor's per-call log records (errors are
    # logged with their traceback) out of the terminal. Metrics count every call anyway.
    logging.getLogger("buttress.monitor").setLevel(logging.CRITICAL)
    try:
        asyncio.run(main_async(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
