"""The project's promises about itself: CI runs the README's test command, verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"^python3 -m venv .*$", text, flags=re.MULTILINE)


def test_readme_opens_with_the_demo_and_the_test_command() -> None:
    demo, tests = readme_commands()[:2]
    assert demo.endswith("python -m buttress demo")
    assert tests.endswith("python -m pytest")


def test_ci_runs_the_readme_test_command_with_redis_required() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = readme_commands()[1]
    assert test_command in ci.splitlines()
    assert "export BUTTRESS_REQUIRE_REDIS=1" in ci
    assert "redis-server" in ci


def test_top_level_layout() -> None:
    expected = {
        ".ci", "CHANGELOG.md", "README.md", "benchmarks", "examples", "pyproject.toml",
        "src", "tests", "tox.ini",
    }
    tracked = {path.name for path in ROOT.iterdir() if not path.name.startswith(".")}
    tracked |= {".ci"} if (ROOT / ".ci").is_dir() else set()
    assert expected <= tracked
