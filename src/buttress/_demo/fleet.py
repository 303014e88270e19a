"""The demo's fleet: replicas of the resilient gateway in processes of their own, sharing Redis.

``python -m buttress demo --replicas 3`` puts, beside the plain and the resilient gateway,
three gateway processes (:mod:`.replica`) behind the one load generator, which sends them
the same traffic in turn (round robin, as a load balancer would). They share their cache
(:class:`~buttress.RedisStore`), the upstream's rate limit and the circuit breaker
(:class:`~buttress.FleetStore`), in the Redis named by ``--redis URL`` or in a private
``redis-server`` that :func:`private_redis` starts on a free port and stops at the end.

This module needs redis-py (``pip install 'buttress[redis]'``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import redis.asyncio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

import buttress

from .gateways import FLEET, FleetLimit
from .replica import ReplicaConfig
from .report import ReplicaStats

__all__ = [
    "Fleet",
    "Replica",
    "private_redis",
    "redis_problem",
    "start_fleet",
]

#: How long a replica or a private redis-server may take to start on a busy machine.
START_TIMEOUT = 60.0
#: The longest line a replica prints.
MAX_LINE = 1 << 20


async def redis_problem(url: str) -> str | None:
    """Why the Redis at ``url`` cannot serve the fleet (unreachable, refused), or ``None``."""
    try:
        client = redis.asyncio.Redis.from_url(
            url, socket_timeout=5.0, socket_connect_timeout=5.0
        )
    except ValueError as exc:
        return f"--redis {url}: {exc}"
    try:
        await client.ping()
    except (redis.RedisError, OSError) as exc:
        return f"Redis at {url} did not answer PING: {exc}"
    finally:
        await client.aclose()
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@asynccontextmanager
async def private_redis(binary: str | None = None) -> AsyncIterator[str]:
    """Start a ``redis-server`` of our own on a free port of 127.0.0.1; yield its URL.

    Nothing is saved to disk; the server is stopped (and waited for) when the block ends.

    Raises:
        FileNotFoundError: no ``redis-server`` on PATH (and no ``binary`` given).
        RuntimeError: it did not answer within :data:`START_TIMEOUT` seconds.
    """
    found = binary or shutil.which("redis-server")
    if found is None:
        raise FileNotFoundError("no redis-server on PATH")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="buttress-demo-redis-") as directory:
        process = await anyio.open_process(
            [found, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", directory],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"redis://127.0.0.1:{port}/0"
            with anyio.fail_after(START_TIMEOUT):
                while await redis_problem(url) is not None:
                    if process.returncode is not None:
                        raise RuntimeError(
                            f"redis-server exited with {process.returncode} at start"
                        )
                    await anyio.sleep(0.05)
            yield url
        finally:
            await _end(process)


async def _end(process: Process, *, grace: float = 10.0) -> None:
    """Terminate ``process`` (kill it if it lingers) and wait for it, even when cancelled."""
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            process.terminate()
            with anyio.move_on_after(grace):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
        await process.aclose()


@dataclass
class Replica:
    """A running replica process and what it printed."""

    index: int
    process: Process
    url: str
    stats: ReplicaStats | None = None

    async def stop(self, within: float) -> ReplicaStats:
        """Tell it to stop, and read what it counted (its last line) within ``within``
        seconds."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        lines = BufferedByteReceiveStream(self.process.stdout)
        try:
            await self.process.stdin.send(b"stop\n")
            with anyio.fail_after(within):
                values = json.loads(await lines.receive_until(b"\n", MAX_LINE))
        except (anyio.BrokenResourceError, anyio.EndOfStream, TimeoutError) as exc:
            raise RuntimeError(
                f"replica {self.index} did not report (exit code {self.process.returncode})"
            ) from exc
        finally:
            await _end(self.process)
        self.stats = ReplicaStats(**values)
        return self.stats


