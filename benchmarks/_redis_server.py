"""A private redis-server for the benchmarks, and the commands clients send it.

:func:`redis_server` starts one on a free port (nothing saved to disk) and stops it at the
end; :func:`commands_sent` counts, with ``MONITOR``, the commands clients send inside a
block: each one a round trip (nobody pipelines here), those a Lua script runs left out
(part of its one ``EVALSHA``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["commands_sent", "redis_server"]


@contextmanager
def redis_server() -> Iterator[str | None]:
    """Yield the URL of a private redis-server, or ``None`` when none is installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as directory:
        server = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", directory],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.terminate()
            server.wait(timeout=10)


@contextmanager
def commands_sent(url: str) -> Iterator[Counter[str]]:
    """Count the commands clients send inside the block (``MONITOR``), leaving out those a
    Lua script runs (part of its one ``EVALSHA``) and a new connection's handshake."""
    import redis

    seen: Counter[str] = Counter()
    watcher = redis.Redis.from_url(url, socket_timeout=30)
    marker = redis.Redis.from_url(url, socket_timeout=5)
    started, stopped = threading.Event(), threading.Event()

    def watch() -> None:
        try:
            with watcher.monitor() as monitor:
                marker.echo("bench-start")
                counting = False
                while True:
                    entry = monitor.next_command()
                    words = entry["command"].split()
                    if words[:2] == ["ECHO", "bench-start"]:
                        counting = True
                        started.set()
                    elif words[:2] == ["ECHO", "bench-stop"]:
                        return
                    elif counting and entry.get("client_type") != "lua":
                        command = words[0].lower()
                        if command not in {"hello", "client", "auth", "select", "ping"}:
                            seen[command] += 1
        finally:
            started.set()
            stopped.set()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield seen
    finally:
        marker.echo("bench-stop")
        stopped.wait(10)
        thread.join(10)
        marker.close()
        watcher.close()
