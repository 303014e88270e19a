"""``python -m buttress demo`` end to end: real servers on 127.0.0.1, small sizes."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from buttress import metrics
from buttress.__main__ import main as buttress_main
from buttress._demo import DemoOptions, DemoResult, run_demo, write_outputs
from buttress._demo import build_parser as demo_parser
from buttress._demo.load import plan_traffic
from buttress._demo.report import render
from buttress._monitoring._emitter import THREAD_NAME, exporter

ROOT = Path(__file__).resolve().parent.parent
QUIET = {
    "spike_rate": 0.0,
    "error_rate": 0.0,
    "hang_rate": 0.0,
    "nan_rate": 0.0,
    "wrong_dim_rate": 0.0,
    "outage_length": 0.0,
}


@pytest.fixture(autouse=True)
def _metrics_off() -> None:
    """A run enables buttress's metrics in a registry of its own only when no other test
    left them enabled somewhere (it would then add to that registry's totals)."""
    metrics.disable()


def exporter_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME and t.is_alive()]


def small(**changes: object) -> DemoOptions:
    values: dict[str, object] = {
        "requests": 150,
        "duration": 1.5,
        "concurrency": 8,
        "timeout": 1.0,
        "seed": 11,
        "retry_after": 0.02,
        "progress": False,
    }
    values.update(changes)
    return DemoOptions(**values)  # type: ignore[arg-type]


RESILIENT_LAYERS = (
    "monitor", "validate", "cache", "batch", "retry", "circuit_breaker", "bulkhead",
    "memory_guard", "attempt_timeout", "validate_output",
)  # fmt: skip


def check_consistency(result: DemoResult, requests: int) -> None:
    """Every count in the report agrees with the others."""
    plain, resilient = result.reports
    assert (plain.name, resilient.name) == ("plain", "resilient")
    for report in result.reports:
        summary = report.summary
        assert summary.requests == report.received == requests
        kinds = summary.ok + summary.invalid + summary.errors + summary.timeouts
        assert kinds == requests
        assert report.upstream_calls == report.gateway_upstream_calls
        assert summary.p50 <= summary.p95 <= summary.p99 <= summary.max
    assert plain.upstream_calls == plain.upstream_texts == requests  # one call per request
    assert plain.tally is None
    tally = resilient.tally
    assert tally is not None
    assert resilient.layers == RESILIENT_LAYERS
    # Every request was answered from the cache, joined a flight, or led one...
    assert tally.cache_hits + tally.cache_joins + tally.cache_misses == requests
    # ...each leader's text went in one batch...
    assert tally.batched_texts == tally.cache_misses
    # ...and every attempt of a batch (its first, or a retry) reached the upstream as one
    # request unless a breaker, the bulkhead or the memory guard refused it.
    refused = tally.breaker_rejections + tally.bulkhead_rejections + tally.memory_rejections
    assert resilient.upstream_calls == tally.batches + tally.retries - refused
    assert resilient.summary.invalid == 0  # output validation is innermost


@pytest.mark.asyncio
async def test_the_resilient_gateway_wins_under_503s_and_the_numbers_add_up(
    tmp_path: Path,
) -> None:
    # A 20% error rate is far from an outage: the breaker, which opens at 50% over at
    # least 20 attempts, stays closed, and retries win.
    options = small(**{**QUIET, "error_rate": 0.2}, out=tmp_path)
    result = await run_demo(options)
    check_consistency(result, 150)
    plain, resilient = result.reports
    assert plain.summary.success_rate < 0.95  # about 80%
    assert resilient.summary.success_rate > plain.summary.success_rate
    assert resilient.upstream_calls < plain.upstream_calls  # the cache
    assert resilient.tally is not None
    assert resilient.tally.retries > 0
    assert resilient.tally.cache_hits > 0
    assert plain.summary.errors == plain.faults["unavailable"]

    text = render(result.reports, result.info, write_outputs(result, tmp_path))
    assert f"seed {result.info.seed}" in text
    assert re.search(rf"\nretries +- +{resilient.tally.retries}\n", text), text
    hits = f"{resilient.tally.cache_hits} / {resilient.tally.cache_joins}"
    assert re.search(rf"\ncache hits / single-flight joins +- +{hits}\n", text), text
    assert "off" not in text  # every decorator of the report is in the stack
    assert " > ".join(RESILIENT_LAYERS) in text
    assert str(tmp_path / "latency.png") in text


@pytest.mark.asyncio
async def test_every_fault_at_once_still_adds_up(tmp_path: Path) -> None:
    options = small(
        requests=120,
        error_rate=0.1,
        spike_rate=0.1,
        hang_rate=0.05,
        nan_rate=0.05,
        wrong_dim_rate=0.05,
        outage_start=0.5,
        outage_length=0.3,
        out=tmp_path,
    )
    started = time.monotonic()
    result = await run_demo(options)
    # The plan ends at 1.5 s, clients give up at 1 s; generous for a loaded machine.
    assert time.monotonic() - started < 30
    check_consistency(result, 120)
    plain = result.reports[0]
    assert plain.faults["outage"] > 0
    assert plain.faults["hang"] > 0
    assert plain.summary.timeouts > 0  # hangs reach the plain gateway's clients...
    assert plain.summary.invalid > 0  # ...and so do the NaN and short vectors


