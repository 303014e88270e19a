"""The replica processes of the shared breaker and budget tests, and their driver.

A replica is this module run through ``python -c "import _replica_support; ..."``. It
calls a stand-in dependency every ``PACE`` seconds, whose behaviour the test sets by
writing a phase to a control file (``healthy``, ``failing``, ``stop``): a file, not a
Redis key, so that the test can steer the replicas while Redis is down. Each replica
writes what it saw to its own JSON file when told to stop, and leaves a marker file the
first time its breaker refuses a call in a phase.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from buttress import (
    CircuitOpenError,
    CircuitStateChanged,
    FleetStore,
    RetryBudget,
    SharedStateLost,
    SharedStateRestored,
    circuit_breaker,
    events,
    retry,
)

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

#: Seconds between two calls of one replica.
PACE = 0.01


class Upstream(ConnectionError):
    """The dependency failed."""


def _phase(control: Path) -> str:
    """The phase and its round, as the test wrote it: ``healthy.0``, ``failing.2``."""
    try:
        return control.read_text().strip() or "wait.0"
    except FileNotFoundError:
        return "wait.0"


def breaker_replica(argv: list[str]) -> None:
    """``directory index url|- minimum_calls window``: call a breaker-guarded dependency,
    phase after phase, counting per phase the calls made, failed and refused, and any
    other error (one that Redis would have caused). No calls in a ``wait`` phase."""
    directory, index, url = Path(argv[0]), argv[1], argv[2]
    minimum, window = int(argv[3]), float(argv[4])
    control = directory / "phase"
    store = None if url == "-" else FleetStore(url, timeout=1.0)
    seen: Counter[str] = Counter()

    def listen(event: Any) -> None:
        if isinstance(event, CircuitStateChanged):
            seen[f"{event.old}->{event.new}"] += 1
        else:
            seen[type(event).__name__] += 1

    events.subscribe(listen, (CircuitStateChanged, SharedStateLost, SharedStateRestored))
    phase = "wait"

    @circuit_breaker(
        name="upstream",
        store=store,
        minimum_calls=minimum,
        failure_ratio=0.5,
        window=window,
        open_for=60,
    )
    def call() -> str:
        if phase == "failing":
            raise Upstream("the upstream is down")
        return "ok"

    counts: dict[str, Counter[str]] = {}
    (directory / f"ready-{index}").touch()
    while True:
        key = _phase(control)
        phase = key.partition(".")[0]
        if phase == "stop":
            break
        if phase == "wait":
            time.sleep(PACE)
            continue
        tally = counts.setdefault(key, Counter())
        try:
            call()
        except CircuitOpenError:
            tally["refused"] += 1
            marker = directory / f"refused-{key}-{index}"
            if not marker.exists():
                marker.touch()
        except Upstream:
            tally["failed"] += 1
        except Exception as exc:  # a call that failed because of Redis: the test fails
            tally["other"] += 1
            tally[f"other:{type(exc).__name__}"] += 1
        else:
            tally["ok"] += 1
        tally["calls"] += 1
        time.sleep(PACE)
    result = {
        "phases": {key: dict(value) for key, value in counts.items()},
        "events": dict(seen),
        "state": call.breaker.state,
    }
    if store is not None:
        store.close()
    (directory / f"result-{index}.json").write_text(json.dumps(result))


def budget_replica(argv: list[str]) -> None:
    """``directory index url|- ratio min_per_second``: call an always failing dependency
    through ``@retry(budget=...)`` until told to stop; count first attempts and retries."""
    directory, index, url = Path(argv[0]), argv[1], argv[2]
    ratio, floor = float(argv[3]), float(argv[4])
    control = directory / "phase"
    store = None if url == "-" else FleetStore(url, timeout=1.0)
    if store is None:
        budget = RetryBudget(ratio, floor, window=30)
    else:
        budget = RetryBudget(ratio, floor, window=30, store=store, name="upstream")
    attempts = Counter[str]()

    @retry(max_retries=3, base_delay=0.001, max_delay=0.001, jitter=None, budget=budget)
    def call() -> None:
        attempts["attempts"] += 1
        raise Upstream("the upstream is down")

    (directory / f"ready-{index}").touch()
    while _phase(control).startswith("wait"):
        time.sleep(PACE)
    started = time.monotonic()
    while not _phase(control).startswith("stop"):
        attempts["calls"] += 1
        try:
            call()
        except Upstream:
            pass
        time.sleep(PACE)
    attempts["seconds"] = round(time.monotonic() - started, 3)
    if store is not None:
        store.close()
    (directory / f"result-{index}.json").write_text(json.dumps(dict(attempts)))


def start(mode: str, *args: object) -> subprocess.Popen[str]:
    code = f"import sys, _replica_support; _replica_support.{mode}(sys.argv[1:])"
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)])},
    )


class Fleet:
    """N replica processes steered through their control file."""

    def __init__(self, directory: Path, processes: list[subprocess.Popen[str]]) -> None:
        self.directory = directory
        self.processes = processes
        self.round = 0

    def set(self, phase: str) -> None:
        """Start ``phase``; each ``failing`` phase starts a round (``failing.1`` ...)."""
        if phase == "failing":
            self.round += 1
        temporary = self.directory / "phase.tmp"
        temporary.write_text(f"{phase}.{self.round}")
        temporary.replace(self.directory / "phase")

    def wait_for(self, prefix: str, timeout: float = 120.0) -> None:
        """Until every replica has left the marker ``<prefix>-<index>``."""
        deadline = time.monotonic() + timeout
        wanted = [self.directory / f"{prefix}-{index}" for index in range(len(self.processes))]
        while not all(path.exists() for path in wanted):
            for process in self.processes:
                if process.poll() is not None:
                    raise AssertionError(f"a replica ended early: {process.communicate()}")
            if time.monotonic() > deadline:
                missing = [path.name for path in wanted if not path.exists()]
                raise AssertionError(f"timed out waiting for {missing}")
            time.sleep(0.01)

    def results(self) -> list[dict[str, Any]]:
        self.set("stop")
        found = []
        for index, process in enumerate(self.processes):
            _out, err = process.communicate(timeout=120)
            assert process.returncode == 0, err
            found.append(json.loads((self.directory / f"result-{index}.json").read_text()))
        return found


@contextmanager
def fleet(directory: Path, mode: str, replicas: int, *args: object) -> Iterator[Fleet]:
    """Start ``replicas`` processes of ``mode``; kill what is left when the block ends."""
    processes = [start(mode, directory, index, *args) for index in range(replicas)]
    running = Fleet(directory, processes)
    try:
        running.wait_for("ready")
        yield running
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=30)


def no_sync_threads() -> list[str]:
    """The names of the sync threads still running in this process."""
    return [t.name for t in threading.enumerate() if t.name.startswith("buttress-fleet-sync")]
