"""Specs and a function's signature compiled, at decoration, into one validating closure.

``compile_input`` reads the signature once and turns each checked parameter into a slot:
its position, its keyword name and its check. The closure it returns walks the slots:
no ``inspect.Signature.bind`` per call, no dict of every argument, nothing allocated when
every value passes unchanged. Arguments the caller left out keep their defaults, which
are not validated; a call that does not fit the signature (a missing argument, one too
many) is not validated but left for the function itself to report, as it would without
the decorator: the fit is asked only when a check fails, so the passing path pays nothing
for it.
"""

from __future__ import annotations

import functools
import inspect
import sys
import types
import typing
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, NamedTuple, get_args, get_origin

import numpy as np
from pydantic import ValidationError

from buttress._errors import (
    ConfigurationError,
    InputValidationError,
    OutputValidationError,
    ValidationProblem,
)
from buttress._events import ValidationFailed, events
from buttress._settings import nearest
from buttress._signature import CallSignature, signature_of
from buttress._wrapping import StackName

from ._checks import (
    Dims,
    Failed,
    compile_array,
    compile_keys,
    compile_pydantic,
    mentions_markers,
    pydantic_problems,
)
from ._specs import ArraySpec, Keys

__all__ = ["Validator", "compile_input", "compile_output", "compile_spec", "hints_of"]

#: Validates a call's arguments: ``(args, kwargs) -> args`` with values replaced by the
#: validated ones (kwargs is updated in place); raises InputValidationError.
Validator = Callable[[tuple[Any, ...], dict[str, Any]], Any]

_KEYWORD_ONLY = sys.maxsize  # the position of a parameter that cannot be positional
_MARKERS = (ArraySpec, Keys)
_PLAIN_ARRAY = ArraySpec(finite=False)
_MAPPINGS = (dict, Mapping, typing.Dict, typing.Mapping, Any, object)  # noqa: UP006


class Compiled(NamedTuple):
    """One spec compiled: the check, whether it takes the call's dims, whether it binds names."""

    check: Callable[..., Any]
    with_dims: bool
    names: bool


def _array_from_ndarray_hint(annotation: Any) -> ArraySpec:
    """``np.ndarray`` or ``npt.NDArray[np.float32]``: the array type, its dtype if exact."""
    dtype_arg = get_args(annotation)[1] if len(get_args(annotation)) == 2 else None
    if get_origin(dtype_arg) is np.dtype:
        (scalar,) = get_args(dtype_arg)
        try:
            return ArraySpec(dtype=np.dtype(scalar), finite=False)
        except Exception:  # an abstract scalar type (np.floating): any dtype
            return _PLAIN_ARRAY
    return _PLAIN_ARRAY


def _expand_alias(spec: Any) -> Any:
    """What a PEP 695 type alias stands for: numpy >= 2.5 on Python 3.12+ defines
    ``npt.NDArray`` with a ``type`` statement, so ``npt.NDArray[np.int64]`` is the alias
    subscripted, not ``np.ndarray[...]``."""
    origin = get_origin(spec)
    value = getattr(origin, "__value__", None)
    if value is not None and getattr(origin, "__type_params__", None):
        try:
            return value[get_args(spec)]
        except TypeError:  # pragma: no cover - an alias that cannot be substituted
            return spec
    if type(spec).__name__ == "TypeAliasType":
        return spec.__value__
    return spec


def _direct_marker(spec: Any) -> ArraySpec | Keys | None:
    """The ArraySpec or Keys checked directly (not through pydantic) for ``spec``."""
    if isinstance(spec, _MARKERS):
        return spec
    spec = _expand_alias(spec)
    if spec is np.ndarray or get_origin(spec) is np.ndarray:
        return _array_from_ndarray_hint(spec)
    if get_origin(spec) is Annotated:
        base, metadata = spec.__origin__, spec.__metadata__
        base = _expand_alias(base)
        if len(metadata) == 1 and isinstance(metadata[0], _MARKERS):
            marker = metadata[0]
            if isinstance(marker, ArraySpec) and (
                base in (np.ndarray, Any, object) or get_origin(base) is np.ndarray
            ):
                return marker
            if isinstance(marker, Keys) and base in _MAPPINGS:
                return marker
    return None