def plain_faults(result: DemoResult) -> Counter[tuple[str, int, str]]:
    upstream = result.upstreams[0]
    return Counter((call.text, call.n, call.fault) for call in upstream.calls)


@pytest.mark.asyncio
async def test_a_seed_repeats_the_traffic_and_the_faults(tmp_path: Path) -> None:
    # No latency faults: with a patient client, what happens to a request is up to the seed.
    faults = {**QUIET, "error_rate": 0.2, "nan_rate": 0.1}
    options = small(requests=80, seed=21, timeout=5.0, out=tmp_path, **faults)
    first, second = await run_demo(options), await run_demo(options)
    other = await run_demo(small(requests=80, seed=22, timeout=5.0, out=tmp_path, **faults))
    assert plain_faults(first) == plain_faults(second)
    assert plain_faults(first) != plain_faults(other)
    sent = plan_traffic(requests=80, duration=1.5, concurrency=8, seed=21)
    for a, b in zip(first.reports, second.reports, strict=True):
        texts = sorted(planned.text for planned in sent)
        assert sorted(o.text for o in a.outcomes) == sorted(o.text for o in b.outcomes) == texts
    plain_kinds = [Counter(o.kind for o in run.reports[0].outcomes) for run in (first, second)]
    assert plain_kinds[0] == plain_kinds[1]


def samples(path: Path) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text file, by name and labels."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(path.read_text())
        for sample in family.samples
    }


def total(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (n, have), value in found.items() if n == name and wanted <= have)


