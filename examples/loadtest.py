"""Load-test an HTTP endpoint, with buttress's decorators on the client side.

    python examples/loadtest.py http://127.0.0.1:8080/embed --requests 2000 --concurrency 32
    python examples/loadtest.py http://127.0.0.1:8080/embed --no-retry     # the bare client

Sends ``GET URL?text=doc-NNNNN`` from ``--concurrency`` workers, the texts drawn from a Zipf
law (a few documents are asked for all the time, most rarely), until ``--requests`` are
done or ``--duration`` has passed. Every request goes through a client function decorated
with ``@retry`` (a per-attempt timeout, a deadline, the server's Retry-After honoured);
the retries are counted from ``buttress.events``. Prints the success rate, the statuses
of the failures, the retries, and the latency percentiles.

Any endpoint that takes ``?text=`` works, for instance the stand-in embedding service
and the gateways of ``python -m buttress demo``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import aiohttp
import anyio
import numpy as np

from buttress import RetryScheduled, events, retry

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
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


def client_decorators(args: argparse.Namespace) -> list[Decorator]:
    """The decorators around ``get``, outermost first."""
    if args.no_retry:
        return []
    return [
        retry(
            max_retries=args.retries,
            base_delay=0.05,
            max_delay=1.0,
            deadline=args.timeout,
            attempt_timeout=args.attempt_timeout,
            exceptions=(ServerError, aiohttp.ClientError, *TIMEOUTS),
        ),
    ]


def build_client(args: argparse.Namespace) -> Get:
    client: Callable[..., Any] = get
    for decorator in reversed(client_decorators(args)):
        client = decorator(client)
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
    retries = 0

    def count_retry(event: RetryScheduled) -> None:
        nonlocal retries
        retries += 1

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
    with events.subscribe(count_retry, RetryScheduled):
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
        "retries": retries,
    }


def report(args: argparse.Namespace, result: dict[str, Any]) -> str:
    latencies = np.array(result["latencies"]) * 1000
    outcomes: Counter[str] = result["outcomes"]
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
        f"retries {result['retries']}",
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
    parser.add_argument("--seed", type=int, default=0, help="seeds the choice of texts")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = asyncio.run(run(args))
    print(report(args, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
