"""@monitor's records as on-call reads them: expected errors, nested monitors, names, cost."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

import buttress
from _monitor_support import Records, capture, fresh_monitoring
from buttress import (
    ConfigurationError,
    InputValidationError,
    RateLimitExceeded,
    flush_monitoring,
    monitor,
    validate_input,
)
from buttress._monitoring._logs import _utc

PACKAGE = str(Path(buttress.__file__).resolve().parent)


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    with fresh_monitoring():
        yield


@pytest.fixture
def records() -> Iterator[Records]:
    with capture() as handler:
        yield handler


class QuotaError(Exception):
    """A user's own 'expected' error (the client asked for too much)."""


def formatted(record: logging.LogRecord) -> str:
    assert record.exc_info is not None
    return "".join(traceback.format_exception(*record.exc_info))


def test_a_rejected_input_is_one_warning_without_traceback(records: Records) -> None:
    @monitor("route")
    @validate_input
    def route(count: int) -> int:
        return count

    with pytest.raises(InputValidationError):
        route("many")  # type: ignore[arg-type]
    assert flush_monitoring()
    (record,) = records.of("route")
    assert record.levelno == logging.WARNING
    assert record.exc_info is None
    assert record.error_type == "buttress.InputValidationError"  # type: ignore[attr-defined]
    assert record.expected is True  # type: ignore[attr-defined]
    assert record.outcome == "error"  # type: ignore[attr-defined]
    assert "buttress.InputValidationError" in record.getMessage()


def test_buttress_refusals_are_expected_by_default(records: Records) -> None:
    @monitor("limited")
    def limited() -> None:
        raise RateLimitExceeded("refused", rate=1, per=1, retry_after=1.0, retry_at=0.0)

    with pytest.raises(RateLimitExceeded):
        limited()
    assert flush_monitoring()
    (record,) = records.of("limited")
    assert record.levelno == logging.WARNING
    assert record.exc_info is None
    assert record.error_type == "buttress.RateLimitExceeded"  # type: ignore[attr-defined]


def test_user_declared_expected_errors_are_warnings(records: Records) -> None:
    @monitor("quota", expected=QuotaError)
    def quota() -> None:
        raise QuotaError("over quota")

    @monitor("broken", expected=(QuotaError,))
    def broken() -> None:
        raise KeyError("bug")

    with pytest.raises(QuotaError):
        quota()
    with pytest.raises(KeyError):
        broken()
    assert flush_monitoring()
    (quiet,) = records.of("quota")
    assert quiet.levelno == logging.WARNING
    assert quiet.exc_info is None
    assert quiet.error_type == f"{__name__}.QuotaError"  # type: ignore[attr-defined]
    (loud,) = records.of("broken")
    assert loud.levelno == logging.ERROR
    assert loud.exc_info is not None
    assert loud.expected is False  # type: ignore[attr-defined]


def test_expected_must_be_exception_classes() -> None:
    with pytest.raises(ConfigurationError, match="expected"):
        monitor(expected=ValueError("not a class"))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="expected"):
        monitor(expected=(int,))  # type: ignore[arg-type]