@pytest.mark.asyncio
async def test_outputs_the_picture_and_the_prometheus_text(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    options = small(
        requests=200,
        duration=2.0,
        error_rate=0.2,
        retry_after=0.02,
        nan_rate=0.05,
        wrong_dim_rate=0.05,
        spike_rate=0.05,
        outage_start=0.6,
        outage_length=0.6,
        out=tmp_path,
    )
    result = await run_demo(options)
    notes = write_outputs(result, tmp_path)
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("latency.png" in note for note in notes)

    found = samples(tmp_path / "metrics.prom")
    # The demo's own series: what the clients saw, what the upstreams served.
    for report in result.reports:
        summary = report.summary
        by_outcome = {
            kind: total(found, "buttress_demo_requests_total", gateway=report.name, outcome=kind)
            for kind in ("ok", "invalid", "error", "timeout")
        }
        assert by_outcome == {
            "ok": summary.ok,
            "invalid": summary.invalid,
            "error": summary.errors,
            "timeout": summary.timeouts,
        }
        texts = total(found, "buttress_demo_upstream_calls_total", gateway=report.name)
        assert texts == report.upstream_texts
        count = total(
            found, "buttress_demo_request_latency_seconds_count", gateway=report.name
        )
        assert count == 200

    # The decorators' own series, counted by buttress.metrics during the run, agree with
    # the report's tally of the same events.
    resilient = result.reports[1]
    tally = resilient.tally
    assert tally is not None
    function = {"function": "resilient.embed"}  # the batch function: per request
    one = {"function": "resilient.embed.one"}  # its single-text call: per text
    assert total(found, "buttress_calls_total", **one) == resilient.received
    # A client that timed out may have given up on a call the gateway then finished well.
    ok = total(found, "buttress_calls_total", outcome="ok", **one)
    assert resilient.summary.ok <= ok <= resilient.summary.ok + resilient.summary.timeouts
    assert total(found, "buttress_call_duration_seconds_count", **one) == 200
    assert total(found, "buttress_retries_total", **function) == tally.retries > 0
    for result_kind, count in (
        ("hit", tally.cache_hits),
        ("join", tally.cache_joins),
        ("miss", tally.cache_misses),
    ):
        assert total(found, "buttress_cache_requests_total", result=result_kind, **one) == (
            count
        )
    assert tally.cache_hits > 0
    invalid = total(found, "buttress_validation_failures_total", direction="output", **function)
    assert invalid == tally.invalid_caught > 0
    assert total(found, "buttress_timeouts_total", **function) == tally.attempt_timeouts
    openings = total(found, "buttress_circuit_transitions_total", to="open")
    assert openings == tally.breaker_openings
    assert total(found, "buttress_circuit_rejections_total", **function) == (
        tally.breaker_rejections
    )
    admitted = total(found, "buttress_memory_guard_total", action="admitted", **function)
    assert admitted == resilient.upstream_calls  # each request, just before it is made
    batches = total(found, "buttress_batch_size_count", **function)
    assert batches == tally.batches
    assert total(found, "buttress_batch_size_sum", **function) == tally.batched_texts
    if tally.breaker_openings:
        states = {
            dict(labels)["state"]: value
            for (name, labels), value in found.items()
            if name == "buttress_circuit_state"
        }
        assert sum(states.values()) == 1  # exactly one current state


@pytest.mark.asyncio
async def test_monitor_records_go_to_a_file_not_to_the_terminal(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    exporter.reset()  # an earlier test's thread, if one is left, is not the demo's
    assert not exporter_threads()
    log = tmp_path / "monitor.jsonl"
    result = await run_demo(small(requests=60, out=tmp_path, error_rate=0.3), monitor_log=log)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    resilient = result.reports[1]
    assert len(records) == resilient.received == 60
    assert {record["function"] for record in records} == {"resilient.embed.one"}
    outcomes = Counter(record["outcome"] for record in records)
    assert outcomes["ok"] == resilient.summary.ok
    assert "resilient.embed" not in capfd.readouterr().err
    assert not exporter_threads()  # the run stopped the thread it started
    assert logging.getLogger("buttress.monitor").propagate


@pytest.mark.asyncio
async def test_without_the_optional_extras_the_report_says_how_to_get_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = await run_demo(small(requests=20, out=tmp_path, **QUIET))
    for module in ("matplotlib", "matplotlib.figure", "prometheus_client"):
        monkeypatch.setitem(sys.modules, module, None)
    notes = write_outputs(result, tmp_path)
    assert not (tmp_path / "latency.png").exists()
    assert not (tmp_path / "metrics.prom").exists()
    text = render(result.reports, result.info, notes)
    assert "pip install 'buttress[plot]'" in text
    assert "pip install 'buttress[prometheus]'" in text


def test_the_command_prints_the_report_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    status = buttress_main(
        [
            "demo", "--requests", "60", "--duration", "1", "--concurrency", "4",
            "--timeout", "1", "--seed", "5", "--error-rate", "0.3", "--out", str(out),
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert status == 0
    assert "success (a usable vector)" in captured.out
    assert "seed 5" in captured.out
    assert "answered" in captured.err  # the progress bar
    assert (out / "report.txt").read_text() in captured.out
    assert (out / "metrics.prom").exists()
    assert (out / "monitor.jsonl").exists()


def seconds(text: str) -> float:
    value, unit = text.split()
    return float(value) / 1000 if unit == "ms" else float(value)


def row(report: str, label: str) -> tuple[str, str]:
    """The plain and resilient columns of the report's row starting with ``label``."""
    line = next(line for line in report.splitlines() if line.startswith(label))
    plain, resilient = re.split(r"\s{2,}", line[len(label) :].strip())
    return plain, resilient


def test_a_default_run_shows_every_decorator_at_work_and_a_clear_win(tmp_path: Path) -> None:
    """The README's first command, as a user runs it (a seed aside): under a minute,
    exit 0, every counter real, and the resilient gateway ahead where it matters."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "buttress", "demo", "--seed", "7", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        timeout=110,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 60, elapsed
    report = (tmp_path / "report.txt").read_text()
    assert report in result.stdout
    assert "Traceback" not in result.stderr  # monitor records went to monitor.jsonl

    success = row(report, "success (a usable vector)")
    plain_ok, resilient_ok = (float(v.rstrip("%")) for v in success)
    assert resilient_ok > plain_ok + 5
    plain_p99, resilient_p99 = (seconds(v) for v in row(report, "latency p99"))
    assert resilient_p99 < plain_p99
    plain_calls, resilient_calls = (int(v) for v in row(report, "upstream calls"))
    assert resilient_calls < plain_calls / 2

    _, cache = row(report, "cache hits / single-flight joins")
    hits, joins = (int(v) for v in cache.split(" / "))
    _, openings = row(report, "breaker openings / calls refused")
    assert int(openings.split(" / ")[0]) > 0
    assert hits > 0
    assert joins > 0
    assert int(row(report, "retries")[1]) > 0
    assert int(row(report, "invalid responses caught")[1]) > 0
    assert int(row(report, "  invalid vectors served (NaN, wrong dim)")[1]) == 0
    for name in ("latency.png", "metrics.prom", "monitor.jsonl", "report.txt"):
        assert (tmp_path / name).stat().st_size > 0


@pytest.mark.parametrize(
    "arguments",
    [
        ["--error-rate", "0.7", "--nan-rate", "0.5"],  # rates add up to more than 1
        ["--error-rate", "1.5"],
        ["--requests", "0"],
        ["--duration", "-1"],
        ["--bogus"],
    ],
)
def test_bad_options_are_refused(arguments: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        buttress_main(["demo", *arguments])
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_help_explains_every_option() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "buttress", "demo", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for action in demo_parser()._actions:
        for option in action.option_strings:
            assert option in result.stdout
        assert action.help, action.option_strings
    for word in ("--duration", "--requests", "--concurrency", "--seed", "--out", "Zipf"):
        assert word in result.stdout
    no_command = subprocess.run(
        [sys.executable, "-m", "buttress"], capture_output=True, text=True, env=env, timeout=60
    )
    assert no_command.returncode == 2
    assert "demo" in no_command.stderr


def test_the_console_script_is_declared() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["buttress"] == "buttress.__main__:main"
    assert "matplotlib>=3.7" in project["optional-dependencies"]["plot"]
