"""@validate_input and @validate_output: the settings, the error policy and the two shells.

The decisions live in :mod:`._binding` (one compiled validator per decorated function);
the shells here only call it, call the function, and apply ``on_error``. A stream's
arguments are checked when it is first iterated (:class:`_CheckedRun`), where its body
would start.
"""

from __future__ import annotations

import functools
import inspect
import sys
import types
import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, ParamSpec, Protocol, TypeVar, overload

from typing_extensions import TypeAliasType

from buttress import _declare
from buttress._declare import Decorate, bare_or_called, declare
from buttress._errors import (
    ConfigurationError,
    DataValidationError,
    InputValidationError,
    OutputValidationError,
)
from buttress._signature import signature_of
from buttress._streams import Session, answer_items, async_stream_shell, sync_stream_shell
from buttress._wrapping import function_name, is_async_callable, stack_name, wrap

from ._binding import Validator, compile_input, compile_output, hints_of
from ._specs import ArraySpec, Keys

__all__ = ["OnError", "validate_input", "validate_output"]

P = ParamSpec("P")
Q = ParamSpec("Q")
T = TypeVar("T")
E = TypeVar("E", bound=DataValidationError)

#: What to do with a value that fails: raise, return ``default``, or call a handler with
#: the error and return what it returns.
OnError = Literal["raise", "default"] | Callable[[E], Any]

class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


#: "Not given", for settings where None is a meaningful value (``default=None``).
_MISSING: Any = _Missing()

Handler = Callable[[DataValidationError], Any] | None


def _handler(decorator: str, on_error: object, default: object) -> Handler:
    """``None`` to raise, or what answers in place of the function."""
    has_default = default is not _MISSING
    if on_error is None:
        on_error = "default" if has_default else "raise"
    if isinstance(on_error, str) and on_error == "raise":
        if has_default:
            raise ConfigurationError(
                f"@{decorator}: default= is returned only with on_error='default' "
                "(or with on_error left out)"
            )
        return None
    if isinstance(on_error, str) and on_error == "default":
        if not has_default:
            raise ConfigurationError(f"@{decorator}: on_error='default' needs default=...")
        return lambda error: default
    if isinstance(on_error, str) or not callable(on_error):
        raise ConfigurationError(
            f"@{decorator}: on_error must be 'raise', 'default' or a callable; got {on_error!r}"
        )
    if has_default:
        raise ConfigurationError(f"@{decorator}: give on_error a callable or default=, not both")
    return on_error


def _refuse_async_handler(decorator: str, handler: Handler, fn: Any) -> None:
    if handler is not None and is_async_callable(handler):
        raise ConfigurationError(
            f"@{decorator}: on_error is async but {function_name(fn)}() is a plain function, "
            "which cannot await it; give a plain callable"
        )


def _passthrough_sync(fn: Callable[..., Any]) -> Callable[..., Any]:
    def passthrough_wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return passthrough_wrapper


