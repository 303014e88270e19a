"""Scale: stampedes of up to 100k callers, cache memory per entry, event-loop lag under load.

Every case runs in a fresh interpreter (this file run as a script: ``python
benchmarks/bench_scale.py CASE IMPLEMENTATION SIZE``, which prints one JSON line), so no
case inherits another's heap, threads or caches, and memory is measured as the resident
set of that process alone:

* stampede: ``callers`` coroutines gathered on one cold key of an async function that
  sleeps 50 ms. Wall time, how many times the function ran, and the peak resident memory
  above what the process held before the stampede (the kernel's high-water mark, reset
  just before). Only the caches that share one computation between concurrent callers
  are compared (buttress, async-lru, cashews); the baseline gathers the function with no
  cache at all.
* cache memory: the resident memory a cache holds per entry once filled with ``entries``
  distinct keys (small ints, or 768-float32 embeddings keyed by text), after a garbage
  collection, beside a plain dict holding the same keys and values: the overhead column
  is the cache's own bookkeeping per entry.
* event-loop lag: an asyncio loop makes 10,000 calls per second (each a task; a call
  that misses the cache awaits 2 ms) while a ticker sleeps 1 ms in a loop; the figure is
  the 99th percentile of how late the ticker wakes. buttress stacks monitor >
  cache_result > retry with every call logged as JSON to /dev/null and Prometheus
  metrics on; the peers stack the nearest equivalents (prometheus-client by hand with an
  inline ``logger.info`` to the same handler, async-lru, tenacity). One more row runs
  the demo gateway's whole ``policy()`` for one call (monitor logging 1% of calls,
  validate, cache, retry, breaker, bulkhead, memory guard, attempt timeout).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # a worker: make _harness importable and measure one case
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Comparison, in_subprocess, median_of, missing_from

SCRIPT = Path(__file__).resolve()
TTL = 60

# --- sizes ------------------------------------------------------------------------------


def _sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "stampede": [(200, 1)],  # (callers, rounds)
            "small": (2_000, 1),  # (entries, rounds)
            "embedding": (500, 1),
            "lag": (0.3, 1),  # (seconds per run, rounds)
            "workers": 2,
        }
    return {
        "stampede": [(1_000, 5), (10_000, 5), (100_000, 3)],
        "small": (1_000_000, 3),
        "embedding": (100_000, 3),
        "lag": (3.0, 5),
        "workers": 2,
    }


# --- worker side: one case in a fresh interpreter ----------------------------------------


def _rss() -> int:
    """Resident bytes of this process now."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def _reset_peak() -> bool:
    """Reset the kernel's resident high-water mark (Linux); False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def _peak(reset: bool) -> int:
    """Peak resident bytes since the reset (or since the process started)."""
    if reset:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _single_flight(impl: str, fn: Callable[[int], Any]) -> Callable[[int], Any]:
    if impl == "gather":
        return fn
    if impl == "buttress":
        import buttress

        return buttress.cache_result(ttl=TTL)(fn)
    if impl == "async-lru":
        from async_lru import alru_cache

        return alru_cache(maxsize=10_000, ttl=TTL)(fn)
    if impl == "cashews":
        from cashews import Cache

        cache = Cache()
        cache.setup("mem://")
        return cache(ttl=TTL)(fn)
    raise ValueError(impl)


def stampede_case(impl: str, callers: int) -> dict[str, Any]:
    calls = 0

    async def compute(x: int) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return x * 2

    fn = _single_flight(impl, compute)

    async def run() -> float:
        start = time.perf_counter()
        results = await asyncio.gather(*[fn(7) for _ in range(callers)])
        elapsed = time.perf_counter() - start
        if results != [14] * callers:
            raise AssertionError(f"{impl}: wrong results")
        return elapsed

    gc.collect()
    before = _rss()
    reset = _reset_peak()
    elapsed = asyncio.run(run())
    peak = _peak(reset)
    return {"ms": elapsed * 1000, "calls": calls, "peak_mib": max(0, peak - before) / 2**20}


def _filler(impl: str, compute: Callable[[Any], Any]) -> tuple[Callable[[list[Any]], None], Any]:
    """(fill(keys), something whose size says how many entries are kept)."""

    def fill_sync(fn: Callable[[Any], Any]) -> Callable[[list[Any]], None]:
        def fill(keys: list[Any]) -> None:
            for key in keys:
                fn(key)

        return fill

    def fill_async(fn: Callable[[Any], Any]) -> Callable[[list[Any]], None]:
        def fill(keys: list[Any]) -> None:
            async def run() -> None:
                for key in keys:
                    await fn(key)

            asyncio.run(run())

        return fill

    async def acompute(key: Any) -> Any:
        return compute(key)

    if impl == "dict":
        table: dict[Any, Any] = {}

        def fill(keys: list[Any]) -> None:
            for key in keys:
                table[key] = compute(key)

        return fill, table
    if impl in ("buttress", "buttress-async"):
        import buttress

        decorate = buttress.cache_result(ttl=TTL, maxsize=10_000_000)
        if impl == "buttress":
            fn: Any = decorate(compute)
            return fill_sync(fn), fn
        fn = decorate(acompute)
        return fill_async(fn), fn
    if impl == "lru_cache":
        fn = functools.lru_cache(maxsize=10_000_000)(compute)
        return fill_sync(fn), fn
    if impl in ("cachetools-lru", "cachetools-ttl"):
        import cachetools

        cache: Any = (
            cachetools.LRUCache(maxsize=10_000_000)
            if impl == "cachetools-lru"
            else cachetools.TTLCache(maxsize=10_000_000, ttl=TTL)
        )
        return fill_sync(cachetools.cached(cache)(compute)), cache
    if impl == "async-lru":
        from async_lru import alru_cache

        fn = alru_cache(maxsize=10_000_000, ttl=TTL)(acompute)
        return fill_async(fn), fn
    raise ValueError(impl)


def _kept(holder: Any) -> int:
    if isinstance(holder, dict) or hasattr(holder, "currsize"):
        return len(holder)
    if hasattr(holder, "cache") and hasattr(holder.cache, "stats"):  # buttress
        return int(holder.cache.stats().size)
    return int(holder.cache_info().currsize)  # functools and async-lru


def memory_case(impl: str, kind: str, entries: int) -> dict[str, Any]:
    if kind == "small":
        keys: list[Any] = list(range(entries))

        def compute(key: Any) -> Any:
            return key * 2 + 1_000_000  # a fresh int object, as a real result would be

    else:
        import numpy as np

        keys = [f"document {i:08d}" for i in range(entries)]

        def compute(key: Any) -> Any:
            return np.full(768, len(key), dtype=np.float32)

    fill, holder = _filler(impl, compute)
    gc.collect()
    before = _rss()
    start = time.perf_counter()
    fill(keys)
    seconds = time.perf_counter() - start
    gc.collect()
    after = _rss()
    kept = _kept(holder)
    if kept != entries:
        raise AssertionError(f"{impl} kept {kept} of {entries} entries")
    return {"bytes_per_entry": (after - before) / entries, "fill_seconds": seconds}


def _logging_to_devnull(name: str) -> Any:
    import logging

    import buttress

    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115  # lives with the process
    handler.setFormatter(buttress.JsonFormatter())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def _lag_stack(impl: str) -> Callable[[int], Any]:
    async def model(key: int) -> int:
        await asyncio.sleep(0.002)  # an upstream call, on a miss
        return key

    if impl == "bare":

        async def undecorated(key: int) -> int:
            if key % 5 == 0:  # the stacks' miss rate, so only the decorators differ
                await asyncio.sleep(0.002)
            return key

        return undecorated
    if impl.startswith("buttress"):
        import buttress
        from buttress import metrics

        try:
            from prometheus_client import CollectorRegistry

            metrics.enable(CollectorRegistry())
        except ImportError:
            pass
        _logging_to_devnull("buttress.monitor")
        if impl == "buttress-policy":
            # The demo gateway's stack (buttress._demo.gateways.resilience_policy) without
            # its batching and vector checks: every layer policy() has for one call.
            return buttress.policy(
                monitor={"name": "model", "sample_rate": 0.01},
                validate={"key": int},
                cache={"ttl": 0.5, "maxsize": 10_000},
                retry={"max_retries": 3, "deadline": 1.5},
                circuit_breaker={"failure_ratio": 0.5, "minimum_calls": 20, "window": 2.0},
                bulkhead={"max_concurrent": 64, "max_waiting": 256, "wait_timeout": 0.3},
                memory_guard={"max_percent": 95.0, "reserve": "4MiB"},
                attempt_timeout=0.3,
            )(model)
        sample_rate = 0.01 if impl == "buttress-sampled" else 1.0
        cached = buttress.cache_result(ttl=0.5, maxsize=10_000)(
            buttress.retry(max_retries=3)(model)
        )
        return buttress.monitor("model", sample_rate=sample_rate)(cached)
    if impl == "peers":
        import tenacity
        from async_lru import alru_cache
        from prometheus_client import CollectorRegistry, Counter, Histogram

        registry = CollectorRegistry()
        calls = Counter("calls", "calls", ["function", "outcome"], registry=registry)
        duration = Histogram("duration_seconds", "duration", ["function"], registry=registry)
        ok, failed = calls.labels("model", "ok"), calls.labels("model", "error")
        timed = duration.labels("model")
        logger = _logging_to_devnull("bench.peers")
        inner = alru_cache(maxsize=10_000, ttl=0.5)(
            tenacity.retry(
                stop=tenacity.stop_after_attempt(4), wait=tenacity.wait_exponential_jitter()
            )(model)
        )

        async def instrumented(key: int) -> int:
            start = time.perf_counter()
            try:
                result: int = await inner(key)
            except Exception:
                timed.observe(time.perf_counter() - start)
                failed.inc()
                logger.exception("model failed", extra={"key": key})
                raise
            took = time.perf_counter() - start
            timed.observe(took)
            ok.inc()
            logger.info("model ok", extra={"key": key, "duration": took, "outcome": "ok"})
            return result

        instrumented.cache = inner  # type: ignore[attr-defined]  # for the miss count
        return instrumented
    raise ValueError(impl)


def lag_case(impl: str, seconds: float, rate: int = 10_000, keys: int = 1_000) -> dict[str, Any]:
    fn = _lag_stack(impl)
    lags: list[float] = []
    done = failed = 0

    async def call(i: int) -> None:
        nonlocal done, failed
        try:
            await fn(i % keys)
        except Exception:  # the full policy() sheds load (a full bulkhead) on a busy machine
            failed += 1
        done += 1

    async def ticker(stop: asyncio.Event) -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - before - 0.001)

    async def load() -> int:
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        started = 0
        while (now := time.perf_counter() - start) < seconds:
            due = int(now * rate)
            for i in range(started, due):
                task = asyncio.create_task(call(i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            started = max(started, due)
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks)
        return started

    async def main() -> tuple[int, float, float]:
        stop = asyncio.Event()
        tick = asyncio.create_task(ticker(stop))
        cpu, start = time.process_time(), time.perf_counter()
        started = await load()
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu
        stop.set()
        await tick
        return started, wall, cpu

    started, wall, cpu = asyncio.run(main())
    dropped, misses = 0, None
    if impl.startswith("buttress"):
        import buttress

        buttress.flush_monitoring()
        dropped = buttress.monitoring_stats().dropped
        misses = fn.cache.stats().misses  # type: ignore[attr-defined]
    elif impl == "peers":
        misses = fn.cache.cache_info().misses  # type: ignore[attr-defined]
    measured = sorted(lags[len(lags) // 10 :])  # the first tenth warms up
    if not measured:
        raise AssertionError("the ticker never ran")

    def percentile(q: float) -> float:
        return measured[min(len(measured) - 1, int(q * len(measured)))] * 1000

    return {
        "p99_ms": percentile(0.99),
        "p50_ms": percentile(0.50),
        "max_ms": measured[-1] * 1000,
        "calls_per_second": done / wall,
        "started": started,
        "done": done,
        "cpu_percent": 100 * cpu / wall,
        "dropped": dropped,
        "miss_percent": None if misses is None else 100 * misses / max(done, 1),
        "failed": failed,
    }


def _main(argv: list[str]) -> int:
    case, impl, *rest = argv
    if case == "stampede":
        result = stampede_case(impl, int(rest[0]))
    elif case == "memory":
        result = memory_case(impl, rest[0], int(rest[1]))
    elif case == "lag":
        result = lag_case(impl, float(rest[0]))
    else:
        raise SystemExit(f"unknown case {case!r}")
    print(json.dumps(result))
    return 0


# --- parent side: run the cases, build the tables -----------------------------------------


def _installed(*modules: str) -> bool:
    """True if every module is importable; records the missing ones otherwise."""
    found = True
    for module in modules:
        try:
            spec = importlib.util.find_spec(module)
        except ImportError as error:
            missing_from(error)
            found = False
            continue
        if spec is None:
            missing_from(ModuleNotFoundError(module, name=module))
            found = False
    return found


def _stampedes(quick: bool) -> list[Comparison]:
    impls = [("gather", "no cache, gather", "bare"), ("buttress", "buttress.cache_result", "ours")]
    if _installed("async_lru"):
        impls.append(("async-lru", "async-lru (alru_cache)", "peer"))
    if _installed("cashews"):
        impls.append(("cashews", "cashews (mem://)", "peer"))
    tables = []
    for callers, rounds in _sizes(quick)["stampede"]:
        runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl, _, _ in impls}
        for _ in range(rounds):  # interleaved, so that every row sees the same machine
            for impl, _, _ in impls:
                runs[impl].append(in_subprocess(SCRIPT, "stampede", impl, str(callers)))
        table = Comparison(
            f"stampede: {callers:,} concurrent callers, one cold key, 50 ms computation",
            unit="ms wall",
            mode="ratio",
            columns=["computations", "peak MiB"],
            note=(
                f"Median of {rounds} runs, each in a fresh interpreter. `computations`: how "
                "many times the function ran; `peak MiB`: the peak resident memory of the "
                "stampede above what the process held before it."
            ),
        )
        for impl, name, kind in impls:
            counts = [run["calls"] for run in runs[impl]]
            computations: int | str = (
                counts[0] if min(counts) == max(counts) else f"{min(counts):,}-{max(counts):,}"
            )
            table.add(
                name,
                median_of(run["ms"] for run in runs[impl]),
                kind,
                extra={
                    "computations": computations,
                    "peak MiB": statistics.median(run["peak_mib"] for run in runs[impl]),
                },
            )
        tables.append(table)
    return tables


def _memory(quick: bool) -> list[Comparison]:
    sizes = _sizes(quick)
    impls = [
        ("dict", "plain dict of the same keys and values", "bare", ""),
        ("buttress", "buttress.cache_result, def", "ours", "ttl"),
        ("buttress-async", "buttress.cache_result, async def", "ours", "ttl"),
        ("lru_cache", "functools.lru_cache", "peer", "no ttl"),
    ]
    if _installed("cachetools"):
        impls += [
            ("cachetools-lru", "cachetools.cached(LRUCache)", "peer", "no ttl"),
            ("cachetools-ttl", "cachetools.cached(TTLCache)", "peer", "ttl"),
        ]
    if _installed("async_lru"):
        impls.append(("async-lru", "async-lru (alru_cache), async def", "peer", "ttl"))
    cases = [
        ("small", "small entries: int key, int result", sizes["small"]),
        ("embedding", "embeddings: str key, 768-float32 result (3,072 bytes)", sizes["embedding"]),
    ]
    jobs = [
        (kind, impl, entries)
        for kind, _, (entries, rounds) in cases
        for _ in range(rounds)
        for impl, _, _, _ in impls
    ]
    # Resident memory does not depend on what else runs, so cases run two at a time.
    with ThreadPoolExecutor(max_workers=sizes["workers"]) as pool:
        results = list(
            pool.map(
                lambda job: (
                    job,
                    in_subprocess(SCRIPT, "memory", job[1], job[0], str(job[2])),
                ),
                jobs,
            )
        )
    tables = []
    for kind, label, (entries, rounds) in cases:
        table = Comparison(
            f"cache memory per entry, {entries:,} {label}",
            unit="bytes/entry",
            columns=["fill s"],
            note=(
                f"Resident memory after filling, divided by the entries; median of {rounds} "
                "runs, each in a fresh interpreter (two at a time, so `fill s`, the time "
                "the misses took, is indicative only). maxsize above the entry count."
            ),
        )
        for impl, name, row_kind, note in impls:
            found = [result for (k, i, _), result in results if k == kind and i == impl]
            table.add(
                name,
                median_of(result["bytes_per_entry"] for result in found),
                row_kind,
                note,
                extra={"fill s": statistics.median(result["fill_seconds"] for result in found)},
            )
        tables.append(table)
    return tables


def _lag(quick: bool) -> Comparison:
    seconds, rounds = _sizes(quick)["lag"]
    impls = [
        ("bare", "undecorated, 20% of calls await 2 ms", "bare"),
        ("buttress", "buttress: monitor > cache_result > retry, every call logged", "ours"),
        ("buttress-sampled", "buttress: the same, 1% of calls logged", "ours"),
        (
            "buttress-policy",
            "buttress: the demo's full policy(), 1% of calls logged (monitor > validate > "
            "cache > retry > breaker > bulkhead > memory_guard > attempt_timeout)",
            "ours",
        ),
    ]
    if _installed("tenacity", "async_lru", "prometheus_client"):
        impls.append(
            (
                "peers",
                "prometheus-client + logger.info by hand > async-lru > tenacity",
                "peer",
            )
        )
    runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl, _, _ in impls}
    for _ in range(rounds):  # interleaved, so that every row sees the same machine
        for impl, _, _ in impls:
            runs[impl].append(in_subprocess(SCRIPT, "lag", impl, str(seconds)))
    table = Comparison(
        "event-loop lag at 10,000 calls per second",
        unit="p99 lag ms",
        mode="ratio",
        columns=["p50 ms", "max ms", "calls/s", "misses %", "CPU %", "records dropped"],
        note=(
            f"{seconds:g} s per run, median of {rounds} runs, each in a fresh interpreter. "
            "1,000 keys, cache TTL 0.5 s (about 20% misses, each awaiting 2 ms; the bare "
            "row awaits on the same share of calls); a ticker sleeps 1 ms in a loop and the "
            "figure is how late it wakes (99th percentile). "
            "`calls/s` below 10,000 means the stack could not keep up; `CPU %` counts every "
            "thread of the process (the monitor's exporter thread included). The full "
            "policy() row is the stack of the demo's gateway for one call (no batching, "
            "no output check), its bulkhead 64 wide."
        ),
    )
    for impl, name, kind in impls:
        found = runs[impl]

        def middle(key: str, found: list[dict[str, Any]] = found) -> float:
            return float(statistics.median(run[key] for run in found))

        extra: dict[str, Any] = {
            "p50 ms": middle("p50_ms"),
            "max ms": middle("max_ms"),
            "calls/s": round(middle("calls_per_second")),
            "misses %": "" if found[0]["miss_percent"] is None else middle("miss_percent"),
            "CPU %": round(middle("cpu_percent")),
            "records dropped": round(middle("dropped")) if impl.startswith("buttress") else "",
        }
        table.add(name, median_of(run["p99_ms"] for run in found), kind, extra=extra)
    return table


def collect(quick: bool) -> list[Comparison]:
    return [*_stampedes(quick), *_memory(quick), _lag(quick)]


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
