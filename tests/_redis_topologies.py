"""Real Redis topologies for the tests, started from the ``redis-server`` binary.

* :func:`redis_cluster`: three masters on free ports, slots split between them with
  ``CLUSTER ADDSLOTS`` and joined with ``CLUSTER MEET`` (no ``redis-cli`` needed);
* :func:`redis_sentinel`: one master, one replica and three sentinels
  (``redis-server <conf> --sentinel``), which fail over when the master dies.

Both are session fixtures: they start once, and stop every process they started when the
session ends (or the moment they fail to start). Without the binary they skip, or fail
under ``BUTTRESS_REQUIRE_REDIS=1`` (see ``conftest.redis_binary``).
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from conftest import redis_binary

#: Redis Cluster's slots.
SLOTS = 16384


def _free_port(spare: int = 0) -> int:
    """A free port on 127.0.0.1; with ``spare``, one whose ``port + spare`` is free too
    (a cluster node also listens on its port + 10000, for the cluster bus)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not spare:
            return port
        if port + spare < 65536:
            try:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port + spare))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Processes:
    """Server processes started for a topology; :meth:`stop` ends every one of them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.running: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, port: int, *arguments: str) -> None:
        process = subprocess.Popen(
            [redis_binary(), *arguments],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
        )
        self.running[port] = process
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
        try:
            _wait(client.ping, 10, f"redis-server on port {port}")
        finally:
            client.close()

    def kill(self, port: int) -> None:
        process = self.running.pop(port)
        process.kill()
        process.wait(timeout=10)

    def stop(self) -> None:
        for process in self.running.values():
            process.terminate()
        for process in self.running.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.running.clear()


def _common(port: int, directory: Path) -> list[str]:
    return [
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--protected-mode", "no",
        "--dir", str(directory),
    ]  # fmt: skip


def _cluster_info(client: redis.Redis) -> dict[str, str]:
    reply = client.execute_command("CLUSTER", "INFO")
    if isinstance(reply, dict):  # parsed by redis-py
        return {str(key): str(value) for key, value in reply.items()}
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


class Cluster:
    """Three masters of a Redis Cluster on 127.0.0.1."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming every node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def flush(self) -> None:
        for port in self.ports:
            client = redis.Redis(host="127.0.0.1", port=port)
            try:
                client.flushall()
            finally:
                client.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Cluster]:
    """A three-master Redis Cluster for the session."""
    with tempfile.TemporaryDirectory(prefix="buttress-cluster-") as name:
        directory = Path(name)
        processes = Processes(directory)
        try:
            ports = [_free_port(spare=10000) for _ in range(3)]
            for port in ports:
                processes.start(
                    port,
                    *_common(port, directory),
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", f"nodes-{port}.conf",
                    "--cluster-node-timeout", "2000",
                )  # fmt: skip
            clients = [redis.Redis(host="127.0.0.1", port=port) for port in ports]
            try:
                share = SLOTS // len(ports)
                for index, client in enumerate(clients):
                    end = SLOTS if index == len(ports) - 1 else (index + 1) * share
                    client.execute_command("CLUSTER", "ADDSLOTS", *range(index * share, end))
                for port in ports[1:]:
                    clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)

                def formed() -> bool:
                    for client in clients:
                        info = _cluster_info(client)
                        if info.get("cluster_state") != "ok":
                            return False
                        if int(info.get("cluster_known_nodes", 0)) != len(ports):
                            return False
                    return True

                _wait(formed, 30, "the cluster to form")
            finally:
                for client in clients:
                    client.close()
            yield Cluster(ports)
        finally:
            processes.stop()


class Sentinels:
    """A master, its replica and three sentinels watching them as ``service``."""

    service = "buttress-master"

    def __init__(self, processes: Processes, master: int, replica: int, sentinels: list[int]):
        self.processes = processes
        self.master = master
        self.replica = replica
        self.sentinels = sentinels

    @property
    def url(self) -> str:
        """A ``redis+sentinel://`` URL naming every sentinel and the service."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    def master_port(self) -> int:
        """The master's port, as the first sentinel that answers says."""
        for port in self.sentinels:
            client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
            try:
                _, master = client.execute_command(
                    "SENTINEL", "get-master-addr-by-name", self.service
                )
                return int(master)
            except (redis.RedisError, OSError, TypeError):
                continue
            finally:
                client.close()
        raise RuntimeError("no sentinel answered")

    def kill_master(self) -> int:
        """Kill the current master (SIGKILL); its port."""
        port = self.master_port()
        self.processes.kill(port)
        return port


@contextmanager
def sentinel_topology() -> Iterator[Sentinels]:
    """Start one master, one replica and three sentinels; stop them all at the end."""
    with tempfile.TemporaryDirectory(prefix="buttress-sentinel-") as name:
        directory = Path(name)
        processes = Processes(directory)
        try:
            master, replica = _free_port(), _free_port()
            processes.start(master, *_common(master, directory))
            processes.start(
                replica, *_common(replica, directory), "--replicaof", "127.0.0.1", str(master)
            )
            client = redis.Redis(host="127.0.0.1", port=replica)
            try:
                _wait(
                    lambda: client.info("replication").get("master_link_status") == "up",
                    20,
                    "the replica to sync",
                )
            finally:
                client.close()
            sentinels = [_free_port() for _ in range(3)]
            for port in sentinels:
                config = directory / f"sentinel-{port}.conf"
                config.write_text(
                    f"port {port}\n"
                    "bind 127.0.0.1\n"
                    "protected-mode no\n"
                    f"dir {directory}\n"
                    f"sentinel monitor {Sentinels.service} 127.0.0.1 {master} 2\n"
                    f"sentinel down-after-milliseconds {Sentinels.service} 1000\n"
                    f"sentinel failover-timeout {Sentinels.service} 5000\n"
                    f"sentinel parallel-syncs {Sentinels.service} 1\n"
                )
                processes.start(port, str(config), "--sentinel")
            watcher = redis.Redis(host="127.0.0.1", port=sentinels[0])
            try:

                def watching() -> bool:
                    state = watcher.sentinel_master(Sentinels.service)
                    return (
                        int(state["num-other-sentinels"]) == 2 and int(state["num-slaves"]) == 1
                    )

                _wait(watching, 30, "the sentinels to find each other and the replica")
            finally:
                watcher.close()
            yield Sentinels(processes, master, replica, sentinels)
        finally:
            processes.stop()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[Sentinels]:
    """One master, one replica and three sentinels for the session (tests that kill the
    master make their own, with :func:`sentinel_topology`)."""
    with sentinel_topology() as topology:
        yield topology
