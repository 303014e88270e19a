"""Run every benchmark in one process and print Markdown tables.

    python benchmarks/run.py                 # full run (7 to 9 minutes on 2 cores)
    python benchmarks/run.py --quick         # every benchmark briefly: checks the harness
    python benchmarks/run.py retry cache     # only the modules whose name contains a word
    python benchmarks/run.py -x scale        # all but the modules whose name contains a word
    python benchmarks/run.py --json out.json # also save every figure and its rounds
    python benchmarks/run.py --without tenacity  # as if a peer were not installed

Every ``benchmarks/bench_*.py`` is found and run; see benchmarks/README.md for how to read
the tables. The exit code is 1 if a module failed (its traceback is printed, the others
still run).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _harness  # noqa: E402
from _harness import PEERS, Comparison, Skip  # noqa: E402

#: Modules run in this order (the order of the issues); any other bench_*.py after them.
ORDER = (
    "retry", "validation", "cache", "memory", "monitor", "policies", "redis", "scale", "batch",
    "fleet",
)


def modules(selected: list[str], excluded: list[str]) -> list[str]:
    names = [path.stem for path in HERE.glob("bench_*.py")]

    def rank(name: str) -> tuple[int, str]:
        topic = name.removeprefix("bench_")
        return (ORDER.index(topic) if topic in ORDER else len(ORDER), name)

    names.sort(key=rank)
    if selected:
        names = [name for name in names if any(word in name for word in selected)]
    return [name for name in names if not any(word in name for word in excluded)]


# --- the machine ------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        return None


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def _blas() -> dict[str, Any]:
    """numpy's version and the BLAS it loaded, with the kernel it runs (threadpoolctl)."""
    found: dict[str, Any] = {
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE"),
    }
    try:
        import numpy

        found["numpy"] = numpy.__version__
    except ImportError:
        return found
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        found["blas"] = "unknown (install threadpoolctl)"
        return found
    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            found["blas"] = (
                f"{pool.get('internal_api')} {pool.get('version')}, kernel "
                f"{pool.get('architecture')}, {pool.get('num_threads')} threads"
            )
            break
    return found


def _git() -> str | None:
    try:
        head = subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(HERE), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}{' with uncommitted changes' if dirty else ''}"


def machine() -> dict[str, Any]:
    import buttress

    memory = _memory_bytes()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "memory_gib": round(memory / 2**30, 1) if memory else None,
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": (
            f"{platform.python_implementation()} {platform.python_version()} "
            f"({platform.python_compiler()})"
        ),
        "buttress": f"{getattr(buttress, '__version__', None) or _version('buttress')}",
        "buttress_path": str(Path(buttress.__file__).resolve().parent),
        "git": _git(),
        "load_average": _load(),
        **_blas(),
    }


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def peers() -> dict[str, str | None]:
    """Every peer of the suite with its installed version (``None``: not installed)."""
    hidden = _harness.hidden_peers()
    found: dict[str, str | None] = {}
    for distribution, module in PEERS.items():
        if distribution in hidden:
            found[distribution] = None
            continue
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        found[distribution] = (_version(distribution) or "?") if spec else None
    return found


def header(info: dict[str, Any], versions: dict[str, str | None], quick: bool) -> str:
    cores = info["cores"]
    usable = info["usable_cores"]
    lines = [
        "# buttress benchmarks",
        "",
        f"- date: {info['date']}",
        f"- machine: {info['cpu']}, {cores} cores"
        + (f" ({usable} usable)" if usable and usable != cores else "")
        + (f", {info['memory_gib']} GiB memory" if info["memory_gib"] else "")
        + f", {info['system']}",
        f"- Python: {info['python']}",
        f"- buttress {info['buttress']} from {info['buttress_path']}"
        + (f", git {info['git']}" if info["git"] else ""),
    ]
    numpy = info.get("numpy")
    if numpy:
        blas = f"numpy {numpy}, BLAS {info.get('blas', 'unknown')}"
        forced = [
            f"{name}={info[name]}"
            for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
            if info.get(name)
        ]
        if forced:
            blas += (
                f"; {' '.join(forced)} set in the environment (it pins an older OpenBLAS "
                "kernel; no benchmark here calls BLAS, see benchmarks/README.md)"
            )
        lines.append(f"- {blas}")
    load = info["load_average"]
    if load is not None:
        busy = cores and load > 0.5
        lines.append(
            f"- load average at start: {load}"
            + (" (other work is running: expect noise, see the ± column)" if busy else "")
        )
    if quick:
        lines.append(
            "- mode: --quick (tiny sizes, 2 rounds: checks that every benchmark runs; "
            "its figures mean nothing)"
        )
    else:
        lines.append(
            f"- mode: full (each time per call is the median of {_harness.ROUNDS} rounds "
            f"of about {_harness.ROUND_SECONDS * 1000:.0f} ms, up to {_harness.MAX_ROUNDS} "
            f"when they disagree by more than {_harness.NOISY:.0%}; other figures say "
            "their rounds)"
        )
    installed = [f"{name} {version}" for name, version in versions.items() if version]
    missing = [name for name, version in versions.items() if not version]
    lines.append(f"- peers: {', '.join(installed) or 'none'}")
    if missing:
        lines.append(
            f"- peers NOT installed (their rows are missing): {', '.join(missing)}; "
            "`pip install -e '.[bench]'` installs them all"
        )
    return "\n".join(lines)


