"""Load-test an HTTP endpoint, with buttress's decorators on the client side.

    python examples/loadtest.py http://127.0.0.1:8080/embed --requests 2000 --concurrency 32
    python examples/loadtest.py http://127.0.0.1:8080/embed --no-retry     # the bare client

Sends ``GET URL?text=doc-NNNNN`` from ``--concurrency`` workers, the texts drawn from a Zipf
law (a few documents are asked for all the time, most rarely), until ``--requests`` are
done or ``--duration`` has passed. Every request goes through a client function decorated
with one ``policy()``:

- ``@monitor`` counts every request as the workers see it (``client.monitor.stats()``);
- ``@retry`` retries failed attempts (a per-attempt timeout, a deadline, the server's
  Retry-After honoured) within a ``RetryBudget``: retries stay within ``--budget`` of the
  requests (plus a small floor), so a struggling server is not buried under retries. The
  retries, and the ones the budget refused, are counted from ``buttress.events``.

Prints the success rate, the statuses of the failures, the retries, and the latency
percentiles.

Any endpoint that takes ``?text=`` works, for instance the stand-in embedding service
and the gateways of ``python -m buttress demo``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import aiohttp
import anyio
import numpy as np

from buttress import Event, RetryBudget, RetryBudgetExhausted, RetryScheduled, events, policy

Get = Callable[[aiohttp.ClientSession, str, str], Awaitable[int]]
# Before Python 3.11, asyncio's timeout (which aiohttp raises) is not the builtin one.
TIMEOUTS = (TimeoutError, asyncio.TimeoutError)


class ServerError(Exception):
    """The server answered 5xx; carries its status and Retry-After for @retry."""

    def __init__(self, status: int, retry_after: str | None) -> None:
        super().__init__(f"server answered {status}")
        self.status = status
        self.retry_after = retry_after  # @retry reads this attribute


async def get(session: aiohttp.ClientSession, url: str, text: str) -> int:
    """One request; returns the status, raises ServerError on a 5xx."""
    async with session.get(url, params={"text": text}) as response:
        await response.read()
        if response.status >= 500:
            raise ServerError(response.status, response.headers.get("Retry-After"))
        return response.status


def build_client(args: argparse.Namespace) -> Get:
    """``get`` wrapped in the client's policy: monitor, and retry within a budget."""
    retrying = None
    if not args.no_retry:
        retrying = {
            "max_retries": args.retries,
            "base_delay": 0.05,
            "max_delay": 1.0,
            "deadline": args.timeout,
            "attempt_timeout": args.attempt_timeout,
            "exceptions": (ServerError, aiohttp.ClientError, *TIMEOUTS),
            # One budget for every request to this server: at most `ratio` retries per
            # request on average (plus a floor per second), however many fail.
            "budget": None if args.budget is None else RetryBudget(ratio=args.budget),
        }
    client: Get = policy(monitor="loadtest.get", retry=retrying)(get)
    return client


def zipf_texts(seed: int, keys: int = 1000, exponent: float = 1.1) -> Iterator[str]:
    """An endless stream of texts whose popularity follows a Zipf law."""
    rng = np.random.default_rng(seed)
    weights = np.arange(1, keys + 1, dtype=np.float64) ** -exponent
    weights /= weights.sum()
    while True:
        for pick in rng.choice(keys, size=1024, p=weights):
            yield f"doc-{int(pick):05d}"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the load; return the counts and every latency (seconds)."""
    client = build_client(args)
    texts = zipf_texts(args.seed)
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    counted: Counter[str] = Counter()

    def count(event: Event) -> None:
        counted[type(event).__name__] += 1

    started = time.monotonic()
    stop_at = started + args.duration
    issued = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal issued
        while issued < args.requests and time.monotonic() < stop_at:
            issued += 1
            text = next(texts)
            begin = time.monotonic()
            try:
                status = await client(session, args.url, text)
                outcome = "ok" if status < 400 else str(status)
            except ServerError as exc:
                outcome = str(exc.status)
            except TIMEOUTS:
                outcome = "timeout"
            except aiohttp.ClientError as exc:
                outcome = type(exc).__name__
            latencies.append(time.monotonic() - begin)
            outcomes[outcome] += 1

    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    with events.subscribe(count, (RetryScheduled, RetryBudgetExhausted)):
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            anyio.create_task_group() as group,
        ):
            for _ in range(args.concurrency):
                group.start_soon(worker, session)
    return {
        "elapsed": time.monotonic() - started,
        "latencies": latencies,
        "outcomes": outcomes,
        "retries": counted["RetryScheduled"],
        "refused": counted["RetryBudgetExhausted"],
        "monitor": client.monitor.stats(),  # type: ignore[attr-defined]
    }


def report(args: argparse.Namespace, result: dict[str, Any]) -> str:
    latencies = np.array(result["latencies"]) * 1000
    outcomes: Counter[str] = result["outcomes"]
    monitored = result["monitor"]
    total = len(latencies)
    ok = outcomes["ok"]
    failures = ", ".join(
        f"{name} x{count}" for name, count in outcomes.most_common() if name != "ok"
    )
    lines = [
        f"loadtest: {total} requests to {args.url} from {args.concurrency} workers in "
        f"{result['elapsed']:.1f} s ({total / result['elapsed']:.0f} requests/s)",
        f"ok {ok} ({100 * ok / max(total, 1):.1f}%)"
        + (f"; failed: {failures}" if failures else ""),
        f"retries {result['retries']}, refused by the retry budget {result['refused']}",
        f"monitor: {monitored.calls} calls, {monitored.ok} ok, {monitored.errors} errors, "
        f"mean {1000 * monitored.total_seconds / max(monitored.calls, 1):.1f} ms",
    ]
    if total:
        p50, p90, p95, p99 = np.percentile(latencies, [50, 90, 95, 99])
        lines.append(
            f"latency ms: p50 {p50:.1f}  p90 {p90:.1f}  p95 {p95:.1f}  p99 {p99:.1f}  "
            f"max {latencies.max():.1f}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url", help="the endpoint; requests are GET URL?text=doc-NNNNN")
    parser.add_argument("--requests", type=int, default=1000, help="stop after this many")
    parser.add_argument("--duration", type=float, default=60.0, help="or after this long (s)")
    parser.add_argument("--concurrency", type=int, default=16, help="workers (and connections)")
    parser.add_argument("--timeout", type=float, default=5.0, help="give up on a request (s)")
    parser.add_argument(
        "--attempt-timeout", type=float, default=1.0, help="give up on one attempt (s)"
    )
    parser.add_argument("--retries", type=int, default=3, help="retries after the first try")
    parser.add_argument("--no-retry", action="store_true", help="send each request once")
    parser.add_argument(
        "--budget",
        type=float,
        default=0.2,
        help="retries allowed per request on average, over 10 s, plus 3 a second (default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--no-budget", dest="budget", action="store_const", const=None, help="retry freely"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the choice of texts")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # The workers' figures come from @monitor's totals; keep its per-call log records
    # (failures are logged with their traceback) out of the report.
    logging.getLogger("buttress.monitor").setLevel(logging.CRITICAL)
    result = asyncio.run(run(args))
    print(report(args, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