def compile_spec(
    spec: Any, where: str, what: str, shared: Callable[[str], bool] | None = None
) -> Compiled | None:
    """Compile one spec; ``None`` for a spec that accepts everything (``Any``, ``object``).

    ``where`` names the value in messages (``"argument 'x'"``), ``what`` names the setting
    in configuration errors. ``shared`` tells whether a dimension name appears more than
    once in the call (by default, whether it repeats within this spec): only such names
    are worth remembering.
    """
    if spec is Any or spec is object:
        return None
    if isinstance(spec, str):
        raise ConfigurationError(
            f"{what}: the string {spec!r} is not a spec; pass the type itself (a type, an "
            "annotation, a pydantic model, an ArraySpec or Keys)"
        )
    marker = _direct_marker(spec)
    if isinstance(marker, Keys):
        return Compiled(compile_keys(marker), True, False)
    if isinstance(marker, ArraySpec):
        names = _names(marker)
        if shared is None:
            shared = {name for name in names if names.count(name) > 1}.__contains__
        bind = any(shared(name) for name in names)
        return Compiled(compile_array(marker, where, bind), True, bind)
    check, with_dims = compile_pydantic(spec, where, what)
    return Compiled(check, with_dims, with_dims)


def _names(spec: ArraySpec) -> list[str]:
    return [entry for entry in spec.shape or () if isinstance(entry, str)]


def _sharing(specs: Iterable[Any]) -> Callable[[str], bool]:
    """Which dimension names appear more than once among a call's specs.

    Markers nested inside pydantic annotations cannot be counted: with any of them, every
    name counts as shared.
    """
    counts: Counter[str] = Counter()
    for spec in specs:
        marker = _direct_marker(spec)
        if isinstance(marker, ArraySpec):
            counts.update(_names(marker))
        elif marker is None and not isinstance(spec, str) and mentions_markers(spec):
            return lambda name: True
    return lambda name: counts[name] > 1


# --- reading annotations -------------------------------------------------------------------


def _annotated_object(target: Any) -> Any:
    """Whatever holds the annotations of what calling ``target`` runs."""
    inner = target
    while isinstance(inner, functools.partial):
        inner = inner.func
    if inspect.isroutine(inner):
        return inner
    if isinstance(inner, type):
        # What construction runs: the first __init__ along the MRO (object's at the latest).
        return next(vars(base)["__init__"] for base in inner.__mro__ if "__init__" in vars(base))
    return type(inner).__call__


def _without(source: Any, name: str) -> Any:
    """A stand-in for ``source`` that typing reads the same, minus ``name``'s annotation."""
    annotations = getattr(source, "__annotations__", None)
    if not isinstance(annotations, Mapping) or name not in annotations:
        return source
    inner = source
    while hasattr(inner, "__wrapped__"):  # where typing looks for the globals
        inner = inner.__wrapped__
    stand_in = types.SimpleNamespace(
        __annotations__={key: value for key, value in annotations.items() if key != name},
        __globals__=getattr(inner, "__globals__", {}),
        __type_params__=getattr(source, "__type_params__", ()),
    )
    # Python 3.10 reads the defaults too (a None default makes a hint Optional).
    for attribute in ("__code__", "__defaults__", "__kwdefaults__"):
        if hasattr(source, attribute):
            setattr(stand_in, attribute, getattr(source, attribute))
    return stand_in


def hints_of(
    target: Any, namespace: Mapping[str, Any] | None, *, skip: str | None = None
) -> dict[str, Any]:
    """The resolved annotations of ``target``, extras (``Annotated``) kept.

    ``skip`` names a parameter whose annotation is not evaluated at all (the receiver's,
    which may name the class being defined, or ``Self``).

    Raises:
        NameError: an annotation names something not defined (yet).
        ConfigurationError: annotations that cannot be evaluated for another reason.
    """
    source = _annotated_object(target)
    if skip is not None:
        source = _without(source, skip)
    try:
        return typing.get_type_hints(
            source, localns=dict(namespace) if namespace else None, include_extras=True
        )
    except NameError:
        raise
    except Exception as exc:
        raise ConfigurationError(
            f"cannot read the annotations of {target!r}: {type(exc).__name__}: {exc}"
        ) from None


# --- input ---------------------------------------------------------------------------------


class _Slot(NamedTuple):
    position: int  # its position, or _KEYWORD_ONLY
    key: str | None  # its keyword, or None when positional-only
    check: Callable[..., Any]
    with_dims: bool
    argument: str


def _problems(
    exc: Failed | ValidationError, argument: str, prefix: tuple[str | int, ...] = ()
) -> list[ValidationProblem]:
    raw = exc.problems if isinstance(exc, Failed) else pydantic_problems(exc)
    return [
        ValidationProblem(argument, prefix + path, expected, found, message)
        for path, expected, found, message in raw
    ]


