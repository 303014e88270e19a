"""examples/prometheus_metrics.py, run as a script: the summary it reads back from its own
/metrics, and the endpoint scraped over HTTP while it serves."""

from __future__ import annotations

import re
import time

import httpx

from _monitor_support import parse, value
from _servers import Script, run_example


def numbers(pattern: str, text: str) -> tuple[float, ...]:
    match = re.search(pattern, text)
    assert match is not None, (pattern, text)
    return tuple(float(group) for group in match.groups())


def test_the_summary_read_back_from_a_scrape_adds_up() -> None:
    result = run_example("prometheus_metrics.py", "--calls", "300")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Traceback" not in result.stderr  # monitor's records stay out of the terminal
    ok, errors, p50, p99 = numbers(
        r"score +calls ok (\d+), errors (\d+); latency p50 ([\d.]+) ms, p99 ([\d.]+) ms", out
    )
    assert ok + errors == 300
    assert errors > 0  # the outage in the middle of the run
    assert 0 < p50 <= p99
    features_ok, features_errors = numbers(r"features +calls ok (\d+), errors (\d+)", out)
    assert (features_ok, features_errors) == (ok, errors)  # one lookup per scoring
    hits, joins, misses = numbers(r"cache +hits (\d+), joins (\d+), misses (\d+)", out)
    assert hits + joins + misses == 300
    assert hits > 0
    (retries,) = numbers(r"retries +(\d+)", out)
    assert retries > 0
    opened, refused = numbers(r"opened (\d+) times, refused (\d+) calls", out)
    assert opened >= 1
    assert refused > 0
    (values,) = numbers(r"output +score: (\d+) values", out)
    assert values == ok


def test_serve_keeps_metrics_up_for_a_scraper() -> None:
    with Script("prometheus_metrics.py", "--calls", "200", "--serve") as script:
        line = script.wait_for("serving http")
        url = line.split()[1]
        first = parse(httpx.get(url, timeout=30).text)
        calls = {"function": "score"}
        before = sum(
            value(first, "buttress_calls_total", outcome=outcome, **calls) or 0
            for outcome in ("ok", "error")
        )
        assert before >= 200
        deadline = time.monotonic() + 30
        while True:  # the workload goes on while it serves
            later = parse(httpx.get(url, timeout=30).text)
            after = value(later, "buttress_calls_total", outcome="ok", **calls) or 0
            if after > value(first, "buttress_calls_total", outcome="ok", **calls):  # type: ignore[operator]
                break
            assert time.monotonic() < deadline
            time.sleep(0.2)
        states = [
            value(later, "buttress_circuit_state", breaker="feature-store", state=state)
            for state in ("closed", "open", "half_open")
        ]
        assert states.count(1) == 1  # the breaker's one current state
    assert script.returncode == 0
    assert "stopped" in script.seen
