"""@monitor: one structured log record and a few metric updates per call, never I/O.

The engine is :class:`Site`, one per decorated function: it knows the function's names
and settings and, when a call ends, decides everything (outcome, histogram bucket, slow
or not, logged or sampled out, what to summarise) in plain code. The two shells at the
bottom only time the call and hand the result to :meth:`Site.finish`. Log records are
queued for the exporter thread (:mod:`._emitter`); metrics are added to plain-Python
totals (:mod:`._stats`) that Prometheus and DogStatsD read in their own time.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import random
import re
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from enum import Enum
from threading import current_thread
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, overload

from buttress import _clock, _settings, _tracing
from buttress._declare import Decorate, declare
from buttress._errors import (
    ConfigurationError,
    InputValidationError,
    RejectedError,
    is_fatal,
)
from buttress._signature import CallSignature, signature_of
from buttress._streams import (
    Outcome,
    Session,
    async_items,
    async_stream_shell,
    sync_items,
    sync_stream_shell,
)
from buttress._tracing import TraceIds
from buttress._wrapping import WrapperFactory, function_name, stack_name, wrap

from . import _stats
from ._emitter import exporter
from ._logs import (
    PENDING_INPUTS,
    PENDING_OUTPUT,
    CallData,
    CallItem,
    ExcInfo,
    MessageItem,
    Template,
    export_call,
    request_context,
    unflat_items,
)
from ._stats import (
    CANCELLED,
    ERROR,
    INPUT_ANOMALIES,
    OK,
    OUTPUT_ANOMALIES,
    OUTPUT_BUCKETS,
    CallStats,
    counters,
    function_stats,
)
from ._summaries import SCALAR_SUMMARIES, nonfinite, summarize, type_name

__all__ = ["MonitorHandle", "MonitoredFunction", "Site", "monitor"]

P = ParamSpec("P")
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
T2 = TypeVar("T2")
S = TypeVar("S")
P2 = ParamSpec("P2")
Q = ParamSpec("Q")

#: The logger every ``@monitor`` record goes to.
logger = logging.getLogger("buttress.monitor")

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_RESERVED_LABELS = frozenset({"function", "outcome", "le", "quantile"})
#: Argument types that can hold no NaN: the anomaly scan skips them at once.
_PLAIN = frozenset({int, bool, str, bytes, type(None), dict, list, tuple, set})
#: Exceptions ``@monitor`` logs at WARNING without a traceback, whatever ``expected``
#: says: a caller's invalid input, and calls buttress refused on purpose (open breaker,
#: full bulkhead or batch queue, rate limit, memory pressure).
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (InputValidationError, RejectedError)
#: The attribute that marks an exception as logged by a monitor (holds its name).
_LOGGED = "_buttress_logged_by"


def _logged_by(exc: BaseException) -> str | None:
    """The name of the monitor that logged ``exc`` already, if one did."""
    found = getattr(exc, _LOGGED, None)
    return found if isinstance(found, str) else None


def _mark_logged(exc: BaseException, name: str) -> None:
    try:
        setattr(exc, _LOGGED, name)
    except Exception:  # pragma: no cover - an exception that refuses attributes
        pass


def _expected(value: object) -> tuple[type[BaseException], ...]:
    kinds = value if isinstance(value, tuple) else (value,)
    if not all(isinstance(kind, type) and issubclass(kind, BaseException) for kind in kinds):
        raise ConfigurationError(
            f"expected must be an exception class or a tuple of them, got {value!r}"
        )
    return EXPECTED_ERRORS + tuple(kind for kind in kinds if kind not in EXPECTED_ERRORS)


#: Argument types whose values never change: their summaries can wait for the exporter.
_SCALARS = frozenset(SCALAR_SUMMARIES)


def _log_level(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        level = logging.getLevelName(value.upper())
        if isinstance(level, int):
            return level
    raise ConfigurationError(
        f"log_level must be a logging level name such as 'INFO' or a positive int, "
        f"got {value!r}"
    )


def _labels(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"labels must be a mapping of str to str, got {value!r}")
    labels: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _LABEL_NAME.match(key) or key.startswith("__"):
            raise ConfigurationError(
                f"labels: {key!r} is not a valid Prometheus label name "
                "([a-zA-Z_][a-zA-Z0-9_]*, not starting with '__')"
            )
        if key in _RESERVED_LABELS:
            raise ConfigurationError(f"labels: {key!r} is reserved by buttress")
        if not isinstance(item, str):
            raise ConfigurationError(
                f"labels: the value of {key!r} must be a str (a fixed value chosen in "
                f"code, never user data), got {item!r}"
            )
        labels[key] = item
    return labels


def _span_kind(value: object) -> str:
    # An opentelemetry SpanKind is accepted by its name: this module never imports it.
    name = value.name if isinstance(value, Enum) else value
    if isinstance(name, str) and name.lower() in _tracing.KINDS:
        return name.lower()
    raise ConfigurationError(
        "span_kind must be 'internal', 'server', 'client', 'producer' or 'consumer' "
        f"(or an opentelemetry SpanKind), got {value!r}"
    )


def histogram_bounds(value: object, name: str = "output_buckets") -> tuple[float, ...]:
    """Histogram bounds as given: a non-empty, strictly increasing sequence of numbers."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ConfigurationError(f"{name} must be a non-empty sequence of numbers, got {value!r}")
    bounds = tuple(_settings.number(bound, name) for bound in value)
    if any(b >= a for a, b in zip(bounds[1:], bounds, strict=False)):
        raise ConfigurationError(f"{name} must be strictly increasing, got {value!r}")
    if name == "duration_buckets" and (bounds[0] <= 0 or math.isinf(bounds[-1])):
        raise ConfigurationError(
            f"{name} must be positive and finite (seconds; +Inf is always added), "
            f"got {value!r}"
        )
    return bounds


