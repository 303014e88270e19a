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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Protocol

from ._stats import CANCELLED, OK, OUTCOMES, FunctionStats
from ._summaries import SCALAR_SUMMARIES, public_type_name

__all__ = [
    "PENDING_INPUTS",
    "PENDING_OUTPUT",
    "CallData",
    "CallItem",
    "CallSite",
    "JsonFormatter",
    "MessageItem",
    "call_id",
    "export_call",
    "request_context",
    "request_scope",
    "unflat_items",
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


#: A site's record template: (the fork epoch it was made in, the template, the logger
#: it was made for, whether that logger handles records as :class:`logging.Logger` does)
Template = tuple[int, dict[str, Any], logging.Logger, bool]


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
    record_template: Template | None

    def summarize_inputs(self, args: tuple[Any, ...], named: tuple[Any, ...] | None) -> Any: ...


#: ``pending`` flags of a call's data: the inputs (``(args, kwargs items)``) or the output
#: (the raw value) are of immutable types and still to be summarised, in the exporter thread.
PENDING_INPUTS = 1
PENDING_OUTPUT = 2

#: What a monitored call queues for the exporter thread (see ``Site.finish``): a plain
#: tuple, in this order,
#:
#: ``(level, outcome, duration, end, slow, inputs, named, output, pending, thread,
#: thread_name, contextual, tracked, rare)``,
#:
#: and beside it, ``arguments``: one flat tuple of what is left to read, the positional
#: values still to summarise (without self or cls), then the names and the values of the
#: ``named`` keyword arguments, then those of the ``contextual`` fields of
#: :data:`request_context`. ``level`` is 0 when the call is not logged (sampled out,
#: level disabled: the item is for the sinks only); ``inputs`` is the summary, or
#: ``None`` while PENDING_INPUTS is set; ``thread`` and ``thread_name`` are the calling
#: thread's ident and name; ``rare`` is ``None`` or ``(error, exc_info, expected,
#: logged_by, trace, stream)``.
#:
#: Why so: a tuple that holds only numbers, strings and ``None`` stops being tracked by
#: the garbage collector at its first collection (a tuple holding tuples, one level of
#: nesting per collection: hence the arguments beside the data, not in it), and so never
#: reaches the oldest generation, however long it waits in the queue. A queue of objects
#: (or of tuples holding a dict, even an empty one) would be promoted there, and each
#: full collection traverses the whole heap: with a large heap (numpy, torch, a web
#: framework), that cost more than building the records. The site travels beside them
#: in the queue (see ``Exporter.put_call``).
CallData = tuple[Any, ...]


def unflat_items(flat: tuple[Any, ...]) -> dict[str, Any]:
    """A mapping kept as a flat tuple, its keys then its values, as a dict again."""
    half = len(flat) // 2
    return dict(zip(flat[:half], flat[half:], strict=True))


#: The last second formatted by :func:`_utc`: its number and its text up to the dot.
_second: tuple[int, str] = (-1, "")


def _utc(timestamp: float) -> str:
    """ISO 8601 in UTC with microseconds; the seconds part is reused within a second."""
    micros = round(timestamp * 1_000_000)
    whole, prefix = _second
    if micros // 1_000_000 != whole or micros < 1_000_000:
        return _utc_slow(micros)
    # The last six digits of the count of microseconds are the fraction, zero-padded.
    return f"{prefix}{str(micros)[-6:]}+00:00"


def _utc_slow(micros: int) -> str:
    global _second
    whole, fraction = divmod(micros, 1_000_000)
    prefix = datetime.fromtimestamp(whole, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")
    if micros >= 1_000_000:  # later seconds have at least seven digits
        _second = (whole, prefix)
    return "%s%06d+00:00" % (prefix, fraction)  # noqa: UP031 - as the quick path


class CallItem:
    """One finished call as the metrics sinks see it: the site and the call's data.

    Made in the exporter thread, only while a sink is registered.
    """

    __slots__ = ("data", "site")

    def __init__(self, site: CallSite, data: CallData) -> None:
        self.site = site
        self.data = data

    @property
    def level(self) -> int:
        """The log level, or 0 when the call is not logged."""
        return int(self.data[0])

    @property
    def outcome(self) -> int:
        """An index into ``OUTCOMES``."""
        return int(self.data[1])

    @property
    def duration(self) -> float:
        return float(self.data[2])

    @property
    def tracked(self) -> float | None:
        """The ``track_output`` value of the call, if any."""
        tracked: float | None = self.data[12]
        return tracked

    @property
    def stream(self) -> tuple[int, float | None, str] | None:
        """A stream's (items, seconds to its first item or None, how it ended)."""
        rare = self.data[13]
        return None if rare is None else rare[5]


def _message(
    site: CallSite,
    outcome: int,
    duration: float,
    slow: bool,
    error: BaseException | None,
    logged_by: str | None,
    stream: tuple[int, float | None, str] | None,
) -> tuple[str, tuple[Any, ...]]:
    name = site.name
    milliseconds = duration * 1000
    args: tuple[Any, ...]
    if error is not None:
        text, args = (
            "%s() failed after %.1f ms: %s: %s",
            (
                name,
                milliseconds,
                public_type_name(error),
                error,
            ),
        )
        if logged_by is not None:
            text += " (logged with its traceback by %s())"
            args = (*args, logged_by)
    elif outcome == CANCELLED:
        abandoned = stream is not None and stream[2] == "abandoned"
        text = (
            "%s() abandoned by its caller after %.1f ms"
            if abandoned
            else ("%s() cancelled after %.1f ms")
        )
        args = (name, milliseconds)
    else:
        text, args = "%s() ok in %.1f ms", (name, milliseconds)
    if stream is not None:
        items, first = stream[0], stream[1]
        if first is None:
            text += " (stream: no item)"
        else:
            text += " (stream: %d item(s), the first after %.1f ms)"
            args = (*args, items, first * 1000)
    threshold = site.slow_threshold
    if slow and threshold is not None:
        text += " (slow: threshold %.1f ms)"
        args = (*args, threshold * 1000)
    return text, args


def export_call(site: CallSite, data: CallData, arguments: tuple[Any, ...]) -> None:
    """Build the call's log record and hand it to the logger's handlers (exporter thread).

    The record describes the call, not the moment the exporter got to it: its time,
    thread and source location are the call's.
    """
    (
        level,
        outcome,
        duration,
        end,
        slow,
        inputs,
        named,
        output,
        pending,
        thread,
        thread_name,
        contextual,
        tracked,
        rare,
    ) = data
    if not level:  # queued for the sinks only
        return
    log = site.logger
    if not log.isEnabledFor(level):  # the level was raised since the call
        return
    name = site.name
    error: BaseException | None
    if rare is None:
        error = exc_info = None
        if not slow and outcome == OK:  # the common case, spelled out
            text, args = "%s() ok in %.1f ms", (name, duration * 1000)
        else:
            text, args = _message(site, outcome, duration, slow, None, None, None)
    else:
        error = rare[0]
        exc_info = _trimmed(rare[1])
        text, args = _message(site, outcome, duration, slow, error, rare[3], rare[5])
    made = site.record_template
    if (
        made is None
        or made[0] != _epoch
        or made[2] is not log
        or logging.getLogRecordFactory() is not _LogRecord
    ):
        made = _template(site, log)
    # The fields, in their order: into a copy of the template (which holds the keys of
    # the first ones already, so the order stays), or alone for makeRecord's ``extra``.
    # (the template holds the function's name already)
    values: dict[str, Any] = {"function": name} if made is None else made[1].copy()
    values["call_id"] = "%s-%x" % (_prefix, next(_counter))  # noqa: UP031 - the quickest
    # _utc(end - duration), its common case spelled out
    micros = round((end - duration) * 1_000_000)
    second, prefix = _second
    if micros // 1_000_000 == second and micros >= 1_000_000:
        values["start_time"] = f"{prefix}{str(micros)[-6:]}+00:00"
    else:
        values["start_time"] = _utc_slow(micros)
    values["duration"] = duration
    values["outcome"] = OUTCOMES[outcome]
    values["slow"] = slow
    if error is None:
        if made is None:  # the template has them as None
            values["error_type"] = values["error_message"] = None
    else:
        values["error_type"] = public_type_name(error)
        values["error_message"] = str(error)
        values["expected"] = rare[2]
        if rare[3] is not None:
            values["error_logged_by"] = rare[3]
    context = None
    if named or contextual:  # the flat tuple's parts: see CallData
        last = len(arguments) - 2 * contextual
        if contextual:
            context = unflat_items(arguments[last:])
        first = last - 2 * named
        keywords = arguments[first:last] if named else None
        arguments = arguments[:first]
    else:
        keywords = None
    if pending:
        if pending & PENDING_INPUTS:
            inputs = site.summarize_inputs(arguments, keywords)
        if pending & PENDING_OUTPUT:
            output = SCALAR_SUMMARIES[type(output)](output)  # summarize_scalar(output)
    values["inputs"] = inputs
    values["output"] = output
    values["context"] = context
    if made is None and site.labels:
        values["labels"] = dict(site.labels)
    if tracked is not None:
        values["tracked_output"] = tracked
    if rare is not None:
        stream = rare[5]
        if stream is not None:
            items, first, ended = stream
            values["stream"] = {"items": items, "first_item": first, "ended": ended}
        trace = rare[4]
        if trace is not None:
            values["trace_id"] = trace.trace_hex
            values["span_id"] = trace.span_hex
    if made is None:  # a custom record factory or logger class: the slow way
        record = log.makeRecord(
            log.name,
            level,
            site.pathname,
            site.lineno,
            text,
            args,
            exc_info,
            site.func_name,
            values,
        )
        record.created = end
        record.msecs = end % 1.0 * 1000
        record.relativeCreated = (end - _start_time) * 1000
        if thread is not None:
            record.thread = thread
            record.threadName = thread_name
    else:
        # What LogRecord.__init__ would compute, all but the call's own facts once per
        # function (the process, the source location); makeRecord's ``extra`` would put
        # the fields in the record's __dict__ too.
        values["msg"] = text
        values["args"] = args
        if level != made[1]["levelno"]:
            values["levelno"] = level
            values["levelname"] = logging.getLevelName(level)
        if exc_info is not None:
            values["exc_info"] = exc_info
        values["created"] = end
        values["msecs"] = end % 1.0 * 1000  # exactly (end - int(end)) * 1000, quicker
        values["relativeCreated"] = (end - _start_time) * 1000
        values["thread"] = thread
        values["threadName"] = thread_name
        record = _new_record(_LogRecord)
        record.__dict__ = values
        if made[3] and not log.filters and not log.disabled:
            # What Logger.handle does when the logger has no filter (and is not a
            # subclass with its own handle or filter), without its two calls.
            log.callHandlers(record)
            return
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


_FIRST_FIELDS = (
    "function",
    "call_id",
    "start_time",
    "duration",
    "outcome",
    "slow",
    "error_type",
    "error_message",
)


def _template(site: CallSite, log: logging.Logger) -> Template | None:
    """The part of ``site``'s records that never changes (made anew, and kept on the
    site), or ``None`` when records must come from makeRecord.

    Records are built from this template only while the stdlib makes them the stdlib way:
    a custom record factory (``logging.setLogRecordFactory``, as OpenTelemetry's logging
    instrumentation installs) or a logger class with its own ``makeRecord`` gets the
    ordinary path, so whatever it adds is still added. The template is kept on the site
    with what it was made for (the epoch, the logger) and whether that logger handles
    records as :class:`logging.Logger` does.
    """
    kind = type(log)
    if logging.getLogRecordFactory() is not _LogRecord or kind.makeRecord is not _MAKE_RECORD:
        site.record_template = None
        return None
    probe = _LogRecord(log.name, site.level, site.pathname, site.lineno, "", (), None)
    probe.funcName = site.func_name
    template = dict(probe.__dict__)
    if "taskName" in template:  # Python 3.12+: no task in the exporter thread
        template["taskName"] = None
    if site.labels:
        template["labels"] = dict(site.labels)
    # The first fields, in their order (export_call sets the others): the copies of the
    # template then hold every key they need but a few, and need no resizing.
    for key in _FIRST_FIELDS:
        template[key] = None
    template["function"] = site.name
    plain = kind.handle is _HANDLE and kind.filter is _FILTER
    made = site.record_template = (_epoch, template, log, plain)
    return made


_MAKE_RECORD = logging.Logger.makeRecord
_HANDLE = logging.Logger.handle
_FILTER = logging.Logger.filter


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
