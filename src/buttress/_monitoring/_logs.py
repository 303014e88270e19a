"""Log records of monitored calls, the request context they carry, and a JSON formatter.

A monitored call queues a :class:`CallItem` (plain data, summaries already taken); the
exporter thread turns it into a stdlib :class:`logging.LogRecord` on the
``buttress.monitor`` logger, with every field in the record's ``extra`` so any JSON
formatter (:class:`JsonFormatter`, python-json-logger, structlog's stdlib bridge) renders
them. The record's time, thread and source location are the call's, not the exporter's.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Protocol

from buttress._tracing import TraceIds

from ._stats import OUTCOMES, FunctionStats
from ._summaries import type_name

__all__ = [
    "CallItem",
    "CallSite",
    "JsonFormatter",
    "MessageItem",
    "call_id",
    "request_context",
    "request_scope",
]

#: Request-scoped fields (a request id, a tenant, a model version) copied into every
#: ``@monitor`` record made while they are set. Set it with :func:`request_scope`, or
#: ``request_context.set(...)`` and ``reset(token)`` yourself; the aiohttp and FastAPI
#: middlewares set ``request_id`` for you. Values go to logs only, never to metric labels.
request_context: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "buttress_request_context", default=None
)


@contextmanager
def request_scope(**fields: Any) -> Iterator[Mapping[str, Any]]:
    """Add ``fields`` to :data:`request_context` for the ``with`` block.

    Fields already set by an enclosing scope are kept unless overridden. Works in sync
    and async code alike (each asyncio or trio task has its own context)::

        with request_scope(request_id=request.headers["X-Request-ID"]):
            return await predict(features)

    Yields the mapping in effect inside the block.
    """
    current = request_context.get()
    merged = {**current, **fields} if current else dict(fields)
    token = request_context.set(merged)
    try:
        yield merged
    finally:
        request_context.reset(token)


# A process-unique call id: a random prefix (new after fork) and a counter. Taking the
# next number is one atomic C call, far cheaper than a uuid4 on every logged call.
_prefix = os.urandom(4).hex()
_counter = itertools.count(1)


def call_id() -> int:
    """The next call number (formatted with the process prefix when exported)."""
    return next(_counter)


def _after_fork() -> None:
    global _prefix
    _prefix = os.urandom(4).hex()


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent on Windows only
    os.register_at_fork(after_in_child=_after_fork)


ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class CallSite(Protocol):
    """What a call record reads of the monitored function it describes.

    ``@monitor``'s engine (``_decorator.Site``) provides it; this module reads it through
    the protocol, so that the decorator imports the records and never the other way.
    """

    @property
    def name(self) -> str: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def slow_threshold(self) -> float | None: ...
    @property
    def logger(self) -> logging.Logger: ...
    @property
    def pathname(self) -> str: ...
    @property
    def lineno(self) -> int: ...
    @property
    def func_name(self) -> str: ...
    @property
    def stats(self) -> FunctionStats: ...


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="microseconds")


class CallItem:
    """One finished call, as queued for the exporter thread: plain data only."""

    __slots__ = (
        "call",
        "context",
        "duration",
        "end",
        "exc_info",
        "inputs",
        "level",
        "outcome",
        "output",
        "site",
        "slow",
        "thread",
        "trace",
        "tracked",
    )

    def __init__(
        self,
        site: CallSite,
        level: int,
        outcome: int,
        duration: float,
        end: float,
        slow: bool,
        exc_info: ExcInfo | None,
        inputs: dict[str, Any] | None,
        output: Any,
        tracked: float | None,
        trace: TraceIds | None = None,
    ) -> None:
        self.site = site
        #: the log level, or 0 when the call is not logged (sampled out, level disabled)
        self.level = level
        self.outcome = outcome
        self.duration = duration
        self.end = end
        self.slow = slow
        self.exc_info = exc_info
        self.inputs = inputs
        self.output = output
        self.tracked = tracked
        #: the ids of the call's span (tracing on): ``trace_id`` and ``span_id`` fields
        self.trace = trace
        self.thread: threading.Thread | None
        if level:
            context = request_context.get()
            self.context = dict(context) if context else None
            self.thread = threading.current_thread()
            self.call = next(_counter)
        else:
            self.context = None
            self.thread = None
            self.call = 0

    def fields(self) -> dict[str, Any]:
        """The structured fields of the record (its ``extra``)."""
        site = self.site
        error = self.exc_info[1] if self.exc_info is not None else None
        fields: dict[str, Any] = {
            "function": site.name,
            "call_id": f"{_prefix}-{self.call:x}",
            "start_time": _utc(self.end - self.duration),
            "duration": self.duration,
            "outcome": OUTCOMES[self.outcome],
            "slow": self.slow,
            "error_type": type_name(error) if error is not None else None,
            "error_message": str(error) if error is not None else None,
            "inputs": self.inputs,
            "output": self.output,
            "context": self.context,
        }
        if site.labels:
            fields["labels"] = dict(site.labels)
        if self.tracked is not None:
            fields["tracked_output"] = self.tracked
        trace = self.trace
        if trace is not None:
            fields["trace_id"] = trace.trace_hex
            fields["span_id"] = trace.span_hex
        return fields

    def message(self) -> tuple[str, tuple[Any, ...]]:
        name = self.site.name
        milliseconds = self.duration * 1000
        outcome = OUTCOMES[self.outcome]
        args: tuple[Any, ...]
        if self.exc_info is not None:
            error = self.exc_info[1]
            text, args = "%s() failed after %.1f ms: %s: %s", (
                name,
                milliseconds,
                type_name(error),
                error,
            )
        elif outcome == "cancelled":
            text, args = "%s() cancelled after %.1f ms", (name, milliseconds)
        else:
            text, args = "%s() ok in %.1f ms", (name, milliseconds)
        threshold = self.site.slow_threshold
        if self.slow and threshold is not None:
            text += " (slow: threshold %.1f ms)"
            args = (*args, threshold * 1000)
        return text, args

    def export(self) -> None:
        """Build the log record and hand it to the logger's handlers (exporter thread)."""
        if not self.level:
            return
        site = self.site
        log = site.logger
        text, args = self.message()
        record = log.makeRecord(
            log.name,
            self.level,
            site.pathname,
            site.lineno,
            text,
            args,
            self.exc_info,
            site.func_name,
            self.fields(),
        )
        # The record describes the call, not the moment the exporter got to it.
        lag = record.created - self.end
        record.created = self.end
        record.msecs = (self.end - int(self.end)) * 1000
        record.relativeCreated -= lag * 1000
        if self.thread is not None:
            record.thread = self.thread.ident
            record.threadName = self.thread.name
        log.handle(record)


