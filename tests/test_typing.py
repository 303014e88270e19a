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


def _numpy_has_default_type_parameters() -> bool:
    # The typing files write a bare ``np.ndarray``, as users do; numpy gave ndarray default
    # type parameters in 2.3 (not released for Python 3.10), and without them mypy --strict
    # asks for ``np.ndarray[Any, Any]``.
    import numpy

    major, minor = (int(part) for part in numpy.__version__.split(".")[:2])
    return (major, minor) >= (2, 3)


@pytest.mark.slow
@pytest.mark.skipif(
    not _numpy_has_default_type_parameters(),
    reason="numpy < 2.3 has no default type parameters for ndarray (Python 3.10 tops out "
    "at numpy 2.2); the typing check runs where numpy >= 2.3 is installed",
)
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
