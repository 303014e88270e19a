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
from ._summaries import public_type_name, summarize_scalar

__all__ = [
    "PENDING_INPUTS",
    "PENDING_OUTPUT",
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


#: Bumped in a forked child: record templates made before hold the parent's process id.
_epoch = 0


def _after_fork() -> None:
    global _prefix, _epoch
    _prefix = os.urandom(4).hex()
    _epoch += 1


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
    @property
    def level(self) -> int: ...
    #: the part of every record that never changes, made by the first export (with the
    #: epoch it was made in: a forked child makes its own, with its own process id)
    record_template: tuple[int, dict[str, Any]] | None

    def summarize_inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any: ...


#: ``CallItem.pending`` flags: the inputs (``(args, kwargs)``) or the output (the raw
#: value) are of immutable types and still to be summarised, in the exporter thread.
PENDING_INPUTS = 1
PENDING_OUTPUT = 2


#: The last second formatted by :func:`_utc` and its text, swapped as one tuple.
_second: tuple[int, str] = (-1, "")


def _utc(timestamp: float) -> str:
    """ISO 8601 in UTC with microseconds; the seconds part is reused within a second."""
    whole, micros = divmod(round(timestamp * 1_000_000), 1_000_000)
    global _second
    cached, prefix = _second
    if cached != whole:
        prefix = datetime.fromtimestamp(whole, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (whole, prefix)
    return "%s.%06d+00:00" % (prefix, micros)  # noqa: UP031 - the quickest here


class CallItem:
    """One finished call, as queued for the exporter thread: plain data only."""

    __slots__ = (
        "call",
        "context",
        "duration",
        "end",
        "error",
        "exc_info",
        "expected",
        "inputs",
        "level",
        "logged_by",
        "outcome",
        "output",
        "pending",
        "site",
        "slow",
        "stream",
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
        inputs: Any,
        output: Any,
        tracked: float | None,
        trace: TraceIds | None = None,
        stream: tuple[int, float | None, str] | None = None,
        pending: int = 0,
        error: BaseException | None = None,
        expected: bool = False,
        logged_by: str | None = None,
    ) -> None:
        self.site = site
        #: the exception of a failed call; ``exc_info`` holds it only when its
        #: traceback is logged (not for an expected error, nor one logged already)
        self.error = error if error is not None else (exc_info[1] if exc_info else None)
        self.expected = expected
        #: the monitor that logged this exception first (an inner one), if any
        self.logged_by = logged_by
        #: which of ``inputs`` and ``output`` still hold raw values (PENDING_* flags)
        self.pending = pending
        #: a stream's (items, seconds to its first item or None, how it ended)
        self.stream = stream
        #: the log level, or 0 when the call is not logged (sampled out, level disabled)
        self.level = level
        self.outcome = outcome
        self.duration = duration
        self.end = end
        self.slow = slow
        self.exc_info = exc_info
        #: the inputs summary, or ``(args, kwargs)`` while PENDING_INPUTS is set
        self.inputs: Any = inputs
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
        fields: dict[str, Any] = {}
        self._fill(fields)
        return fields

    def _fill(self, fields: dict[str, Any]) -> None:
        site = self.site
        error = self.error
        fields["function"] = site.name
        fields["call_id"] = f"{_prefix}-{self.call:x}"
        fields["start_time"] = _utc(self.end - self.duration)
        fields["duration"] = self.duration
        fields["outcome"] = OUTCOMES[self.outcome]
        fields["slow"] = self.slow
        if error is None:
            fields["error_type"] = fields["error_message"] = None
        else:
            fields["error_type"] = public_type_name(error)
            fields["error_message"] = str(error)
            fields["expected"] = self.expected
            if self.logged_by is not None:
                fields["error_logged_by"] = self.logged_by
        pending = self.pending
        if pending:
            if pending & PENDING_INPUTS:
                args, kwargs = self.inputs
                self.inputs = site.summarize_inputs(args, kwargs)
            if pending & PENDING_OUTPUT:
                self.output = summarize_scalar(self.output)
            self.pending = 0
        fields["inputs"] = self.inputs
        fields["output"] = self.output
        fields["context"] = self.context
        if site.labels and "labels" not in fields:
            fields["labels"] = dict(site.labels)
        if self.tracked is not None:
            fields["tracked_output"] = self.tracked
        if self.stream is not None:
            items, first, ended = self.stream
            fields["stream"] = {"items": items, "first_item": first, "ended": ended}
        trace = self.trace
        if trace is not None:
            fields["trace_id"] = trace.trace_hex
            fields["span_id"] = trace.span_hex

    def message(self) -> tuple[str, tuple[Any, ...]]:
        name = self.site.name
        milliseconds = self.duration * 1000
        outcome = OUTCOMES[self.outcome]
        args: tuple[Any, ...]
        error = self.error
        if error is not None:
            text, args = "%s() failed after %.1f ms: %s: %s", (
                name,
                milliseconds,
                public_type_name(error),
                error,
            )
            if self.logged_by is not None:
                text += " (logged with its traceback by %s())"
                args = (*args, self.logged_by)
        elif outcome == "cancelled":
            abandoned = self.stream is not None and self.stream[2] == "abandoned"
            text = "%s() abandoned by its caller after %.1f ms" if abandoned else (
                "%s() cancelled after %.1f ms"
            )
            args = (name, milliseconds)
        else:
            text, args = "%s() ok in %.1f ms", (name, milliseconds)
        if self.stream is not None:
            items, first = self.stream[0], self.stream[1]
            if first is None:
                text += " (stream: no item)"
            else:
                text += " (stream: %d item(s), the first after %.1f ms)"
                args = (*args, items, first * 1000)
        threshold = self.site.slow_threshold
        if self.slow and threshold is not None:
            text += " (slow: threshold %.1f ms)"
            args = (*args, threshold * 1000)
        return text, args

    def export(self) -> None:
        """Build the log record and hand it to the logger's handlers (exporter thread)."""
        level = self.level
        if not level:
            return
        site = self.site
        log = site.logger
        if not log.isEnabledFor(level):  # the level was raised since the call
            return
        text, args = self.message()
        end = self.end
        template = _template(site, log)
        if template is None:  # a custom record factory or logger class: the slow way
            record = log.makeRecord(
                log.name,
                level,
                site.pathname,
                site.lineno,
                text,
                args,
                _trimmed(self.exc_info),
                site.func_name,
                self.fields(),
            )
            # The record describes the call, not the moment the exporter got to it.
            record.created = end
            record.msecs = (end - int(end)) * 1000
            record.relativeCreated = (end - _start_time) * 1000
            if self.thread is not None:
                record.thread = self.thread.ident
                record.threadName = self.thread.name
        else:
            # What LogRecord.__init__ would compute, all but the call's own facts once
            # per function: the process, the source location. The fields land in the
            # record's __dict__ as makeRecord's ``extra`` would put them. The record
            # describes the call, not the moment the exporter got to it.
            record = _new_record(_LogRecord)
            values = template.copy()
            values["msg"] = text
            values["args"] = args
            if level != template["levelno"]:
                values["levelno"] = level
                values["levelname"] = logging.getLevelName(level)
            if self.exc_info is not None:
                values["exc_info"] = _trimmed(self.exc_info)
            values["created"] = end
            values["msecs"] = (end - int(end)) * 1000
            values["relativeCreated"] = (end - _start_time) * 1000
            thread = self.thread
            if thread is not None:
                values["thread"] = thread.ident
                values["threadName"] = thread.name
            self._fill(values)
            record.__dict__ = values
        log.handle(record)


#: Frames of files under this directory (buttress's own wrappers) are left out of the
#: tracebacks of records, unless nothing else is left.
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _trimmed(exc_info: ExcInfo | None) -> ExcInfo | None:
    """``exc_info`` with buttress's own frames left out of the traceback.

    The traceback of a record starts at the monitor's wrapper and runs through every
    decorator's wrapper to the user's code: only the user's frames say something. A
    traceback made only of buttress frames (an error buttress raised itself, such as an
    :class:`~buttress.OutputValidationError`) keeps its last frame, where it was raised.
    """
    if exc_info is None:
        return None
    kind, error, tb = exc_info
    frames: list[TracebackType] = []
    trimmed = False
    last = None
    while tb is not None:
        last = tb
        if tb.tb_frame.f_code.co_filename.startswith(_PACKAGE):
            trimmed = True
        else:
            frames.append(tb)
        tb = tb.tb_next
    if not trimmed:
        return exc_info
    if not frames and last is not None:
        frames.append(last)
    rebuilt: TracebackType | None = None
    for frame in reversed(frames):
        rebuilt = TracebackType(rebuilt, frame.tb_frame, frame.tb_lasti, frame.tb_lineno)
    return (kind, error, rebuilt)


_LogRecord = logging.LogRecord
_new_record = _LogRecord.__new__
#: When the logging module was loaded (LogRecord.relativeCreated counts from it).
_probe = _LogRecord("", 0, "", 0, "", (), None)
_start_time = _probe.created - _probe.relativeCreated / 1000
del _probe
def _template(site: CallSite, log: logging.Logger) -> dict[str, Any] | None:
    """The part of ``site``'s records that never changes, or ``None`` when records must
    come from makeRecord.

    Records are built from this template only while the stdlib makes them the stdlib way:
    a custom record factory (``logging.setLogRecordFactory``, as OpenTelemetry's logging
    instrumentation installs) or a logger class with its own ``makeRecord`` gets the
    ordinary path, so whatever it adds is still added.
    """
    if (
        logging.getLogRecordFactory() is not _LogRecord
        or type(log).makeRecord is not logging.Logger.makeRecord
    ):
        return None
    made = site.record_template
    if made is not None and made[0] == _epoch and made[1]["name"] == log.name:
        return made[1]
    probe = _LogRecord(log.name, site.level, site.pathname, site.lineno, "", (), None)
    probe.funcName = site.func_name
    template = dict(probe.__dict__)
    if "taskName" in template:  # Python 3.12+: no task in the exporter thread
        template["taskName"] = None
    if site.labels:
        template["labels"] = dict(site.labels)
    site.record_template = (_epoch, template)
    return template


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