def test_nested_monitors_log_one_traceback_where_first_seen(records: Records) -> None:
    @monitor("inner")
    def inner() -> None:
        raise RuntimeError("model server down")

    @monitor("route")
    def route() -> None:
        inner()

    with pytest.raises(RuntimeError):
        route()
    assert flush_monitoring()
    (first,) = records.of("inner")
    (outer,) = records.of("route")
    assert first.levelno == logging.ERROR
    text = formatted(first)
    assert "model server down" in text
    assert "in inner" in text
    assert PACKAGE not in text  # no frame of buttress's own wrappers
    assert outer.exc_info is None
    assert outer.levelno == logging.WARNING
    assert outer.error_logged_by == "inner"  # type: ignore[attr-defined]
    assert outer.error_type == "RuntimeError"  # type: ignore[attr-defined]
    assert "logged with its traceback by inner()" in outer.getMessage()
    errors = [r for r in records.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1


def test_a_new_exception_raised_from_a_logged_one_is_logged(records: Records) -> None:
    @monitor("inner")
    def inner() -> None:
        raise KeyError("k")

    @monitor("route")
    def route() -> None:
        try:
            inner()
        except KeyError as exc:
            raise LookupError("translated") from exc

    with pytest.raises(LookupError):
        route()
    assert flush_monitoring()
    (outer,) = records.of("route")
    assert outer.levelno == logging.ERROR
    assert "translated" in formatted(outer)


def test_the_same_function_logs_a_shared_exception_every_call(records: Records) -> None:
    shared = RuntimeError("shared by two callers")

    @monitor("leader")
    def call() -> None:
        raise shared

    for _ in range(2):
        with pytest.raises(RuntimeError):
            call()
    assert flush_monitoring()
    assert [r.levelno for r in records.of("leader")] == [logging.ERROR, logging.ERROR]
    assert all(r.exc_info is not None for r in records.of("leader"))


def test_a_traceback_made_only_of_buttress_frames_keeps_where_it_was_raised(
    records: Records,
) -> None:
    @monitor("route", expected=())
    @buttress.validate_output
    def route() -> int:
        return "not an int"  # type: ignore[return-value]

    with pytest.raises(buttress.OutputValidationError):
        route()
    assert flush_monitoring()
    (record,) = records.of("route")
    assert record.levelno == logging.ERROR
    assert record.error_type == "buttress.OutputValidationError"  # type: ignore[attr-defined]
    assert "OutputValidationError" in formatted(record)


def test_records_built_the_quick_way_match_the_stdlib_way(records: Records) -> None:
    @monitor("fast")
    def fast(x: int) -> int:
        return x

    fast(1)
    assert flush_monitoring()
    factory = logging.getLogRecordFactory()
    made: list[logging.LogRecord] = []

    def custom(*args: object, **kwargs: object) -> logging.LogRecord:
        record = factory(*args, **kwargs)  # type: ignore[arg-type]
        record.custom = "added by a record factory"
        made.append(record)
        return record

    logging.setLogRecordFactory(custom)
    try:
        fast(1)
        assert flush_monitoring()
    finally:
        logging.setLogRecordFactory(factory)
    quick, slow = records.of("fast")
    assert slow.custom == "added by a record factory"  # type: ignore[attr-defined]
    assert made == [slow]
    skip = {
        "created", "msecs", "relativeCreated", "call_id", "start_time", "duration", "custom",
        "args",  # the duration is one of them
    }
    assert {k: v for k, v in vars(quick).items() if k not in skip} == {
        k: v for k, v in vars(slow).items() if k not in skip
    }
    assert quick.args[0] == slow.args[0] == "fast"
    assert quick.inputs == {"x": {"type": "int"}}  # type: ignore[attr-defined]
    assert quick.output == {"type": "int"}  # type: ignore[attr-defined]
    assert quick.filename == Path(__file__).name
    assert quick.module == Path(__file__).stem


@pytest.mark.parametrize(
    "stamp", [0.0, 1_700_000_000.0, 1_700_000_000.123456, 1_700_000_000.9999996, 1e9 + 0.5]
)
def test_start_time_matches_isoformat(stamp: float) -> None:
    wanted = datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="microseconds")
    assert _utc(stamp) == wanted
    assert _utc(stamp) == wanted  # the cached second too


def test_scalar_inputs_summarised_later_match_the_summaries(records: Records) -> None:
    class Model:
        @monitor("method")
        def predict(self, x: int, text: str, *, flag: bool = False) -> float:
            return 1.5

    @monitor("mixed")
    def mixed(x: int, items: list[int]) -> None:
        pass

    Model().predict(1, "four", flag=True)
    items = [1, 2]
    mixed(None, items)  # type: ignore[arg-type]
    items.append(99)  # changed after the call: its summary was taken at the call's end
    assert flush_monitoring()
    (method,) = records.of("method")
    assert method.inputs == {  # type: ignore[attr-defined]
        "x": {"type": "int"},
        "text": {"type": "str", "length": 4},
        "flag": {"type": "bool"},
    }
    assert method.output == {"type": "float", "finite": True}  # type: ignore[attr-defined]
    (record,) = records.of("mixed")
    assert record.inputs["items"]["length"] == 2  # type: ignore[attr-defined]
    assert record.inputs["x"] is None  # type: ignore[attr-defined]