class MessageItem:
    """A plain warning about monitoring itself, logged from the exporter thread."""

    __slots__ = ("args", "exc_info", "level", "logger", "text")

    def __init__(
        self,
        logger: logging.Logger,
        level: int,
        text: str,
        *args: Any,
        exc_info: ExcInfo | None = None,
    ) -> None:
        self.logger = logger
        self.level = level
        self.text = text
        self.args = args
        self.exc_info = exc_info

    def export(self) -> None:
        if self.logger.isEnabledFor(self.level):
            self.logger.log(self.level, self.text, *self.args, exc_info=self.exc_info)


_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__
) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Render a log record as one line of JSON, ``extra`` fields included.

    The object holds ``time`` (ISO 8601, UTC), ``level``, ``logger`` and ``message``,
    then every field passed through ``extra`` (for ``@monitor`` records: ``function``,
    ``call_id``, ``start_time``, ``duration``, ``outcome``, ``error_type``,
    ``error_message``, ``inputs``, ``output``, ``context`` and more), then
    ``exception`` (the formatted traceback) and ``stack`` when present. Values JSON does
    not know are rendered with ``str()``.

    Args:
        static_fields: fields added to every line (a service name, an environment).
        ensure_ascii: escape non-ASCII characters (``json.dumps``' option).
    """

    def __init__(
        self,
        *,
        static_fields: Mapping[str, Any] | None = None,
        ensure_ascii: bool = False,
    ) -> None:
        super().__init__()
        self.static_fields = dict(static_fields or {})
        self.ensure_ascii = ensure_ascii

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update(self.static_fields)
        payload.update(
            (key, value)
            for key, value in record.__dict__.items()
            if key not in _STANDARD and not key.startswith("_")
        )
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            payload["exception"] = record.exc_text
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return json.dumps(payload, default=str, ensure_ascii=self.ensure_ascii)