# --- the run ----------------------------------------------------------------------------


def run_module(name: str, quick: bool) -> dict[str, Any]:
    """Import and run one module; never raises (a failure is reported in the result)."""
    _harness.MISSING.clear()
    started = time.perf_counter()
    result: dict[str, Any] = {"name": name, "status": "ok", "reason": ""}
    comparisons: list[Comparison] = []
    try:
        module = importlib.import_module(name)
        comparisons = list(module.collect(quick))
    except Skip as skip:
        result.update(status="skipped", reason=str(skip))
    except Exception as error:
        result.update(status="failed", reason=f"{type(error).__name__}: {error}")
        result["traceback"] = traceback.format_exc()
    else:
        if not comparisons:
            result.update(status="empty", reason="collect() returned no comparison")
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["missing_peers"] = sorted(_harness.MISSING)
    result["tables"] = comparisons
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("only", nargs="*", help="run only modules whose name contains one of these")
    parser.add_argument(
        "-x", "--exclude", action="append", default=[], metavar="WORD",
        help="skip modules whose name contains WORD (repeatable)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, few rounds: a harness check"
    )
    parser.add_argument("--json", type=Path, help="also save the results to this file")
    parser.add_argument(
        "--without", default="", metavar="PEER,...",
        help=f"treat these peers as not installed (of: {', '.join(PEERS)})",
    )
    parser.add_argument("--list", action="store_true", help="list the modules and exit")
    args = parser.parse_args(argv)

    names = modules(args.only, args.exclude)
    if args.list:
        print("\n".join(names))
        return 0
    if not names:
        parser.error("no benchmark module matches")
    try:
        _harness.hide_peers(args.without.split(","))
    except ValueError as error:
        parser.error(str(error))

    started = time.perf_counter()
    info = machine()
    info["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    versions = peers()
    print(header(info, versions, args.quick), end="\n\n", flush=True)

    done: list[dict[str, Any]] = []
    for name in names:
        print(f"## {name.removeprefix('bench_')}\n", flush=True)
        result = run_module(name, args.quick)
        for comparison in result["tables"]:
            print(comparison.markdown(), end="\n\n", flush=True)
        if result["missing_peers"]:
            print(
                f"Not measured, not installed: {', '.join(result['missing_peers'])}.\n",
                flush=True,
            )
        if result["status"] != "ok":
            print(f"**{name} {result['status']}**: {result['reason']}\n", flush=True)
        if result["status"] == "failed":
            print(result["traceback"], file=sys.stderr, flush=True)
        done.append(result)

    wall = time.perf_counter() - started
    info["load_average_end"] = _load()
    print("## summary\n")
    print("| module | status | tables | seconds |\n|---|---|---:|---:|")
    for result in done:
        status = result["status"] + (f": {result['reason']}" if result["reason"] else "")
        print(
            f"| {result['name']} | {status} | {len(result['tables'])} | "
            f"{result['seconds']:.1f} |"
        )
    missing = sorted({peer for result in done for peer in result["missing_peers"]})
    print(
        f"\nWall time {wall:.0f} s; load average {info['load_average']} at start, "
        f"{info['load_average_end']} at the end."
        + (f" Peers not installed, so not measured: {', '.join(missing)}." if missing else "")
    )

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "schema": 2,
                    "date": info["date"],
                    "quick": args.quick,
                    "machine": info,
                    "peers": versions,
                    "missing_peers": missing,
                    "wall_seconds": round(wall, 1),
                    "modules": [
                        {
                            key: value
                            for key, value in result.items()
                            if key not in ("tables", "traceback")
                        }
                        | {"tables": len(result["tables"])}
                        for result in done
                    ],
                    "results": [
                        {"module": result["name"], **comparison.to_json()}
                        for result in done
                        for comparison in result["tables"]
                    ],
                },
                indent=2,
            )
            + "\n"
        )
    return 1 if any(result["status"] == "failed" for result in done) else 0


if __name__ == "__main__":
    raise SystemExit(main())
