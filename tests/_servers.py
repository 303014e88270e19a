"""Real servers on 127.0.0.1 for the integration and example tests (not a test module).

- :func:`upstream_in_a_thread`: the demo's misbehaving embedding service, served from an
  event loop of its own in a thread, so that a subprocess (an example run as a script)
  or another event loop can call it.
- :class:`UvicornThread`: an ASGI app served by a real uvicorn server in a thread.
- :func:`aiohttp_serving`: an aiohttp application served in the test's own event loop.
- :class:`Script`: an example started as a script, with its output read line by line.
- :func:`example_module`: a fresh import of an example, to serve its app in the test.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import uvicorn
from aiohttp import web

from buttress._demo.upstream import Faults, Upstream

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@contextmanager
def example_module(name: str) -> Iterator[ModuleType]:
    """A fresh import of ``examples/<name>.py`` (its own decorators' state: a breaker, a
    cache), with the examples folder on ``sys.path`` for the modules it imports."""
    sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered while in use: pydantic resolves the models' annotations through it.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]
        sys.path.remove(str(EXAMPLES))


@contextmanager
def upstream_in_a_thread(faults: Faults, seed: int = 0) -> Iterator[Upstream]:
    """The stand-in served from its own event loop in a thread; stopped on exit.

    Read its counters (``total``, ``calls``, ``served``) from the test's thread once the
    calls are over: they are plain attributes updated by the server's loop.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="upstream-test", daemon=True)
    thread.start()
    upstream = Upstream(faults, seed=seed)
    try:
        asyncio.run_coroutine_threadsafe(upstream.start(), loop).result(timeout=30)
        yield upstream
    finally:
        asyncio.run_coroutine_threadsafe(upstream.stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


class UvicornThread:
    """A real uvicorn server on a free port of 127.0.0.1, in a thread of its own.

    ``with UvicornThread(app) as url:`` serves until the block ends.
    """

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            ws="none",
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test")

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        assert not self.thread.is_alive(), "uvicorn did not stop"


@asynccontextmanager
async def aiohttp_serving(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on a free port of 127.0.0.1 in this event loop; yield its base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def script_env() -> dict[str, str]:
    """The environment for an example run as a script: this checkout's package."""
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}


def run_example(
    name: str, *arguments: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``examples/<name>`` to its end; its output is captured as text."""
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *arguments],
        capture_output=True,
        text=True,
        env=script_env(),
        timeout=timeout,
        check=False,
    )


class Script:
    """An example started as a script in the background, its stdout read line by line.

    ``with Script("x.py", "--port", "0") as script:``; :meth:`wait_for` returns the first
    line holding a marker; leaving the block interrupts the script (SIGINT, as Ctrl-C
    does) and waits for it. Both pipes are drained by threads, so a chatty script never
    blocks on a full pipe.
    """

    def __init__(self, name: str, *arguments: str) -> None:
        self.command: Sequence[str] = [sys.executable, str(EXAMPLES / name), *arguments]
        self.process: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._stderr: list[str] = []
        self.returncode: int | None = None
        self._readers: list[threading.Thread] = []

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def __enter__(self) -> Script:
        self.process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=script_env(),
        )
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read_lines, args=(self.process.stdout,), daemon=True),
            threading.Thread(target=self._read_all, args=(self.process.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        return self

    def _read_lines(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_all(self, stream: IO[str]) -> None:
        for chunk in iter(lambda: stream.read(4096), ""):
            self._stderr.append(chunk)

    def wait_for(self, marker: str, timeout: float = 60) -> str:
        """The first line (from now on) that contains ``marker``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line with {marker!r} in {timeout}s: {self.seen}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.stop()
                raise AssertionError(
                    f"the script ended without printing {marker!r}: {self.seen}\n{self.stderr}"
                )
            self.seen.append(line)
            if marker in line:
                return line

    def interrupt(self) -> None:
        """Send SIGINT, as Ctrl-C in a terminal does."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)

    def stop(self, timeout: float = 30) -> int:
        """Interrupt the script if it still runs, wait for it; return its exit status."""
        assert self.process is not None
        if self.returncode is None:
            self.interrupt()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            for reader in self._readers:
                reader.join(timeout)
            for stream in (self.process.stdout, self.process.stderr):
                if stream is not None:
                    stream.close()
            self.returncode = self.process.returncode
            while True:  # keep what the reader took after the last wait_for
                try:
                    line = self.lines.get_nowait()
                except queue.Empty:
                    break
                if line is not None:
                    self.seen.append(line)
        return self.returncode

    def __exit__(self, *exc: object) -> None:
        self.stop()