class _Settings:
    """The compiled arguments of one ``@monitor(...)``; its constructor declares them.

    See :func:`monitor` for what each setting means.
    """

    __slots__ = (
        "duration_buckets",
        "expected",
        "labels",
        "level",
        "log_inputs",
        "log_outputs",
        "name",
        "output_buckets",
        "redact",
        "sample_rate",
        "slow_threshold",
        "span_kind",
        "track_output",
    )

    def __init__(
        self,
        name: str | None = None,
        *,
        log_level: int | str = "INFO",
        log_inputs: bool = True,
        log_outputs: bool = True,
        sample_rate: float = 1.0,
        slow_threshold: float | timedelta | None = None,
        track_output: Callable[[Any], float] | None = None,
        output_buckets: Sequence[float] = OUTPUT_BUCKETS,
        duration_buckets: Sequence[float] | None = None,
        redact: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        span_kind: str | Enum = "internal",
        expected: type[BaseException] | tuple[type[BaseException], ...] = (),
    ) -> None:
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigurationError(f"name must be a non-empty str, got {name!r}")
        self.name = name
        self.level = _log_level(log_level)
        self.log_inputs = bool(log_inputs)
        self.log_outputs = bool(log_outputs)
        self.sample_rate = _settings.ratio(sample_rate, "sample_rate", allow_zero=True)
        self.slow_threshold = _settings.optional_seconds(slow_threshold, "slow_threshold")
        if track_output is not None and not callable(track_output):
            raise ConfigurationError(f"track_output must be callable, got {track_output!r}")
        self.track_output = track_output
        self.output_buckets = histogram_bounds(output_buckets)
        self.duration_buckets = (
            None
            if duration_buckets is None
            else histogram_bounds(duration_buckets, "duration_buckets")
        )
        if redact is not None and (
            not isinstance(redact, Mapping) or not all(isinstance(k, str) for k in redact)
        ):
            raise ConfigurationError(
                "redact must map argument names (or 'return') to a replacement value "
                f"or a callable, got {redact!r}"
            )
        self.redact = dict(redact) if redact else None
        self.labels = _labels(labels)
        self.span_kind = _span_kind(span_kind)
        self.expected = _expected(expected)


class MonitorHandle:
    """What ``fn.monitor`` gives access to on a monitored function."""

    __slots__ = ("_site",)

    def __init__(self, site: Site) -> None:
        self._site = site

    @property
    def name(self) -> str:
        """The ``function`` label of the metrics and the ``function`` field of the logs."""
        return self._site.name

    @property
    def labels(self) -> Mapping[str, str]:
        """The static labels given to ``@monitor``."""
        return dict(self._site.labels)

    def stats(self) -> CallStats:
        """Totals since the process started (shared by functions of the same name)."""
        return self._site.stats.stats()

    def __repr__(self) -> str:
        return f"<MonitorHandle {self.name!r} {self.stats()}>"


