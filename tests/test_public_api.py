"""The public surface: what `buttress` exports, and what importing it costs."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

import buttress


def test_all_is_sorted_and_unique() -> None:
    assert list(buttress.__all__) == sorted(set(buttress.__all__))


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(buttress).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name not in {"annotations", "import_module", "TYPE_CHECKING", "Any"}
    }
    assert public <= set(buttress.__all__)
    for name in buttress.__all__:
        assert getattr(buttress, name) is not None, name


def test_every_exported_error_is_a_buttress_error_and_every_warning_a_buttress_warning() -> None:
    for name in buttress.__all__:
        value = getattr(buttress, name)
        if isinstance(value, type) and issubclass(value, Warning):
            assert issubclass(value, buttress.ButtressWarning), name
        elif isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, buttress.ButtressError), name


def test_unknown_attribute_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="does_not_exist"):
        buttress.does_not_exist  # type: ignore[attr-defined]  # noqa: B018


def test_import_stays_light() -> None:
    heavy = ("redis", "prometheus_client", "fastapi", "uvicorn", "datadog", "matplotlib")
    code = (
        "import sys, buttress, buttress.testing\n"
        f"loaded = [m for m in {heavy!r} if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_py_typed_is_shipped() -> None:
    from importlib.resources import files

    assert files("buttress").joinpath("py.typed").is_file()
