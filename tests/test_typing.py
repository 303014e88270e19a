"""The package and its public API type-check under mypy --strict.

tests/typing/api.py uses the API as a user would, with ``assert_type`` on what decorated
functions return and ``type: ignore`` on calls that must be rejected (strict mode fails on
an ignore that is not needed, so those lines prove the rejections).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_mypy_strict_on_src_and_the_public_api() -> None:
    pytest.importorskip("mypy")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
