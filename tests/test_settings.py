"""Settings are normalised once and refused loudly, naming the parameter."""

from __future__ import annotations

from datetime import timedelta

import pytest

from buttress import ConfigurationError
from buttress._settings import (
    byte_size,
    choice,
    exception_types,
    non_negative_int,
    optional_seconds,
    positive_int,
    ratio,
    seconds,
)


def test_seconds_accepts_numbers_and_timedeltas() -> None:
    assert seconds(2, "ttl") == 2.0
    assert seconds(0.25, "ttl") == 0.25
    assert seconds(timedelta(minutes=1, milliseconds=500), "ttl") == 60.5
    assert optional_seconds(None, "ttl") is None


@pytest.mark.parametrize("value", [-1, float("nan"), "1", True, None])
def test_seconds_refuses_with_the_name(value: object) -> None:
    with pytest.raises(ConfigurationError, match="my_delay"):
        seconds(value, "my_delay")


def test_seconds_can_refuse_zero() -> None:
    assert seconds(0, "delay") == 0.0
    with pytest.raises(ConfigurationError, match="positive"):
        seconds(0, "deadline", allow_zero=False)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (1024, 1024),
        ("512", 512),
        ("2GiB", 2 * 1024**3),
        ("2Gi", 2 * 1024**3),
        ("1.5 MiB", int(1.5 * 1024**2)),
        ("3GB", 3 * 1000**3),
        ("10kb", 10_000),
    ],
)
def test_byte_size(text: object, expected: int) -> None:
    assert byte_size(text, "max_rss") == expected


@pytest.mark.parametrize("value", [-1, "lots", "2 parsecs", 1.5, None])
def test_byte_size_refuses(value: object) -> None:
    with pytest.raises(ConfigurationError, match="max_rss"):
        byte_size(value, "max_rss")


def test_integers_and_ratios() -> None:
    assert non_negative_int(0, "n") == 0
    assert positive_int(3, "n") == 3
    assert ratio(0.5, "r") == 0.5
    for bad in (-1, True, 1.0):
        with pytest.raises(ConfigurationError, match="max_retries"):
            non_negative_int(bad, "max_retries")
    with pytest.raises(ConfigurationError, match="size"):
        positive_int(0, "size")
    for bad_ratio in (0, 1.5, float("inf")):
        with pytest.raises(ConfigurationError, match="failure_ratio"):
            ratio(bad_ratio, "failure_ratio")
    assert ratio(0, "r", allow_zero=True) == 0.0


def test_choice() -> None:
    assert choice("full", "jitter", ("full", None)) == "full"
    with pytest.raises(ConfigurationError, match="jitter must be one of 'full', None"):
        choice("wild", "jitter", ("full", None))


def test_exception_types() -> None:
    assert exception_types(ValueError, "exceptions") == (ValueError,)
    assert exception_types([KeyError, OSError], "exceptions") == (KeyError, OSError)
    for bad in ((), (int,), "ValueError", 3, (ValueError, "x")):
        with pytest.raises(ConfigurationError, match="exceptions"):
            exception_types(bad, "exceptions")
