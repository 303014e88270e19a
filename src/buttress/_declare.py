"""Decorators whose settings are declared once, by the constructor of one class.

A decorator used bare (``@retry``) and called (``@retry(max_retries=5)``) would otherwise
list its settings three times by hand: in the class it compiles them into, in the
``@overload`` that types the called form, and in the implementation. Here the settings are
the parameters of one constructor (names, types, defaults): the decorator's engine when it
is made once per decoration (``_Retrier``, ``MemoryGuard``), or a small ``_Settings``
class when the engine is made per function or shared by name. :func:`declare` builds the
public decorator from it, and a type checker reads the called form's parameters off the
constructor through a ``ParamSpec``::

    @bare_or_called(_Retrier)
    def retry(retrier: _Retrier) -> Decorate:
        \"\"\"The public docstring.\"\"\"
        return lambda target: wrap(target, "retry", sync=..., async_=...)

``retry`` is then a :class:`BareOrCalled` of ``_Retrier``'s parameters: ``@retry`` keeps the
decorated function's type, ``@retry(max_retries=5)`` too, and ``retry(max_retries="5")`` or
``retry(max_retry=5)`` is a type error. At run time it is a plain function whose
``inspect.signature`` is ``(fn=None, /, *, max_retries: int = 3, ...)``, so ``help()`` and
documentation tools show every setting.

A decorator whose wrapper carries a handle (``fn.circuit_breaker``) types its two forms
with a protocol of its own, generic in the same ``ParamSpec`` (its bare form returns
``BreakerFunction[P, T]``, not ``Callable[P, T]``), and binds it with a three-line typed
function around :func:`declare`. Decorators without a bare form (``@bulkhead(4)``) need
none of this: their own signature is the one declaration.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, ParamSpec, Protocol, TypeVar, cast, overload

from ._settings import unexpected_keyword

__all__ = [
    "BareOrCalled",
    "Decorate",
    "bare_or_called",
    "declare",
    "keywords_of",
    "suggests_keywords",
]

P = ParamSpec("P")
Q = ParamSpec("Q")
S = TypeVar("S")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: What a decorator returns once its settings are known: target in, wrapper out.
Decorate = Callable[[Any], Any]


class BareOrCalled(Protocol[Q]):
    """A decorator used bare, or called with the settings ``Q`` first."""

    # The two forms cannot both match one call: the settings' parameters are keyword-only
    # (a decorator whose settings take a positional argument declares its own protocol).
    @overload
    def __call__(self, fn: Callable[P, T], /) -> Callable[P, T]: ...  # type: ignore[overload-overlap]

    @overload
    def __call__(
        self, *args: Q.args, **kwargs: Q.kwargs
    ) -> Callable[[Callable[P, T]], Callable[P, T]]: ...


def _always(value: object) -> bool:
    return True


def declare(
    settings: Callable[..., S],
    build: Callable[[S], Decorate],
    *,
    is_target: Callable[[object], bool] | None = None,
) -> Callable[..., Any]:
    """The decorator named and documented by ``build``, taking ``settings``' parameters.

    Called with settings, it returns ``build(settings(...))``; used bare, it applies
    ``build(settings())`` to the target at once (and ``build(settings(**keywords))`` when
    keywords come with the target). ``settings`` is called once per use of
    the decorator, when the decorator is applied, so its errors (a
    :class:`~buttress.ConfigurationError` naming the setting) surface at decoration.

    Args:
        settings: the class (or function) whose parameters are the settings.
        build: turns the compiled settings into what decorates a target. Its name,
            module and docstring become the decorator's.
        is_target: when the settings take a positional argument (``@monitor("name")``),
            tells the target of a bare use from that argument. Without it the settings
            must be keyword-only, and a positional argument is always the target.

    Raises:
        TypeError: (from the decorator) for settings the declaration has no parameter
            for, or positional settings given with the target.
    """
    name = build.__name__
    signature = inspect.signature(settings)
    parameters = list(signature.parameters.values())
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if is_target is None:
        if positional:
            raise TypeError(f"declare({name}): settings taking positional arguments need is_target")
        is_target = _always
        shown = [inspect.Parameter("fn", inspect.Parameter.POSITIONAL_ONLY, default=None)]
        parameters = shown + parameters

    accepted = keywords_of(signature)

    def decorator(*args: Any, **kwargs: Any) -> Any:
        target = None
        if args and is_target(args[0]):
            # Bare use; ``retry(fn, max_retries=2)`` works too, as it always has (untyped).
            target, *rest = args
            args = tuple(rest)
            if args:
                raise TypeError(f"{name}() takes the function to decorate and keywords only")
        if accepted is not None:
            for keyword in kwargs:
                if keyword not in accepted:  # a typo: suggest the setting meant
                    raise unexpected_keyword(f"{name}()", keyword, accepted)
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:  # the message Python gives, naming the decorator
            raise TypeError(f"{name}(): {exc}") from None
        decorate = build(settings(*args, **kwargs))
        return decorate if target is None else decorate(target)

    decorator.__name__ = name
    decorator.__qualname__ = build.__qualname__
    decorator.__module__ = build.__module__
    decorator.__doc__ = build.__doc__
    decorator.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=parameters, return_annotation=inspect.Signature.empty
    )
    return decorator


def keywords_of(signature: inspect.Signature) -> frozenset[str] | None:
    """The keywords a callable of ``signature`` takes; ``None`` when it takes any (``**``)."""
    parameters = signature.parameters.values()
    if any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(parameter.name for parameter in parameters if parameter.kind in kinds)


def suggests_keywords(fn: F) -> F:
    """``fn``, whose unexpected keyword arguments are answered with the near names.

    For the decorators (and :func:`~buttress.policy`) whose own signature is the one
    declaration of their settings: ``bulkhead(4, max_wating=2)`` raises ``TypeError:
    bulkhead(): got an unexpected keyword argument 'max_wating'; did you mean
    'max_waiting'?``. Nothing is checked before the call: the names are looked at only
    when ``fn`` raised ``TypeError``, which Python does for an unexpected keyword before
    running its body.
    """
    accepted = keywords_of(inspect.signature(fn))
    if accepted is None:
        return fn
    where = f"{fn.__name__}()"

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TypeError:
            for keyword in kwargs:
                if keyword not in accepted:
                    raise unexpected_keyword(where, keyword, accepted) from None
            raise

    return cast("F", checked)


def bare_or_called(
    settings: Callable[Q, S],
) -> Callable[[Callable[[S], Decorate]], BareOrCalled[Q]]:
    """Declare a decorator whose wrapper is typed like the function it wraps.

    Apply it to the ``build`` function (see :func:`declare`); the result replaces it.
    """

    def make(build: Callable[[S], Decorate]) -> BareOrCalled[Q]:
        return declare(settings, build)

    return make