@dataclass
class Fleet:
    """Replicas started by :func:`start_fleet`, with the Redis they share."""

    replicas: list[Replica]
    redis: str
    namespace: str
    limit: FleetLimit
    private: bool
    stats: list[ReplicaStats] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [replica.url for replica in self.replicas]

    async def stop(self, within: float) -> list[ReplicaStats]:
        """Stop every replica and collect what each counted (each within ``within``
        seconds)."""
        stats: list[ReplicaStats | None] = [None] * len(self.replicas)

        async def one(index: int, replica: Replica) -> None:
            stats[index] = await replica.stop(within)

        async with anyio.create_task_group() as group:
            for index, replica in enumerate(self.replicas):
                group.start_soon(one, index, replica)
        self.stats = [found for found in stats if found is not None]
        return self.stats

    async def forget(self) -> None:
        """Drop the shared limit's and breaker's settings records, so that no run leaves
        them behind in Redis (the cache's keys expire with their TTL)."""
        store = buttress.FleetStore(self.redis, namespace=self.namespace, timeout=5.0)
        try:
            await anyio.to_thread.run_sync(store.forget, "rate_limit", self.limit.name)
            await anyio.to_thread.run_sync(store.forget, "circuit_breaker", f"{FLEET}.embed")
        finally:
            await anyio.to_thread.run_sync(store.close)


def _environment() -> dict[str, str]:
    """The replicas import buttress from where this process did."""
    env = dict(os.environ)
    source = str(Path(buttress.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([source, *filter(None, [env.get("PYTHONPATH")])])
    return env


async def _start_replica(config: ReplicaConfig, log: Path | None) -> Replica:
    stderr = subprocess.DEVNULL if log is None else log.open("wb")
    try:
        process = await anyio.open_process(
            [sys.executable, "-m", "buttress._demo.replica", config.to_json()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=_environment(),
        )
    finally:
        if log is not None:
            stderr.close()  # type: ignore[union-attr]  # the child has its own descriptor
    assert process.stdout is not None
    try:
        with anyio.fail_after(START_TIMEOUT):
            line = await BufferedByteReceiveStream(process.stdout).receive_until(
                b"\n", MAX_LINE
            )
    except (anyio.EndOfStream, anyio.IncompleteRead, TimeoutError) as exc:
        await _end(process)
        where = f"; see {log}" if log is not None else ""
        raise RuntimeError(f"replica {config.index} did not start{where}") from exc
    return Replica(config.index, process, json.loads(line)["url"])


@asynccontextmanager
async def start_fleet(
    replicas: int,
    *,
    upstream: str,
    redis_url: str | None,
    limit: FleetLimit,
    client_timeout: float,
    duration: float,
    dim: int,
    logs: Path | None = None,
) -> AsyncIterator[Fleet]:
    """Start ``replicas`` gateway processes sharing the Redis at ``redis_url`` (a private
    ``redis-server`` when ``None``); stop them, and that server, when the block ends.
    Their clients give up after ``client_timeout`` seconds, their traffic lasts
    ``duration`` seconds (see :meth:`.ResilienceSettings.for_client_timeout`).

    Each replica's stderr goes to ``logs/replica-N.log`` (nowhere when ``logs`` is
    ``None``). Call :meth:`Fleet.stop` inside the block to collect their counts; the
    block's end stops what is still running.
    """
    async with AsyncExitStack() as stack:
        private = redis_url is None
        url = await stack.enter_async_context(private_redis()) if redis_url is None else redis_url
        # A namespace of the run's own: nothing of an earlier run is read back.
        namespace = f"buttress-demo-{secrets.token_hex(4)}"
        if logs is not None:
            await anyio.Path(logs).mkdir(parents=True, exist_ok=True)
        configs = [
            ReplicaConfig(
                index=index,
                upstream=upstream,
                redis=url,
                namespace=namespace,
                timeout=client_timeout,
                duration=duration,
                dim=dim,
                replicas=replicas,
                limit=limit,
            )
            for index in range(replicas)
        ]
        started: list[Replica | None] = [None] * replicas

        async def start(index: int) -> None:
            log = None if logs is None else logs / f"replica-{index}.log"
            started[index] = await _start_replica(configs[index], log)

        async def end_all() -> None:
            for replica in started:
                if replica is not None:
                    await _end(replica.process)

        stack.push_async_callback(end_all)
        async with anyio.create_task_group() as group:
            for index in range(replicas):
                group.start_soon(start, index)
        fleet = Fleet(
            [replica for replica in started if replica is not None],
            url,
            namespace,
            limit,
            private,
        )
        try:
            yield fleet
        finally:
            if not private:
                with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                    await fleet.forget()
