"""Several worker processes behind one port: totals that add up (prometheus-client's
multiprocess mode), checked with a real multi-worker uvicorn scraped over HTTP."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from _monitor_support import fresh_monitoring, parse, value
from buttress import ConfigurationError, metrics, monitor

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
WORKERS = 3
REQUESTS = 60


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    with fresh_monitoring():
        yield


def get(url: str, timeout: float = 30) -> bytes:
    # A new connection per request, so the kernel spreads them over the workers.
    request = urllib.request.Request(url, headers={"Connection": "close"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()  # type: ignore[no-any-return]


@pytest.fixture
def uvicorn_workers(tmp_path: Path) -> Iterator[str]:
    """``uvicorn --workers 3`` on a port of its choosing; its base URL."""
    directory = tmp_path / "multiproc"
    directory.mkdir()
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT / "src")]),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "_multiworker_app:app", "--host", "127.0.0.1",
         "--port", "0", "--workers", str(WORKERS), "--log-level", "info"],
        cwd=TESTS,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    found = threading.Event()
    address: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            match = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
            if match and not address:
                address.append(match[1])
                found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert found.wait(120), "uvicorn did not start:\n" + "".join(lines)
        url = address[0]
        # Every worker up: the supervisor logs one "Started server process" per worker.
        deadline = time.monotonic() + 120
        while sum("Application startup complete" in line for line in lines) < WORKERS:
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        reader.join(10)
        assert process.stderr is not None
        process.stderr.close()


def scraped(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = get(f"{url}/metrics").decode()
    list(text_string_to_metric_families(text))  # parses, or raises
    return parse(text)


def test_a_scrape_of_any_worker_adds_up_every_worker(uvicorn_workers: str) -> None:
    pids: set[int] = set()
    retried = 0
    for _ in range(REQUESTS):
        answer = get(f"{uvicorn_workers}/work")
        found = re.search(rb'"pid":(\d+),"retried":(\d)', answer)
        assert found, answer
        pids.add(int(found[1]))
        retried += int(found[2])
    assert len(pids) >= 2, "the requests all went to one worker"

    # Each worker writes its totals every 0.2 s (and the one answering, right away).
    # The middleware counts a request once its response is sent, after the call's count.
    http = {"method": "GET", "route": "/work", "status_class": "2xx"}
    deadline = time.monotonic() + 60
    while True:
        samples = scraped(uvicorn_workers)
        calls = value(samples, "buttress_calls_total", function="mw.work", outcome="ok")
        requests = value(samples, "buttress_http_requests_total", **http)
        if (calls == requests == REQUESTS) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert calls == REQUESTS, samples
    assert value(samples, "buttress_retries_total", function="mw.work") == retried
    count = value(samples, "buttress_call_duration_seconds_count", function="mw.work")
    assert count == REQUESTS
    assert value(
        samples, "buttress_call_duration_seconds_bucket", function="mw.work", le="+Inf"
    ) == REQUESTS
    assert value(samples, "buttress_in_flight", function="mw.work") == 0
    # The middleware's HTTP-level counts add up across the workers too.
    assert value(samples, "buttress_http_requests_total", **http) == REQUESTS
    assert value(samples, "buttress_http_request_duration_seconds_count", **http) == REQUESTS
    # Scraping another worker gives the same totals.
    again = scraped(uvicorn_workers)
    assert value(again, "buttress_calls_total", function="mw.work", outcome="ok") == REQUESTS


def test_multiprocess_mode_in_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    @monitor("mp.one")
    def one() -> None: ...

    registry = metrics.enable()
    assert registry is metrics.current_registry()
    import prometheus_client

    assert registry is not prometheus_client.REGISTRY
    for _ in range(3):
        one()
    samples = parse(metrics.generate_latest())
    assert value(samples, "buttress_calls_total", function="mp.one", outcome="ok") == 3
    assert value(samples, "buttress_in_flight", function="mp.one") == 0
    assert any(name.startswith("counter_") for name in os.listdir(tmp_path))
    metrics.disable()
    # This process's gauges leave the sum; its counters stay.
    assert not any(name.startswith("gauge_") for name in os.listdir(tmp_path))


def test_workers_forked_after_enabling_write_their_own_calls_only(tmp_path: Path) -> None:
    # gunicorn --preload: the parent enabled the mode and counted calls, then forked.
    # Each worker's thread writes without a logged call or a flush, and the totals the
    # workers inherited are the parent's, counted once.
    import _forked_workers as script

    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT / "src")]),
    }
    done = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", str(TESTS / "_forked_workers.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    codes, _, exposition = done.stdout.partition("\n")
    assert codes == "[0, 0, 0]", done.stderr  # every worker saw its own calls written
    samples = parse(exposition.encode())
    made = script.PARENT_CALLS + script.WORKERS * script.WORKER_CALLS
    assert value(samples, "buttress_calls_total", function="fork.work", outcome="ok") == made
    assert value(samples, "buttress_call_duration_seconds_count", function="fork.work") == made


def test_multiprocess_mode_needs_the_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delenv("prometheus_multiproc_dir", raising=False)
    with pytest.raises(ConfigurationError, match="PROMETHEUS_MULTIPROC_DIR"):
        metrics.enable(CollectorRegistry(), multiprocess=True)
    assert metrics.current_registry() is None
