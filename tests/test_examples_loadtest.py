"""examples/loadtest.py, run as a script against the stand-in embedding service."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from _servers import upstream_in_a_thread
from buttress._demo.upstream import Faults

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "loadtest.py"


def run_script(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *arguments],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        timeout=120,
        check=False,
    )


def number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match is not None, (pattern, text)
    return float(match.group(1))


@pytest.mark.parametrize("retrying", [True, False], ids=["retry", "no-retry"])
def test_loadtest_reports_percentiles_and_every_call(retrying: bool) -> None:
    faults = Faults(
        error_rate=0.3,
        retry_after=0.01,
        spike_rate=0.05,
        spike_seconds=(0.05, 0.1),
        hang_rate=0.0,
        nan_rate=0.0,
        wrong_dim_rate=0.0,
        latency=(0.0, 0.003),
    )
    options = ["--requests", "80", "--concurrency", "8", "--timeout", "10", "--seed", "3"]
    if not retrying:
        options.append("--no-retry")
    with upstream_in_a_thread(faults, seed=9) as upstream:
        result = run_script(upstream.url, *options)
        calls = upstream.total
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "loadtest: 80 requests" in out
    p50 = number(r"p50 ([\d.]+)", out)
    p99 = number(r"p99 ([\d.]+)", out)
    assert 0 < p50 <= p99 <= number(r"max ([\d.]+)", out)
    retries = int(number(r"retries (\d+)", out))
    ok = int(number(r"ok (\d+)", out))
    assert calls == 80 + retries  # every attempt reached the server, and was counted
    # @monitor saw every request once, as the workers did.
    assert int(number(r"monitor: (\d+) calls", out)) == 80
    assert int(number(r"monitor: \d+ calls, (\d+) ok", out)) == ok
    if retrying:
        assert retries > 0
        assert ok > 80 * 0.9  # a 503 three times in a row is rare
    else:
        assert retries == 0
        assert ok + int(number(r"503 x(\d+)", out)) == 80  # the only failure is a 503


def test_a_retry_budget_caps_the_retries_of_a_failing_server() -> None:
    faults = Faults(
        error_rate=0.7,
        retry_after=0.0,
        spike_rate=0.0,
        hang_rate=0.0,
        nan_rate=0.0,
        wrong_dim_rate=0.0,
        latency=(0.0, 0.002),
    )
    common = ["--requests", "200", "--concurrency", "8", "--timeout", "10", "--seed", "4"]
    results = {}
    for budget in (["--budget", "0.05"], ["--no-budget"]):
        with upstream_in_a_thread(faults, seed=2) as upstream:
            result = run_script(upstream.url, *common, *budget)
            calls = upstream.total
        assert result.returncode == 0, result.stderr
        retries = int(number(r"retries (\d+)", result.stdout))
        refused = int(number(r"refused by the retry budget (\d+)", result.stdout))
        assert calls == 200 + retries
        results[budget[0]] = (retries, refused)
    capped, free = results["--budget"], results["--no-budget"]
    # RetryBudget(ratio=0.05) over its 10 s window: 0.05 per request plus 3 a second.
    assert capped[0] <= 0.05 * 200 + 3 * 10
    assert capped[1] > 0
    assert free[1] == 0
    assert free[0] > capped[0]


def test_loadtest_help() -> None:
    result = run_script("--help")
    assert result.returncode == 0
    assert "--no-retry" in result.stdout
    assert "--budget" in result.stdout
