"""``python -m buttress demo`` end to end: real servers on 127.0.0.1, small sizes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from buttress.__main__ import main as buttress_main
from buttress._demo import DemoOptions, DemoResult, run_demo, write_outputs
from buttress._demo import build_parser as demo_parser
from buttress._demo.load import plan_traffic
from buttress._demo.report import render

ROOT = Path(__file__).resolve().parent.parent
QUIET = {
    "spike_rate": 0.0,
    "error_rate": 0.0,
    "hang_rate": 0.0,
    "nan_rate": 0.0,
    "wrong_dim_rate": 0.0,
    "outage_length": 0.0,
}


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
        assert sum(report.faults.values()) == report.upstream_calls
        assert summary.p50 <= summary.p95 <= summary.p99 <= summary.max
    assert plain.upstream_calls == requests  # one call per request, nothing more
    assert plain.tally is None
    assert resilient.tally is not None
    assert resilient.layers == ("retry",)
    # Every attempt after the first of a request was a scheduled retry.
    assert resilient.upstream_calls == requests + resilient.tally.retries


@pytest.mark.asyncio
async def test_retry_wins_under_503s_and_the_numbers_add_up(tmp_path: Path) -> None:
    options = small(**{**QUIET, "error_rate": 0.3}, out=tmp_path)
    result = await run_demo(options)
    check_consistency(result, 150)
    plain, resilient = result.reports
    assert plain.summary.success_rate < 0.9  # about 70%
    assert resilient.summary.success_rate > plain.summary.success_rate
    assert resilient.tally is not None
    assert resilient.tally.retries > 0
    assert plain.summary.errors == plain.faults["unavailable"]

    text = render(result.reports, result.info, write_outputs(result, tmp_path))
    assert f"seed {result.info.seed}" in text
    assert re.search(rf"\nretries +- +{resilient.tally.retries}\n", text), text
    assert "off" in text  # the decorators this build does not have yet
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


@pytest.mark.asyncio
async def test_outputs_the_picture_and_the_prometheus_text(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from prometheus_client.parser import text_string_to_metric_families

    result = await run_demo(small(requests=60, out=tmp_path, error_rate=0.2))
    notes = write_outputs(result, tmp_path)
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("latency.png" in note for note in notes)

    families = {
        family.name: family
        for family in text_string_to_metric_families((tmp_path / "metrics.prom").read_text())
    }
    for report in result.reports:
        samples = families["buttress_demo_requests"].samples
        by_outcome = {
            s.labels["outcome"]: s.value
            for s in samples
            if s.name.endswith("_total") and s.labels["gateway"] == report.name
        }
        summary = report.summary
        assert by_outcome == {
            "ok": summary.ok,
            "invalid": summary.invalid,
            "error": summary.errors,
            "timeout": summary.timeouts,
        }
        calls = sum(
            s.value
            for s in families["buttress_demo_upstream_calls"].samples
            if s.name.endswith("_total") and s.labels["gateway"] == report.name
        )
        assert calls == report.upstream_calls
        count = next(
            s.value
            for s in families["buttress_demo_request_latency_seconds"].samples
            if s.name.endswith("_count") and s.labels["gateway"] == report.name
        )
        assert count == 60
    retries = next(
        s.value
        for s in families["buttress_demo_decorator_events"].samples
        if s.name.endswith("_total") and s.labels == {"gateway": "resilient", "event": "retries"}
    )
    assert result.reports[1].tally is not None
    assert retries == result.reports[1].tally.retries


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
