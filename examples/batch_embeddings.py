"""Embeddings for 10,000 texts, fetched in concurrent batches; interrupt it and resume.

    python examples/batch_embeddings.py                    # 10,000 texts, a toy service
    python examples/batch_embeddings.py --input texts.txt --out vectors/ \\
        --upstream http://127.0.0.1:8081/v1/embeddings

Interrupt it (Ctrl-C) and run the same command again: the batches already finished are
read from the checkpoint in ``--out`` and not fetched again. At the end,
``<out>/embeddings.npy`` holds one row per input text, in input order.

What it shows:

- ``@batch`` turns the many concurrent single-text fetches into few upstream requests
  (``POST {"texts": [...]}``) of up to ``--upstream-batch`` texts, with at most
  ``--max-in-flight`` requests in flight;
- the per-text fetch carries one ``policy()`` around the batched call: a cache (texts
  repeat in real corpora; a repeat, even a concurrent one, never reaches a batch), retry
  with Retry-After and a deadline, an attempt timeout, and output validation. Retrying
  per text, above the batching, means a text whose vector came back wrong (NaN, the wrong
  dimension) is fetched again alone, in a later batch, and a failed request is retried
  for each of its texts, which regroup into new batches;
- a ``@bulkhead`` bounds how many checkpoint batches run at once (the others queue);
- a checkpoint of finished batches, each written atomically before it is recorded, so an
  interruption at any moment loses at most the batches in flight;
- a progress bar fed by the cache's stats and buttress's events.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import aiohttp
import anyio
import anyio.to_thread
import numpy as np

from buttress import (
    ArraySpec,
    BatchDispatched,
    OutputValidationError,
    RetryScheduled,
    batch,
    bulkhead,
    events,
    policy,
)

DIM = 384
# Before Python 3.11, asyncio's timeout (which aiohttp raises) is not the builtin one.
TIMEOUTS = (TimeoutError, asyncio.TimeoutError)


def synthetic_texts(count: int, seed: int = 0) -> list[str]:
    """``count`` short texts, one in five a repeat of another, as in real corpora."""
    rng = np.random.default_rng(seed)
    unique = [f"passage {n} of the corpus" for n in range(count - count // 5)]
    texts = unique + [unique[int(i)] for i in rng.integers(0, len(unique), count // 5)]
    return [texts[int(i)] for i in rng.permutation(len(texts))]


class Checkpoint:
    """Finished batches in ``directory``: ``batches/NNNNN.npy``, then a line in
    ``checkpoint.txt``. A batch counts as done only once its line is there, and the line
    is written only after the array is safely in place."""

    def __init__(self, directory: Path, texts: Sequence[str], batch_size: int, dim: int) -> None:
        self.directory = directory
        self.batches = directory / "batches"
        self.log = directory / "checkpoint.txt"
        digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()
        self.identity = {
            "texts": digest,
            "count": len(texts),
            "batch_size": batch_size,
            "dim": dim,
        }

    def open(self) -> set[int]:
        """Prepare the directory; return the batches already done.

        Raises:
            SystemExit: the directory holds a checkpoint of other texts or settings.
        """
        self.batches.mkdir(parents=True, exist_ok=True)
        manifest = self.directory / "manifest.json"
        if manifest.exists():
            if json.loads(manifest.read_text()) != self.identity:
                raise SystemExit(
                    f"{self.directory} holds a checkpoint of other texts or settings; "
                    "use another --out, or delete it to start over"
                )
        else:
            manifest.write_text(json.dumps(self.identity))
        done: set[int] = set()
        if self.log.exists():
            for line in self.log.read_text().splitlines():
                # A line cut short by a crash is not a number: that batch is simply redone.
                if line.strip().isdigit() and self.path(int(line)).exists():
                    done.add(int(line))
        return done

    def path(self, index: int) -> Path:
        return self.batches / f"{index:05d}.npy"

    def save(self, index: int, vectors: np.ndarray) -> None:
        """Write one batch, then record it (blocking: call it from a worker thread)."""
        final = self.path(index)
        partial = final.with_suffix(".partial")
        with partial.open("wb") as file:
            np.save(file, vectors)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, final)  # atomic: the file is whole or absent
        with self.log.open("a") as log:
            log.write(f"{index}\n")
            log.flush()
            os.fsync(log.fileno())

    def assemble(self, batches: int) -> Path:
        """All batches, in order, as one array in ``embeddings.npy``."""
        target = self.directory / "embeddings.npy"
        np.save(target, np.concatenate([np.load(self.path(i)) for i in range(batches)]))
        return target


class ProgressBar:
    """A one-line progress bar on stderr; a line per tenth when stderr is not a terminal."""

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.live = self.stream.isatty()
        self.started = time.monotonic()
        self._drawn = 0.0
        self._tenth = 0

    def advance(self, count: int, note: str) -> None:
        self.done += count
        if not self.enabled:
            return
        tenth = self.done * 10 // max(self.total, 1)
        if self.live and (time.monotonic() - self._drawn > 0.1 or self.done == self.total):
            self._drawn = time.monotonic()
            self.stream.write("\r" + self.line(note))
            if self.done == self.total:
                self.stream.write("\n")
        elif not self.live and tenth > self._tenth:
            self._tenth = tenth
            self.stream.write(self.line(note) + "\n")
        self.stream.flush()

    def line(self, note: str) -> str:
        share = self.done / max(self.total, 1)
        bar = "#" * round(30 * share) + "-" * (30 - round(30 * share))
        elapsed = time.monotonic() - self.started
        return (
            f"[{bar}] {100 * share:5.1f}% {self.done:,}/{self.total:,} texts "
            f"{elapsed:5.1f}s  {note}"
        )


async def embed_all(args: argparse.Namespace, texts: list[str], upstream: str) -> int:
    batches = [texts[i : i + args.batch_size] for i in range(0, len(texts), args.batch_size)]
    checkpoint = Checkpoint(args.out, texts, args.batch_size, args.dim)
    done = checkpoint.open()
    pending = [index for index in range(len(batches)) if index not in done]
    print(
        f"{len(texts):,} texts in {len(batches)} batches of {args.batch_size}; "
        f"{len(done)} already done (checkpoint in {args.out}), {len(pending)} to fetch",
        flush=True,
    )

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        # Concurrent single texts, gathered into upstream requests.
        @batch(
            max_size=args.upstream_batch,
            max_wait=args.max_wait,
            max_concurrency=args.max_in_flight,
        )
        async def embed_many(texts: list[str]) -> list[np.ndarray]:
            async with session.post(upstream, json={"texts": texts}) as response:
                response.raise_for_status()  # a 503's Retry-After is honoured by @retry
                payload = await response.json()
            return [np.asarray(vector, dtype=np.float32) for vector in payload["embeddings"]]

        @policy(
            cache={"ttl": None, "maxsize": len(texts)},
            retry={
                "max_retries": 6,
                "base_delay": 0.1,
                "max_delay": 5.0,
                "deadline": 60.0,
                "exceptions": (aiohttp.ClientError, *TIMEOUTS, OutputValidationError),
            },
            attempt_timeout=10.0,
            validate_output={"spec": ArraySpec(shape=(args.dim,), dtype="float32", finite=True)},
        )
        async def embed(text: str) -> np.ndarray:
            return await embed_many.one(text)

        # At most --concurrency batches at once; the others wait their turn.
        @bulkhead(args.concurrency, max_waiting=len(batches))
        async def fetch_batch(chunk: list[str]) -> np.ndarray:
            # gather: the first error ends the batch as it is (not in an ExceptionGroup).
            return np.stack(await asyncio.gather(*(embed(text) for text in chunk)))

        retries = 0
        requests = 0

        def count(event: RetryScheduled | BatchDispatched) -> None:
            nonlocal retries, requests
            if isinstance(event, RetryScheduled):
                retries += 1
            else:
                requests += 1

        progress = ProgressBar(len(texts), enabled=args.progress)
        progress.done = sum(len(batches[index]) for index in done)
        failed: dict[int, BaseException] = {}

        async def process(index: int) -> None:
            try:
                vectors = await fetch_batch(batches[index])
            except Exception as exc:  # retries exhausted: report it, keep the others going
                failed[index] = exc
                return
            # Not cancellable: once started, a save finishes even on Ctrl-C.
            await anyio.to_thread.run_sync(checkpoint.save, index, vectors)
            stats = embed.cache.stats()  # type: ignore[attr-defined]
            note = (
                f"cache hits {stats.hits + stats.joins:,}  retries {retries:,}  "
                f"requests {requests:,}"
            )
            progress.advance(len(batches[index]), note)

        started = time.monotonic()
        with events.subscribe(count, (RetryScheduled, BatchDispatched)):
            async with anyio.create_task_group() as group:
                for index in pending:
                    group.start_soon(process, index)
        stats = embed.cache.stats()  # type: ignore[attr-defined]
        batched = embed_many.batcher.stats()

    fetched = len(pending) - len(failed)
    print(
        f"fetched {fetched} batches in {time.monotonic() - started:.1f}s: "
        f"{stats.misses:,} upstream fetches, {stats.hits + stats.joins:,} repeats from the "
        f"cache, {retries:,} retries; {batched.items:,} texts sent in {batched.batches:,} "
        f"upstream requests (mean {batched.mean_size:.1f} texts per request)",
        flush=True,
    )
    if failed:
        first = next(iter(failed.values()))
        print(
            f"{len(failed)} batches failed (first: {first!r}); run the same command again "
            "to fetch them",
            file=sys.stderr,
        )
        return 1
    target = checkpoint.assemble(len(batches))
    print(f"all {len(texts):,} embeddings in {target}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", type=Path, help="a file of texts, one per line")
    source.add_argument("--count", type=int, default=10_000, help="synthetic texts to embed")
    parser.add_argument("--out", type=Path, default=Path("embeddings-out"), help="checkpoint dir")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8, help="batches at once")
    parser.add_argument(
        "--max-in-flight", type=int, default=8, help="upstream requests at once"
    )
    parser.add_argument(
        "--upstream-batch", type=int, default=64, help="texts per upstream request at most"
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=0.005,
        help="seconds a request gathers texts before it is sent, at most",
    )
    parser.add_argument("--dim", type=int, default=DIM, help="the vectors' dimension")
    parser.add_argument(
        "--upstream",
        help='the embedding service, POST URL {"texts": [...]}; by default a toy one',
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    if args.input is not None:
        texts = [line for line in args.input.read_text().splitlines() if line.strip()]
    else:
        texts = synthetic_texts(args.count)

    async def run() -> int:
        # Ctrl-C cancels this task, as asyncio.run does from Python 3.11 on (before, a
        # KeyboardInterrupt raised wherever the loop was could be lost or hang cleanup).
        with contextlib.suppress(NotImplementedError):  # Windows: KeyboardInterrupt
            main_task = asyncio.current_task()
            assert main_task is not None
            asyncio.get_running_loop().add_signal_handler(signal.SIGINT, main_task.cancel)
        if args.upstream is not None:
            return await embed_all(args, texts, args.upstream)
        from toy_embedding_service import toy_service  # next to this file

        async with toy_service(dim=args.dim) as url:
            return await embed_all(args, texts, url)

    try:
        return asyncio.run(run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(
            "\ninterrupted: the finished batches are saved; run the same command again to "
            "resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
