"""The DogStatsD sink, against a real UDP listener on 127.0.0.1."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from datadog.dogstatsd.base import DogStatsd

from _monitor_support import fresh_monitoring
from buttress import CacheAccess, events, flush_monitoring, metrics, monitor, retry
from buttress._monitoring._emitter import exporter
from buttress._monitoring._stats import counters
from buttress.testing import FakeClock


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    with fresh_monitoring():
        yield


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.5)
    try:
        yield sock
    finally:
        sock.close()


@dataclass(frozen=True)
class Line:
    name: str
    value: float
    kind: str
    tags: frozenset[str]


def parse_packet(packet: bytes) -> list[Line]:
    lines = []
    for text in packet.decode().splitlines():
        head, kind, *fields = text.split("|")
        name, number = head.rsplit(":", 1)
        tags = next((f[1:].split(",") for f in fields if f.startswith("#")), [])
        lines.append(Line(name, float(number), kind, frozenset(tags)))
    return lines


def receive(sock: socket.socket, seconds: float = 2.0, prefix: str = "buttress.") -> list[Line]:
    """What arrives until a quiet 0.2 s after the first packet (or ``seconds`` pass)."""
    lines: list[Line] = []
    deadline = time.monotonic() + seconds
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            packet = sock.recv(65536)
        except TimeoutError:
            if lines:
                break
            continue
        lines.extend(parse_packet(packet))
    return [line for line in lines if line.name.startswith(prefix)]


def total(lines: list[Line], name: str, *tags: str) -> float:
    return sum(line.value for line in lines if line.name == name and set(tags) <= line.tags)


def test_calls_durations_and_outputs_in_dogstatsd_form(udp: socket.socket) -> None:
    port = udp.getsockname()[1]
    metrics.enable_dogstatsd("127.0.0.1", port, tags={"service": "ranker"})

    @monitor("rank.v2", track_output=len, labels={"model": "bm25"})
    def rank(items: list[int]) -> list[int]:
        if not items:
            raise ValueError("empty")
        return sorted(items)

    for items in ([3, 1], [2], [5, 4, 3]):
        rank(items)
    with pytest.raises(ValueError):
        rank([])
    assert flush_monitoring()
    lines = receive(udp)

    common = ("function:rank.v2", "model:bm25", "service:ranker")
    durations = [line for line in lines if line.name == "buttress.call_duration_seconds"]
    assert len(durations) == 4
    assert all(line.kind == "d" and set(common) <= line.tags for line in durations)
    assert sum("outcome:error" in line.tags for line in durations) == 1
    assert total(lines, "buttress.calls", *common, "outcome:ok") == 3
    assert total(lines, "buttress.calls", *common, "outcome:error") == 1
    assert all(line.kind == "c" for line in lines if line.name == "buttress.calls")
    outputs = sorted(line.value for line in lines if line.name == "buttress.output")
    assert outputs == [1, 2, 3]
    gauges = [line for line in lines if line.name == "buttress.in_flight"]
    assert gauges
    assert all(line.kind == "g" and line.value == 0 for line in gauges)


def test_event_counters_and_deltas(udp: socket.socket, buttress_clock: FakeClock) -> None:
    @monitor("before")
    def before() -> None:
        pass

    before()  # counted before the sink existed: history, not sent
    port = udp.getsockname()[1]
    metrics.enable_dogstatsd(port=port, prefix="ml")
    assert counters.listening

    @retry(max_retries=1, base_delay=0.1, jitter=None)
    def fails() -> None:
        raise OSError("down")

    with pytest.raises(OSError):
        fails()
    for _ in range(3):
        events.emit(CacheAccess("embed<v1>|x", "hit"))
    before()
    assert flush_monitoring()
    first = receive(udp, prefix="ml.")
    assert total(first, "ml.calls", "function:before") == 1
    function = fails.__qualname__.replace("<", "_").replace(">", "_")
    assert total(first, "ml.retries", f"function:{function}") == 1
    assert total(first, "ml.retry_give_ups", "reason:attempts") == 1
    # reserved characters in tag values are replaced
    assert total(first, "ml.cache_requests", "function:embed_v1__x", "result:hit") == 3

    before()
    before()
    assert flush_monitoring()
    second = receive(udp, prefix="ml.")
    assert total(second, "ml.calls", "function:before") == 2  # only the increase
    assert total(second, "ml.cache_requests") == 0


def test_disable_stops_the_sink(udp: socket.socket) -> None:
    port = udp.getsockname()[1]
    metrics.enable_dogstatsd(port=port)
    assert exporter.wants_calls

    @monitor("stopped")
    def f() -> None:
        pass

    f()
    metrics.disable_dogstatsd()  # sends what is pending, then stops
    assert not exporter.wants_calls
    assert not counters.listening
    assert events.active is False
    assert total(receive(udp), "buttress.calls", "function:stopped") == 1
    f()
    assert flush_monitoring()
    assert receive(udp, 0.5, prefix="") == []


def test_a_client_of_your_own_is_used_and_left_open(udp: socket.socket) -> None:
    port = udp.getsockname()[1]
    client = DogStatsd(host="127.0.0.1", port=port, disable_telemetry=True, namespace="app")
    try:
        metrics.enable_dogstatsd(client=client)

        @monitor("own")
        def f() -> None:
            pass

        f()
        metrics.disable_dogstatsd()
        lines = receive(udp, prefix="")
        assert total(lines, "app.buttress.calls", "function:own") == 1  # its namespace applies
        client.increment("still.open")
    finally:
        client.close_socket()


def test_enabling_again_replaces_the_sink(udp: socket.socket) -> None:
    port = udp.getsockname()[1]
    first = metrics.enable_dogstatsd(port=port)
    second = metrics.enable_dogstatsd(port=port)
    assert first is not second
    metrics.disable_dogstatsd()
    assert not counters.listening  # both acquisitions were released