def _report(
    function: str | StackName, direction: typing.Literal["input", "output"], problems: Any
) -> None:
    # A stack's name is read now: the monitor above names it once the stack is built.
    if events.active:
        events.emit(ValidationFailed(function=str(function), direction=direction, errors=problems))


def compile_input(
    target: Any,
    function: str | StackName,
    specs: Mapping[str, Any] | None,
    namespace: Mapping[str, Any] | None,
) -> Validator | None:
    """The validator of ``target``'s arguments, or ``None`` when nothing is checked.

    ``specs`` maps parameter names to specs; ``None`` means "from the annotations".

    Raises:
        NameError: (annotations only) a forward reference not defined yet.
        ConfigurationError: a spec naming no parameter, or a spec that cannot work.
        TypeError: a callable whose signature cannot be read.
    """
    signature = signature_of(target)
    # Validation's policy towards the shared signature, all of it here:
    # - no readable signature: refused, since specs are attached to parameter names;
    # - the receiver's annotation (self: Self) is not read: Python bound the receiver;
    # - defaults are not validated (the walk only looks at what the call passed);
    # - a call that does not fit the signature is not validated: see _build_input.
    if not signature.readable:
        raise TypeError(
            f"@validate_input cannot read the signature of {function}: {signature.problem}"
        )
    parameters = signature.parameters
    if specs is None:
        hints = hints_of(target, namespace, skip=signature.receiver)
        chosen = {p.name: hints[p.name] for p in parameters if p.name in hints}
    else:
        unknown = [name for name in specs if name not in {p.name for p in parameters}]
        if unknown:
            listed = ", ".join(p.name for p in parameters) or "none"
            near = nearest(unknown[0], (p.name for p in parameters))
            raise ConfigurationError(
                f"@validate_input: {function}() has no parameter "
                f"{', '.join(repr(name) for name in unknown)} (its parameters: {listed})"
                + (f"; did you mean {near!r}?" if near is not None else "")
            )
        chosen = dict(specs)

    slots: list[_Slot] = []
    var_args: tuple[int, str, Compiled] | None = None
    var_kwargs: Compiled | None = None
    every: list[Compiled] = []
    # A *args or **kwargs spec applies to many values: its names count as repeated.
    shared = _sharing(
        chosen[p.name]
        for p in parameters
        if p.name in chosen
        for _ in range(2 if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) else 1)
    )
    for parameter in parameters:
        if parameter.name not in chosen:
            continue
        compiled = compile_spec(
            chosen[parameter.name],
            f"argument {parameter.name!r}",
            f"@validate_input: argument {parameter.name!r} of {function}()",
            shared,
        )
        if compiled is None:
            continue
        every.append(compiled)
        kind = parameter.kind
        if kind == parameter.VAR_POSITIONAL:
            var_args = (signature.positional, parameter.name, compiled)
        elif kind == parameter.VAR_KEYWORD:
            var_kwargs = compiled
        else:
            position = signature.position(parameter.name)
            slots.append(
                _Slot(
                    _KEYWORD_ONLY if position is None else position,
                    None if kind == parameter.POSITIONAL_ONLY else parameter.name,
                    compiled.check,
                    compiled.with_dims,
                    parameter.name,
                )
            )
    if not slots and var_args is None and var_kwargs is None:
        return None
    needs_dims = any(compiled.names for compiled in every)
    return _build_input(function, signature, tuple(slots), var_args, var_kwargs, needs_dims)