class Site:
    """One monitored function: its names, compiled settings, totals and decisions."""

    __slots__ = (
        "__weakref__",
        "expected",
        "func_name",
        "labels",
        "lean_limit",
        "level",
        "lineno",
        "log_inputs",
        "log_outputs",
        "logger",
        "name",
        "output_bounds",
        "pathname",
        "positional",
        "positional_scanned",
        "record_template",
        "redact",
        "sample_rate",
        "scanned_limit",
        "signature",
        "skip_first",
        "slow_threshold",
        "span_attributes",
        "span_kind",
        "stats",
        "track_output",
        "warned",
    )

    def __init__(
        self, settings: _Settings, fn: Callable[..., Any], signature: CallSignature
    ) -> None:
        # One name for the whole stack (see _wrapping.StackName): the monitor names it,
        # and every layer below reports that name when it reports an event.
        stack = stack_name(fn)
        if settings.name is not None and settings.name != stack.value:
            if stack.monitored:
                raise ConfigurationError(
                    f"name: {function_name(fn)}() is already monitored as "
                    f"{stack.value!r}; one function has one name in the metrics, so a "
                    f"second @monitor cannot call it {settings.name!r}"
                )
            stack.value = settings.name
        if settings.name is not None:
            stack.named = True
        stack.monitored = True
        stack.labels = tuple(sorted(settings.labels.items()))
        self.name = stack.value
        self.expected = settings.expected
        self.labels = settings.labels
        self.level = settings.level
        self.log_inputs = settings.log_inputs
        self.log_outputs = settings.log_outputs
        self.sample_rate = settings.sample_rate
        self.slow_threshold = settings.slow_threshold
        self.track_output = settings.track_output
        self.output_bounds = settings.output_buckets
        self.redact = settings.redact
        self.logger = logger
        self.record_template: Template | None = None
        self.warned = False
        # The monitor's policy towards the shared signature, all of it here: inputs are
        # what the caller passed (defaults left out), by display name; the receiver is
        # neither summarised nor scanned; without a readable signature, values are
        # numbered; a call that does not fit is recorded like any other.
        self.signature = signature
        self.positional = signature.names[: signature.positional]
        self.skip_first = signature.receiver is not None
        #: the names of the positional values summarised (self/cls left out)
        self.positional_scanned = self.positional[1:] if self.skip_first else self.positional
        # The lean summary names positional values by zipping: not with redact, nor when
        # a keyword could land in **kwargs under a positional-only parameter's name.
        lean = self.redact is None and not (signature.positional_only and signature.var_keyword)
        self.lean_limit = len(self.positional) if lean else -1
        #: the same bound for the values without self/cls (negative: never lean)
        self.scanned_limit = self.lean_limit - 1 if self.skip_first else self.lean_limit
        if self.redact:
            unknown = sorted(
                name for name in self.redact if name != "return" and not signature.accepts(name)
            )
            if unknown:
                raise ConfigurationError(
                    f"redact names {', '.join(map(repr, unknown))}, which "
                    f"{function_name(fn)}() has no parameter for"
                )
        inner = fn
        while isinstance(inner, functools.partial):
            inner = inner.func
        inner = inspect.unwrap(inner)
        code = getattr(inner, "__code__", None)
        # records point at the decorated function's definition
        self.pathname = code.co_filename if code is not None else "(unknown file)"
        self.lineno = code.co_firstlineno if code is not None else 0
        self.func_name = getattr(inner, "__name__", self.name)
        self.span_kind = settings.span_kind
        self.span_attributes = self._span_attributes(inner, code is not None)
        self.stats = function_stats(self.name, self.labels, settings.duration_buckets)
        _stats.use_labels(self, self.labels)
        if self.track_output is not None:
            self.stats.track_output(self.output_bounds)

    def _span_attributes(self, inner: Any, located: bool) -> dict[str, str | int]:
        """The attributes of every span of this function, made once (see ``_tracing``).

        OpenTelemetry's semantic conventions name the code location (``code.*``); the
        rest is in the ``buttress.*`` namespace: the ``function`` label of the metrics
        and each static label as ``buttress.label.<name>``.
        """
        qualname = getattr(inner, "__qualname__", None)
        module = getattr(inner, "__module__", None)
        if not isinstance(qualname, str):
            qualname = self.func_name
        attributes: dict[str, str | int] = {
            "code.function.name": f"{module}.{qualname}" if isinstance(module, str) else qualname,
            "buttress.function": self.name,
        }
        if located:
            attributes["code.file.path"] = self.pathname
            attributes["code.line.number"] = self.lineno
        for key, value in self.labels.items():
            attributes[f"buttress.label.{key}"] = value
        return attributes

    # -- the end of every call ---------------------------------------------------------

    def finish(
        self,
        start: float,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        result: Any,
        exc: BaseException | None,
        trace: TraceIds | None = None,
        stream: tuple[int, float | None, Outcome] | None = None,
    ) -> None:
        """Record one finished call: totals always, a queued log record when wanted.

        ``trace`` holds the ids of the call's span when tracing is on: they go into the
        log record, and a sampled trace becomes the exemplar of the duration's bucket.
        For a stream, ``stream`` holds its items, its time to first item (``None``
        without one) and how it ended; one abandoned by its caller counts as cancelled.
        """
        duration = _clock.monotonic() - start
        if exc is None:
            outcome = CANCELLED if stream is not None and stream[2] == "abandoned" else OK
        elif is_fatal(exc):
            outcome = CANCELLED
        else:
            outcome = ERROR
        stats = self.stats
        bounds = stats.bounds
        # Most calls land in the first bucket; the test spares them the bisect call.
        if duration <= bounds[0]:
            slot = 0
            if duration < 0:  # a fake clock moved back
                duration = 0.0
        else:
            slot = bisect_left(bounds, duration)
        lock = stats.lock
        # acquire/release rather than `with`: half the cost, and nothing in between
        # can raise.
        lock.acquire()
        stats.in_flight -= 1
        stats.outcomes[outcome] += 1
        if stats.bounds is bounds:  # else the default buckets changed during the call
            stats.buckets[slot] += 1
            stats.total += duration
            if trace is not None and trace.sampled:
                stats.exemplars[slot] = (trace, duration, time.time())
        if stream is not None:
            self._count_stream(stream[0], stream[1])
        lock.release()
        if _stats.hint_pending:
            _stats.hint_once()
        tracked = None
        if outcome == OK and self.track_output is not None and stream is None:
            tracked = self._track(result)
        scanned = args[1:] if self.skip_first else args  # never scan self/cls
        for value in scanned:
            if type(value) not in _PLAIN:
                self._scan(scanned, kwargs)
                break
        else:
            if kwargs and any(type(value) not in _PLAIN for value in kwargs.values()):
                self._scan(scanned, kwargs)

        threshold = self.slow_threshold
        # A stream is slow when its first item is (a long stream is not slow in itself).
        waited = duration if stream is None or stream[1] is None else stream[1]
        slow = threshold is not None and waited >= threshold
        expected = False
        logged_by: str | None = None
        if outcome == ERROR:
            assert exc is not None
            expected = isinstance(exc, self.expected)
            logged_by = _logged_by(exc)
            if logged_by == self.name:
                # The same function's monitor: another call that shared the exception
                # (a single-flight follower, a batch's callers), logged like any call.
                logged_by = None
            # A client's mistake or a refusal by design is no server error; an exception
            # an inner monitor logged already is not logged as an error twice.
            if expected or logged_by is not None:
                level = max(self.level, logging.WARNING)
            else:
                level = max(self.level, logging.ERROR)
        elif slow:
            level = max(self.level, logging.WARNING)
        else:
            level = self.level
            # Sampling thins the routine records only: errors, cancellations and slow
            # calls are always logged. Metrics are never sampled.
            if outcome == OK and self.sample_rate < 1.0 and random.random() >= self.sample_rate:
                level = 0
        if level and not self.logger.isEnabledFor(level):
            level = 0
        if not level and not exporter.wants_calls:
            return
        inputs: Any = None
        # What is left to read in the exporter thread, as one flat tuple beside the
        # call's data (see CallData): the positional values still to summarise, then the
        # keyword arguments' names and values (``named`` of them), then the request
        # context's (``contextual`` of them).
        arguments: tuple[Any, ...] = ()
        named = contextual = 0
        output: Any = None
        pending = 0
        thread: int | None = None
        thread_name: str | None = None
        if level:
            # Summaries are taken now, while the values are as the call saw them; values
            # that cannot change (numbers, strings, None) are summarised by the exporter
            # thread instead, off the caller's path.
            if self.log_inputs:
                # Every value of a type in _SCALARS (immutable), and no redact: the
                # summary can wait. The loops are written out: no call on this path.
                settled = self.redact is None
                if settled:
                    for value in scanned:
                        if type(value) not in _SCALARS:
                            settled = False
                            break
                    if settled and kwargs:
                        for value in kwargs.values():
                            if type(value) not in _SCALARS:
                                settled = False
                                break
                if settled:
                    # without self/cls, which is never summarised and, as an object,
                    # would keep the garbage collector tracking the call's data
                    arguments, pending = scanned, PENDING_INPUTS
                    if kwargs:
                        named = len(kwargs)
                        arguments = (*scanned, *kwargs, *kwargs.values())
                else:
                    inputs = self._inputs(args, kwargs)
            if self.log_outputs and outcome == OK and stream is None:
                if self.redact is None and type(result) in _SCALARS:
                    output, pending = result, pending | PENDING_OUTPUT
                else:
                    output = self._summary("return", result)
            context = request_context.get()
            if context:
                contextual = len(context)
                arguments = (*arguments, *context, *context.values())
            # The Thread's own ident object: get_ident() would make a new int each call.
            running = current_thread()
            thread, thread_name = running.ident, running.name
        rare: Any = None
        if exc is not None or trace is not None or stream is not None:
            exc_info: ExcInfo | None = None
            error = None
            if level and outcome == ERROR:
                assert exc is not None
                error = exc
                if logged_by is None:
                    _mark_logged(exc, self.name)
                    if not expected:  # the traceback, once, from the innermost monitor
                        exc_info = (type(exc), exc, exc.__traceback__)
            rare = (error, exc_info, expected, logged_by, trace, stream)
        exporter.put_call(
            (
                level,
                outcome,
                duration,
                time.time(),
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
            ),
            arguments,
            self,
        )

    # -- the exporter thread (see _emitter.CallOwner) ----------------------------------

    export = export_call

    def item(self, data: CallData) -> CallItem:
        """The call as the metrics sinks see it."""
        return CallItem(self, data)

    def summarize_inputs(self, args: tuple[Any, ...], named: tuple[Any, ...] | None) -> Any:
        """The ``inputs`` field of a call whose summary was left to the exporter thread
        (every value a scalar, no ``redact``): ``args`` are the positional values
        without self/cls, ``named`` the keyword arguments as one flat tuple, names then
        values."""
        if len(args) > self.scanned_limit:
            # the general way, which takes the receiver's place (and skips it)
            full = (None, *args) if self.skip_first else args
            return self._inputs(full, unflat_items(named) if named else {})
        names = self.positional_scanned
        scalar = SCALAR_SUMMARIES
        inputs = {}
        index = 0  # counted by hand: quicker than zip() or enumerate() for a few values
        for value in args:
            inputs[names[index]] = scalar[type(value)](value)
            index += 1  # noqa: SIM113 - enumerate() costs more here
        if named:
            half = len(named) // 2
            for name, value in zip(named[:half], named[half:]):  # noqa: B905 - as long
                inputs[name] = scalar[type(value)](value)
        return inputs

    def _count_stream(self, items: int, first: float | None) -> None:
        """Add a stream's items and time to first item to the totals (lock held)."""
        stats = self.stats
        stats.items += items
        buckets = stats.first_buckets
        if first is not None and buckets is not None:
            buckets[bisect_left(stats.bounds, max(first, 0.0))] += 1
            stats.first_total += first

    # -- pieces ------------------------------------------------------------------------

    def _summary(self, name: str, value: Any) -> Any:
        redact = self.redact
        if redact is not None and name in redact:
            replacement = redact[name]
            if not callable(replacement):
                return replacement
            try:
                return replacement(value)
            except Exception as exc:  # never let a redactor leak the value or break the call
                return {"type": type_name(value), "redact_failed": type_name(exc)}
        return summarize(value)

    def _inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        names = self.positional
        if len(args) <= self.lean_limit:  # the common case, kept lean
            inputs = {
                name: summarize(value)
                for name, value in zip(names, args)  # noqa: B905 - args may be fewer
            }
            if self.skip_first and args:
                del inputs[names[0]]
            for name, value in kwargs.items():
                inputs[name] = summarize(value)
            return inputs
        signature = self.signature
        count = len(names)
        group = signature.var_positional_name
        inputs = {}
        for index, value in enumerate(args):
            if index < count:
                if index == 0 and self.skip_first:
                    continue
                name = names[index]
                inputs[name] = self._summary(name, value)
            else:  # redacted as a whole group, shown one by one
                inputs[signature.argument_name(index)] = self._summary(group, value)
        for name, value in kwargs.items():
            inputs[signature.keyword_name(name)] = self._summary(name, value)
        return inputs

    def _scan(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        nan = inf = 0
        for value in args:
            if type(value) not in _PLAIN:
                found_nan, found_inf = nonfinite(value)
                nan += found_nan
                inf += found_inf
        if kwargs:
            for value in kwargs.values():
                if type(value) not in _PLAIN:
                    found_nan, found_inf = nonfinite(value)
                    nan += found_nan
                    inf += found_inf
        if nan:
            counters.add(INPUT_ANOMALIES, (self.name, "nan"))
        if inf:
            counters.add(INPUT_ANOMALIES, (self.name, "inf"))

    def _track(self, result: Any) -> float | None:
        assert self.track_output is not None
        try:
            value = float(self.track_output(result))
        except Exception as exc:
            counters.add(OUTPUT_ANOMALIES, (self.name, "error"))
            if not self.warned:  # once per function: a broken mapper would flood the log
                self.warned = True
                exporter.put(
                    MessageItem(
                        self.logger,
                        logging.WARNING,
                        "track_output of %s() raised; its values are not tracked",
                        self.name,
                        exc_info=(type(exc), exc, exc.__traceback__),
                    )
                )
            return None
        if not math.isfinite(value):
            counters.add(OUTPUT_ANOMALIES, (self.name, "nan" if value != value else "inf"))
            return None
        stats = self.stats
        bounds = stats.output_bounds
        if bounds is None:  # pragma: no cover - set at decoration
            return value
        slot = bisect_left(bounds, value)
        with stats.lock:
            stats.output_buckets[slot] += 1
            stats.output_sum += value
            stats.output_count += 1
        return value


# --- the shells ----------------------------------------------------------------------


def _sync_shell(site: Site) -> WrapperFactory:
    stats = site.stats
    lock = stats.lock
    finish = site.finish
    name, kind, attributes = site.name, site.span_kind, site.span_attributes

    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        def monitor_wrapper(*args: Any, **kwargs: Any) -> Any:
            tracer = _tracing.tracer
            if tracer is not None:
                # Tracing on: the same, inside a span current while the function runs.
                # Written out rather than shared, so that the path without tracing pays
                # one attribute read and nothing more.
                span = tracer.start(name, kind, attributes)
                lock.acquire()
                stats.in_flight += 1
                lock.release()
                start = _clock.monotonic()
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    finish(start, args, kwargs, None, exc, span.end(exc))
                    raise
                finish(start, args, kwargs, result, None, span.end(None))
                return result
            lock.acquire()
            stats.in_flight += 1
            lock.release()
            start = _clock.monotonic()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                finish(start, args, kwargs, None, exc)
                raise
            finish(start, args, kwargs, result, None)
            return result

        return monitor_wrapper

    return build


def _async_shell(site: Site) -> WrapperFactory:
    stats = site.stats
    lock = stats.lock
    finish = site.finish
    name, kind, attributes = site.name, site.span_kind, site.span_attributes

    def build(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        async def monitor_wrapper(*args: Any, **kwargs: Any) -> Any:
            tracer = _tracing.tracer
            if tracer is not None:
                # Tracing on: the same as below, inside a span current while the function
                # runs (attached in this coroutine's context: this task's, not the
                # caller's). Written out, as in the sync shell.
                span = tracer.start(name, kind, attributes)
                lock.acquire()
                stats.in_flight += 1
                lock.release()
                start = _clock.monotonic()
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    finish(start, args, kwargs, None, exc, span.end(exc))
                    raise
                finish(start, args, kwargs, result, None, span.end(None))
                return result
            # Counted and timed from inside the coroutine: from when it starts running to
            # when it returns, raises or is cancelled, not when the coroutine object is made.
            lock.acquire()
            stats.in_flight += 1
            lock.release()
            start = _clock.monotonic()
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                finish(start, args, kwargs, None, exc)
                raise
            finish(start, args, kwargs, result, None)
            return result

        return monitor_wrapper

    return build


class _StreamRecord(Session):
    """One run of a monitored stream: timed from its first ``__anext__`` to its end.

    One record per stream, whatever its number of items: its duration, outcome, items
    and time to first item. With tracing on, one span per stream too, current while the
    stream's own code runs (each step, through a relay: see :func:`_traced_async`) and
    not between items, when the caller's code runs in the same context.
    """

    __slots__ = ("args", "asynchronous", "first", "items", "kwargs", "site", "span", "start")

    watches_items = True

    def __init__(
        self, site: Site, args: tuple[Any, ...], kwargs: dict[str, Any], asynchronous: bool
    ) -> None:
        self.site = site
        self.args = args
        self.kwargs = kwargs
        self.asynchronous = asynchronous
        self.items = 0
        self.first: float | None = None
        tracer = _tracing.tracer
        self.span = (
            None
            if tracer is None
            else tracer.open(site.name, site.span_kind, site.span_attributes)
        )
        stats = site.stats
        stats.lock.acquire()
        stats.in_flight += 1
        stats.lock.release()
        self.start = _clock.monotonic()

    def begin(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        span = self.span
        if span is None:
            return fn(*args, **kwargs)
        token = span.attach()  # a generator function's call may run code of its own
        try:
            source = fn(*args, **kwargs)
        finally:
            span.detach(token)
        if self.asynchronous:
            if not hasattr(source, "asend"):
                source = async_items(source)
            return _traced_async(source, span)
        if not hasattr(source, "send"):
            source = sync_items(source)
        return _traced_sync(source, span)

    def item(self, item: Any) -> None:
        if not self.items:
            self.first = _clock.monotonic() - self.start
        self.items += 1

    def end(self, outcome: Outcome, error: BaseException | None) -> None:
        trace = None
        span = self.span
        if span is not None:
            facts: dict[str, str | int | float] = {
                "buttress.stream.items": self.items,
                "buttress.stream.ended": outcome,
            }
            if self.first is not None:
                facts["buttress.stream.first_item"] = self.first
            if outcome == "abandoned":  # counted as cancelled, as in the record
                facts["buttress.outcome"] = "cancelled"
            trace = span.end(error, facts)
        self.site.finish(
            self.start,
            self.args,
            self.kwargs,
            None,
            error,
            trace,
            stream=(self.items, self.first, outcome),
        )


async def _traced_async(source: Any, span: _tracing.StreamSpan) -> Any:
    """Relay ``source`` (an async generator), with ``span`` current during each step.

    Written as a relay rather than as a hook of the stream driver, so that a stream pays
    for it only when tracing is on. Values and exceptions sent in are passed on, as
    ``yield from`` would; attaching and detaching happen within one step, in the task
    that iterates.
    """
    step, value = source.asend, None
    try:
        while True:
            token = span.attach()
            try:
                item = await step(value)
            except StopAsyncIteration:
                return
            finally:
                span.detach(token)
            try:
                value = yield item
            except GeneratorExit:
                raise
            except BaseException as exc:  # athrow(): the source gets it
                step, value = source.athrow, exc
            else:
                step = source.asend
    finally:
        token = span.attach()
        try:
            await source.aclose()
        finally:
            span.detach(token)


def _traced_sync(source: Any, span: _tracing.StreamSpan) -> Any:
    """As :func:`_traced_async`, for a plain generator."""
    step, value = source.send, None
    try:
        while True:
            token = span.attach()
            try:
                item = step(value)
            except StopIteration:
                return
            finally:
                span.detach(token)
            try:
                value = yield item
            except GeneratorExit:
                raise
            except BaseException as exc:  # throw(): the source gets it
                step, value = source.throw, exc
            else:
                step = source.send
    finally:
        token = span.attach()
        try:
            source.close()
        finally:
            span.detach(token)


class _TrackedStreamRecord(_StreamRecord):
    """A monitored stream with ``track_output``: each item is a tracked output."""

    __slots__ = ()

    def item(self, item: Any) -> None:
        super().item(item)
        self.site._track(item)


def _stream_kind(site: Site) -> type[_StreamRecord]:
    site.stats.track_streams()
    return _StreamRecord if site.track_output is None else _TrackedStreamRecord


def _sync_stream_shell(site: Site) -> WrapperFactory:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        kind = _stream_kind(site)
        return sync_stream_shell(lambda args, kwargs: kind(site, args, kwargs, False))(fn)

    return build


def _async_stream_shell(site: Site) -> WrapperFactory:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        kind = _stream_kind(site)

        async def open_run(args: tuple[Any, ...], kwargs: dict[str, Any]) -> _StreamRecord:
            return kind(site, args, kwargs, True)

        return async_stream_shell(open_run)(fn)

    return build


class MonitoredFunction(Protocol[P, T_co]):
    """A function decorated with ``@monitor``: callable as before, plus ``.monitor``."""

    monitor: MonitorHandle

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T_co: ...

    # Decorated methods bind like functions: the instance fills the first parameter.
    @overload
    def __get__(
        self, instance: None, owner: type[Any] | None = None
    ) -> MonitoredFunction[P, T_co]: ...

    @overload
    def __get__(
        self: MonitoredFunction[Concatenate[S, P2], T2],
        instance: S,
        owner: type[Any] | None = None,
    ) -> MonitoredFunction[P2, T2]: ...


class _Monitor(Protocol[Q]):
    """``@monitor`` bare, or called with the settings ``Q`` (a name may come first)."""

    # A function is never a name (str or None): the two forms never match one call.
    @overload
    def __call__(self, fn: Callable[P, T], /) -> MonitoredFunction[P, T]: ...  # type: ignore[overload-overlap]

    @overload
    def __call__(
        self, *args: Q.args, **kwargs: Q.kwargs
    ) -> Callable[[Callable[P, T]], MonitoredFunction[P, T]]: ...


def _is_target(value: object) -> bool:
    """Whether ``@monitor``'s first argument is the function (bare use), not a name."""
    if isinstance(value, (classmethod, staticmethod)):
        return True
    return value is not None and not isinstance(value, str) and callable(value)


def _declared(
    settings: Callable[Q, _Settings],
) -> Callable[[Callable[[_Settings], Decorate]], _Monitor[Q]]:
    return lambda build: declare(settings, build, is_target=_is_target)


@_declared(_Settings)
def monitor(settings: _Settings) -> Decorate:
    """Log every call as one structured record and count it in the metrics.

    Each call ends in one record on the ``buttress.monitor`` logger with, in its
    ``extra``: ``function``, ``call_id``, ``start_time`` (ISO 8601, UTC), ``duration``
    (seconds), ``outcome`` (``"ok"``, ``"error"`` or ``"cancelled"``), ``slow``,
    ``error_type`` and ``error_message``, ``inputs`` and ``output`` (summaries, never
    raw payloads), ``context`` (from :data:`request_context`), and
    ``labels`` and ``tracked_output`` when set. Records are built by a background thread
    from a bounded queue: the call itself does no I/O, and when the queue is full records
    are dropped and counted rather than waited for.

    Every call also updates ``buttress_calls_total{function,outcome}``,
    ``buttress_call_duration_seconds{function}`` and ``buttress_in_flight{function}``
    (see :mod:`buttress.metrics`), whatever the log level or sample rate.

    Args:
        name: the ``function`` label and log field; the function's qualified name by
            default. Also usable bare: ``@monitor``.
        log_level: the level of routine records (a name such as ``"INFO"`` or an int).
            Errors are logged at ERROR with their traceback, expected errors at WARNING
            without one, slow calls at WARNING at least.
        log_inputs: include the summary of every argument (``self``/``cls`` excepted).
        log_outputs: include the summary of the return value.
        sample_rate: the fraction of successful, not slow calls that are logged (0 to
            1). Errors, cancellations and slow calls are always logged; the metrics
            count every call.
        slow_threshold: seconds (or a ``timedelta``); a call at least this long is
            logged at WARNING and marked ``slow``.
        track_output: maps a result to a number (a top score, a predicted class) that
            feeds the ``buttress_output`` histogram of this function; NaN, infinite
            values and errors of the mapper are counted in
            ``buttress_output_anomalies_total`` instead.
        output_buckets: the upper bounds of that histogram, strictly increasing.
        duration_buckets: the upper bounds (seconds, strictly increasing) of this
            function's ``buttress_call_duration_seconds`` (and time-to-first-item)
            histogram; ``+Inf`` is added. By default the process-wide buckets
            (:func:`buttress.metrics.set_duration_buckets`; 1 ms to 30 s unless changed).
        redact: per argument name (``"return"`` for the result), what to log instead of
            the summary: a callable receiving the value, or a constant.
        labels: fixed extra labels (and log fields) for this function's metrics, such as
            ``{"model": "resnet50"}``. Chosen in code, never from request data, so the
            number of series stays bounded.
        expected: exception classes (one or a tuple) that are part of normal operation,
            such as a client's bad request: they are logged at WARNING without a
            traceback, with ``expected: true``. Always included:
            :class:`~buttress.InputValidationError` and :class:`~buttress.RejectedError`
            (open breaker, full bulkhead, rate limit, memory pressure, full batch queue).
            Metrics count them as errors all the same.
        span_kind: the kind of the call's span when OpenTelemetry is enabled:
            ``"internal"`` (the default), ``"client"`` (the function calls a remote
            service), ``"server"``, ``"producer"`` or ``"consumer"``; an
            ``opentelemetry.trace.SpanKind`` works too.

    Raises:
        ConfigurationError: at decoration, for a setting that cannot work (including a
            ``redact`` entry naming no parameter).

    With :func:`buttress.otel.enable` in effect, each call also runs in an OpenTelemetry
    span named like the ``function`` label, current while the function runs (its own
    spans and those of instrumented clients nest under it), ended with the outcome
    (an error sets status ``ERROR`` and records the exception); the record then carries
    ``trace_id`` and ``span_id``. Without it, tracing costs one attribute read per call.

    The wrapped function's exceptions are re-raised unchanged; cancellation is recorded
    as ``cancelled`` and re-raised. The wrapper carries ``.monitor``, a
    :class:`MonitorHandle` (``fn.monitor.stats()``); type checkers see it on the
    :class:`MonitoredFunction` that ``@monitor`` returns.

    A stream (a generator or async-generator function) is one call, timed from its
    first ``__anext__`` to its end, with one record: ``outcome`` as for a call (a stream
    the caller abandoned, by ``aclose()`` or ``break``, is ``"cancelled"``), and a
    ``stream`` field ``{"items", "first_item", "ended"}`` (items delivered, seconds to
    the first, and ``"completed"``, ``"failed"``, ``"cancelled"`` or ``"abandoned"``).
    The metrics add ``buttress_stream_items_total{function}`` and the histogram
    ``buttress_stream_first_item_seconds{function}``; ``track_output`` tracks each item;
    ``slow_threshold`` applies to the time to first item (to the whole stream when it
    delivered none).
    """

    def decorate(target: Any) -> Any:
        inner = target.__func__ if isinstance(target, (classmethod, staticmethod)) else target
        if not callable(inner):
            raise TypeError(f"@monitor needs a callable to decorate, got {target!r}")
        site = Site(settings, inner, signature_of(target))
        return wrap(
            target,
            "monitor",
            sync=_sync_shell(site),
            async_=_async_shell(site),
            stream=_sync_stream_shell(site),
            astream=_async_stream_shell(site),
            attributes={"monitor": MonitorHandle(site)},
        )

    return decorate
