"""Run every benchmark in one process and print Markdown tables.

    python benchmarks/run.py               # full run (a few minutes)
    python benchmarks/run.py --quick       # every benchmark briefly: checks the harness
    python benchmarks/run.py retry cache   # only the modules whose name contains a word
    python benchmarks/run.py --json out.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import Comparison  # noqa: E402


def modules(selected: list[str]) -> list[str]:
    names = sorted(path.stem for path in HERE.glob("bench_*.py"))
    if selected:
        names = [name for name in names if any(word in name for word in selected)]
    return names


def machine() -> str:
    import os

    return (
        f"{platform.python_implementation()} {platform.python_version()} on "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("only", nargs="*", help="run only modules whose name contains one of these")
    parser.add_argument("--quick", action="store_true", help="few, short rounds: a harness check")
    parser.add_argument("--json", type=Path, help="also save the results to this file")
    args = parser.parse_args(argv)

    results: list[Comparison] = []
    print(f"# buttress benchmarks\n\n{time.strftime('%Y-%m-%d')}, {machine()}\n")
    for name in modules(args.only):
        module = importlib.import_module(name)
        for comparison in module.collect(args.quick):
            results.append(comparison)
            print(comparison.markdown(), end="\n\n", flush=True)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d"),
                    "machine": machine(),
                    "quick": args.quick,
                    "results": [comparison.to_json() for comparison in results],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