def _passthrough_async(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    async def passthrough_wrapper(*args: Any, **kwargs: Any) -> Any:
        return await fn(*args, **kwargs)

    return passthrough_wrapper


Namespace = Callable[[], Mapping[str, Any] | None]
V = TypeVar("V")


def _definition_frame() -> types.FrameType:
    """The frame applying the decorator: the decorated definition's, or whoever applies it.

    Called by ``decorate``, which is called either there (``@validate_input(...)``) or,
    in bare use, by the decorator that :mod:`buttress._declare` built (skipped here).
    """
    frame = sys._getframe(2)
    while frame.f_back is not None and frame.f_globals.get("__name__") == _declare.__name__:
        frame = frame.f_back
    return frame


def _resolved(build: Callable[[Mapping[str, Any] | None], V], namespace: Namespace) -> V:
    """``build(None)``, or with the decorating function's local names when an annotation
    names a class defined there.

    Raises:
        NameError: neither resolves (the class may be defined later in the module).
    """
    try:
        return build(None)
    except NameError:
        return build(namespace())


def _later(
    build: Callable[[Mapping[str, Any] | None], V],
    local_names: Mapping[str, Any] | None,
    decorator: str,
    function: str,
) -> Callable[[], V]:
    """For annotations naming classes defined after the function: resolve at first call."""
    compiled: list[V] = []

    def get() -> V:
        if not compiled:
            try:
                compiled.append(build(local_names))
            except NameError as exc:
                raise ConfigurationError(
                    f"@{decorator}: an annotation of {function}() names something "
                    f"undefined: {exc}"
                ) from None
        return compiled[0]

    return get


class _CheckedRun(Session):
    """One run of a stream under ``@validate_input``: its arguments checked as it starts.

    Invalid arguments raise from the first ``__anext__``, or, with ``on_error``, the
    handler's answer is relayed as the stream's items (see ``answer_items``).
    """

    __slots__ = ("asynchronous", "handler", "validate")

    def __init__(self, validate: Validator, handler: Handler, asynchronous: bool) -> None:
        self.validate = validate
        self.handler = handler
        self.asynchronous = asynchronous

    def begin(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            args = self.validate(args, kwargs)
        except InputValidationError as error:
            if self.handler is None:
                raise
            return answer_items(self.handler(error), asynchronous=self.asynchronous)
        return fn(*args, **kwargs)


def _input_shells(
    specs: Mapping[str, Any] | None,
    handler: Handler,
    namespace: Namespace,
) -> tuple[Callable[[Any], Any], ...]:
    def validator_of(fn: Any) -> Validator | None:
        name = stack_name(fn)

        def build(names: Mapping[str, Any] | None) -> Validator | None:
            return compile_input(fn, name, specs, names)

        try:
            return _resolved(build, namespace)
        except NameError:
            get = _later(build, namespace(), "validate_input", str(name))

        def validate_later(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            validator = get()
            return args if validator is None else validator(args, kwargs)

        return validate_later

    def build_sync(fn: Callable[..., Any]) -> Callable[..., Any]:
        _refuse_async_handler("validate_input", handler, fn)
        validate = validator_of(fn)
        if validate is None:
            return _passthrough_sync(fn)

        def validate_input_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                args = validate(args, kwargs)
            except InputValidationError as error:
                if handler is None:
                    raise
                return handler(error)
            return fn(*args, **kwargs)

        return validate_input_wrapper

    def build_async(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        validate = validator_of(fn)
        if validate is None:
            return _passthrough_async(fn)

        async def validate_input_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                args = validate(args, kwargs)
            except InputValidationError as error:
                if handler is None:
                    raise
                answer = handler(error)
                if inspect.isawaitable(answer):
                    answer = await answer
                return answer
            return await fn(*args, **kwargs)

        return validate_input_wrapper

    # Streams: one session per decorated function serves every run (it keeps no state).

    def build_stream(fn: Callable[..., Any]) -> Callable[..., Any]:
        _refuse_async_handler("validate_input", handler, fn)
        validate = validator_of(fn)
        run = Session() if validate is None else _CheckedRun(validate, handler, False)
        return sync_stream_shell(lambda args, kwargs: run)(fn)

    def build_astream(fn: Callable[..., Any]) -> Callable[..., Any]:
        validate = validator_of(fn)
        run = Session() if validate is None else _CheckedRun(validate, handler, True)

        async def open_run(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Session:
            return run

        return async_stream_shell(open_run)(fn)

    return build_sync, build_async, build_stream, build_astream


class _InputSettings:
    """The settings of one ``@validate_input(...)``, compiled; its constructor declares them.

    See :func:`validate_input` for what each means.
    """

    __slots__ = ("handler", "specs")

    def __init__(
        self,
        *,
        on_error: OnError[InputValidationError] | None = None,
        default: Any = _MISSING,
        specs: Mapping[str, Any] | None = None,
        **argument_specs: Any,
    ) -> None:
        self.handler = _handler("validate_input", on_error, default)
        chosen: dict[str, Any] | None = None
        if specs is not None or argument_specs:
            chosen = dict(specs or {})
            clash = chosen.keys() & argument_specs.keys()
            if clash:
                raise ConfigurationError(
                    f"@validate_input: {', '.join(sorted(clash))} given both in specs= and "
                    "as keywords"
                )
            chosen.update(argument_specs)
        self.specs = chosen


@bare_or_called(_InputSettings)
def validate_input(settings: _InputSettings) -> Decorate:
    """Check a function's arguments before it runs; bad data never reaches the model.

    Bare (``@validate_input``), every annotated parameter is checked against its
    annotation. With specs (``@validate_input(x=ArraySpec(...), top_k=int)``), only the
    named arguments are; the others pass untouched. A spec is:

    * an :class:`ArraySpec` (or ``Annotated[np.ndarray, ArraySpec(...)]``) for numpy arrays;
      ``np.ndarray`` alone checks only the type, ``npt.NDArray[np.float32]`` the dtype too;
    * :class:`Keys` for plain dicts;
    * a pydantic model class, or any type or annotation pydantic validates (``int``,
      ``list[float]``, ``Literal["a", "b"]``, ``Annotated[int, Field(ge=1)]``); other
      classes are checked with ``isinstance``. ``Any`` and ``object`` check nothing.

    Everything is compiled when the function is decorated. The function receives the
    validated values: pydantic's coercions (``"3"`` for an ``int`` becomes ``3``, a dict
    for a model becomes the model) and cast arrays. For a ``*args`` parameter the spec
    applies to each extra positional argument; for ``**kwargs``, to each extra keyword.
    Defaults are not validated. Every problem in a call is reported, not just the first.

    Args:
        on_error: ``"raise"`` (the default) raises :class:`InputValidationError`;
            ``"default"`` (implied by giving ``default``) returns ``default`` without
            calling the function; a callable receives the error and its return value is
            the call's result. For coroutine functions the callable may be async.
        default: the value returned for invalid input.
        specs: specs by argument name, for arguments whose names clash with this
            decorator's own keywords (``on_error``, ``default``, ``specs``).
        **argument_specs: specs by argument name.

    Every failure is reported as a :class:`~buttress.ValidationFailed` event, whatever
    ``on_error`` does.

    Raises:
        InputValidationError: (a ``ValueError``) an argument failed, with ``on_error="raise"``.
        ConfigurationError: at decoration, for a spec naming no parameter, a spec that
            cannot work, or contradictory ``on_error``/``default``.
        TypeError: at decoration, for a callable without a readable signature.

    On a stream (a generator or async-generator function) the arguments are checked when
    it is first iterated, where its body would start: an invalid one raises from the
    first ``__anext__``, and an ``on_error`` answer is relayed as the stream's items
    (``None`` for none, a ``str`` as one item, an iterable for its items).
    """
    # Annotations may name classes local to the function that decorates (a test, a
    # factory): its frame is kept while decorating and read only if a name is missing.
    frames: list[types.FrameType] = []

    def namespace() -> Mapping[str, Any] | None:
        return dict(frames[-1].f_locals) if frames else None

    sync, async_, stream, astream = _input_shells(settings.specs, settings.handler, namespace)

    def decorate(target: Callable[..., Any]) -> Any:
        frames.append(_definition_frame())
        try:
            return wrap(
                target,
                "validate_input",
                sync=sync,
                async_=async_,
                stream=stream,
                astream=astream,
            )
        finally:
            frames.pop()

    return decorate


# --- output --------------------------------------------------------------------------------


def _is_target(value: object) -> bool:
    """Whether ``validate_output``'s positional argument is the function, not a spec."""
    return isinstance(
        value,
        (
            types.FunctionType,
            types.MethodType,
            types.BuiltinFunctionType,
            functools.partial,
            classmethod,
            staticmethod,
        ),
    )


def _output_shells(
    spec: Any, handler: Handler, namespace: Namespace
) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    def validator_of(fn: Any) -> Callable[[Any], Any] | None:
        name = stack_name(fn)

        def build(names: Mapping[str, Any] | None) -> Callable[[Any], Any] | None:
            chosen = spec
            if chosen is _MISSING:
                hints = hints_of(fn, names, skip=signature_of(fn).receiver)
                if "return" not in hints:
                    raise ConfigurationError(
                        f"@validate_output: {name}() has no return annotation; give a spec: "
                        "@validate_output(ArraySpec(...))"
                    )
                chosen = hints["return"]
            return compile_output(chosen, name)

        try:
            return _resolved(build, namespace)
        except NameError:
            get = _later(build, namespace(), "validate_output", str(name))

        def validate_later(result: Any) -> Any:
            validator = get()
            return result if validator is None else validator(result)

        return validate_later

    def build_sync(fn: Callable[..., Any]) -> Callable[..., Any]:
        _refuse_async_handler("validate_output", handler, fn)
        validate = validator_of(fn)
        if validate is None:
            return _passthrough_sync(fn)

        def validate_output_wrapper(*args: Any, **kwargs: Any) -> Any:
            result = fn(*args, **kwargs)
            try:
                return validate(result)
            except OutputValidationError as error:
                if handler is None:
                    raise
                return handler(error)

        return validate_output_wrapper

    def build_async(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        validate = validator_of(fn)
        if validate is None:
            return _passthrough_async(fn)

        async def validate_output_wrapper(*args: Any, **kwargs: Any) -> Any:
            result = await fn(*args, **kwargs)
            try:
                return validate(result)
            except OutputValidationError as error:
                if handler is None:
                    raise
                answer = handler(error)
                if inspect.isawaitable(answer):
                    answer = await answer
                return answer

        return validate_output_wrapper

    return build_sync, build_async


#: Why @validate_output refuses streams, and the way out.
_WHY_STREAM = (
    "it checks a return value, and a stream returns none: its items come one by one. "
    "Check each item in the generator, or decorate the function that makes one item"
)


#: What a type checker accepts as an output spec: classes and generic aliases
#: (``list[int]``), ``X | Y`` unions, typing's special forms (``Annotated[...]``,
#: ``Literal[...]``, ``Optional[...]``), PEP 695 aliases (numpy >= 2.5 defines
#: ``npt.NDArray`` so on Python 3.12+), and the spec objects.
OutputSpec = (
    type[Any] | ArraySpec | Keys | types.UnionType | typing._SpecialForm | TypeAliasType
)


class _OutputSettings:
    """The settings of one ``@validate_output(...)``; its constructor declares them.

    See :func:`validate_output` for what each means.
    """

    __slots__ = ("handler", "spec")

    def __init__(
        self,
        spec: OutputSpec = _MISSING,
        /,
        *,
        on_error: OnError[OutputValidationError] | None = None,
        default: Any = _MISSING,
    ) -> None:
        self.spec: Any = spec
        self.handler = _handler("validate_output", on_error, default)


class _ValidateOutput(Protocol[Q]):
    """``@validate_output`` bare, or called with the settings ``Q`` (a spec may come first)."""

    # Called first: a class (a pydantic model, ``int``) is a spec, not the target.
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, *args: Q.args, **kwargs: Q.kwargs
    ) -> Callable[[Callable[P, T]], Callable[P, T]]: ...

    @overload
    def __call__(self, fn: Callable[P, T], /) -> Callable[P, T]: ...


def _declared(
    settings: Callable[Q, _OutputSettings],
) -> Callable[[Callable[[_OutputSettings], Decorate]], _ValidateOutput[Q]]:
    return lambda build: declare(settings, build, is_target=_is_target)


@_declared(_OutputSettings)
def validate_output(settings: _OutputSettings) -> Decorate:
    """Check what a function returns: no NaN probabilities, the right shape, values in range.

    ``@validate_output(spec)`` checks the return value against ``spec`` (any spec
    :func:`validate_input` takes: an :class:`ArraySpec`, :class:`Keys`, a pydantic model,
    a type or an annotation). Bare ``@validate_output`` (or ``@validate_output()``) uses
    the return annotation. The caller receives the validated value: a cast array, a
    model built from a returned dict.

    Dimension names in an output spec are matched within the return value only (a tuple
    of arrays sharing ``"batch"``), not against the arguments.

    Args:
        spec: what the return value must be; the return annotation when left out.
        on_error: ``"raise"`` (the default) raises :class:`OutputValidationError`;
            ``"default"`` (implied by giving ``default``) returns ``default``; a callable
            receives the error and returns the result instead (async allowed for
            coroutine functions).
        default: the value returned in place of an invalid result.

    Every failure is reported as a :class:`~buttress.ValidationFailed` event (direction
    ``"output"``), whatever ``on_error`` does.

    Raises:
        OutputValidationError: (a ``ValueError``) the result failed, with ``on_error="raise"``.
        ConfigurationError: at decoration, for a spec that cannot work, no spec and no
            return annotation, or contradictory ``on_error``/``default``.
    """
    frames: list[types.FrameType] = []

    def namespace() -> Mapping[str, Any] | None:
        return dict(frames[-1].f_locals) if frames else None

    sync, async_ = _output_shells(settings.spec, settings.handler, namespace)

    def decorate(fn: Callable[..., Any]) -> Any:
        frames.append(_definition_frame())
        try:
            return wrap(
                fn, "validate_output", sync=sync, async_=async_, stream_why=_WHY_STREAM
            )
        finally:
            frames.pop()

    return decorate
