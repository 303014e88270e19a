"""``python -m buttress`` (also the ``buttress`` console script).

    python -m buttress demo [options]     the side-by-side demo; --help lists the options
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import _demo

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="buttress",
        description="buttress: resilience decorators for machine-learning inference.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run a plain and a resilient gateway side by side against a misbehaving "
        "embedding service, and report",
        description=_demo.DESCRIPTION,
        epilog=_demo.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _demo.add_arguments(demo)
    demo.set_defaults(run=_demo.run_from_args, parser=demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (``sys.argv[1:]`` by default) and run the command; the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    status: int = args.run(args, args.parser)
    return status


if __name__ == "__main__":
    sys.exit(main())
