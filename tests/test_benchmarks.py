"""The benchmark suite still runs: ``benchmarks/run.py --quick`` end to end, no timing asserts.

Every ``benchmarks/bench_*.py`` must produce tables whose rows all carry a number, with a
bare row wherever figures are per call; the scale cases must count what they claim
(one computation per stampede for a single-flight cache). The Redis benchmarks (the
cache's, and the shared rate limit's of the fleet) need a redis-server like the Redis
tests do, and run apart.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
KINDS = {"bare", "ours", "peer", "floor"}
REQUIRE_REDIS = os.environ.get("BUTTRESS_REQUIRE_REDIS") == "1"


def run_quick(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    """Run ``run.py --quick --json`` with ``args``; return the JSON and the Markdown."""
    out = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run.py"), "--quick", "--json", str(out), *args],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    return json.loads(out.read_text()), completed.stdout


def check_tables(results: list[dict[str, Any]]) -> None:
    for table in results:
        title = table["title"]
        assert table["rows"], title
        kinds = [row["kind"] for row in table["rows"]]
        assert set(kinds) <= KINDS, title
        assert kinds.count("bare") <= 1, title
        if table["unit"] == "ns/call":
            assert kinds.count("bare") == 1, f"{title}: per-call figures need a bare row"
        for row in table["rows"]:
            value = row["value"]
            assert isinstance(value, (int, float)), (title, row["name"])
            assert math.isfinite(value), (title, row["name"])
            assert value >= 0, (title, row["name"])
            assert set(row["extra"]) <= set(table["columns"]), (title, row["name"])
            if "bare" in kinds and row["kind"] != "bare":
                assert isinstance(row["x_bare"], float), (title, row["name"])
        peers = [row for row in table["rows"] if row["kind"] == "peer"]
        if peers:
            best = min(peers, key=lambda row: row["value"])
            assert table["best_peer"] == best["name"], title


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """One quick run of every module but the Redis ones (tested on their own below)."""
    return run_quick(tmp_path_factory.mktemp("bench"), "-x", "redis", "-x", "fleet")


def test_quick_run_of_every_module(quick_run: tuple[dict[str, Any], str]) -> None:
    report, markdown = quick_run
    expected = {path.stem for path in BENCHMARKS.glob("bench_*.py")} - {
        "bench_redis",
        "bench_fleet",
    }
    modules = {module["name"]: module for module in report["modules"]}
    assert set(modules) == expected
    for name, module in modules.items():
        assert module["status"] == "ok", (name, module["reason"])
        assert module["tables"] >= 1, name
    assert report["quick"] is True
    assert report["machine"]["cores"] >= 1
    assert report["machine"]["python"].startswith(("CPython", "PyPy"))
    check_tables(report["results"])
    assert {table["module"] for table in report["results"]} == expected
    for table in report["results"]:
        assert f"### {table['title']}" in markdown
    assert "- machine: " in markdown
    assert "## summary" in markdown


def test_quick_scale_cases_count_what_they_claim(quick_run: tuple[dict[str, Any], str]) -> None:
    report, _ = quick_run
    tables = {
        table["title"]: table for table in report["results"] if table["module"] == "bench_scale"
    }
    stampedes = [title for title in tables if title.startswith("stampede:")]
    assert stampedes
    for title in stampedes:
        callers = int(re.search(r"stampede: ([\d,]+)", title)[1].replace(",", ""))  # type: ignore[index]
        for row in tables[title]["rows"]:
            expected = callers if row["kind"] == "bare" else 1
            assert row["extra"]["computations"] == expected, (title, row["name"])
            assert row["extra"]["peak MiB"] >= 0
    memory = [title for title in tables if title.startswith("cache memory per entry")]
    assert len(memory) == 2
    for title in memory:
        assert {row["kind"] for row in tables[title]["rows"]} >= {"bare", "ours"}
    lag = tables["event-loop lag at 10,000 calls per second"]
    assert {row["kind"] for row in lag["rows"]} >= {"bare", "ours"}
    for row in lag["rows"]:
        assert row["extra"]["calls/s"] > 0, row["name"]


def test_missing_peers_are_reported_not_hidden(tmp_path: Path) -> None:
    report, markdown = run_quick(tmp_path, "retry", "--without", "tenacity,stamina")
    (module,) = report["modules"]
    assert module["status"] == "ok"
    assert {"tenacity", "stamina"} <= set(module["missing_peers"])
    assert {"tenacity", "stamina"} <= set(report["missing_peers"])
    assert report["peers"]["tenacity"] is None
    names = {row["name"] for table in report["results"] for row in table["rows"]}
    assert not names & {"tenacity", "stamina"}
    assert "Not measured, not installed: " in markdown
    assert "peers NOT installed" in markdown


def run_redis_module(tmp_path: Path, topic: str) -> dict[str, Any]:
    """A quick run of ``bench_<topic>.py``, which needs a redis-server; its JSON."""
    if not (BENCHMARKS / f"bench_{topic}.py").exists():
        pytest.skip(f"no benchmarks/bench_{topic}.py in this tree")
    if shutil.which("redis-server") is None:
        reason = f"redis-server not found on PATH: bench_{topic} cannot run"
        if REQUIRE_REDIS:
            pytest.fail(reason + "; BUTTRESS_REQUIRE_REDIS=1 forbids skipping it")
        pytest.skip(reason)
    report, _ = run_quick(tmp_path, topic)
    (module,) = report["modules"]
    assert module["status"] == "ok", module["reason"]
    assert module["tables"] >= 1
    check_tables(report["results"])
    return report


def test_redis_benchmark(tmp_path: Path) -> None:
    run_redis_module(tmp_path, "redis")


def test_fleet_benchmark_counts_round_trips_and_admissions(tmp_path: Path) -> None:
    report = run_redis_module(tmp_path, "fleet")
    tables = {table["title"]: table for table in report["results"]}
    latency = tables["shared rate limit, per admitted call, async function"]
    rows = {row["name"]: row for row in latency["rows"]}
    ours = rows["buttress.rate_limit(store=FleetStore)"]
    assert ours["extra"]["round trips"] == 1.0  # one Lua script per admission
    assert rows["buttress.rate_limit, in process"]["extra"]["round trips"] == 0
    kinds = {row["kind"] for row in latency["rows"]}
    if importlib.util.find_spec("limits") is not None:  # a peer of the bench extra only
        assert kinds >= {"bare", "floor", "ours", "peer"}
    else:
        assert kinds >= {"bare", "floor", "ours"}
        assert "limits" in report["missing_peers"]  # said, not hidden
    (accuracy,) = [title for title in tables if title.startswith("shared rate limit accuracy")]
    for row in tables[accuracy]["rows"]:
        # 4 processes, 200/s for 2 s: generous bounds on a busy machine; a limit that
        # did not hold across processes would admit several times as many.
        assert 0.5 * 400 <= row["extra"]["admitted"] <= 1.1 * 400 + 4, row
        assert row["extra"]["most in 1 s"] <= 1.1 * 200 + 4, row


# --- the bench extra installs everything the suite imports --------------------------------


def _requirement_name(requirement: str) -> str:
    name = re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0]
    return name.lower().replace("_", "-")


def _bench_closure(project: dict[str, Any]) -> set[str]:
    """Distributions that ``pip install 'buttress[bench]'`` installs by name."""
    extras = project["optional-dependencies"]
    found = {_requirement_name(item) for item in project["dependencies"]}
    pending, seen = ["bench"], set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for item in extras[extra]:
            if _requirement_name(item) == "buttress":
                pending += re.findall(r"[\w-]+", item.split("[", 1)[1].split("]", 1)[0])
            else:
                found.add(_requirement_name(item))
    return found


#: Import names shared by several distributions, each named after its first two parts.
NAMESPACE_PACKAGES = frozenset({"opentelemetry"})


def test_bench_extra_covers_every_import() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installed = _bench_closure(project)
    local = {path.stem for path in BENCHMARKS.glob("*.py")} | {"buttress"}
    imported: set[str] = set()

    def distribution(module: str) -> str:
        # A namespace package is shipped in parts: opentelemetry.sdk is opentelemetry-sdk.
        parts = module.split(".")
        return "-".join(parts[:2]) if parts[0] in NAMESPACE_PACKAGES else parts[0]

    for path in BENCHMARKS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {distribution(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(distribution(node.module))
    third_party = imported - local - set(sys.stdlib_module_names)
    assert third_party, "the scan found no import at all"
    missing = {name for name in third_party if name.replace("_", "-").lower() not in installed}
    assert not missing, f"add to the bench extra in pyproject.toml: {sorted(missing)}"

    sys.path.insert(0, str(BENCHMARKS))
    try:
        from _harness import PEERS
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert set(PEERS) <= installed, sorted(set(PEERS) - installed)