def _build_input(
    function: str | StackName,
    signature: CallSignature,
    slots: tuple[_Slot, ...],
    var_args: tuple[int, str, Compiled] | None,
    var_kwargs: Compiled | None,
    needs_dims: bool,
) -> Validator:
    """The thorough validator, or a lean one in front of it when the call allows.

    The thorough walk collects every problem, shares dimension names and covers
    ``*args``/``**kwargs``. Without those, the lean walk only calls the checks; at the
    first failure the thorough walk takes over from the next argument on, to find the
    other problems (no check runs twice: a sampled scan must not be redrawn).

    Neither walk binds the call. Only when a check fails is the call's fit asked: a call
    that does not fit the signature is not validated but handed on unchanged, and the
    function raises its own ``TypeError`` (the shared rule of :mod:`buttress._signature`).
    """
    keywords = signature.keywords
    fits = signature.fits

    def fail(
        args: tuple[Any, ...], kwargs: dict[str, Any], problems: list[ValidationProblem]
    ) -> Any:
        if not fits(args, kwargs):
            return args  # the function says what is wrong with the call
        _report(function, "input", tuple(problems))
        # Not chained to the check's own error (pydantic's quotes the input: input_value=
        # ...), which a server's error log would print below ours; the problems say it all.
        raise InputValidationError(str(function), problems) from None

    def thorough(
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        start: int = 0,
        failures: list[ValidationProblem] | None = None,
    ) -> Any:
        dims = Dims() if needs_dims else None
        replaced: list[Any] | None = None
        count = len(args)
        for index, key, check, with_dims, argument in slots[start:] if start else slots:
            if index < count:
                value = args[index]
            elif key is not None and key in kwargs:
                value = kwargs[key]
            else:
                continue  # left to its default (not validated) or missing (the call fails)
            try:
                result = check(value, dims) if with_dims else check(value)
            except (Failed, ValidationError) as exc:
                failures = failures or []
                failures.extend(_problems(exc, argument))
                continue
            if result is not value:
                if index < count:
                    if replaced is None:
                        replaced = list(args)
                    replaced[index] = result
                else:
                    kwargs[key] = result  # type: ignore[index]  # key is set: not positional
        if var_args is not None and count > var_args[0]:
            start, group, (check, with_dims, _) = var_args
            for index in range(start, count):
                value = args[index]
                try:
                    result = check(value, dims) if with_dims else check(value)
                except (Failed, ValidationError) as exc:
                    failures = failures or []
                    failures.extend(_problems(exc, group, (index - start,)))
                    continue
                if result is not value:
                    if replaced is None:
                        replaced = list(args)
                    replaced[index] = result
        if var_kwargs is not None and kwargs:
            check, with_dims, _ = var_kwargs
            for key, value in kwargs.items():
                if key in keywords:
                    continue
                try:
                    result = check(value, dims) if with_dims else check(value)
                except (Failed, ValidationError) as exc:
                    failures = failures or []
                    failures.extend(_problems(exc, signature.keyword_name(key)))
                    continue
                if result is not value:
                    kwargs[key] = result  # replacing a value while iterating is allowed
        if failures is not None:
            return fail(args, kwargs, failures)
        return args if replaced is None else replaced

    if needs_dims or var_args is not None or var_kwargs is not None:
        return thorough
    # Every check here takes the value alone: arrays and keys need no dims in this case.
    if len(slots) == 1:
        return _lean_one(slots[0], fail)
    lean_slots = tuple(
        (number, index, key, check) for number, (index, key, check, _, _) in enumerate(slots)
    )

    def lean(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        count = len(args)
        replaced: list[Any] | None = None
        number = 0
        try:
            for number, index, key, check in lean_slots:  # noqa: B007  # read after a failure
                if index < count:
                    value = args[index]
                    result = check(value)
                    if result is not value:
                        if replaced is None:
                            replaced = list(args)
                        replaced[index] = result
                elif key is not None and key in kwargs:
                    value = kwargs[key]
                    result = check(value)
                    if result is not value:
                        kwargs[key] = result
        except (Failed, ValidationError) as exc:
            failures = _problems(exc, slots[number].argument)
            return thorough(args, kwargs, number + 1, failures)  # raises, or misfit
        return args if replaced is None else replaced

    return lean


def _lean_one(
    slot: _Slot,
    fail: Callable[[tuple[Any, ...], dict[str, Any], list[ValidationProblem]], Any],
) -> Validator:
    """The lean walk unrolled for the most common case: one checked argument."""
    index, key, check, _, argument = slot

    def lean_one(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if index < len(args):
            value = args[index]
            try:
                result = check(value)
            except (Failed, ValidationError) as exc:
                return fail(args, kwargs, _problems(exc, argument))
            if result is value:
                return args
            replaced = list(args)
            replaced[index] = result
            return replaced
        if key is not None and key in kwargs:
            value = kwargs[key]
            try:
                result = check(value)
            except (Failed, ValidationError) as exc:
                return fail(args, kwargs, _problems(exc, argument))
            if result is not value:
                kwargs[key] = result
        return args

    return lean_one


# --- output --------------------------------------------------------------------------------


def compile_output(
    spec: Any, function: str | StackName
) -> Callable[[Any], Any] | None:
    """The validator of a return value: ``result -> validated result``, or ``None``.

    Raises:
        OutputValidationError: (when called) the value failed.
        ConfigurationError: a spec that cannot work.
    """
    compiled = compile_spec(spec, "return value", f"@validate_output of {function}()")
    if compiled is None:
        return None
    check, with_dims, names = compiled

    def validate(result: Any) -> Any:
        try:
            if with_dims:
                return check(result, Dims() if names else None)
            return check(result)
        except (Failed, ValidationError) as exc:
            problems = tuple(_problems(exc, "return"))
        _report(function, "output", problems)
        raise OutputValidationError(str(function), problems)

    return validate
