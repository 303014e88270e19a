"""The smaller examples still run as scripts and print what their docstrings promise."""

from __future__ import annotations

import re

from _servers import run_example


def test_cached_embeddings() -> None:
    result = run_example("cached_embeddings.py")
    assert result.returncode == 0, result.stderr
    assert "1,000 concurrent callers: 1 computation" in result.stdout
    assert "joins=999" in result.stdout


def test_memory_guard_demo() -> None:
    result = run_example("memory_guard_demo.py")
    assert result.returncode == 0, result.stderr
    assert re.search(r"memory: [\d,]+ MiB used of", result.stdout)
    assert "embedded 4 batches concurrently" in result.stdout
    assert "refused as expected" in result.stdout


def test_validated_ranker() -> None:
    result = run_example("validated_ranker.py")
    assert result.returncode == 0, result.stderr
    assert "'status': 422" in result.stdout
    assert "refused: {'input': 2, 'output': 1}" in result.stdout
