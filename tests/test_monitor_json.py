"""JsonFormatter: one JSON object per record, extra fields and tracebacks included."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime

import numpy as np
import pytest

from _monitor_support import MONITOR_LOGGER, fresh_monitoring
from buttress import JsonFormatter, flush_monitoring, monitor, request_scope


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    with fresh_monitoring():
        yield


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter(static_fields={"service": "ranker"}))
    previous = MONITOR_LOGGER.level
    MONITOR_LOGGER.setLevel(logging.INFO)
    MONITOR_LOGGER.addHandler(handler)
    try:
        yield buffer
    finally:
        MONITOR_LOGGER.removeHandler(handler)
        MONITOR_LOGGER.setLevel(previous)


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_monitor_records_render_as_json(stream: io.StringIO) -> None:
    @monitor("embed", labels={"model": "e5"})
    def embed(texts: list[str], vector: np.ndarray) -> np.ndarray:
        return vector

    with request_scope(request_id="abc-123"):
        embed(["private text"], np.ones(4, dtype=np.float32))
    assert flush_monitoring()
    (line,) = lines(stream)
    assert line["logger"] == "buttress.monitor"
    assert line["level"] == "INFO"
    assert line["service"] == "ranker"
    assert line["function"] == "embed"
    assert line["outcome"] == "ok"
    assert line["context"] == {"request_id": "abc-123"}
    assert line["labels"] == {"model": "e5"}
    assert line["inputs"] == {
        "texts": {"type": "list", "length": 1, "element_type": "str"},
        "vector": {
            "type": "ndarray",
            "shape": [4],
            "dtype": "float32",
            "nan": 0,
            "inf": 0,
            "min": 1.0,
            "max": 1.0,
            "mean": 1.0,
        },
    }
    assert datetime.fromisoformat(str(line["time"])).utcoffset() is not None
    assert "private text" not in stream.getvalue()


def test_errors_carry_the_traceback(stream: io.StringIO) -> None:
    @monitor
    def boom() -> None:
        raise LookupError("no such model")

    with pytest.raises(LookupError):
        boom()
    assert flush_monitoring()
    (line,) = lines(stream)
    assert line["level"] == "ERROR"
    assert line["error_type"] == "LookupError"
    assert line["error_message"] == "no such model"
    assert "Traceback (most recent call last)" in str(line["exception"])
    assert "LookupError: no such model" in str(line["exception"])


def test_any_record_with_odd_extras() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd!"

    formatter = JsonFormatter(ensure_ascii=True)
    record = logging.LogRecord("app", logging.WARNING, __file__, 1, "héllo %s", ("wörld",), None)
    record.odd = Odd()
    record._private = "hidden"
    record.stack_info = "Stack (most recent call last):\n  here"
    payload = json.loads(formatter.format(record))
    assert payload["message"] == "héllo wörld"
    assert payload["odd"] == "odd!"
    assert "_private" not in payload
    assert payload["stack"].startswith("Stack")
    assert "\\u00e9" in formatter.format(record)  # ensure_ascii escaped it
    for standard in ("args", "msg", "levelno", "pathname", "process"):
        assert standard not in payload
