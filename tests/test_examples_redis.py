"""examples/redis_shared_cache.py, run as a script: two replicas, one computation per key."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "redis_shared_cache.py"

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def run_script(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *arguments],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        timeout=180,
        check=False,
    )


def check(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "total computations: 3 for 3 texts across 2 replicas" in result.stdout
    computed = [int(n) for n in re.findall(r"computed (\d+)", result.stdout)]
    assert len(computed) == 2  # one line per replica
    assert sum(computed) == 3
    assert "failed" not in result.stderr  # no store failure was logged


def test_the_example_against_a_given_redis(redis_url: str) -> None:
    check(run_script(redis_url))


def test_the_example_with_its_own_redis_server(redis_server: object) -> None:
    result = run_script()
    check(result)
    port = int(re.search(r"on port (\d+)", result.stdout).group(1))  # type: ignore[union-attr]
    with pytest.raises(OSError):  # its server is gone: nothing left running
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_the_docs_snippet_runs_alone(redis_url: str) -> None:
    """The first block of the RedisStore page, in a fresh interpreter, warnings as errors."""
    section = (ROOT / "docs" / "decorators" / "redis.md").read_text()
    start = section.index("```python\n") + len("```python\n")
    code = section[start : section.index("```", start)]
    # The snippet keeps the default timeout (0.25 s), which a busy 2-core test machine can
    # exceed (the store then fails open and writes nothing): give it a loaded machine's.
    prelude = (
        "import functools, buttress\n"
        "buttress.RedisStore = functools.partial(buttress.RedisStore, timeout=5.0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", prelude + code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "REDIS_URL": redis_url},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["(384,)", "1", "1"]
